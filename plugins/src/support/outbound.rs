//! The rules for plugins' own HTTP calls to identity providers and authorization servers
//! (JWKS, OpenID configuration, token introspection): `https://` only (plain `http://` for
//! loopback), a deadline per call, answers read up to a bound, redirects followed only to URLs
//! that pass the same rule, and log text that names the origin only (a URL's path or query may
//! carry credentials).

use bytes::{Bytes, BytesMut};
use reqwest::{Response, Url};
use std::net::IpAddr;
use std::time::Duration;

/// The most redirects a key-fetching call follows.
const MAX_REDIRECTS: usize = 5;

/// Whether `url` is `https://`, or `http://` to a loopback address.
pub fn is_secure(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => !host.is_empty(),
        "http" => loopback,
        _ => false,
    }
}

/// Parses the URL configured as `key` and checks it is [secure](is_secure); `what` says what
/// travels over it, for the error.
pub fn secure_url(key: &str, text: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{key}` is not a URL: {e}"))?;
    if !is_secure(&url) {
        return Err(format!(
            "`{key}` must be https:// (plain http:// only for loopback): {what} in the clear \
             can be read or forged on the way"
        ));
    }
    Ok(url)
}

/// `scheme://host[:port]` of `url`, the only part of it logs and errors show.
pub fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Whether a client follows redirects (to [secure](is_secure) URLs only) or stops at them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Follow up to [`MAX_REDIRECTS`] redirects to secure URLs (key and document fetches).
    FollowSecure,
    /// Never follow one: a redirect is an answer like any other (calls that carry
    /// credentials, which must not be sent again somewhere else).
    Refuse,
}

/// An HTTP client whose every call ends within `timeout` and treats redirects as `redirects`
/// says.
pub fn client(timeout: Duration, redirects: Redirects) -> Result<reqwest::Client, String> {
    let policy = match redirects {
        Redirects::Refuse => reqwest::redirect::Policy::none(),
        Redirects::FollowSecure => reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if is_secure(attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("a redirect to a URL that is not https://")
            }
        }),
    };
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(policy)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The body of `response`, refused once it grows past `limit` bytes.
pub async fn read_capped(mut response: Response, limit: usize) -> Result<Bytes, String> {
    let too_large = || format!("the answer is larger than {limit} bytes");
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A transport error as text, without the URL it was for.
pub fn describe(error: reqwest::Error) -> String {
    error.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_secure() {
        let secure = |text: &str| is_secure(&Url::parse(text).expect("url"));
        assert!(secure("https://idp.example/jwks"));
        assert!(secure("http://127.0.0.1:8000/jwks"));
        assert!(secure("http://127.9.0.1/jwks"));
        assert!(secure("http://[::1]:80/x"));
        assert!(secure("http://LOCALHOST/x"));
        assert!(!secure("http://idp.example/jwks"));
        assert!(!secure("http://10.0.0.1/jwks"));
        assert!(!secure("ftp://127.0.0.1/jwks"));
        let error = secure_url("jwks_url", "http://idp.example/", "keys").expect_err("refused");
        assert!(error.starts_with("`jwks_url` must be https://"), "{error}");
        assert!(secure_url("jwks_url", "not a url", "keys").is_err());
    }

    #[test]
    fn origins_drop_paths_queries_and_credentials() {
        let url = Url::parse("https://user:pw@idp.example:8443/token?secret=1").expect("url");
        assert_eq!(origin(&url), "https://idp.example:8443");
        let url = Url::parse("http://127.0.0.1/x").expect("url");
        assert_eq!(origin(&url), "http://127.0.0.1");
    }
}
