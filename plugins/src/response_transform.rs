//! `response-transform`: reshapes the response sent to the client: headers set, added and
//! removed (values are [templates](crate::template) read from the request), and an upstream's
//! (or an `aggregate` route's merged) JSON body edited ([`crate::json_body`]). Responses the
//! gateway writes itself (direct responses, problems) get the header changes only.
//!
//! With `json_body`, the upstream is asked for an unencoded body (`Accept-Encoding: identity`;
//! the route's `compress` still compresses what the client gets), and a body that cannot be
//! edited fails the response ([`crate::json_body::NOT_EDITABLE`]): a 502 while its header is unsent,
//! decided from the header where it can be; an aborted response otherwise.

use crate::header_edits::HeaderEdits;
use crate::json_body::{declared_length, not_editable, JsonBodyConfig, JsonEdits};
use crate::template::TemplateScope;
use crate::{Phases, Plugin, PluginState};
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
}

impl ResponseTransform {
    /// Compiles `config`; templates may use what `scope` offers.
    pub fn new(config: Config, scope: &TemplateScope) -> Result<Self, String> {
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
            state.response_json = Some(buffer);
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
        match (&self.json, state.response_json.as_mut()) {
            (Some(json), Some(buffer)) => json
                .on_chunk(buffer, body, end_of_stream)
                .map_err(|why| not_editable(&why)),
            _ => Ok(()),
        }
    }
}
