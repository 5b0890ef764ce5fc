//! The Pingora `ProxyHttp` implementation: each hook is a few lines delegating to the router,
//! the upstream clusters and the problem writer.
//!
//! Per request: `request_filter` assigns the request id and client IP, routes, and answers
//! direct responses and routing errors; `upstream_peer` picks a backend (again on each retry);
//! `fail_to_connect` decides retries; `upstream_request_filter` strips the prefix and sets the
//! forwarding headers; `response_filter` echoes the request id; `fail_to_proxy` turns any
//! error into problem+json.

mod ctx;
pub(crate) mod forwarded;
mod problem;
mod target;

pub use ctx::RequestCtx;
pub use forwarded::new_request_id;
pub use problem::{Problem, ProblemKind};
pub use target::DEFAULT_STRIPPED;

use crate::access_log::{AccessLog, Record};
use crate::aggregate::{Aggregate, ClientRequest, Outcome};
use crate::compression::{Compression, CompressionBuilder};
use crate::config::Config;
use crate::metrics::RouteMetrics;
use crate::reload::Live;
use crate::router::{normalize_host, Lookup, RequestView, RouteAction};
use crate::upstream::hash_key::ip_key;
use async_trait::async_trait;
use forwarded::X_REQUEST_ID;
use gantry_plugins::cache::{CacheStatus, ClientIdentity};
use gantry_plugins::{Flow, PluginState};
use http::{header, Method, Uri};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::modules::http::grpc_web::{GrpcWeb, GrpcWebBridge};
use pingora::protocols::http::bridge::grpc_web::GrpcWebCtx;
use pingora::protocols::http::compression::Algorithm;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use problem::{ALL_BACKENDS_FAILED, BODY_REJECTED, NO_HEALTHY_BACKEND, REWRITTEN_PATH_REFUSED};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Answers an `aggregate` route: the calls' merged JSON, or a 502 naming the required call
    /// that failed.
    async fn write_aggregate(
        &self,
        session: &mut Session,
        aggregate: &Aggregate,
        route: &crate::router::Route,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = ClientRequest {
            header: session.req_header(),
            state: &ctx.state,
        };
        match aggregate.run(&self.connector, &client).await {
            Outcome::Merged(body, partial) => {
                let mut body = Some(bytes::Bytes::from(body.to_string()));
                let mut resp = ResponseHeader::build(200, Some(5))?;
                resp.insert_header(header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(header::CONTENT_LENGTH, body.as_ref().map_or(0, |b| b.len()))?;
                resp.insert_header(X_REQUEST_ID.clone(), ctx.state.request_id.clone())?;
                if !partial.is_empty() {
                    resp.insert_header("Gantry-Partial", partial.join(", "))?;
                }
                // The merged body is the upstreams' content: response plugins edit it as they
                // would a proxied one.
                ctx.state.response_from_upstream = true;
                let req = session.req_header();
                run_response_plugins(Some(route), req, &mut resp, &mut ctx.state).await?;
                let head_only = req.method == Method::HEAD;
                if !head_only {
                    // The whole body is here: it is edited before the header goes out, so a
                    // body that cannot be edited is still a 502, and its length is known.
                    run_response_body_plugins(Some(route), &mut body, true, &mut ctx.state)?;
                    resp.remove_header(&header::TRANSFER_ENCODING);
                    resp.insert_header(
                        header::CONTENT_LENGTH,
                        body.as_ref().map_or(0, |b| b.len()),
                    )?;
                }
                session
                    .write_response_header(Box::new(resp), head_only)
                    .await?;
                if !head_only {
                    session.write_response_body(body, true).await?;
                }
                Ok(())
            }
            Outcome::RequiredFailed(name, failure) => {
                let detail = format!("the required call `{name}` failed: {}", failure.detail);
                let problem = Problem {
                    status: 502,
                    slug: "aggregate-call-failed",
                    title: "A composed call failed",
                    detail: &detail,
                    allow: &[],
                    headers: &[],
                    close: false,
                };
                write_problem(session, Some(route), ctx, &problem).await
            }
        }
    }

    /// The route `req` matches in `config`, if any (without the checks `request_filter`
    /// makes first).
    fn route_of(
        config: &Config,
        req: &pingora::http::RequestHeader,
    ) -> Option<Arc<crate::router::Route>> {
        let host = normalize_host(request_host(req));
        let view = RequestView {
            host: &host,
            path: req.uri.path(),
            method: &req.method,
            headers: &req.headers,
        };
        match config.router.lookup(&view) {
            Lookup::Found(m) => Some(Arc::clone(m.route)),
            _ => None,
        }
    }

    /// Runs the matched route's `on_request` chain; the first refusal or answer ends it.
    async fn run_request_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Flow> {
        let Some(route) = &ctx.route else {
            return Ok(Flow::Continue);
        };
        for plugin in route.plugins.request.iter() {
            match plugin.on_request(session, &mut ctx.state).await? {
                Flow::Continue => {}
                stop => return Ok(stop),
            }
        }
        Ok(Flow::Continue)
    }

    /// Answers with a plugin's refusal or answer, after the route's response-phase plugins
    /// (CORS headers, for one) have seen the header.
    async fn write_plugin_response(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        flow: Flow,
    ) -> Result<()> {
        let route = ctx.route.clone();
        match flow {
            Flow::Continue => Ok(()),
            Flow::Reject(rejection) => {
                write_problem(
                    session,
                    route.as_deref(),
                    ctx,
                    &Problem::rejected(&rejection),
                )
                .await
            }
            Flow::Answer(answer) => {
                let mut resp =
                    ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
                for (name, value) in answer.headers {
                    resp.insert_header(name, value)?;
                }
                // RFC 9110: a 204 carries no Content-Length.
                if answer.status != 204 {
                    resp.insert_header(header::CONTENT_LENGTH, 0)?;
                }
                resp.insert_header(X_REQUEST_ID.clone(), ctx.state.request_id.clone())?;
                run_response_plugins(
                    route.as_deref(),
                    session.req_header(),
                    &mut resp,
                    &mut ctx.state,
                )
                .await?;
                session.write_response_header(Box::new(resp), true).await
            }
        }
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// What routing decided, owned so the session can be written to afterwards.
enum Decision {
    Proxy,
    Respond(Arc<crate::router::Route>),
    Problem(ProblemKind, String, Vec<Method>),
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
        let settings = &config.server;
        // Keep-alive is bounded here, never turned back on: Pingora turns it off for HTTP/1.0
        // without `keep-alive`, for Content-Length with Transfer-Encoding, and at shutdown.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(settings.keepalive_timeout.as_secs().max(1)));
        }
        let peer = peer_ip(session);
        ctx.peer_trusted = peer.is_some_and(|ip| settings.is_trusted(ip));
        let target = target::settle(session.req_header_mut());
        if !ctx.peer_trusted {
            target::strip_untrusted(session.req_header_mut(), &settings.strip_untrusted_headers);
        }
        let req = session.req_header();
        ctx.state.request_id = forwarded::request_id(&req.headers, ctx.peer_trusted);
        ctx.state.client_ip = forwarded::client_ip(peer, ctx.peer_trusted, &req.headers, settings);

        let path = req.uri.path();
        let decision = if header_size(req) > settings.max_request_header_size {
            Decision::Problem(
                ProblemKind::HeaderTooLarge,
                format!(
                    "the request line and headers exceed {} bytes",
                    settings.max_request_header_size
                ),
                Vec::new(),
            )
        } else if let Err(why) = target {
            Decision::Problem(ProblemKind::MalformedRequest, why.into(), Vec::new())
        } else if let Err(why) = forwarded::check_path(path) {
            Decision::Problem(ProblemKind::MalformedRequest, why.into(), Vec::new())
        } else if let Err(why) = valid_host(request_host(req)) {
            Decision::Problem(ProblemKind::MalformedRequest, why.into(), Vec::new())
        } else {
            let host = normalize_host(request_host(req));
            let view = RequestView {
                host: &host,
                path,
                method: &req.method,
                headers: &req.headers,
            };
            let mut lookup = config.router.lookup(&view);
            // A CORS preflight belongs to the route of the method it asks about, when that
            // route answers preflights, even if the route does not list OPTIONS.
            if let (Lookup::MethodNotAllowed(_), Some(requested)) = (&lookup, preflight_method(req))
            {
                let asked = RequestView {
                    method: &requested,
                    ..view
                };
                if let Lookup::Found(m) = config.router.lookup(&asked) {
                    let cors = gantry_plugins::cors::NAME;
                    if m.route.plugins.request.iter().any(|p| p.name() == cors) {
                        lookup = Lookup::Found(m);
                    }
                }
            }
            match lookup {
                Lookup::Found(m) => {
                    ctx.prefix_len = m.prefix_len;
                    ctx.route = Some(Arc::clone(m.route));
                    ctx.state.route = Arc::clone(&m.route.name);
                    match m.route.action {
                        RouteAction::Proxy(_)
                            if m.route.grpc_web
                                && grpc_web_kind(req) == Some(GrpcWebKind::Text) =>
                        {
                            Decision::Problem(
                                ProblemKind::UnsupportedMediaType,
                                "gRPC-Web text (base64) is not supported: send application/grpc-web+proto".into(),
                                Vec::new(),
                            )
                        }
                        RouteAction::Proxy(_) => Decision::Proxy,
                        RouteAction::Respond(_) | RouteAction::Aggregate(_) => {
                            Decision::Respond(Arc::clone(m.route))
                        }
                    }
                }
                Lookup::MethodNotAllowed(allowed) => Decision::Problem(
                    ProblemKind::MethodNotAllowed,
                    format!("{} is not allowed here", req.method),
                    allowed,
                ),
                Lookup::NotFound => Decision::Problem(
                    ProblemKind::NoRoute,
                    "no route matches this host and path".into(),
                    Vec::new(),
                ),
            }
        };
        if matches!(decision, Decision::Proxy | Decision::Respond(_)) {
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
                ctx.error = Some(problem.slug);
                problem.send(session, &ctx.state.request_id).await?;
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

/// The access-log record of a finished request.
fn access_record<'a>(
    session: &'a Session,
    ctx: &'a RequestCtx,
    status: u16,
    took: Duration,
    rate_limited: bool,
) -> Record<'a> {
    let req = session.req_header();
    let seconds = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(from), Some(to)) => Some(to.saturating_duration_since(from)),
        _ => None,
    };
    let header = |name: header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    Record {
        time: std::time::SystemTime::now(),
        request_id: ctx.state.request_id.to_str().unwrap_or_default(),
        client_ip: ctx.state.client_ip,
        method: req.method.as_str(),
        host: request_host(req),
        path: req.uri.path(),
        query: req.uri.query().map(crate::access_log::redact_query),
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        status,
        bytes_in: session.as_downstream().body_bytes_read(),
        bytes_out: session.as_downstream().body_bytes_sent(),
        duration: took,
        upstream: ctx.backend,
        upstream_connect: seconds(ctx.upstream_started, ctx.upstream_connected),
        upstream_response: seconds(ctx.upstream_connected, ctx.upstream_responded),
        route: ctx
            .route
            .as_ref()
            .map_or(crate::metrics::UNMATCHED, |r| &r.name),
        cluster: match ctx.route.as_ref().map(|r| &r.action) {
            Some(RouteAction::Proxy(cluster)) => Some(&cluster.name),
            _ => None,
        },
        consumer: ctx.state.consumer.as_deref().map(|c| &*c.name),
        cache: ctx.state.cache_status.map(|c| c.as_str()),
        rate_limit: match (rate_limited, &ctx.state.rate_limit) {
            (true, _) => Some("limited"),
            (false, Some(_)) => Some("allowed"),
            (false, None) => None,
        },
        error: ctx.error,
        user_agent: header(header::USER_AGENT),
        referer: header(header::REFERER).map(|r| r.split('?').next().unwrap_or_default()),
    }
}

