//! Templates: values with variables (`"Bearer $jwt.sub"`, `"$header.x-tenant/$consumer"`),
//! parsed once at load and rendered per request without re-parsing.
//!
//! Variables: `$client_ip`, `$request_id`, `$consumer`, `$route`, `$host`, `$method`, `$path`,
//! `$header.NAME`, `$query.NAME`, `$cookie.NAME`, `$jwt.CLAIM`, and `$path.NAME` for a named
//! capture of the route's regex path (`~^/users/(?<id>\d+)$` gives `$path.id`). `$$` is a
//! literal `$`. A variable name ends at the first character that cannot be part of it
//! (`[A-Za-z0-9_-]` after the dot). An unknown variable, or a `$path.NAME` that no regex path
//! of the route captures, is a configuration error. A variable without a value (no consumer,
//! no such header) renders empty.

use crate::support::query;
use crate::PluginState;
use http::HeaderName;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::http::RequestHeader;
use regex::Regex;
use std::fmt::Write;

/// What templates may refer to: the route's regex paths, for `$path.NAME`.
#[derive(Default, Clone)]
pub struct TemplateScope {
    /// The regex paths of the route (none for global plugins).
    pub path_regexes: Vec<Regex>,
}

#[derive(Debug, Clone, PartialEq)]
enum Var {
    ClientIp,
    RequestId,
    Consumer,
    Route,
    Host,
    Method,
    Path,
    Header(HeaderName),
    Query(String),
    Cookie(String),
    Jwt(String),
    PathCapture(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    /// The route's regex paths, when the template uses `$path.NAME`.
    path_regexes: Vec<Regex>,
}

/// What a variable's value keeps unencoded in a request target: RFC 3986's unreserved.
const URI_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl Template {
    /// Parses `text`; `scope` says which `$path.NAME` captures exist.
    pub fn parse(text: &str, scope: &TemplateScope) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                literal.push('$');
                rest = after;
                continue;
            }
            let name_len = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            let (name, after) = rest.split_at(name_len);
            let (arg, after) = match after.strip_prefix('.') {
                Some(a) => {
                    let len = a.find(|c: char| !is_name_char(c)).unwrap_or(a.len());
                    (Some(&a[..len]), &a[len..])
                }
                None => (None, after),
            };
            rest = after;
            let var = Self::variable(name, arg, scope)
                .map_err(|e| format!("in template `{text}`: {e}"))?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Var(var));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        let uses_captures = pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(Var::PathCapture(_))));
        Ok(Template {
            pieces,
            path_regexes: if uses_captures {
                scope.path_regexes.clone()
            } else {
                Vec::new()
            },
        })
    }

    fn variable(name: &str, arg: Option<&str>, scope: &TemplateScope) -> Result<Var, String> {
        let needs_arg = |what: &str| format!("`${name}` needs a {what}: `${name}.NAME`");
        Ok(match (name, arg) {
            ("client_ip", None) => Var::ClientIp,
            ("request_id", None) => Var::RequestId,
            ("consumer", None) => Var::Consumer,
            ("route", None) => Var::Route,
            ("host", None) => Var::Host,
            ("method", None) => Var::Method,
            ("path", None) => Var::Path,
            ("path", Some(capture)) => {
                let known = scope
                    .path_regexes
                    .iter()
                    .any(|r| r.capture_names().flatten().any(|n| n == capture));
                if !known {
                    return Err(format!(
                        "`$path.{capture}` needs a regex path of this route with `(?<{capture}>...)`"
                    ));
                }
                Var::PathCapture(capture.to_string())
            }
            ("header", Some(h)) if !h.is_empty() => Var::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("`{h}` is not a valid header name"))?,
            ),
            ("query", Some(q)) if !q.is_empty() => Var::Query(q.to_string()),
            ("cookie", Some(c)) if !c.is_empty() => Var::Cookie(c.to_string()),
            ("jwt", Some(c)) if !c.is_empty() => Var::Jwt(c.to_string()),
            ("header", _) => return Err(needs_arg("header name")),
            ("query", _) => return Err(needs_arg("parameter name")),
            ("cookie", _) => return Err(needs_arg("cookie name")),
            ("jwt", _) => return Err(needs_arg("claim name")),
            (other, _) => {
                return Err(format!(
                    "unknown variable `${other}`: use $client_ip, $request_id, $consumer, \
                     $route, $host, $method, $path, $header.NAME, $query.NAME, $cookie.NAME, \
                     $jwt.CLAIM or $path.CAPTURE (write `$$` for a literal `$`)"
                ))
            }
        })
    }

    /// True when the template has no variables.
    pub fn is_constant(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    /// Renders for the request `req` into `out`.
    pub fn render(&self, req: &RequestHeader, state: &PluginState, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(var) => self.render_var(var, req, state, out),
            }
        }
    }

    /// Renders a request target (path and query): the template's own text as written, every
    /// variable's value percent-encoded (all but `A-Z a-z 0-9 - . _ ~`), so client input can
    /// never add a `/`, `?` or `#` to the target. `false` (and `out` unusable) when a value is
    /// `.` or `..`, which would be a dot segment however it is encoded.
    pub fn render_uri(&self, req: &RequestHeader, state: &PluginState, out: &mut String) -> bool {
        let mut value = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(var) => {
                    value.clear();
                    self.render_var(var, req, state, &mut value);
                    if value == "." || value == ".." {
                        return false;
                    }
                    out.extend(utf8_percent_encode(&value, URI_VALUE));
                }
            }
        }
        true
    }

    /// Renders as a header value; `None` when it renders empty or is not a valid value.
    pub fn header_value(
        &self,
        req: &RequestHeader,
        state: &PluginState,
    ) -> Option<http::HeaderValue> {
        let mut text = String::new();
        self.render(req, state, &mut text);
        http::HeaderValue::from_str(&text)
            .ok()
            .filter(|v| !v.is_empty())
    }

    fn render_var(&self, var: &Var, req: &RequestHeader, state: &PluginState, out: &mut String) {
        match var {
            Var::ClientIp => {
                if let Some(ip) = state.client.ip {
                    let _ = write!(out, "{ip}");
                }
            }
            Var::RequestId => out.push_str(state.request_id.to_str().unwrap_or_default()),
            Var::Consumer => {
                if let Some(c) = &state.consumer {
                    out.push_str(&c.name);
                }
            }
            Var::Route => out.push_str(&state.route),
            Var::Host => {
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.host())
                    .unwrap_or_default();
                out.push_str(host);
            }
            Var::Method => out.push_str(req.method.as_str()),
            Var::Path => out.push_str(req.uri.path()),
            Var::Header(name) => {
                if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                    out.push_str(v);
                }
            }
            Var::Query(name) => {
                // Decoded, so `a%20b` is `a b` whatever the value is written into.
                let value = req.uri.query().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find_map(|(k, v)| (k == name.as_str()).then_some(v))
                });
                if let Some(v) = value {
                    out.push_str(&v);
                }
            }
            Var::Cookie(name) => {
                if let Some(v) = query::cookie(&req.headers, name) {
                    out.push_str(v);
                }
            }
            Var::Jwt(claim) => match state.jwt_claims.as_ref().and_then(|c| c.get(claim)) {
                Some(serde_json::Value::String(s)) => out.push_str(s),
                Some(serde_json::Value::Null) | None => {}
                Some(other) => {
                    let _ = write!(out, "{other}");
                }
            },
            Var::PathCapture(name) => {
                let path = req.uri.path();
                let capture = self
                    .path_regexes
                    .iter()
                    .find_map(|r| r.captures(path).and_then(|c| c.name(name)));
                if let Some(m) = capture {
                    out.push_str(m.as_str());
                }
            }
        }
    }
}

