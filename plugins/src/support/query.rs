//! Query-string and cookie helpers shared by the plugins and the gateway.
//!
//! Query parameter names are compared percent-decoded, as backends decode them, so
//! `api%5Fkey=...` is the same parameter as `api_key=...` for reading, counting and removing.
//! Cookies are split across every `Cookie` field (HTTP/2 sends one field per cookie) and
//! compared by exact name.

use http::{HeaderMap, Uri};
use percent_encoding::percent_decode_str;

/// Whether the raw query-string name `raw` is `name` once percent-decoded.
fn is_param(raw: &str, name: &str) -> bool {
    raw == name || (raw.contains('%') && percent_decode_str(raw).eq(name.bytes()))
}

/// The name part of a `name=value` (or bare `name`) query pair.
fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

/// The raw value of the first `name=value` pair of `query`.
pub fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| is_param(k, name))
        .map(|(_, v)| v)
}

/// How many pairs of `query` are named `name` (with or without a value).
pub fn param_count(query: &str, name: &str) -> usize {
    query
        .split('&')
        .filter(|pair| is_param(param_name(pair), name))
        .count()
}

/// `uri` without any `name` parameter; `None` when it has none (nothing to change).
pub fn without_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    if param_count(query, name) == 0 {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_param(param_name(pair), name))
        .collect();
    let path = uri.path();
    let text = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    text.parse().ok()
}

/// Every `(name, value)` cookie pair of one `Cookie` field value.
fn cookie_pairs(field: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    field.split(|b| *b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
    })
}

/// Every `(name, value)` cookie pair of the request, across all `Cookie` fields.
fn all_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|field| cookie_pairs(field.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers, when it is UTF-8.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookie_bytes(headers, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// The raw value of the first cookie `name` in the request's `Cookie` headers.
pub fn cookie_bytes<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    all_cookies(headers)
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// How many cookies called `name` the request's `Cookie` fields hold together.
pub fn cookie_count(headers: &HeaderMap, name: &str) -> usize {
    all_cookies(headers)
        .filter(|(k, _)| *k == name.as_bytes())
        .count()
}

/// The `Cookie` field values without any cookie `name` (fields left empty are dropped);
/// `None` when no field has it (nothing to change).
pub fn without_cookie(headers: &HeaderMap, name: &str) -> Option<Vec<Vec<u8>>> {
    if cookie_count(headers, name) == 0 {
        return None;
    }
    let fields = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|field| {
            let kept: Vec<&[u8]> = field
                .as_bytes()
                .split(|b| *b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|pair| {
                    !pair.is_empty()
                        && pair.split(|b| *b == b'=').next().map(<[u8]>::trim_ascii)
                            != Some(name.as_bytes())
                })
                .collect();
            (!kept.is_empty()).then(|| kept.join(&b"; "[..]))
        })
        .collect();
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn params_are_found_and_removed() {
        assert_eq!(param("a=1&api_key=k&b=2", "api_key"), Some("k"));
        assert_eq!(param("a=1", "api_key"), None);
        let uri: Uri = "/x?a=1&api_key=k&b=2".parse().unwrap();
        assert_eq!(without_param(&uri, "api_key").unwrap(), "/x?a=1&b=2");
        let uri: Uri = "/x?api_key=k".parse().unwrap();
        assert_eq!(without_param(&uri, "api_key").unwrap(), "/x");
        assert!(without_param(&uri, "other").is_none());
    }

    #[test]
    fn encoded_and_bare_names_are_the_same_parameter() {
        assert_eq!(param("api%5Fkey=k", "api_key"), Some("k"));
        assert_eq!(param_count("api_key=a&api%5fkey=b&api_key", "api_key"), 3);
        assert_eq!(param_count("api_keys=a&xapi_key=b", "api_key"), 0);
        let uri: Uri = "/x?api%5Fkey=k&a=1&api_key".parse().unwrap();
        assert_eq!(without_param(&uri, "api_key").unwrap(), "/x?a=1");
    }

    fn cookie_headers(fields: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for f in fields {
            headers.append(http::header::COOKIE, HeaderValue::from_str(f).unwrap());
        }
        headers
    }

    #[test]
    fn cookies_are_counted_by_name_across_fields() {
        let split = cookie_headers(&["token=a", "theme=dark"]);
        assert_eq!(cookie_count(&split, "token"), 1);
        assert_eq!(cookie(&split, "theme"), Some("dark"));
        let twice = cookie_headers(&["token=a", "theme=dark; token=b"]);
        assert_eq!(cookie_count(&twice, "token"), 2);
        let spaced = cookie_headers(&["token =a;token= b"]);
        assert_eq!(cookie_count(&spaced, "token"), 2);
        assert_eq!(cookie(&spaced, "token"), Some("a"));
        assert_eq!(cookie_count(&spaced, "tok"), 0);
    }

    #[test]
    fn cookies_are_removed_from_every_field() {
        let headers = cookie_headers(&["token=a", "theme=dark; token=b; lang=en"]);
        assert_eq!(
            without_cookie(&headers, "token").unwrap(),
            vec![b"theme=dark; lang=en".to_vec()]
        );
        assert!(without_cookie(&headers, "missing").is_none());
    }
}