/// `https` when the client connected over TLS, else `http`.
fn downstream_scheme(session: &Session) -> &'static str {
    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    }
}

/// Turns on response compression for this request with the route's `offered` codings.
fn enable_compression(session: &mut Session, offered: &[Algorithm]) {
    // Disjoint fields: the request is read while the module state is changed.
    let req = session.downstream_session.req_header();
    if let Some(compression) = session.downstream_modules_ctx.get_mut::<Compression>() {
        compression.enable(req, offered);
    }
}

/// Who the client is for the cache: its consumer, else the subject of its verified token;
/// `None` when the route authenticates and its plugin produced neither (not cached).
fn client_identity(ctx: &RequestCtx) -> Option<ClientIdentity<'_>> {
    match (&ctx.state.consumer, &ctx.state.jwt_claims) {
        (Some(consumer), _) => Some(ClientIdentity::Consumer(&consumer.name)),
        (None, Some(claims)) => claims
            .get("sub")
            .and_then(|s| s.as_str())
            .map(ClientIdentity::Subject),
        (None, None) if ctx.route.as_ref()?.plugins.authenticates => None,
        (None, None) => Some(ClientIdentity::Nobody),
    }
}

/// The status logged for a request whose client left before any response (nginx's 499).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Whether `error` is the client closing, resetting or stalling its side of the exchange.
fn client_went_away(error: &Error) -> bool {
    *error.esource() == ErrorSource::Downstream
        && matches!(
            error.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
                | ErrorType::H2Error
        )
}