/// A header name from configuration, or the error to report.
pub fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

/// `{ "x-name" = "template" }` tables (`set_headers`, `add_headers`), compiled.
pub fn header_templates(
    map: &std::collections::BTreeMap<String, String>,
    scope: &TemplateScope,
) -> Result<Vec<(HeaderName, Template)>, String> {
    map.iter()
        .map(|(name, value)| {
            let name = header_name(name)?;
            // Checked on the configured text, never echoed: the value may be a secret.
            if http::HeaderValue::from_str(value).is_err() {
                return Err(format!(
                    "the value of `{name}` holds a control character, which a header value \
                     cannot"
                ));
            }
            Ok((name, Template::parse(value, scope)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn scope() -> TemplateScope {
        TemplateScope {
            path_regexes: vec![Regex::new(r"^/users/(?<id>\d+)$").expect("regex")],
        }
    }

    fn render(text: &str, uri: &str) -> String {
        let template = Template::parse(text, &scope()).expect("valid");
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        req.insert_header("host", "api.example.com")
            .expect("header");
        req.insert_header("x-tenant", "acme").expect("header");
        req.insert_header("cookie", "a=1; session=s-9")
            .expect("header");
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice@example.com".into());
        claims.insert("level".into(), 3.into());
        let state = PluginState {
            route: "users".into(),
            client: crate::ClientFacts {
                ip: Some("10.1.2.3".parse().expect("ip")),
                ..Default::default()
            },
            request_id: http::HeaderValue::from_static("req-1"),
            jwt_claims: Some(Arc::new(claims)),
            ..PluginState::default()
        };
        let mut out = String::new();
        template.render(&req, &state, &mut out);
        out
    }

    #[test]
    fn every_variable_renders() {
        assert_eq!(
            render(
                "$client_ip $request_id [$consumer] $route $host $method $path",
                "/users/42?x=1"
            ),
            "10.1.2.3 req-1 [] users api.example.com GET /users/42"
        );
        assert_eq!(
            render(
                "$header.x-tenant/$query.x/$cookie.session/$jwt.sub/$jwt.level/$path.id/$$5",
                "/users/42?x=1"
            ),
            "acme/1/s-9/alice@example.com/3/42/$5"
        );
        assert_eq!(render("id=$path.id;", "/other"), "id=;");
    }

    #[test]
    fn unknown_variables_are_errors() {
        for bad in [
            "$nope",
            "$header",
            "$header.",
            "$jwt",
            "$path.user",
            "$query",
        ] {
            let e = Template::parse(bad, &scope()).expect_err(bad);
            assert!(
                e.contains(bad.trim_end_matches('.')) || e.contains("needs"),
                "{e}"
            );
        }
        assert!(Template::parse("$path.id", &TemplateScope::default()).is_err());
        let bad_value = std::collections::BTreeMap::from([(
            "authorization".to_string(),
            "Bearer s3cret\r\nx-admin: 1".to_string(),
        )]);
        let e = header_templates(&bad_value, &scope()).expect_err("CRLF in a value");
        assert!(
            e.contains("`authorization`") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(Template::parse("plain", &scope())
            .expect("valid")
            .is_constant());
    }
}
