//! `request-transform`: reshapes the request sent upstream: headers set, added, removed and
//! renamed, query parameters set and removed, the path rewritten by a regex, a JSON body
//! edited ([`crate::support::json_body`]; a body that cannot be edited is refused). Values are
//! [templates](crate::support::template) parsed at load; they read the request as it goes upstream,
//! before this plugin's own changes.

use crate::support::header_edits::HeaderEdits;
use crate::support::json_body::{JsonBodyConfig, JsonBuffer, JsonEdits};
use crate::support::template::{header_name, Template, TemplateScope};
use crate::{Flow, Phases, Plugin, PluginState, Rejection, RequestView, Slot, SlotAllocator};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderName, HeaderValue, Uri};
use pingora::http::RequestHeader;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The configuration name.
pub const NAME: &str = "request-transform";

/// `rewrite = { pattern = "^/v1/(.*)$", replacement = "/api/$1" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// A regex matched against the path.
    pub pattern: String,
    /// The new path; `$1`, `$name` are the pattern's captures.
    pub replacement: String,
}

/// `[routes.R.plugins.request-transform]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Headers replaced (or removed when the value renders empty).
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Headers appended (skipped when the value renders empty).
    #[serde(default)]
    pub add_headers: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Headers renamed: `{ "x-old" = "x-new" }`.
    #[serde(default)]
    pub rename_headers: BTreeMap<String, String>,
    /// Query parameters replaced (or removed when the value renders empty).
    #[serde(default)]
    pub set_query: BTreeMap<String, String>,
    /// Query parameters removed.
    #[serde(default)]
    pub remove_query: Vec<String>,
    /// The path rewrite.
    pub rewrite: Option<RewriteConfig>,
    /// Edits of a JSON request body.
    pub json_body: Option<JsonBodyConfig>,
}

/// A compiled `request-transform`.
pub struct RequestTransform {
    headers: HeaderEdits,
    rename_headers: Vec<(HeaderName, HeaderName)>,
    set_query: Vec<(String, Template)>,
    /// Names whose pairs are dropped: removed ones and replaced ones.
    drop_query: Vec<String>,
    rewrite: Option<(Regex, String)>,
    json: Option<JsonEdits>,
    /// The request's JSON body while it is buffered for editing.
    body: Slot<JsonBuffer>,
}

impl RequestTransform {
    /// Compiles `config`; templates may use what `scope` offers.
    pub fn new(
        config: Config,
        scope: &TemplateScope,
        slots: &mut SlotAllocator,
    ) -> Result<Self, String> {
        let query_name = |name: &String| {
            if name.is_empty() || name.contains(['&', '=', '#', ' ']) {
                Err(format!("`{name}` is not a query parameter name"))
            } else {
                Ok(name.clone())
            }
        };
        let rewrite = match config.rewrite {
            None => None,
            Some(r) => {
                let regex = Regex::new(&r.pattern)
                    .map_err(|e| format!("rewrite.pattern is not a valid regex: {e}"))?;
                if !r.replacement.starts_with('/') {
                    return Err("rewrite.replacement must start with `/`".into());
                }
                Some((regex, r.replacement))
            }
        };
        let set_query = config
            .set_query
            .iter()
            .map(|(k, v)| Ok((query_name(k)?, Template::parse(v, scope)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let mut drop_query = config
            .remove_query
            .iter()
            .map(query_name)
            .collect::<Result<Vec<_>, _>>()?;
        drop_query.extend(set_query.iter().map(|(k, _)| k.clone()));
        Ok(RequestTransform {
            headers: HeaderEdits::new(
                &config.set_headers,
                &config.add_headers,
                &config.remove_headers,
                scope,
            )?,
            rename_headers: config
                .rename_headers
                .iter()
                .map(|(from, to)| Ok((header_name(from)?, header_name(to)?)))
                .collect::<Result<_, String>>()?,
            set_query,
            drop_query,
            rewrite,
            json: config
                .json_body
                .map(|c| JsonEdits::new(c, scope))
                .transpose()?,
            body: slots.claim(),
        })
    }

    /// Renders `templates` against `req` (before any change).
    fn render<K: Clone>(
        templates: &[(K, Template)],
        req: &RequestHeader,
        state: &PluginState,
    ) -> Vec<(K, String)> {
        templates
            .iter()
            .map(|(k, t)| {
                let mut value = String::new();
                t.render(req, state, &mut value);
                (k.clone(), value)
            })
            .collect()
    }

    /// The new path-and-query, when the query or path changes.
    fn new_uri(&self, uri: &Uri, set_query: &[(String, String)]) -> Option<String> {
        let path = uri.path();
        let rewritten = self.rewrite.as_ref().and_then(|(regex, replacement)| {
            regex
                .is_match(path)
                .then(|| regex.replace(path, replacement.as_str()).into_owned())
        });
        let query_changes = !self.drop_query.is_empty();
        if rewritten.is_none() && !query_changes {
            return None;
        }
        let mut out = rewritten.unwrap_or_else(|| path.to_string());
        let kept = uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|pair| {
                // Names compare decoded: `tena%6Et=` is `tenant=` to the upstream too.
                let name = form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .map(|(k, _)| k);
                !pair.is_empty() && !name.is_some_and(|n| self.drop_query.iter().any(|d| *d == n))
            });
        let mut first = true;
        let mut push = |out: &mut String, pair: &str| {
            out.push(if first { '?' } else { '&' });
            first = false;
            out.push_str(pair);
        };
        for pair in kept {
            push(&mut out, pair);
        }
        for (name, value) in set_query.iter().filter(|(_, v)| !v.is_empty()) {
            let pair: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(name, value)
                .finish();
            push(&mut out, &pair);
        }
        Some(out)
    }
}

#[async_trait]
impl Plugin for RequestTransform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        match self.json {
            Some(_) => Phases::REQUEST
                .and(Phases::UPSTREAM_REQUEST)
                .and(Phases::REQUEST_BODY),
            None => Phases::UPSTREAM_REQUEST,
        }
    }