/// The matched route's caching rules.
fn cache_policy(ctx: &RequestCtx) -> Option<&gantry_plugins::cache::CachePolicy> {
    ctx.route.as_ref()?.plugins.cache.as_deref()
}

/// The host a request is for: `Host`, or the URI authority (HTTP/2, absolute-form).
pub(crate) fn request_host(req: &pingora::http::RequestHeader) -> &str {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// A host (with optional port) no longer than DNS allows, made of host-name characters.
fn valid_host(host: &str) -> std::result::Result<(), &'static str> {
    let ok_len = host.len() <= 253 + 6;
    let ok_chars = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err("the Host header is not a valid host name")
    }
}

/// The size of the request line and headers as sent (approximately: separators counted).
fn header_size(req: &pingora::http::RequestHeader) -> usize {
    let line =
        req.method.as_str().len() + req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
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

/// Writes `problem` as the response, after `route`'s response-phase plugins saw its header.
async fn write_problem(
    session: &mut Session,
    route: Option<&crate::router::Route>,
    ctx: &mut RequestCtx,
    problem: &Problem<'_>,
) -> Result<()> {
    ctx.error = Some(problem.slug);
    // The gateway's own response: no upstream body for response plugins to edit.
    ctx.state.response_from_upstream = false;
    let (mut resp, body) = problem.response(&ctx.state.request_id)?;
    run_response_plugins(route, session.req_header(), &mut resp, &mut ctx.state).await?;
    problem.write(session, resp, body).await
}

/// True once a final (non-1xx) response header went to the client: an upstream's
/// `100 Continue` does not stop an error response from being sent after it.
fn final_response_sent(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
}

/// Runs `route`'s response-phase plugins on a response header for `request`.
async fn run_response_plugins(
    route: Option<&crate::router::Route>,
    request: &pingora::http::RequestHeader,
    resp: &mut ResponseHeader,
    state: &mut PluginState,
) -> Result<()> {
    if let Some(route) = route {
        for plugin in route.plugins.response.iter() {
            plugin.on_response(request, resp, state).await?;
        }
    }
    Ok(())
}

/// Runs `route`'s response-body plugins on one body chunk.
fn run_response_body_plugins(
    route: Option<&crate::router::Route>,
    body: &mut Option<bytes::Bytes>,
    end_of_stream: bool,
    state: &mut PluginState,
) -> Result<()> {
    if let Some(route) = route {
        for plugin in route.plugins.response_body.iter() {
            plugin.on_response_body(body, end_of_stream, state)?;
        }
    }
    Ok(())
}

/// The two gRPC-Web encodings.
#[derive(Debug, PartialEq, Eq)]
enum GrpcWebKind {
    /// `application/grpc-web[+proto]`: bridged by Pingora's module.
    Binary,
    /// `application/grpc-web-text[+proto]` (base64): not supported.
    Text,
}

fn grpc_web_kind(req: &pingora::http::RequestHeader) -> Option<GrpcWebKind> {
    let content_type = req.headers.get(header::CONTENT_TYPE)?.as_bytes();
    let starts = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if starts(b"application/grpc-web-text") {
        Some(GrpcWebKind::Text)
    } else if starts(b"application/grpc-web") {
        Some(GrpcWebKind::Binary)
    } else {
        None
    }
}

/// The method a CORS preflight asks for (`OPTIONS` with `Access-Control-Request-Method`).
fn preflight_method(req: &pingora::http::RequestHeader) -> Option<Method> {
    if req.method != Method::OPTIONS || !req.headers.contains_key(header::ORIGIN) {
        return None;
    }
    let requested = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(requested.as_bytes()).ok()
}

/// Writes a route's direct response; the route's response-phase plugins see its header too.
async fn write_direct_response(
    session: &mut Session,
    route: &crate::router::Route,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let RouteAction::Respond(direct) = &route.action else {
        return Ok(());
    };
    let mut resp = ResponseHeader::build(direct.status, Some(direct.headers.len() + 2))?;
    for (name, value) in &direct.headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    resp.insert_header(header::CONTENT_LENGTH, direct.body.len())?;
    resp.insert_header(X_REQUEST_ID.clone(), ctx.state.request_id.clone())?;
    run_response_plugins(Some(route), session.req_header(), &mut resp, &mut ctx.state).await?;
    let no_body = direct.body.is_empty() || session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if !no_body {
        session
            .write_response_body(Some(direct.body.clone()), true)
            .await?;
    }
    Ok(())
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
