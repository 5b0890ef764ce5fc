//! Client identity and forwarding headers: X-Forwarded-*, X-Request-Id, the client IP.
//!
//! Forwarding headers and request ids sent by a client are believed only when the direct peer is
//! one of `server.trusted_proxies`; otherwise they are replaced, so clients cannot spoof them.

use crate::config::ServerSettings;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Result;
use std::io::Write;
use std::net::IpAddr;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id: a trusted peer's well-formed `X-Request-Id`, otherwise a new UUID v4.
pub fn request_id(headers: &HeaderMap, peer_trusted: bool) -> HeaderValue {
    if peer_trusted {
        if let Some(v) = headers.get(&X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID_LEN
                && b.iter()
                    .all(|c| c.is_ascii_graphic() && *c != b'"' && *c != b'\\')
            {
                return v.clone();
            }
        }
    }
    new_request_id()
}

/// A fresh UUID v4 request id.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The client address: the peer, or for a trusted peer the nearest untrusted address in
/// `X-Forwarded-For` (read right to left).
pub fn client_ip(
    peer: Option<IpAddr>,
    peer_trusted: bool,
    headers: &HeaderMap,
    settings: &ServerSettings,
) -> Option<IpAddr> {
    if !peer_trusted {
        return peer;
    }
    let mut leftmost = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else { break };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                return leftmost;
            };
            if !settings.is_trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

/// True when the path is absolute and has no `.` or `..` segments (raw or percent-encoded),
/// which could otherwise reach a different route upstream than the one matched here.
pub fn is_routable_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    path.split('/').all(|seg| {
        let lower = seg.to_ascii_lowercase();
        !matches!(
            lower.as_str(),
            "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
        )
    })
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` on the upstream request.
pub fn set_forwarded_headers(
    upstream: &mut RequestHeader,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    host: Option<HeaderValue>,
) -> Result<()> {
    // An IP address fits in 45 bytes; format it on the stack.
    let mut ip_buf = [0u8; 48];
    let ip_len = match peer {
        Some(ip) => {
            let mut cursor = std::io::Cursor::new(&mut ip_buf[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
        None => 0,
    };
    let peer_text = &ip_buf[..ip_len];
    let xff = match upstream.headers.get(&X_FORWARDED_FOR) {
        Some(prev) if peer_trusted => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer_text.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_text);
            HeaderValue::from_bytes(&v).ok()
        }
        _ if peer.is_some() => HeaderValue::from_bytes(peer_text).ok(),
        _ => None,
    };
    match xff {
        Some(v) => upstream.insert_header(X_FORWARDED_FOR.clone(), v)?,
        None => {
            upstream.remove_header(&X_FORWARDED_FOR);
        }
    }
    if !peer_trusted || !upstream.headers.contains_key(&X_FORWARDED_PROTO) {
        upstream.insert_header(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"))?;
    }
    if !peer_trusted || !upstream.headers.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(h) => upstream.insert_header(X_FORWARDED_HOST.clone(), h)?,
            None => {
                upstream.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str]) -> ServerSettings {
        let src = format!(
            "[server]\ntrusted_proxies = [{}]\n",
            trusted
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        crate::config::load_str("t.toml", &src)
            .expect("valid")
            .server
    }

    #[test]
    fn client_ip_skips_trusted_hops_only_for_trusted_peers() {
        let s = settings(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 10.0.0.2"),
        );
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            client_ip(peer, true, &h, &s),
            Some("1.2.3.4".parse().unwrap())
        );
        let stranger = Some("8.8.8.8".parse().unwrap());
        assert_eq!(client_ip(stranger, false, &h, &s), stranger);
    }

    #[test]
    fn request_ids_from_untrusted_peers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad\"id"));
        assert_eq!(request_id(&h, true).len(), 36);
    }

    #[test]
    fn dot_segments_are_not_routable() {
        assert!(is_routable_path("/a/b.c/d"));
        assert!(!is_routable_path("/a/../admin"));
        assert!(!is_routable_path("/a/%2E%2e/admin"));
        assert!(!is_routable_path("relative"));
    }
}
