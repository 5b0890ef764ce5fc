//! What a consistent hash is keyed on (`hash_on`), read from the request without allocating.

use http::HeaderName;
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// A compiled `hash_on` value. When the request lacks the key, the client IP is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client address (after trusted proxies).
    ClientIp,
    /// The path without the query.
    Path,
    /// Path and query.
    Uri,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's raw value.
    Query(String),
}

impl HashOn {
    /// Parses `client_ip | path | uri | header:NAME | cookie:NAME | query:NAME`.
    pub fn parse(text: &str) -> Result<HashOn, String> {
        let bad = || {
            format!(
                "invalid hash_on `{text}`: use client_ip, path, uri, header:NAME, cookie:NAME or query:NAME"
            )
        };
        Ok(match text.split_once(':') {
            None => match text {
                "client_ip" => HashOn::ClientIp,
                "path" => HashOn::Path,
                "uri" => HashOn::Uri,
                _ => return Err(bad()),
            },
            Some((_, "")) => return Err(bad()),
            Some(("header", name)) => HashOn::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name `{name}` in hash_on"))?,
            ),
            Some(("cookie", name)) => HashOn::Cookie(name.to_string()),
            Some(("query", name)) => HashOn::Query(name.to_string()),
            Some(_) => return Err(bad()),
        })
    }

    /// The key bytes for `req`; `client_ip` is the fallback when the key is absent.
    pub fn key<'a>(&self, req: &'a RequestHeader, client_ip: &'a [u8]) -> &'a [u8] {
        let found = match self {
            HashOn::ClientIp => None,
            HashOn::Path => Some(req.uri.path().as_bytes()),
            HashOn::Uri => req.uri.path_and_query().map(|pq| pq.as_str().as_bytes()),
            HashOn::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
            HashOn::Cookie(name) => {
                gantry_plugins::gateway::cookie(&req.headers, name).map(str::as_bytes)
            }
            HashOn::Query(name) => req
                .uri
                .query()
                .and_then(|q| gantry_plugins::gateway::query_param(q, name))
                .map(str::as_bytes),
        };
        found.unwrap_or(client_ip)
    }
}

/// Writes the address bytes into `buf` and returns them, for hashing on the client IP.
pub fn ip_key(ip: Option<IpAddr>, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        Some(IpAddr::V4(v4)) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        Some(IpAddr::V6(v6)) => {
            *buf = v6.octets();
            &buf[..]
        }
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).expect("valid request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("valid header");
        }
        r
    }

    #[test]
    fn keys_come_from_the_request_or_fall_back_to_the_ip() {
        let r = req(
            "/a/b?x=1&user=42",
            &[("cookie", "a=1; sid=abc"), ("x-user-id", "7")],
        );
        let ip = b"ip";
        assert_eq!(HashOn::Path.key(&r, ip), b"/a/b");
        assert_eq!(HashOn::Uri.key(&r, ip), b"/a/b?x=1&user=42");
        assert_eq!(HashOn::parse("header:x-user-id").unwrap().key(&r, ip), b"7");
        assert_eq!(HashOn::parse("cookie:sid").unwrap().key(&r, ip), b"abc");
        assert_eq!(HashOn::parse("query:user").unwrap().key(&r, ip), b"42");
        assert_eq!(HashOn::parse("query:none").unwrap().key(&r, ip), b"ip");
        assert!(HashOn::parse("header:").is_err());
        assert!(HashOn::parse("body").is_err());
    }
}
