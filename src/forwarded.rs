//! Client identity and forwarding headers: X-Forwarded-*, X-Request-Id, the client IP.
//!
//! Forwarding headers and request ids sent by a client are believed only when the direct peer is
//! one of `server.trusted_proxies`; otherwise they are replaced, so clients cannot spoof them.

use crate::config::ServerSettings;
use gantry_plugins::gateway::Consumer;
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

/// The names of the headers Gantry sets on every request, as written on the wire. With
/// pingora-http patch 0001 (third_party/README.md) the case-preserving `insert_header` refers
/// to a lower-case `&'static str` without copying it, where a `HeaderName` is copied into a new
/// buffer and again when it is cloned into the case map: two allocations per header.
pub const X_REQUEST_ID_WIRE: &str = "x-request-id";
const X_FORWARDED_FOR_WIRE: &str = "x-forwarded-for";
const X_FORWARDED_PROTO_WIRE: &str = "x-forwarded-proto";
const X_FORWARDED_HOST_WIRE: &str = "x-forwarded-host";
const X_CONSUMER_NAME_WIRE: &str = "x-consumer-name";
const X_CONSUMER_GROUPS_WIRE: &str = "x-consumer-groups";

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

/// A fresh UUID v4 request id, in one shared allocation: the id is sent upstream, to the client
/// and to the access log, and each of those copies only a reference.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
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
            let Ok(ip) = part.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
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

/// Refuses paths that could reach a different resource upstream than the route matched here:
/// relative paths, `.`/`..` segments (raw, `%2e`-encoded or with `;params`), encoded slashes
/// and backslashes, and empty segments (`//`), which servers normalise in different ways.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with `/`");
    };
    if path.contains('\\') {
        return Err("the path must not contain a backslash");
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let is_last = segments.peek().is_none();
        if seg.is_empty() && !is_last {
            return Err("the path must not contain empty segments (`//`)");
        }
        if has_encoded_separator(seg) {
            return Err("the path must not contain encoded `/` or `\\`");
        }
        if has_encoded_unreserved(seg) {
            return Err("the path must not percent-encode letters, digits or `-._~`");
        }
        let name = seg.split(';').next().unwrap_or_default();
        if is_dot_segment(name) {
            return Err("the path must not contain `.` or `..` segments");
        }
    }
    Ok(())
}

/// `.` or `..`, each dot written as `.` or `%2e`.
fn is_dot_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    let (mut i, mut dots) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b.len() - i >= 3 && b[i] == b'%' && b[i + 1] == b'2' && (b[i + 2] | 0x20) == b'e'
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    (1..=2).contains(&dots)
}

/// A percent-encoded letter, digit or `-._~`: they never need encoding, and an upstream that
/// decodes them would see another path than the one routed here (`/%61dmin` is `/admin`).
fn has_encoded_unreserved(seg: &str) -> bool {
    let hex = |b: u8| (b as char).to_digit(16);
    seg.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!((hex(w[1]), hex(w[2])), (Some(h), Some(l))
                if { let c = (h * 16 + l) as u8; c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') })
    })
}

/// `%2f` or `%5c` in any case.
fn has_encoded_separator(seg: &str) -> bool {
    seg.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c'))
    })
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` on the upstream request.
pub fn set_forwarded_headers(
    upstream: &mut RequestHeader,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    scheme: &'static str,
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
    let xff = if peer_trusted && upstream.headers.contains_key(&X_FORWARDED_FOR) {
        // Every X-Forwarded-For line of a trusted peer, in order, then the peer.
        let mut v = Vec::with_capacity(64);
        for prev in upstream.headers.get_all(&X_FORWARDED_FOR) {
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(peer_text);
        HeaderValue::from_bytes(&v).ok()
    } else if peer.is_some() {
        HeaderValue::from_bytes(peer_text).ok()
    } else {
        None
    };
    match xff {
        Some(v) => upstream.insert_header(X_FORWARDED_FOR_WIRE, v)?,
        None => {
            upstream.remove_header(&X_FORWARDED_FOR);
        }
    }
    if !peer_trusted || !upstream.headers.contains_key(&X_FORWARDED_PROTO) {
        upstream.insert_header(X_FORWARDED_PROTO_WIRE, HeaderValue::from_static(scheme))?;
    }
    if !peer_trusted || !upstream.headers.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(h) => upstream.insert_header(X_FORWARDED_HOST_WIRE, h)?,
            None => {
                upstream.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

/// `X-Consumer-Name` / `X-Consumer-Groups` for an authenticated consumer (client-supplied
/// copies were removed from every request before routing: `config::StrippedHeaders`).
pub fn set_consumer_headers(
    upstream: &mut RequestHeader,
    consumer: Option<&Consumer>,
) -> Result<()> {
    if let Some(c) = consumer {
        upstream.insert_header(X_CONSUMER_NAME_WIRE, c.name_header.clone())?;
        if !c.groups.is_empty() {
            upstream.insert_header(X_CONSUMER_GROUPS_WIRE, c.groups_header.clone())?;
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
    fn ambiguous_paths_are_not_routable() {
        for ok in [
            "/",
            "/a/b.c/d",
            "/users/",
            "/a/...",
            "/a/.well-known/x",
            "/a;v=1/b",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "relative",
            "/a/../admin",
            "/a/%2E%2e/admin",
            "/a/.",
            "/public/..;/admin",
            "/public/..%2fadmin",
            "/public/..%5Cadmin",
            "/a\\b",
            "//admin",
            "/a//b",
            "/%61dmin",
            "/a/%7Euser",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}

/// Property tests of [`check_path`] (more cases with `PROPTEST_CASES`, see `make fuzz`).
#[cfg(test)]
mod props {
    use super::check_path;
    use proptest::prelude::*;

    /// Paths built from the pieces the checks look at, and arbitrary characters.
    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("/".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E".to_string()),
                Just("%2F".to_string()),
                Just("%5c".to_string()),
                Just("%61".to_string()),
                Just("%20".to_string()),
                Just("%".to_string()),
                Just(";".to_string()),
                Just("\\".to_string()),
                "[a-c]{1,3}",
                any::<char>().prop_map(String::from),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    /// The path after an upstream's usual normalization: percent-decoding of every escape.
    fn decoded(path: &str) -> String {
        percent_decode(path.as_bytes())
    }

    fn percent_decode(b: &[u8]) -> String {
        let hex = |c: u8| (c as char).to_digit(16);
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (
                b[i],
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (c, _, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    proptest! {
        /// An accepted path means the same to an upstream that decodes it: no dot segment,
        /// empty segment or backslash appears after decoding, and no encoded `/` splits a segment.
        #[test]
        fn accepted_paths_stay_the_same_resource_after_decoding(path in path()) {
            if check_path(&path).is_ok() {
                prop_assert!(path.starts_with('/'));
                let lower = path.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{path}");
                let dec = decoded(&path);
                prop_assert!(!dec.contains('\\'), "{path} decodes to {dec}");
                let segments: Vec<&str> = dec[1..].split('/').collect();
                for (i, seg) in segments.iter().enumerate() {
                    let name = seg.split(';').next().unwrap_or_default();
                    prop_assert!(name != "." && name != "..", "{path} decodes to {dec}");
                    prop_assert!(!seg.is_empty() || i + 1 == segments.len(), "{path}");
                }
            }
        }
    }
}
