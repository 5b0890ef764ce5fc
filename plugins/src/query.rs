//! Query-string and cookie helpers shared by the plugins and the gateway.

use http::{HeaderMap, Uri};

/// The raw value of the first `name=value` pair of `query`.
pub fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `uri` without any `name=` parameter; `None` when it has none (nothing to change).
pub fn without_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_name = |pair: &&str| pair.split('=').next() == Some(name);
    if !query.split('&').any(|p| is_name(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_name(p)).collect();
    let path = uri.path();
    let text = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
