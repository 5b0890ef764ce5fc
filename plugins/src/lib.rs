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

pub mod acl;
pub mod basic_auth;
pub mod config_types;
pub mod consumer;
pub mod ip_restriction;
pub mod jwks;
pub mod jwt_auth;
pub mod key_auth;
pub mod query;
pub mod registry;

use async_trait::async_trait;
use consumer::Consumer;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

/// What the gateway knows about a request that plugins may read and update.
#[derive(Debug, Default, Clone)]
pub struct PluginState {
    /// The client address, after `server.trusted_proxies`.
    pub client_ip: Option<IpAddr>,
    /// The consumer an authentication plugin resolved the request to.
    pub consumer: Option<Arc<Consumer>>,
    /// The claims of the request's verified JWT.
    pub jwt_claims: Option<Arc<jwt_auth::Claims>>,
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

/// The outcome of a plugin phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next plugin and the request.
    Continue,
    /// Stop and answer with this problem.
    Reject(Rejection),
}

/// A configured plugin instance. Phases have defaults, so a plugin implements only its own.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The name used in the configuration (`ip-restriction`).
    fn name(&self) -> &'static str;

    /// Order in the chain: higher runs first. Fixed per plugin kind and documented.
    fn priority(&self) -> i32;

    /// Runs after routing, before the request goes upstream (or a direct response is sent),
    /// for every request of the route, including WebSocket upgrades and requests with bodies.
    async fn on_request(
        &self,
        _session: &mut Session,
        _state: &mut PluginState,
    ) -> pingora::Result<Flow> {
        Ok(Flow::Continue)
    }

    /// Runs on the request about to be sent upstream (after the gateway's own rewrites).
    async fn on_upstream_request(
        &self,
        _upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        Ok(())
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

impl std::fmt::Debug for dyn Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
