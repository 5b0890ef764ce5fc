//! The Pingora `ProxyHttp` implementation. The hooks stay short and hand each phase to the file
//! named after it:
//!
//! - `request.rs`: trust, request id and client IP, the checks of the head (`target.rs`,
//!   `crate::forwarded`), the routing decision, and the route's request plugins;
//! - `respond.rs`: every response the gateway writes itself (problems, direct responses, plugin
//!   answers, merged `aggregate` bodies), each through the route's response plugins;
//! - `cache_hooks.rs`: the route's caching rules and the client's identity for the cache;
//! - `logging.rs`: the status of a finished request (499 for a client that left) and its
//!   access-log record.
//!
//! `upstream_peer` picks a backend (again on each retry), `fail_to_connect` decides retries,
//! `upstream_request_filter` strips the prefix and sets the forwarding headers (and the request
//! as sent upstream, with its body in `request_body_filter`, is copied for the route's mirror), and
//! `fail_to_proxy` turns any error into problem+json.

mod cache_hooks;
mod ctx;
mod logging;
mod problem;
mod request;
mod respond;
mod target;
mod timing;
mod upstream;

pub use crate::forwarded::new_request_id;
pub use ctx::RequestCtx;
pub use problem::{Problem, ProblemKind};

use crate::access_log::AccessLog;
use crate::compression::CompressionBuilder;
use crate::forwarded::X_REQUEST_ID_WIRE;
use crate::metrics::RouteMetrics;
use crate::reload::Live;
use crate::router::RouteAction;
use async_trait::async_trait;
use cache_hooks::cache_policy;
use gantry_plugins::Flow;
use logging::client_went_away;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::modules::http::grpc_web::{GrpcWeb, GrpcWebBridge};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, Result};
use request::{enable_compression, grpc_web_kind, Decision, GrpcWebKind};
use respond::{
    run_response_body_plugins, run_response_plugins, write_direct_response, write_problem,
};
use std::sync::Arc;
use std::time::Instant;

/// The gateway: routes every request of one configuration.
pub struct Gateway {
    /// The running configuration; each request takes it once.
    live: Arc<Live>,
    /// The gRPC-Web module was loaded (a route of the first configuration used it).
    grpc_web_module: bool,
    /// The compression module was loaded (a route of the first configuration compresses).
    compression_module: bool,
    /// Pooled upstream connections for `aggregate` calls and mirrored requests.
    connector: Arc<Connector>,
    /// Where each request's record goes.
    access_log: Arc<AccessLog>,
    /// The counters of requests no route matched.
    unmatched: Arc<RouteMetrics>,
}

