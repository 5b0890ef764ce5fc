//! Gantry's plugin system: the [`Plugin`] trait, the outcome of a phase ([`Flow`]), the
//! per-request state plugins share ([`PluginState`]) and the registry of built-in plugins.
//!
//! A plugin is configured globally (`[plugins.NAME]`, every route) or per route
//! (`[routes.R.plugins.NAME]`, replacing the global instance on that route; `enabled = false`
//! switches it off there). Chains are compiled per route when the configuration loads and are
//! ordered by each kind's fixed [`Plugin::priority`] (access control before authentication
//! before rate limiting before transforms), so nothing is looked up by name per request.
//!
//! Plugins never write responses: they return [`Flow::Reject`] and the gateway writes one
//! problem+json response, so status, headers and request id stay consistent.
//!
//! Each built-in plugin lives in its own module with its typed `Config`
//! (`deny_unknown_fields`) and is listed explicitly in [`registry`].
#![forbid(unsafe_code)]

pub mod acl;
pub mod basic_auth;
pub mod body_limit;
pub mod cache;
pub mod concurrency_limit;
pub mod config_types;
pub mod consumer;
pub mod cors;
pub mod credentials;
pub mod failure_limit;
pub mod header_edits;
pub mod ip_restriction;
pub mod json_body;
pub mod jwks;
pub mod jwt_auth;
pub mod key_auth;
pub mod limit_key;
pub mod password_checks;
pub mod query;
pub mod rate_limit;
pub mod redis_store;
pub mod registry;
pub mod request_transform;
pub mod response_transform;
pub mod template;

use async_trait::async_trait;
use bytes::Bytes;
use consumer::Consumer;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::borrow::Borrow;
use std::net::IpAddr;
use std::sync::Arc;

/// What the gateway knows about a request that plugins may read and update. It lives as long
/// as the request: whatever it holds (like a concurrency slot) is released when the request ends.
pub struct PluginState {
    /// The matched route's name.
    pub route: Arc<str>,
    /// The request id, echoed on the response and sent upstream.
    pub request_id: HeaderValue,
    /// The client address, after `server.trusted_proxies`.
    pub client_ip: Option<IpAddr>,
    /// The consumer an authentication plugin resolved the request to.
    pub consumer: Option<Arc<Consumer>>,
    /// The claims of the request's verified JWT.
    pub jwt_claims: Option<Arc<jwt_auth::Claims>>,
    /// The tightest rate limit's numbers, for the `RateLimit-*` response headers.
    pub rate_limit: Option<rate_limit::RateLimitStatus>,
    /// The allowed `Origin` of a cross-origin request, for the CORS response headers.
    pub cors_origin: Option<HeaderValue>,
    /// Request body bytes received so far.
    pub request_body_bytes: u64,
    /// The request body being buffered for `request-transform`'s `json_body`.
    pub request_json: Option<json_body::JsonBuffer>,
    /// The response body being buffered for `response-transform`'s `json_body`.
    pub response_json: Option<json_body::JsonBuffer>,
    /// The response being filtered carries upstream content (a proxied response, or an
    /// `aggregate` route's merged body), not a response the gateway wrote itself.
    pub response_from_upstream: bool,
    /// Concurrency slots held until the request ends.
    pub slots: Vec<pingora_limits::inflight::Guard>,
    /// What the cache did for this request, on a route with the `cache` plugin.
    pub cache_status: Option<cache::CacheStatus>,
}

impl Default for PluginState {
    fn default() -> Self {
        PluginState {
            route: Arc::from(""),
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            consumer: None,
            jwt_claims: None,
            rate_limit: None,
            cors_origin: None,
            request_body_bytes: 0,
            request_json: None,
            response_json: None,
            response_from_upstream: false,
            slots: Vec::new(),
            cache_status: None,
        }
    }
}

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

/// A complete answer without a body (a CORS preflight): the request goes no further, and the
/// route's response-phase plugins still run on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
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
    fn cache_policy(&self) -> Option<Arc<cache::CachePolicy>> {
        None
    }

    /// After routing, before the request goes upstream (or a direct response is sent), for
    /// every request of the route, including WebSocket upgrades and requests with bodies.
    async fn on_request(
        &self,
        _session: &mut Session,
        _state: &mut PluginState,
    ) -> pingora::Result<Flow> {
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

    /// After the response is finished (or failed), with the status sent (0 when none was).
    async fn on_log(&self, _state: &PluginState, _status: u16) {}
}

