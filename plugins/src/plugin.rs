//! The [`Plugin`] trait, the outcome of its request phase ([`Flow`]), refusals
//! ([`Rejection`]) and answers ([`Answer`]), and the [`Phases`] a plugin acts in.

use crate::builtin::cache::CachePolicy;
use crate::registry;
use crate::state::{PluginState, RequestView};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// A refusal: the gateway turns it into an RFC 9457 problem+json response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// The stable last part of the problem `type` (`urn:gantry:problem:SLUG`).
    pub slug: &'static str,
    /// Short human summary.
    pub title: &'static str,
    /// One line for the client, without secrets.
    pub detail: String,
    /// Extra response headers (for example `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A complete answer (a CORS preflight, an auth service's refusal passed on): the request goes
/// no further, and the route's response-phase plugins still run on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body (empty: none), sent with its `Content-Length`.
    pub body: Bytes,
}

/// The outcome of a plugin phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next plugin and the request.
    Continue,
    /// Stop and answer with this problem.
    Reject(Rejection),
    /// Stop and answer with this (request phase only).
    Answer(Answer),
}

/// The phases a plugin acts in, so that each phase's chain holds only those plugins (and a
/// route without body plugins never pays for a body phase).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Phases(u8);

impl Phases {
    /// [`Plugin::on_request`].
    pub const REQUEST: Phases = Phases(1);
    /// [`Plugin::on_upstream_request`].
    pub const UPSTREAM_REQUEST: Phases = Phases(2);
    /// [`Plugin::on_upstream_response`].
    pub const UPSTREAM_RESPONSE: Phases = Phases(4);
    /// [`Plugin::on_response`].
    pub const RESPONSE: Phases = Phases(8);
    /// [`Plugin::on_response_body`].
    pub const RESPONSE_BODY: Phases = Phases(16);
    /// [`Plugin::on_log`].
    pub const LOG: Phases = Phases(32);
    /// [`Plugin::on_request_body`].
    pub const REQUEST_BODY: Phases = Phases(64);

    /// Both sets of phases.
    pub const fn and(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    /// True when every phase of `other` is in `self`.
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A configured plugin instance. Every phase has a default that does nothing; a plugin
/// implements its own phases and lists them in [`Plugin::phases`].
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The name used in the configuration (`ip-restriction`).
    fn name(&self) -> &'static str;

    /// Order in the chain: higher runs first. Fixed per plugin kind, in
    /// [`registry::BUILTINS`].
    fn priority(&self) -> i32 {
        registry::priority(self.name())
    }

    /// The phases this plugin implements.
    fn phases(&self) -> Phases;

    /// The caching rules of the `cache` plugin, which the gateway's cache hooks follow.
    fn cache_policy(&self) -> Option<Arc<CachePolicy>> {
        None
    }

    /// Whether the plugin calls another service for a request (forward-auth, token
    /// introspection): such calls carry [`crate::PluginState::outbound_traceparent`].
    fn calls_out(&self) -> bool {
        false
    }

    /// After routing, before the request goes upstream (or a direct response is sent), for
    /// every request of the route, including WebSocket upgrades and requests with bodies.
    async fn on_request(&self, _request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        Ok(Flow::Continue)
    }

    /// On each request body chunk as it streams upstream, after
    /// [`PluginState::request_body_bytes`] counts it; synchronous so that no future is
    /// allocated per chunk. A refusal aborts the upload and answers the client with it.
    fn on_request_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _state: &mut PluginState,
    ) -> Option<Rejection> {
        None
    }

    /// On the request about to be sent upstream (after the gateway's own rewrites).
    async fn on_upstream_request(
        &self,
        _upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// On the upstream's response header, before anything is sent to the client.
    async fn on_upstream_response(
        &self,
        _response: &mut ResponseHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// On the response header about to be sent to the client.
    async fn on_response(
        &self,
        _request: &RequestHeader,
        _response: &mut ResponseHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// On each response body chunk; synchronous so that no future is allocated per chunk.
    fn on_response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// After the response is finished (or failed), with the status logged for it.
    async fn on_log(&self, _state: &PluginState, _status: u16) {}
}

impl Rejection {
    /// A 401: the request carries no usable credentials. `challenge` is the
    /// `WWW-Authenticate` value.
    pub fn unauthorized(slug: &'static str, detail: &str, challenge: &HeaderValue) -> Self {
        Rejection {
            status: 401,
            slug,
            title: "Unauthorized",
            detail: detail.into(),
            headers: vec![(http::header::WWW_AUTHENTICATE, challenge.clone())],
        }
    }
}
