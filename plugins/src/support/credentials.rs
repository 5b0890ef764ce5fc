//! Where the authentication plugins find a credential (a header, a query parameter or a
//! cookie), how they refuse one that is there ambiguously, and how they remove it before the
//! request goes upstream.
//!
//! A credential is read only when exactly one copy of it is present across all of a plugin's
//! sources: two `Authorization` fields, two API-key headers, a key in both a header and the
//! query, a parameter or a cookie name present twice are all refused with
//! [`ambiguous`] (400). The gateway would verify one copy while a backend may read another, so
//! a forged second copy would ride on a valid first one.

use crate::support::failure_limit::FailureLimit;
use crate::support::query;
use crate::{Flow, Rejection, RequestView};
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// The problem `type` slug of a request carrying a credential ambiguously.
pub const AMBIGUOUS_SLUG: &str = "ambiguous-credentials";

/// One place a credential is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer TOKEN` (jwt-auth's `header:authorization`).
    Bearer,
    /// A header's whole value.
    Header(HeaderName),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// Which sources a plugin's configuration may name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kinds {
    /// `header:NAME` or `query:NAME` (API keys).
    HeaderOrQuery,
    /// `header:NAME` (`header:authorization` means the Bearer scheme), `cookie:NAME` or
    /// `query:NAME` (tokens).
    Token,
}

/// What a request holds in a plugin's sources.
#[derive(Debug, PartialEq, Eq)]
pub enum Located<'r> {
    /// Nothing.
    Missing,
    /// More than one copy, in one source or across sources.
    Ambiguous,
    /// Exactly one copy: its raw value.
    Found(&'r [u8]),
}

const BEARER: &[u8] = b"bearer ";

impl Source {
    /// Parses `KIND:NAME` as allowed by `kinds`.
    pub fn parse(text: &str, kinds: Kinds) -> Result<Source, String> {
        let token = kinds == Kinds::Token;
        match text.split_once(':') {
            Some(("header", name)) if token && name.eq_ignore_ascii_case("authorization") => {
                Ok(Source::Bearer)
            }
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(Source::Header)
                .map_err(|_| format!("`{name}` is not a valid header name")),
            Some(("query", name)) if !name.is_empty() => Ok(Source::Query(name.into())),
            Some(("cookie", name)) if token && !name.is_empty() => Ok(Source::Cookie(name.into())),
            _ if token => Err(format!(
                "invalid token source `{text}`: use header:NAME, cookie:NAME or query:NAME"
            )),
            _ => Err(format!(
                "invalid source `{text}`: use header:NAME or query:NAME"
            )),
        }
    }

    /// Parses a configured list of sources, which must not be empty.
    pub fn parse_all(texts: &[String], key: &str, kinds: Kinds) -> Result<Vec<Source>, String> {
        if texts.is_empty() {
            return Err(format!("`{key}` needs at least one entry"));
        }
        texts.iter().map(|t| Source::parse(t, kinds)).collect()
    }

    /// How many copies of the credential the request holds here. An `Authorization` field of
    /// another scheme is no bearer token (it may be another plugin's), but two `Authorization`
    /// fields of any scheme are two copies.
    fn count(&self, req: &RequestHeader) -> usize {
        match self {
            Source::Bearer => {
                let mut fields = req.headers.get_all(http::header::AUTHORIZATION).iter();
                match (fields.next(), fields.next()) {
                    (None, _) => 0,
                    (Some(one), None) => usize::from(bearer_token(one.as_bytes()).is_some()),
                    (Some(_), Some(_)) => 2,
                }
            }
            Source::Header(name) => req.headers.get_all(name).iter().count(),
            Source::Query(name) => req.uri.query().map_or(0, |q| query::param_count(q, name)),
            Source::Cookie(name) => query::cookie_count(&req.headers, name),
        }
    }

