//! `response-transform`: reshapes the response sent to the client: headers set, added and
//! removed (values are [templates](crate::support::template) read from the request), and an upstream's
//! (or an `aggregate` route's merged) JSON body edited ([`crate::support::json_body`]). Responses the
//! gateway writes itself (direct responses, problems) get the header changes only.
//!
//! With `json_body`, the upstream is asked for an unencoded body (`Accept-Encoding: identity`;
//! the route's `compress` still compresses what the client gets), and a body that cannot be
//! edited fails the response ([`crate::support::json_body::NOT_EDITABLE`]): a 502 while its header is unsent,
//! decided from the header where it can be; an aborted response otherwise.

use crate::support::header_edits::HeaderEdits;
use crate::support::json_body::{
    declared_length, not_editable, JsonBodyConfig, JsonBuffer, JsonEdits,
};
use crate::support::template::TemplateScope;
use crate::{Phases, Plugin, PluginState, Slot, SlotAllocator};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The configuration name.
pub const NAME: &str = "response-transform";

/// `[routes.R.plugins.response-transform]`.
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
    /// Edits of a JSON response body.
    pub json_body: Option<JsonBodyConfig>,
}

/// A compiled `response-transform`.
pub struct ResponseTransform {
    headers: HeaderEdits,
    json: Option<JsonEdits>,
    /// The response's JSON body while it is buffered for editing.
    body: Slot<JsonBuffer>,
}

impl ResponseTransform {
    /// Compiles `config`; templates may use what `scope` offers.
    pub fn new(
        config: Config,
        scope: &TemplateScope,
        slots: &mut SlotAllocator,
    ) -> Result<Self, String> {
        Ok(ResponseTransform {
            headers: HeaderEdits::new(
                &config.set_headers,
                &config.add_headers,
                &config.remove_headers,
                scope,
            )?,
            json: config
                .json_body
                .map(|c| JsonEdits::new(c, scope))
                .transpose()?,
            body: slots.claim(),
        })
    }
}

#[async_trait]
impl Plugin for ResponseTransform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        match self.json {
            Some(_) => Phases::UPSTREAM_REQUEST
                .and(Phases::RESPONSE)
                .and(Phases::RESPONSE_BODY),
            None => Phases::RESPONSE,
        }
    }

    /// Asks the upstream for a body it can edit: unencoded (an absent `Accept-Encoding`
    /// would accept any coding).
    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        upstream.insert_header(ACCEPT_ENCODING, "identity")?;
        Ok(())
    }

    async fn on_response(
        &self,
        request: &RequestHeader,
        response: &mut ResponseHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        let rendered = self.headers.render(request, state);
        self.headers.remove_listed(response);
        rendered.apply(response)?;
        let has_body = request.method != Method::HEAD
            && !response.status.is_informational()
            && !matches!(response.status.as_u16(), 204 | 304)
            && declared_length(&response.headers) != Some(0);
        if let (Some(json), true, true) = (&self.json, state.response_from_upstream, has_body) {
            let buffer = json
                .start(&response.headers, request, state)
                .map_err(|why| not_editable(&why))?;
            state.slots.set(self.body, buffer);
            // The edited body's length is known only at its end.
            response.remove_header(&CONTENT_LENGTH);
            response.insert_header(TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    fn on_response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        match (&self.json, state.slots.get_mut(self.body)) {
            (Some(json), Some(buffer)) => json
                .on_chunk(buffer, body, end_of_stream)
                .map_err(|why| not_editable(&why)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{request, state};
    use crate::PluginChain;
    use std::sync::Arc;

    fn transform(json: bool) -> Arc<dyn Plugin> {
        let config = Config {
            set_headers: [("x-tenant".to_string(), "$header.x-tenant".to_string())].into(),
            add_headers: [("x-served-by".to_string(), "gantry".to_string())].into(),
            remove_headers: vec!["server".into()],
            json_body: json.then(|| JsonBodyConfig {
                set: [("/source".to_string(), "gantry".into())].into(),
                remove: vec!["/secret".into()],
                rename: BTreeMap::new(),
                max_size: None,
                max_depth: None,
            }),
        };
        let plugin = ResponseTransform::new(
            config,
            &TemplateScope::default(),
            &mut SlotAllocator::default(),
        )
        .expect("valid transform");
        Arc::new(plugin)
    }

    fn response(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut response = ResponseHeader::build(200, None).expect("response");
        for (name, value) in headers {
            response
                .append_header(name.to_string(), *value)
                .expect("header");
        }
        response
    }

    #[tokio::test]
    async fn headers_are_set_from_the_request_added_and_removed() {
        let chain = PluginChain::new(vec![transform(false)]);
        let req = request("GET", "/", &[("x-tenant", "acme")]);
        let mut resp = response(&[("server", "backend/1.0"), ("x-tenant", "upstream")]);
        let mut s = state("r", "10.0.0.1");
        chain
            .run_response(&req, &mut resp, &mut s)
            .await
            .expect("response");
        let get = |name: &str| resp.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-tenant"), Some("acme"));
        assert_eq!(get("x-served-by"), Some("gantry"));
        assert_eq!(get("server"), None);
    }

    #[tokio::test]
    async fn an_upstream_json_body_is_edited_and_reframed() {
        let chain = PluginChain::new(vec![transform(true)]);
        let req = request("GET", "/", &[]);
        let body = r#"{"secret":"s3","id":7}"#;
        let mut resp = response(&[
            ("content-type", "application/json"),
            ("content-length", &body.len().to_string()),
        ]);
        let mut s = state("r", "10.0.0.1");
        s.response_from_upstream = true;
        chain
            .run_response(&req, &mut resp, &mut s)
            .await
            .expect("response");
        assert!(resp.headers.get("content-length").is_none());
        let mut out = Vec::new();
        for (chunk, end) in [(&body[..9], false), (&body[9..], true)] {
            let mut piece = Some(Bytes::copy_from_slice(chunk.as_bytes()));
            chain
                .run_response_body(&mut piece, end, &mut s)
                .expect("editable body");
            out.extend_from_slice(piece.as_deref().unwrap_or_default());
        }
        let edited: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(edited, serde_json::json!({"id": 7, "source": "gantry"}));
    }

    #[tokio::test]
    async fn a_response_the_gateway_wrote_keeps_its_body() {
        let chain = PluginChain::new(vec![transform(true)]);
        let req = request("GET", "/", &[]);
        let mut resp = response(&[
            ("content-type", "application/problem+json"),
            ("content-length", "2"),
        ]);
        let mut s = state("r", "10.0.0.1");
        chain
            .run_response(&req, &mut resp, &mut s)
            .await
            .expect("response");
        assert_eq!(
            resp.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
        let mut piece = Some(Bytes::from_static(b"{}"));
        chain
            .run_response_body(&mut piece, true, &mut s)
            .expect("body");
        assert_eq!(piece.as_deref(), Some(&b"{}"[..]));
    }
}
