//! `cors`: Cross-Origin Resource Sharing for browsers.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here
//! with 204 and never forwarded; one whose origin, method or headers are not allowed is refused
//! with 403. An actual request from an allowed origin gets `Access-Control-Allow-Origin` (the
//! origin itself, never a reflected disallowed one), credentials and exposed headers on its
//! response, including the gateway's own error responses, so the browser can read them. Every
//! response carries `Vary: Origin`. Origins, methods and headers are compiled at load.

use crate::support::config_types::HumanDuration;
use crate::{
    Answer, Flow, Phases, Plugin, PluginState, Rejection, RequestView, Slot, SlotAllocator,
};
use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

/// The configuration name.
pub const NAME: &str = "cors";

/// `[plugins.cors]` or `[routes.R.plugins.cors]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `"https://app.example.com"`, `"https://*.example.com"` or `"*"`. Required.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for, or `["*"]`. Default `["GET", "HEAD", "POST"]`.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for, or `["*"]`. Default: none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read. Default: none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization`. Default `false`; refused together with `*` origins.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer. Default: not sent (browsers use 5 s).
    pub max_age: Option<HumanDuration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// `https://*.example.com`: any subdomain, with this scheme and port.
struct WildcardOrigin {
    /// `https://`
    scheme: String,
    /// `.example.com`
    suffix: String,
    /// `:8443`, or empty.
    port: String,
}

/// A compiled `cors`.
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    wildcards: Vec<WildcardOrigin>,
    any_method: bool,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    any_header: bool,
    headers: Vec<HeaderName>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    /// The request's allowed `Origin`, for the response headers.
    origin: Slot<HeaderValue>,
}

/// Splits `scheme://host[:port]` into its parts, lower-cased, without a default port; `None`
/// when it is not an origin.
fn origin_parts(origin: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
    {
        return None;
    }
    // An IPv6 literal keeps its colons inside brackets.
    let split = match rest.find(']') {
        Some(end) => end + 1,
        None => rest.rfind(':').unwrap_or(rest.len()),
    };
    let (host, port) = rest.split_at(split);
    let digits = port.strip_prefix(':');
    if !port.is_empty()
        && !digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let default = matches!((scheme.as_str(), port), ("http", ":80") | ("https", ":443"));
    let port = if default { "" } else { port };
    Some((
        format!("{scheme}://"),
        host.to_ascii_lowercase(),
        port.to_string(),
    ))
}

fn joined(values: &[String]) -> Result<Option<HeaderValue>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&values.join(", "))
        .map(Some)
        .map_err(|_| format!("`{}` cannot be sent in a header", values.join(", ")))
}