    /// The first copy's raw value.
    fn value<'r>(&self, req: &'r RequestHeader) -> Option<&'r [u8]> {
        match self {
            Source::Bearer => req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes())),
            Source::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
            // A bare `name` without `=` is counted but has no value: it reads as empty.
            Source::Query(name) => Some(
                req.uri
                    .query()
                    .and_then(|q| query::param(q, name))
                    .map_or(&b""[..], str::as_bytes),
            ),
            Source::Cookie(name) => query::cookie_bytes(&req.headers, name),
        }
    }

    /// Removes every copy of the credential from `req`.
    pub fn remove(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        match self {
            Source::Bearer => {
                req.remove_header(&http::header::AUTHORIZATION);
            }
            Source::Header(name) => {
                req.remove_header(name);
            }
            Source::Query(name) => {
                if let Some(uri) = query::without_param(&req.uri, name) {
                    req.set_uri(uri);
                }
            }
            Source::Cookie(name) => {
                if let Some(fields) = query::without_cookie(&req.headers, name) {
                    req.remove_header(&http::header::COOKIE);
                    for field in fields {
                        // Made of bytes of valid field values and `; `, so always valid.
                        if let Ok(value) = HeaderValue::from_bytes(&field) {
                            req.append_header(http::header::COOKIE, value)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    value
        .get(..BEARER.len())
        .filter(|scheme| scheme.eq_ignore_ascii_case(BEARER))
        .map(|_| value[BEARER.len()..].trim_ascii())
}

/// The credential of an authentication plugin's request phase: `Ok(Some)` the one copy in
/// `sources`, `Ok(None)` none at all, `Err` the answer when the client is past its failed
/// attempts (429) or sent the credential twice (400, counted as a failed attempt).
pub fn take_one<'r>(
    sources: &[Source],
    request: &RequestView<'r>,
    failures: &FailureLimit,
) -> Result<Option<&'r [u8]>, Flow> {
    if let Some(refusal) = failures.check(request.client_ip()) {
        return Err(Flow::Reject(refusal));
    }
    match locate(sources, request.header) {
        Located::Found(credential) => Ok(Some(credential)),
        Located::Missing => Ok(None),
        Located::Ambiguous => Err(failures.failed(request.client_ip(), ambiguous())),
    }
}

/// Finds the credential in `sources`: missing, ambiguous, or exactly one copy.
pub fn locate<'r>(sources: &[Source], req: &'r RequestHeader) -> Located<'r> {
    let mut found = None;
    for source in sources {
        match (source.count(req), found) {
            (0, _) => {}
            (1, None) => found = Some(source),
            _ => return Located::Ambiguous,
        }
    }
    match found.and_then(|source| source.value(req)) {
        Some(value) => Located::Found(value),
        None => Located::Missing,
    }
}

/// Removes the credential from every source of `sources`.
pub fn remove_all(sources: &[Source], req: &mut RequestHeader) -> pingora::Result<()> {
    sources.iter().try_for_each(|source| source.remove(req))
}

/// The 400 answer to a request carrying a credential ambiguously.
pub fn ambiguous() -> Rejection {
    Rejection {
        status: 400,
        slug: AMBIGUOUS_SLUG,
        title: "Ambiguous credentials",
        detail: "the request carries its credentials more than once; send exactly one".into(),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request("GET", uri, headers)
    }

    fn sources(texts: &[&str], kinds: Kinds) -> Vec<Source> {
        let texts: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
        Source::parse_all(&texts, "sources", kinds).expect("valid")
    }

    #[test]
    fn one_copy_is_found_and_two_are_ambiguous() {
        let keys = sources(&["header:x-api-key", "query:api_key"], Kinds::HeaderOrQuery);
        let found = |uri, headers: &[(&str, &str)]| {
            let req = request(uri, headers);
            match locate(&keys, &req) {
                Located::Found(v) => Some(v.to_vec()),
                Located::Missing => None,
                Located::Ambiguous => Some(b"AMBIGUOUS".to_vec()),
            }
        };
        assert_eq!(found("/", &[("x-api-key", "k")]), Some(b"k".to_vec()));
        assert_eq!(found("/?api_key=q", &[]), Some(b"q".to_vec()));
        assert_eq!(found("/", &[]), None);
        let ambiguous = Some(b"AMBIGUOUS".to_vec());
        assert_eq!(
            found("/", &[("x-api-key", "a"), ("x-api-key", "b")]),
            ambiguous
        );
        assert_eq!(found("/?api_key=q", &[("x-api-key", "k")]), ambiguous);
        assert_eq!(found("/?api_key=a&api%5Fkey=b", &[]), ambiguous);
    }

    #[test]
    fn bearer_counts_authorization_fields() {
        let tokens = sources(&["header:authorization", "cookie:token"], Kinds::Token);
        assert_eq!(tokens[0], Source::Bearer);
        let req = request("/", &[("authorization", "bearer  t ")]);
        assert_eq!(locate(&tokens, &req), Located::Found(b"t"));
        // Another plugin's scheme is not a token; the cookie is then the only copy.
        let req = request("/", &[("authorization", "Basic x"), ("cookie", "token=c")]);
        assert_eq!(locate(&tokens, &req), Located::Found(b"c"));
        let req = request(
            "/",
            &[("authorization", "Bearer a"), ("authorization", "Basic x")],
        );
        assert_eq!(locate(&tokens, &req), Located::Ambiguous);
        let req = request("/", &[("authorization", "Bearer a"), ("cookie", "token=c")]);
        assert_eq!(locate(&tokens, &req), Located::Ambiguous);
        let req = request("/", &[("cookie", "token=a"), ("cookie", "theme=dark")]);
        assert_eq!(locate(&tokens, &req), Located::Found(b"a"));
        let req = request("/", &[("cookie", "token=a"), ("cookie", "token=b")]);
        assert_eq!(locate(&tokens, &req), Located::Ambiguous);
    }

    #[test]
    fn sources_are_removed_wherever_they_are() {
        let tokens = sources(
            &["header:authorization", "cookie:token", "query:t"],
            Kinds::Token,
        );
        let mut req = request(
            "/x?t=1&a=2",
            &[
                ("authorization", "Bearer a"),
                ("cookie", "theme=dark; token=b"),
            ],
        );
        remove_all(&tokens, &mut req).expect("removed");
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(req.headers["cookie"], "theme=dark");
        assert_eq!(req.uri, "/x?a=2");
    }

    #[test]
    fn source_kinds_are_checked() {
        assert!(Source::parse("cookie:x", Kinds::HeaderOrQuery).is_err());
        assert_eq!(
            Source::parse("header:authorization", Kinds::HeaderOrQuery),
            Ok(Source::Header(http::header::AUTHORIZATION))
        );
        assert!(Source::parse("query:", Kinds::Token).is_err());
        assert!(Source::parse("header:bad name", Kinds::Token).is_err());
        assert!(Source::parse_all(&[], "token_sources", Kinds::Token).is_err());
    }
}