    /// Decides, before any body arrives, whether the JSON body can be edited: a body that
    /// cannot (encoded, not JSON, declared too large) is refused before it goes upstream.
    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let Some(json) = &self.json else {
            return Ok(Flow::Continue);
        };
        if !request.has_body {
            return Ok(Flow::Continue);
        }
        let req = request.header;
        Ok(match json.start(&req.headers, req, request.state) {
            Ok(buffer) => {
                request.state.slots.set(self.body, buffer);
                Flow::Continue
            }
            Err(why) => Flow::Reject(why.rejection()),
        })
    }

    fn on_request_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut PluginState,
    ) -> Option<Rejection> {
        let (json, buffer) = (self.json.as_ref()?, state.slots.get_mut(self.body)?);
        json.on_chunk(buffer, body, end_of_stream)
            .err()
            .map(|why| why.rejection())
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        let headers = self.headers.render(upstream, state);
        let set_query = Self::render(&self.set_query, upstream, state);
        self.headers.remove_listed(upstream);
        for (from, to) in &self.rename_headers {
            let values: Vec<HeaderValue> = upstream.headers.get_all(from).iter().cloned().collect();
            if values.is_empty() {
                continue;
            }
            upstream.remove_header(from);
            upstream.remove_header(to);
            for value in values {
                upstream.append_header(to.clone(), value)?;
            }
        }
        headers.apply(upstream)?;
        if let Some(buffer) = state.slots.get_mut(self.body) {
            // Each attempt (a retry resends the body through the body filters) buffers the
            // body afresh.
            buffer.restart();
            // The edited body's length is known only at its end: without Content-Length,
            // Pingora frames an HTTP/1.1 upstream request as chunked (HTTP/2 needs nothing).
            upstream.remove_header(&CONTENT_LENGTH);
        }
        if let Some(uri) = self.new_uri(&upstream.uri, &set_query) {
            match uri.parse::<Uri>() {
                Ok(uri) => upstream.set_uri(uri),
                Err(e) => log::warn!(
                    "request-transform: the rewritten URI is invalid ({e}); sent unchanged"
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mistakes_are_errors() {
        let scope = TemplateScope::default();
        let bad = |c: Config| {
            RequestTransform::new(c, &scope, &mut SlotAllocator::default())
                .err()
                .unwrap_or_default()
        };
        let mut c = Config::default();
        c.set_headers.insert("bad header".into(), "x".into());
        assert!(bad(c).contains("not a valid header name"));
        let mut c = Config::default();
        c.add_headers.insert("x-a".into(), "$nope".into());
        assert!(bad(c).contains("unknown variable"));
        let mut c = Config::default();
        c.remove_query.push("a&b".into());
        assert!(bad(c).contains("query parameter"));
        let c = Config {
            rewrite: Some(RewriteConfig {
                pattern: "(".into(),
                replacement: "/x".into(),
            }),
            ..Config::default()
        };
        assert!(bad(c).contains("regex"));
        let c = Config {
            rewrite: Some(RewriteConfig {
                pattern: "^/a$".into(),
                replacement: "b".into(),
            }),
            ..Config::default()
        };
        assert!(bad(c).contains("start with"));
    }
}
