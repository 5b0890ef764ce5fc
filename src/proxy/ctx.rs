//! Per-request state shared by the proxy's hooks.

use crate::router::Route;
use gantry_plugins::{PluginState, Rejection};
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;

/// State of one request, created empty by `new_ctx` and filled by the hooks.
pub struct RequestCtx {
    /// The request id, echoed on the response and sent upstream.
    pub request_id: HeaderValue,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// Bytes of the path covered by the route's prefix.
    pub prefix_len: usize,
    /// What plugins see and update: the client address (after trusted proxies), ...
    pub state: PluginState,
    /// Whether the direct peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Connection retries used so far.
    pub retries_used: u32,
    /// Backends that failed to connect for this request.
    pub failed: Vec<SocketAddr>,
    /// The backend of the current attempt.
    pub backend: Option<SocketAddr>,
    /// A plugin's refusal of the request body, answered by `fail_to_proxy`.
    pub body_rejection: Option<Rejection>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            request_id: HeaderValue::from_static(""),
            route: None,
            prefix_len: 0,
            state: PluginState::default(),
            peer_trusted: false,
            retries_used: 0,
            failed: Vec::new(),
            backend: None,
            body_rejection: None,
        }
    }
}
