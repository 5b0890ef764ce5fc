//! The request target and the headers a backend trusts, settled before routing.
//!
//! An HTTP/1 absolute-form target (`GET http://admin.local/pub HTTP/1.1`) names the host: RFC 9112
//! section 3.2.2 says its authority replaces any `Host`. Gantry writes that authority into `Host`
//! and turns the target into origin-form, so routing, plugins, the cache key, the log and the
//! upstream all see one host. An HTTP/1.1 request without `Host` is refused (RFC 9112 section
//! 3.2), and so is one with two. (The headers a backend believes and a client must not choose
//! are removed before this: `config::StrippedHeaders`.)

use http::{header, HeaderValue, Version};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;

/// The refusal of a target in none of the forms a gateway serves.
const TARGET_FORMS: &str =
    "the request target must be a path, `*` (OPTIONS only) or an http or https URL";

/// Settles `req`'s target and host; `Err` is the reason to refuse it with a 400.
pub fn settle(req: &mut RequestHeader) -> Result<(), &'static str> {
    let hosts = req.headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err("the request has more than one Host header");
    }
    if req.version == Version::HTTP_11 && hosts == 0 {
        return Err("an HTTP/1.1 request needs a Host header");
    }
    if req.version > Version::HTTP_11 {
        // HTTP/2 carries `:authority` in the URI; Pingora refuses one that conflicts with Host.
        return Ok(());
    }
    // Pingora keeps an absolute-form target's raw bytes (sent upstream verbatim) and only its
    // path in `uri`; it has checked that a Host header equals the authority.
    // Any other form is refused: Pingora routes a target like `x:/admin` as `/` but sends
    // its raw bytes upstream, where a backend may read the path `/admin`.
    let raw = req.raw_path();
    let authority = match raw_target_authority(raw) {
        RawTargetAuthority::None if raw.starts_with(b"/") => return Ok(()),
        RawTargetAuthority::None if raw == b"*" && req.method == http::Method::OPTIONS => {
            return Ok(())
        }
        RawTargetAuthority::None => return Err(TARGET_FORMS),
        RawTargetAuthority::AmbiguousAuthority => {
            return Err("the request target's authority is ambiguous")
        }
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => {
            if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
                return Err(TARGET_FORMS);
            }
            authority
        }
    };
    if authority.contains(&b'@') {
        return Err("the request target must not carry user information");
    }
    let host = HeaderValue::from_bytes(authority)
        .map_err(|_| "the request target's authority is not a valid host")?;
    req.insert_header(header::HOST, host)
        .map_err(|_| "the request target's authority is not a valid host")?;
    // Origin-form from here on: the path and query Pingora parsed.
    let origin_form = req.uri.clone();
    req.set_uri(origin_form);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, version: Version, host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        req.set_version(version);
        if let Some(h) = host {
            req.append_header(header::HOST, h).unwrap();
        }
        req
    }

    #[test]
    fn absolute_form_authority_becomes_the_host_and_the_target_origin_form() {
        let mut req = request(
            "http://admin.local/pub?x=1",
            Version::HTTP_11,
            Some("other"),
        );
        settle(&mut req).unwrap();
        assert_eq!(req.headers[header::HOST], "admin.local");
        assert_eq!(req.uri.to_string(), "/pub?x=1");
        assert!(req.uri.authority().is_none());
    }

    #[test]
    fn http11_needs_exactly_one_host_and_http10_none() {
        let mut req = request("/", Version::HTTP_11, None);
        assert!(settle(&mut req).is_err());
        let mut req = request("http://a.example/", Version::HTTP_11, None);
        assert!(
            settle(&mut req).is_err(),
            "absolute-form does not excuse a missing Host"
        );
        let mut req = request("/", Version::HTTP_10, None);
        assert!(settle(&mut req).is_ok());
        let mut req = request("/", Version::HTTP_11, Some("a"));
        req.append_header(header::HOST, "b").unwrap();
        assert!(settle(&mut req).is_err());
    }

    #[test]
    fn only_origin_asterisk_and_http_absolute_forms_are_served() {
        for refused in [
            "x:/admin/secret",
            "foo:bar://evil/admin",
            "ws://a.example/",
            "a.example:443",
            "*",
        ] {
            let mut req = request(refused, Version::HTTP_11, Some("a.example"));
            assert_eq!(settle(&mut req), Err(TARGET_FORMS), "{refused}");
        }
        let mut req = request("*", Version::HTTP_11, Some("a"));
        req.set_method(http::Method::OPTIONS);
        assert!(settle(&mut req).is_ok());
        let mut req = request("HTTPS://a.example/x", Version::HTTP_11, Some("a.example"));
        assert!(settle(&mut req).is_ok());
    }

    #[test]
    fn userinfo_in_the_target_is_refused() {
        let mut req = request("http://user@admin.local/", Version::HTTP_11, Some("x"));
        assert!(settle(&mut req).is_err());
    }
}