impl Cors {
    /// Compiles `config`.
    pub fn new(config: Config, slots: &mut SlotAllocator) -> Result<Self, String> {
        if config.allow_origins.is_empty() {
            return Err("`allow_origins` needs at least one origin (or \"*\")".into());
        }
        let any_origin = config.allow_origins.iter().any(|o| o == "*");
        if any_origin && config.allow_credentials {
            return Err(
                "`allow_origins = [\"*\"]` cannot be used with allow_credentials = true \
                        (browsers refuse it): list the origins"
                    .into(),
            );
        }
        let mut origins = Vec::new();
        let mut wildcards = Vec::new();
        for origin in config.allow_origins.iter().filter(|o| *o != "*") {
            let (scheme, host, port) = origin_parts(origin).ok_or_else(|| {
                format!("`{origin}` is not an origin: write it like \"https://app.example.com\"")
            })?;
            match host.strip_prefix('*') {
                Some(suffix)
                    if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
                {
                    wildcards.push(WildcardOrigin {
                        scheme,
                        suffix: suffix.to_string(),
                        port,
                    })
                }
                Some(_) => {
                    return Err(format!(
                        "`{origin}`: a wildcard origin is written like \"https://*.example.com\""
                    ))
                }
                None if host.contains('*') => {
                    return Err(format!("`{origin}`: `*` may only start the host"))
                }
                None => origins.push(format!("{scheme}{host}{port}")),
            }
        }
        let any_method = config.allow_methods.iter().any(|m| m == "*");
        let methods = config
            .allow_methods
            .iter()
            .filter(|m| *m != "*")
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`{m}` is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let method_names: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        let any_header = config.allow_headers.iter().any(|h| h == "*");
        let headers = config
            .allow_headers
            .iter()
            .filter(|h| *h != "*")
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("`{h}` is not a valid header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header_names: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        for h in &config.expose_headers {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("`{h}` is not a valid header name"))?;
        }
        Ok(Cors {
            any_origin,
            origins,
            wildcards,
            any_method,
            methods_value: joined(&method_names)?.unwrap_or(HeaderValue::from_static("")),
            methods,
            any_header,
            headers_value: joined(&header_names)?,
            headers,
            expose_value: joined(&config.expose_headers)?,
            credentials: config.allow_credentials,
            max_age: config.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
            origin: slots.claim(),
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let Some((scheme, host, port)) = origin_parts(origin) else {
            return false;
        };
        let normalized = format!("{scheme}{host}{port}");
        self.origins.contains(&normalized)
            || self.wildcards.iter().any(|w| {
                w.scheme == scheme
                    && w.port == port
                    && host.len() > w.suffix.len()
                    && host.ends_with(&w.suffix)
            })
    }

    fn preflight(&self, request: &mut RequestView<'_>, origin: HeaderValue) -> Flow {
        let headers = &request.header.headers;
        let method_ok = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.any_method || self.methods.contains(&m));
        let requested: Vec<&str> = headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let headers_ok = self.any_header
            || requested.iter().all(|r| {
                self.headers
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(r))
            });
        if !method_ok || !headers_ok {
            return Flow::Reject(Rejection {
                status: 403,
                slug: "cors-forbidden",
                title: "Cross-origin request not allowed",
                detail: "the method or headers of this preflight request are not allowed".into(),
                headers: Vec::new(),
            });
        }
        request.state.slots.set(self.origin, origin);
        let mut answer = vec![(ACCESS_CONTROL_ALLOW_METHODS, self.allowed_methods(headers))];
        let allow_headers = if self.any_header {
            headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned()
        } else {
            self.headers_value.clone()
        };
        if let Some(value) = allow_headers {
            answer.push((ACCESS_CONTROL_ALLOW_HEADERS, value));
        }
        if let Some(age) = &self.max_age {
            answer.push((ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        Flow::Answer(Answer {
            status: 204,
            headers: answer,
            body: bytes::Bytes::new(),
        })
    }

    fn allowed_methods(&self, headers: &http::HeaderMap) -> HeaderValue {
        if self.any_method {
            if let Some(m) = headers.get(ACCESS_CONTROL_REQUEST_METHOD) {
                return m.clone();
            }
        }
        self.methods_value.clone()
    }
}

/// Adds `Origin` to `Vary`, keeping what the upstream put there.
fn vary_on_origin(response: &mut ResponseHeader) -> pingora::Result<()> {
    let already = response.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("origin") || p.trim() == "*")
        })
    });
    if !already {
        response.append_header(VARY, HeaderValue::from_static("Origin"))?;
    }
    Ok(())
}

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::RESPONSE)
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let req = request.header;
        let Some(origin) = req.headers.get(ORIGIN).cloned() else {
            return Ok(Flow::Continue);
        };
        let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let preflight = req.method == Method::OPTIONS
            && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        Ok(match (preflight, allowed) {
            (true, true) => self.preflight(request, origin),
            (true, false) => Flow::Reject(Rejection {
                status: 403,
                slug: "cors-forbidden",
                title: "Cross-origin request not allowed",
                detail: "this origin is not allowed".into(),
                headers: Vec::new(),
            }),
            (false, true) => {
                request.state.slots.set(self.origin, origin);
                Flow::Continue
            }
            // Not allowed: served without CORS headers, so the browser withholds it.
            (false, false) => Flow::Continue,
        })
    }

    async fn on_response(
        &self,
        _request: &RequestHeader,
        response: &mut ResponseHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        // The gateway decides CORS: an upstream's own answer (often reflecting any origin)
        // never reaches the browser.
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            response.remove_header(&name);
        }
        vary_on_origin(response)?;
        let Some(origin) = state.slots.get(self.origin) else {
            return Ok(());
        };
        let allow_origin = if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        response.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin)?;
        if self.credentials {
            response.insert_header(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            )?;
        }
        if let Some(expose) = &self.expose_value {
            response.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Result<Cors, String> {
        Cors::new(
            Config {
                allow_origins: origins.iter().map(|o| o.to_string()).collect(),
                allow_methods: default_methods(),
                allow_headers: Vec::new(),
                expose_headers: Vec::new(),
                allow_credentials: credentials,
                max_age: None,
            },
            &mut SlotAllocator::default(),
        )
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_with_default_ports_ignored() {
        let c = cors(
            &[
                "https://App.example.com:443",
                "https://*.example.org",
                "http://[::1]:8080",
            ],
            true,
        )
        .expect("valid");
        for yes in [
            "https://app.example.com",
            "https://app.example.com:443",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://[::1]:8080",
        ] {
            assert!(c.origin_allowed(yes), "{yes}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://example.org",
            "https://evilexample.org",
            "https://a.example.org:444",
            "null",
            "https://app.example.com/path",
            "https://user@app.example.com",
        ] {
            assert!(!c.origin_allowed(no), "{no}");
        }
    }

    #[test]
    fn config_mistakes_are_errors() {
        assert!(cors(&["*"], true).is_err_and(|e| e.contains("allow_credentials")));
        assert!(cors(&["*"], false).is_ok());
        assert!(cors(&[], false).is_err());
        for bad in [
            "app.example.com",
            "https://a.*.com",
            "https://*",
            "ftp://x.com",
            "https://x.com/",
        ] {
            assert!(cors(&[bad], false).is_err(), "{bad}");
        }
    }
}
