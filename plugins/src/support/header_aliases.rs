//! Header removal that also catches the `_` spellings of a name (`X_Consumer_Name`), which
//! CGI-style upstreams read as the same header.

use http::HeaderName;
use pingora::http::RequestHeader;
use std::borrow::Borrow;

/// Removes headers `names` and every client-sent alias of them written with `_` for `-`
/// (`X_Consumer_Name`), which CGI-style upstreams read as the same header. One pass over the
/// request's header names (no lookups per name in `names`); nothing is allocated unless one
/// of them is there.
pub fn remove_headers_and_aliases<N: Borrow<HeaderName>>(req: &mut RequestHeader, names: &[N]) {
    let spelled_as = |k: &str, n: &str| {
        k.len() == n.len()
            && k.bytes()
                .zip(n.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    let found: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| {
            names
                .iter()
                .any(|n| spelled_as(k.as_str(), n.borrow().as_str()))
        })
        .cloned()
        .collect();
    for name in found {
        req.remove_header(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_aliases_are_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.append_header("x_consumer_name", "admin")
            .expect("header");
        req.append_header("x-consumer-name", "admin")
            .expect("header");
        req.append_header("x_other", "kept").expect("header");
        let name = HeaderName::from_static("x-consumer-name");
        remove_headers_and_aliases(&mut req, &[&name]);
        assert!(req.headers.get("x_consumer_name").is_none());
        assert!(req.headers.get("x-consumer-name").is_none());
        assert_eq!(
            req.headers.get("x_other").map(|v| v.as_bytes()),
            Some(&b"kept"[..])
        );
    }
}