/// A route's plugins grouped by phase, each group ordered highest priority first.
#[derive(Default)]
pub struct PluginChain {
    /// [`Phases::REQUEST`].
    pub request: Box<[Arc<dyn Plugin>]>,
    /// [`Phases::REQUEST_BODY`].
    pub request_body: Box<[Arc<dyn Plugin>]>,
    /// [`Phases::UPSTREAM_REQUEST`].
    pub upstream_request: Box<[Arc<dyn Plugin>]>,
    /// [`Phases::UPSTREAM_RESPONSE`].
    pub upstream_response: Box<[Arc<dyn Plugin>]>,
    /// [`Phases::RESPONSE`].
    pub response: Box<[Arc<dyn Plugin>]>,
    /// [`Phases::RESPONSE_BODY`].
    pub response_body: Box<[Arc<dyn Plugin>]>,
    /// [`Phases::LOG`].
    pub log: Box<[Arc<dyn Plugin>]>,
    /// The route's caching rules, when it has the `cache` plugin.
    pub cache: Option<Arc<cache::CachePolicy>>,
    /// The route has an authentication plugin (`jwt-auth`, `key-auth`, `basic-auth`).
    pub authenticates: bool,
}

impl PluginChain {
    /// Orders `plugins` by priority (then name, for a stable order) and groups them by phase.
    pub fn new(mut plugins: Vec<Arc<dyn Plugin>>) -> Self {
        plugins.sort_by_key(|p| (std::cmp::Reverse(p.priority()), p.name()));
        let of = |phase: Phases| -> Box<[Arc<dyn Plugin>]> {
            plugins
                .iter()
                .filter(|p| p.phases().contains(phase))
                .cloned()
                .collect()
        };
        PluginChain {
            request: of(Phases::REQUEST),
            request_body: of(Phases::REQUEST_BODY),
            upstream_request: of(Phases::UPSTREAM_REQUEST),
            upstream_response: of(Phases::UPSTREAM_RESPONSE),
            response: of(Phases::RESPONSE),
            response_body: of(Phases::RESPONSE_BODY),
            log: of(Phases::LOG),
            cache: plugins.iter().find_map(|p| p.cache_policy()),
            authenticates: plugins
                .iter()
                .any(|p| [jwt_auth::NAME, key_auth::NAME, basic_auth::NAME].contains(&p.name())),
        }
    }

    /// The plugins' names in request order, for diagnostics.
    pub fn names(&self) -> Vec<&'static str> {
        let mut seen: Vec<&'static str> = Vec::new();
        for p in self
            .request
            .iter()
            .chain(self.request_body.iter())
            .chain(self.upstream_request.iter())
            .chain(self.upstream_response.iter())
            .chain(self.response.iter())
            .chain(self.response_body.iter())
            .chain(self.log.iter())
        {
            if !seen.contains(&p.name()) {
                seen.push(p.name());
            }
        }
        seen
    }
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(&'static str, i32, Phases);

    #[async_trait]
    impl Plugin for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn priority(&self) -> i32 {
            self.1
        }
        fn phases(&self) -> Phases {
            self.2
        }
    }

    #[test]
    fn chains_are_grouped_by_phase_in_priority_order() {
        let chain = PluginChain::new(vec![
            Arc::new(Fake(
                "transform",
                500,
                Phases::RESPONSE.and(Phases::RESPONSE_BODY),
            )),
            Arc::new(Fake(
                "auth",
                2000,
                Phases::REQUEST.and(Phases::UPSTREAM_REQUEST),
            )),
            Arc::new(Fake("ip", 3000, Phases::REQUEST)),
            Arc::new(Fake("logger", 100, Phases::LOG)),
        ]);
        let names = |group: &[Arc<dyn Plugin>]| group.iter().map(|p| p.name()).collect::<Vec<_>>();
        assert_eq!(names(&chain.request), ["ip", "auth"]);
        assert_eq!(names(&chain.upstream_request), ["auth"]);
        assert!(chain.upstream_response.is_empty());
        assert_eq!(names(&chain.response), ["transform"]);
        assert_eq!(names(&chain.response_body), ["transform"]);
        assert_eq!(names(&chain.log), ["logger"]);
        assert_eq!(chain.names(), ["ip", "auth", "transform", "logger"]);
    }
}

#[cfg(test)]
mod alias_tests {
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
