//! Per-request state shared by the proxy's hooks.

use super::ProblemKind;
use crate::router::Route;
use crate::trace::RequestTrace;
use crate::upstream::{Cluster, InFlight};
use gantry_plugins::{PluginState, Rejection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// State of one request, created empty by `new_ctx` and filled by the hooks.
#[derive(Default)]
pub struct RequestCtx {
    /// The configuration generation this request runs on, start to finish.
    pub config: Option<Arc<crate::config::Config>>,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// Bytes of the path covered by the route's prefix.
    pub prefix_len: usize,
    /// What plugins see and update: the request id, the client address (after trusted
    /// proxies), ...
    pub state: PluginState,
    /// Whether the direct peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The cluster this request is proxied to (a split's choice), when it is proxied.
    pub cluster: Option<Arc<Cluster>>,
    /// Upstream attempts made so far (the first included).
    pub attempts: u32,
    /// Backends that failed this request (connect errors, resets, timeouts, retried statuses).
    pub failed: Vec<SocketAddr>,
    /// The backend of the current (or last) attempt.
    pub backend: Option<SocketAddr>,
    /// This request's place among the cluster's requests in flight (the circuit breaker).
    pub cluster_slot: Option<InFlight>,
    /// The current attempt's place among its backend's requests in flight.
    pub backend_slot: Option<InFlight>,
    /// The route's deadline for the response header, retries included.
    pub deadline: Option<Instant>,
    /// A plugin's refusal of the request body, answered by `fail_to_proxy`.
    pub body_rejection: Option<Rejection>,
    /// When the request header was read.
    pub started: Option<Instant>,
    /// When a backend was chosen (the last attempt).
    pub upstream_started: Option<Instant>,
    /// When the connection to it was ready.
    pub upstream_connected: Option<Instant>,
    /// When its response header arrived.
    pub upstream_responded: Option<Instant>,
    /// Why the gateway answered the request itself, if it did.
    pub error: Option<Failure>,
    /// The copy of the request for the route's mirror, across attempts.
    pub mirroring: crate::mirror::Mirroring,
    /// The request's trace context, when `[tracing]` is configured.
    pub trace: Option<Box<RequestTrace>>,
    /// How long the route's request plugins took (on routes with `server_timing`).
    pub plugins_took: Option<std::time::Duration>,
}

/// Why the gateway answered a request itself: logged as its problem `type` slug, and matched
/// on when the request ends (backend failures, rate limiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// One of the gateway's own problem kinds.
    Gateway(ProblemKind),
    /// A plugin's refusal, by its problem slug.
    Plugin(&'static str),
    /// A required call of an `aggregate` route failed.
    AggregateCall,
}

impl Failure {
    /// The problem `type` slug.
    pub fn slug(self) -> &'static str {
        match self {
            Failure::Gateway(kind) => kind.slug(),
            Failure::Plugin(slug) => slug,
            Failure::AggregateCall => AGGREGATE_CALL_FAILED,
        }
    }
}

/// The problem slug of a failed required `aggregate` call.
pub const AGGREGATE_CALL_FAILED: &str = "aggregate-call-failed";
