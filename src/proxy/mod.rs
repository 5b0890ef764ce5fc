//! The Pingora `ProxyHttp` implementation. The hooks stay short and hand each phase to the file
//! named after it:
//!
//! - `request.rs`: trust, request id and client IP, the checks of the head (`target.rs`,
//!   `forwarded.rs`), the routing decision, and the route's request plugins;
//! - `respond.rs`: every response the gateway writes itself (problems, direct responses, plugin
//!   answers, merged `aggregate` bodies), each through the route's response plugins;
//! - `cache_hooks.rs`: the route's caching rules and the client's identity for the cache;
//! - `logging.rs`: the status of a finished request (499 for a client that left) and its
//!   access-log record.
//!
//! `upstream_peer` picks a backend (again on each retry), `fail_to_connect` decides retries,
//! `upstream_request_filter` strips the prefix and sets the forwarding headers, and
//! `fail_to_proxy` turns any error into problem+json.

mod cache_hooks;
mod ctx;
pub(crate) mod forwarded;
mod logging;
mod problem;
mod request;
mod respond;
mod target;

pub use ctx::RequestCtx;
pub use forwarded::new_request_id;
pub use problem::{Problem, ProblemKind};
pub use target::DEFAULT_STRIPPED;

use crate::access_log::AccessLog;
use crate::compression::CompressionBuilder;
use crate::metrics::RouteMetrics;
use crate::reload::Live;
use crate::router::RouteAction;
use crate::upstream::hash_key::ip_key;
use async_trait::async_trait;
use cache_hooks::{cache_policy, client_identity};
use forwarded::X_REQUEST_ID;
use gantry_plugins::cache::CacheStatus;
use gantry_plugins::Flow;
use http::{header, Uri};
use logging::{access_record, client_went_away, downstream_scheme, CLIENT_CLOSED_REQUEST};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::modules::http::grpc_web::{GrpcWeb, GrpcWebBridge};
use pingora::protocols::http::bridge::grpc_web::GrpcWebCtx;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use problem::{ALL_BACKENDS_FAILED, BODY_REJECTED, NO_HEALTHY_BACKEND, REWRITTEN_PATH_REFUSED};
pub(crate) use request::request_host;
use request::{enable_compression, grpc_web_kind, peer_ip, Decision, GrpcWebKind};
use respond::{
    final_response_sent, run_response_body_plugins, run_response_plugins, write_direct_response,
    write_problem,
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
    /// Pooled upstream connections for `aggregate` calls.
    connector: Connector,
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
            connector: Connector::new(None),
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
                write_problem(session, route.as_deref(), ctx, &problem).await?;
                Ok(true)
            }
        }
    }

    /// Caches GET and HEAD requests (not upgrades) of routes with the `cache` plugin.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(config) = ctx.config.as_ref().filter(|c| c.caching) else {
            return Ok(());
        };
        let cache = crate::cache::node(&config.cache);
        let Some(policy) = cache_policy(ctx) else {
            return Ok(());
        };
        // Runs after the request plugins: an authenticated route knows who the client is, and
        // one whose plugin let the client through unidentified (`anonymous`, a token without
        // `sub`) does not use the cache.
        let has_body = !session.is_body_empty();
        let cacheable = pingora::cache::filters::request_cacheable(session.req_header())
            && !session.as_downstream().is_upgrade_req()
            && policy.bypass(session.req_header(), has_body).is_none()
            && client_identity(ctx).is_some();
        if cacheable {
            cache.enable(&mut session.cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let Some(policy) = cache_policy(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a cache policy");
        };
        // The URL the client asked for: behind a trusted proxy, the scheme and host it forwarded.
        let req = session.req_header();
        let forwarded = |name: &str| {
            ctx.peer_trusted
                .then(|| req.headers.get(name)?.to_str().ok())
                .flatten()
        };
        let scheme = match forwarded("x-forwarded-proto") {
            Some("https") => "https",
            Some("http") => "http",
            _ => downstream_scheme(session),
        };
        let host = forwarded("x-forwarded-host").unwrap_or_else(|| request_host(req));
        let key = policy.primary_key(
            &ctx.state.route,
            scheme,
            host,
            req.uri.path(),
            req.uri.query(),
        );
        Ok(crate::cache::key_for(key))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(policy) = cache_policy(ctx) else {
            return Ok(RespCacheable::Uncacheable(
                pingora::cache::NoCacheReason::OriginNotCache,
            ));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(header::AUTHORIZATION);
        Ok(policy.response_cacheable(resp, authorization))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &pingora::http::RequestHeader,
    ) -> Option<HashBinary> {
        let identity = client_identity(ctx)?;
        cache_policy(ctx)?.variance(req, meta.headers(), identity)
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
        let Some(RouteAction::Proxy(cluster)) = ctx.route.as_ref().map(|r| &r.action) else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a cluster");
        };
        let mut ip_buf = [0u8; 16];
        let client = ip_key(ctx.state.client_ip, &mut ip_buf);
        let key = match cluster.hash_on() {
            Some(hash_on) => hash_on.key(session.req_header(), client),
            None => &[],
        };
        match cluster.select(key, &ctx.failed) {
            Some((addr, peer)) => {
                ctx.backend = Some(*addr);
                ctx.upstream_started = Some(Instant::now());
                ctx.upstream_connected = None;
                Ok(Box::new(peer.clone()))
            }
            None if ctx.failed.is_empty() => Error::e_explain(
                NO_HEALTHY_BACKEND,
                format!("cluster {} has no healthy backend", cluster.name),
            ),
            None => Error::e_explain(
                ALL_BACKENDS_FAILED,
                format!("cluster {}: every healthy backend failed", cluster.name),
            ),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(RouteAction::Proxy(cluster)) = ctx.route.as_ref().map(|r| &r.action) else {
            return e;
        };
        if let Some(addr) = ctx.backend.take() {
            cluster.metrics.record_failure(addr);
            ctx.failed.push(addr);
        }
        // Retry only while attempts remain and a healthy backend has not failed yet; otherwise
        // the client gets this connect error (a 502, or a 504 for a connect timeout).
        if ctx.retries_used < cluster.retries && cluster.select(&[], &ctx.failed).is_some() {
            ctx.retries_used += 1;
            e.set_retry(true);
        }
        e
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A WebSocket's frames are not a request body.
        if session.was_upgraded() {
            return Ok(());
        }
        ctx.state.request_body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if let Some(route) = &ctx.route {
            for plugin in route.plugins.request_body.iter() {
                if let Some(rejection) = plugin.on_request_body(body, end_of_stream, &mut ctx.state)
                {
                    ctx.body_rejection = Some(rejection);
                    return Error::e_explain(BODY_REJECTED, "a plugin refused the request body");
                }
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Each attempt (a retry resends the body through the body filters) starts counting and
        // buffering the body afresh.
        ctx.state.request_body_bytes = 0;
        if let Some(buffer) = ctx.state.request_json.as_mut() {
            buffer.restart();
        }
        if ctx.route.as_ref().is_some_and(|r| r.strip_prefix) {
            let stripped = strip_prefix(&upstream.uri, ctx.prefix_len)?;
            upstream.set_uri(stripped);
        }
        let req = session.req_header();
        let host = match req.headers.get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
        };
        forwarded::set_forwarded_headers(
            upstream,
            peer_ip(session),
            ctx.peer_trusted,
            downstream_scheme(session),
            host,
        )?;
        upstream.insert_header(X_REQUEST_ID.clone(), ctx.state.request_id.clone())?;
        forwarded::set_consumer_headers(upstream, ctx.state.consumer.as_deref())?;
        let bridged = ctx.route.as_ref().is_some_and(|r| r.grpc_web)
            && session
                .downstream_modules_ctx
                .get::<GrpcWebBridge>()
                .is_some_and(|b| **b != GrpcWebCtx::Disabled);
        if bridged {
            // The bridge asks for `te: trailers` (gRPC requires it), but Pingora strips TE as
            // hop-by-hop when it turns an HTTP/1.1 request into HTTP/2, before this filter.
            upstream.insert_header(header::TE, "trailers")?;
        }
        if let Some(route) = &ctx.route {
            for plugin in route.plugins.upstream_request.iter() {
                plugin.on_upstream_request(upstream, &mut ctx.state).await?;
            }
        }
        // A rewritten path is held to the rules of a client's.
        if let Err(why) = forwarded::check_path(upstream.uri.path()) {
            return Error::e_explain(REWRITTEN_PATH_REFUSED, why);
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_connected = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let now = Instant::now();
        ctx.upstream_responded = Some(now);
        if let (Some(RouteAction::Proxy(cluster)), Some(started)) =
            (ctx.route.as_ref().map(|r| &r.action), ctx.upstream_started)
        {
            cluster.metrics.upstream_duration.observe(now - started);
        }
        if let Some(route) = &ctx.route {
            for plugin in route.plugins.upstream_response.iter() {
                plugin
                    .on_upstream_response(upstream_response, &mut ctx.state)
                    .await?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(X_REQUEST_ID.clone(), ctx.state.request_id.clone())?;
        ctx.state.response_from_upstream = true;
        if cache_policy(ctx).is_some() {
            ctx.state.cache_status = Some(crate::cache::status(session.cache.phase()));
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
        // With no response header sent: the status the gateway chose for its failure (as
        // nginx logs a 502 it could not deliver), else 499 (the client left first).
        let status = match (session.response_written(), e) {
            (Some(resp), _) => resp.status.as_u16(),
            (None, Some(e)) if !client_went_away(e) => {
                ProblemKind::from_error(e).map_or(CLIENT_CLOSED_REQUEST, ProblemKind::status)
            }
            (None, _) => CLIENT_CLOSED_REQUEST,
        };
        if let Some(route) = &ctx.route {
            for plugin in route.plugins.log.iter() {
                plugin.on_log(&ctx.state, status).await;
            }
        }
        if ctx.error.is_none() {
            ctx.error = e.and_then(ProblemKind::from_error).map(ProblemKind::slug);
        }
        // A backend that failed after connecting (timeout, broken answer).
        let upstream_failed = [
            ProblemKind::UpstreamUnavailable,
            ProblemKind::UpstreamTimeout,
        ]
        .iter()
        .any(|k| ctx.error == Some(k.slug()));
        if let (true, Some(addr), Some(RouteAction::Proxy(cluster))) = (
            upstream_failed,
            ctx.backend,
            ctx.route.as_ref().map(|r| &r.action),
        ) {
            cluster.metrics.record_failure(addr);
        }
        let took = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let rate_limited = ctx.error == Some(gantry_plugins::rate_limit::REJECTED_SLUG);
        let metrics = ctx.route.as_ref().map_or(&self.unmatched, |r| &r.metrics);
        metrics.record(&session.req_header().method, status, took, rate_limited);
        if cache_policy(ctx).is_some() {
            let cache = ctx.state.cache_status.unwrap_or(CacheStatus::Bypass);
            metrics.record_cache(cache);
        }
        if self.access_log.enabled() {
            self.access_log
                .write(&access_record(session, ctx, status, took, rate_limited));
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(kind) = ProblemKind::from_error(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if ctx.state.request_id.is_empty() {
            ctx.state.request_id = forwarded::new_request_id();
        }
        if let Some(rejection) = ctx.body_rejection.take() {
            let problem = Problem {
                close: true,
                ..Problem::rejected(&rejection)
            };
            if !final_response_sent(session) {
                let route = ctx.route.clone();
                if let Err(err) = write_problem(session, route.as_deref(), ctx, &problem).await {
                    log::debug!("could not send the error response: {err}");
                }
            }
            return FailToProxy {
                error_code: rejection.status,
                can_reuse_downstream: false,
            };
        }
        ctx.error = Some(kind.slug());
        if !final_response_sent(session) {
            let detail = match kind {
                ProblemKind::UpstreamTimeout => "the upstream did not answer in time",
                ProblemKind::NoHealthyBackend => "no backend of the cluster is healthy",
                ProblemKind::UpstreamUnavailable => "the upstream could not be reached",
                ProblemKind::MalformedRequest if *e.etype() == REWRITTEN_PATH_REFUSED => {
                    "the route's rewrite produced a path that is refused (dot or empty segments, \
                     encoded separators)"
                }
                ProblemKind::MalformedRequest => "the request could not be read",
                ProblemKind::ResponseNotEditable => {
                    "the upstream's response could not be edited as this route requires"
                }
                _ => "the request failed inside the gateway",
            };
            // Response plugins (CORS, for one) see the gateway's errors too, so a browser can
            // read a 502 or 504.
            let route = ctx.route.clone();
            let problem = Problem::new(kind, detail);
            if let Err(err) = write_problem(session, route.as_deref(), ctx, &problem).await {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: kind.status(),
            can_reuse_downstream: false,
        }
    }
}

/// `/users/7?x=1` with a 6-byte prefix becomes `/7?x=1`; the whole path becomes `/`.
fn strip_prefix(uri: &Uri, prefix_len: usize) -> Result<Uri> {
    let path = uri.path();
    let rest = path.get(prefix_len..).unwrap_or_default();
    let rest = if rest.starts_with('/') { rest } else { "/" };
    let new = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    new.parse::<Uri>()
        .map_err(|_| Error::explain(ErrorType::InternalError, "stripped path is not a valid URI"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_the_query_and_a_leading_slash() {
        let uri: Uri = "/users/7?x=1".parse().unwrap();
        assert_eq!(strip_prefix(&uri, 6).unwrap(), "/7?x=1");
        let uri: Uri = "/users".parse().unwrap();
        assert_eq!(strip_prefix(&uri, 6).unwrap(), "/");
        let uri: Uri = "/anything".parse().unwrap();
        assert_eq!(strip_prefix(&uri, 0).unwrap(), "/anything");
    }
}