impl Gateway {
    /// A gateway serving `live`'s configuration, logging requests to `access_log`.
    pub fn new(live: Arc<Live>, access_log: Arc<AccessLog>) -> Self {
        let (grpc_web_module, compression_module) = {
            let config = live.current();
            (config.grpc_web, config.compression)
        };
        Gateway {
            live,
            grpc_web_module,
            compression_module,
            connector: Arc::new(Connector::new(None)),
            access_log,
            unmatched: crate::metrics::route(crate::metrics::UNMATCHED),
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules by default: Pingora's default adds a disabled compression module
    /// whose per-request setup costs CPU for nothing.
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // Modules cost every request something; the gRPC-Web bridge is loaded only when a
        // route uses it.
        if self.grpc_web_module {
            modules.add_module(Box::new(GrpcWeb));
        }
        // Off (level 0) until a route with `compress` turns it on for its requests.
        if self.compression_module {
            modules.add_module(Box::new(CompressionBuilder));
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // This request's configuration generation, from start to finish.
        let config = self.live.current();
        // The bridge rewrites the request before routing, so a gRPC-Web request is routed
        // here first, and bridged only on a route with `grpc_web = true`.
        let grpc_web = self.grpc_web_module && config.grpc_web;
        if grpc_web && grpc_web_kind(session.req_header()) == Some(GrpcWebKind::Binary) {
            let bridged = Self::route_of(&config, session.req_header()).is_some_and(|r| r.grpc_web);
            if bridged {
                if let Some(bridge) = session.downstream_modules_ctx.get_mut::<GrpcWebBridge>() {
                    bridge.init();
                }
            }
        }
        ctx.config = Some(config);
        Ok(())
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Some(Instant::now()),
            ..RequestCtx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let config = Arc::clone(ctx.config.get_or_insert_with(|| self.live.current()));
        let decision = request::decide(session, ctx, &config);
        // A matched route's plugins run whatever it answers (a 415 for gRPC-Web text too),
        // so its refusals carry what they add (CORS headers, for one).
        if ctx.route.is_some() {
            if let Some(route) = ctx.route.as_ref().filter(|r| !r.compress.is_empty()) {
                enable_compression(session, &route.compress);
            }
            let flow = self.run_request_plugins(session, ctx).await?;
            if flow != Flow::Continue {
                self.write_plugin_response(session, ctx, flow).await?;
                return Ok(true);
            }
        }
        match decision {
            Decision::Proxy => Ok(false),
            Decision::Respond(route) => {
                match &route.action {
                    RouteAction::Aggregate(aggregate) => {
                        self.write_aggregate(session, aggregate, &route, ctx)
                            .await?
                    }
                    _ => write_direct_response(session, &route, ctx).await?,
                }
                Ok(true)
            }
            Decision::Problem(kind, detail, allow) => {
                let problem = Problem {
                    allow: &allow,
                    ..Problem::new(kind, &detail)
                };
                let route = ctx.route.clone();
                let failure = ctx::Failure::Gateway(kind);
                write_problem(session, route.as_deref(), ctx, &problem, failure).await?;
                Ok(true)
            }
        }
    }

    /// Caches GET and HEAD requests (not upgrades) of routes with the `cache` plugin.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        self.enable_cache(session, ctx)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        self.cache_key(session, ctx)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        self.response_cacheability(session, resp, ctx)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &pingora::http::RequestHeader,
    ) -> Option<HashBinary> {
        self.cache_variance(meta, ctx, req)
    }

    /// Stale responses are served within their windows while one request refreshes them, and
    /// when the upstream fails (not when the client does).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| *e.esource() != ErrorSource::Downstream)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.select_peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.decide_retry(session, ctx, e, None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        self.decide_retry(session, ctx, e, Some(client_reused))
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.filter_request_body(session, body, end_of_stream, ctx)
            .await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.prepare_upstream_request(session, upstream, ctx).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_connected = Some(Instant::now());
        if let Some(trace) = &mut ctx.trace {
            trace.attempt_connected(reused);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.observe_upstream_response(session, upstream_response, ctx)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(X_REQUEST_ID_WIRE, ctx.state.request_id.clone())?;
        if let Some(timing) = timing::server_timing(ctx) {
            upstream_response.insert_header(timing::SERVER_TIMING, timing)?;
        }
        ctx.state.response_from_upstream = true;
        if cache_policy(ctx).is_some() {
            let status = crate::cache::status(session.cache.phase());
            ctx.state.cache_status = Some(status);
            ctx.state.trace.record("gantry.cache", || {
                let status = gantry_plugins::trace_events::EventValue::Word(status.as_str());
                vec![("gantry.cache.status", status)]
            });
        }
        run_response_plugins(
            ctx.route.as_deref(),
            session.req_header(),
            upstream_response,
            &mut ctx.state,
        )
        .await
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        run_response_body_plugins(ctx.route.as_deref(), body, end_of_stream, &mut ctx.state)?;
        Ok(None)
    }

    /// A body that ends with trailers has no end-of-stream chunk: the response-body plugins
    /// get their end here, and what they still held goes out before the trailers.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        _upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bytes::Bytes>> {
        let mut body = None;
        run_response_body_plugins(ctx.route.as_deref(), &mut body, true, &mut ctx.state)?;
        Ok(body.filter(|b| !b.is_empty()))
    }

    /// A client that went away or reset its stream is not a gateway failure: logged only at
    /// `debug` (any client could otherwise flood the error log).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        client_went_away(error) && !log::log_enabled!(log::Level::Debug)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.log_request(session, e, ctx).await
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        self.answer_failure(session, e, ctx).await
    }
}
