//! Header removal that also catches the `_` spellings of a name (`X_Consumer_Name`), which
//! CGI-style upstreams read as the same header.

use http::HeaderName;
use pingora::http::RequestHeader;
use std::borrow::Borrow;

/// Removes headers `names` and every client-sent alias of them written with `_` for `-`
/// (`X_Consumer_Name`), which CGI-style upstreams read as the same header. One pass; nothing
/// is allocated unless a header name contains `_`.
pub fn remove_headers_and_aliases<N: Borrow<HeaderName>>(req: &mut RequestHeader, names: &[N]) {
    for name in names {
        if req.headers.contains_key(name.borrow()) {
            req.remove_header(name.borrow());
        }
    }
    let is_alias = |k: &str| {
        names.iter().any(|n| {
            let n = n.borrow().as_str();
            k.len() == n.len()
                && k.bytes()
                    .zip(n.bytes())
                    .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
        })
    };
    let aliases: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_') && is_alias(k.as_str()))
        .cloned()
        .collect();
    for alias in aliases {
        req.remove_header(&alias);
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
