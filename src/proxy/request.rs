//! The request phase before any upstream: trust and request id, the checks of the head, the
//! routing decision (with CORS preflights and gRPC-Web), and the route's request plugins.

use super::{target, Gateway, ProblemKind, RequestCtx};
use crate::compression::Compression;
use crate::config::Config;
use crate::forwarded;
use crate::router::{self, normalize_host, Lookup, RouteAction};
use crate::trace::RequestTrace;
use crate::upstream::hash_key::ip_key;
use gantry_plugins::{ClientCertificate, ClientFacts, Flow, RequestView, Scheme};
use http::{header, Method};
use pingora::http::RequestHeader;
use pingora::protocols::http::compression::Algorithm;
use pingora::proxy::Session;
use pingora::Result;
use std::net::IpAddr;
use std::sync::Arc;

impl Gateway {
    /// The route `req` matches in `config`, if any (without the checks `request_filter`
    /// makes first).
    pub(super) fn route_of(
        config: &Config,
        req: &pingora::http::RequestHeader,
    ) -> Option<Arc<crate::router::Route>> {
        let host = normalize_host(request_host(req));
        let view = router::RequestView {
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

    /// Runs the matched route's request phase; the first refusal or answer ends it.
    pub(super) async fn run_request_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Flow> {
        let Some(route) = &ctx.route else {
            return Ok(Flow::Continue);
        };
        let has_body = !session.is_body_empty();
        let mut view = RequestView {
            header: session.req_header(),
            has_body,
            state: &mut ctx.state,
        };
        if !route.server_timing {
            return route.plugins.run_request(&mut view).await;
        }
        let started = std::time::Instant::now();
        let flow = route.plugins.run_request(&mut view).await;
        ctx.plugins_took = Some(started.elapsed());
        flow
    }
}

/// Settles the target, strips untrusted headers, sets the request id and client IP, checks the
/// head and routes: what the gateway does with the request.
pub(super) fn decide(session: &mut Session, ctx: &mut RequestCtx, config: &Config) -> Decision {
    let settings = &config.server;
    // Keep-alive is bounded here, never turned back on: Pingora turns it off for HTTP/1.0
    // without `keep-alive`, for Content-Length with Transfer-Encoding, and at shutdown.
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(settings.keepalive_timeout.as_secs().max(1)));
    }
    let target = identify(session, ctx, settings);
    let req = session.req_header();
    if config.tracing.is_some() {
        ctx.trace = Some(Box::new(RequestTrace::begin(
            &req.headers,
            ctx.peer_trusted,
        )));
    }
    let decision = match check_head(req, target, settings) {
        Err(why) => Decision::Problem(why.0, why.1, Vec::new()),
        Ok(()) => route(req, ctx, config),
    };
    sample(ctx, config);
    decision
}

/// Decides whether the request's trace is sampled, by its route's ratio (or the global one
/// when it has none or matched no route), and lets the plugins record their decisions if so.
fn sample(ctx: &mut RequestCtx, config: &Config) {
    let (Some(trace), Some(tracing)) = (&mut ctx.trace, &config.tracing) else {
        return;
    };
    let ratio = ctx
        .route
        .as_ref()
        .and_then(|r| r.trace_ratio)
        .unwrap_or(tracing.sample_ratio);
    if trace.sample(ratio) {
        ctx.state.trace.start_recording();
    }
    if ctx.route.as_ref().is_some_and(|r| r.plugins.calls_out) {
        ctx.state.outbound_traceparent = Some(trace.child_traceparent());
    }
}

/// Trust of the direct peer, the settled target, untrusted headers stripped, the request id
/// and the client's facts. Returns how the target settled.
fn identify(
    session: &mut Session,
    ctx: &mut RequestCtx,
    settings: &crate::config::ServerSettings,
) -> Result<(), &'static str> {
    let peer = peer_ip(session);
    ctx.peer_trusted = peer.is_some_and(|ip| settings.is_trusted(ip));
    let target = target::settle(session.req_header_mut());
    gantry_plugins::gateway::remove_headers_and_aliases(
        session.req_header_mut(),
        settings.stripped_headers.for_peer(ctx.peer_trusted),
    );
    let req = session.req_header();
    ctx.state.request_id = forwarded::request_id(&req.headers, ctx.peer_trusted);
    let tls = session.digest().and_then(|d| d.ssl_digest.clone());
    ctx.state.client = ClientFacts {
        ip: forwarded::client_ip(peer, ctx.peer_trusted, &req.headers, settings),
        scheme: if tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        },
        certificate: tls
            .as_ref()
            .and_then(|d| d.extension.get::<Arc<ClientCertificate>>())
            .cloned(),
        tls,
    };
    target
}

/// The head's size, target, path and host, before routing.
fn check_head(
    req: &RequestHeader,
    target: Result<(), &'static str>,
    settings: &crate::config::ServerSettings,
) -> Result<(), (ProblemKind, String)> {
    let malformed = |why: &str| (ProblemKind::MalformedRequest, why.to_string());
    if header_size(req) > settings.max_request_header_size {
        return Err((
            ProblemKind::HeaderTooLarge,
            format!(
                "the request line and headers exceed {} bytes",
                settings.max_request_header_size
            ),
        ));
    }
    target.map_err(malformed)?;
    forwarded::check_path(req.uri.path()).map_err(malformed)?;
    valid_host(request_host(req)).map_err(malformed)
}

/// The routing decision: the route (a CORS preflight takes the route of the method it asks
/// about), or 404/405, or 415 for gRPC-Web text.
fn route(req: &RequestHeader, ctx: &mut RequestCtx, config: &Config) -> Decision {
    let host = normalize_host(request_host(req));
    let view = router::RequestView {
        host: &host,
        path: req.uri.path(),
        method: &req.method,
        headers: &req.headers,
    };
    let mut lookup = config.router.lookup(&view);
    // A CORS preflight belongs to the route of the method it asks about, when that route
    // answers preflights, even if the route does not list OPTIONS.
    if let (Lookup::MethodNotAllowed(_), Some(requested)) = (&lookup, preflight_method(req)) {
        let asked = router::RequestView {
            method: &requested,
            ..view
        };
        if let Lookup::Found(m) = config.router.lookup(&asked) {
            if m.route.plugins.answers_preflights {
                lookup = Lookup::Found(m);
            }
        }
    }
    let m = match lookup {
        Lookup::Found(m) => m,
        Lookup::MethodNotAllowed(allowed) => {
            return Decision::Problem(
                ProblemKind::MethodNotAllowed,
                format!("{} is not allowed here", req.method),
                allowed,
            )
        }
        Lookup::NotFound => {
            return Decision::Problem(
                ProblemKind::NoRoute,
                "no route matches this host and path".into(),
                Vec::new(),
            )
        }
    };
    ctx.prefix_len = m.prefix_len;
    ctx.route = Some(Arc::clone(m.route));
    ctx.state.route = Arc::clone(&m.route.name);
    let proxied = match &m.route.action {
        RouteAction::Proxy(cluster) => Some(Arc::clone(cluster)),
        RouteAction::Split(split) => {
            let mut ip_buf = [0u8; 16];
            let client = ip_key(ctx.state.client.ip, &mut ip_buf);
            let key = split.key().map(|k| k.key(req, client));
            Some(Arc::clone(split.choose(key)))
        }
        RouteAction::Respond(_) | RouteAction::Aggregate(_) => None,
    };
    ctx.cluster = proxied;
    match m.route.action {
        RouteAction::Proxy(_) | RouteAction::Split(_)
            if m.route.grpc_web && grpc_web_kind(req) == Some(GrpcWebKind::Text) =>
        {
            Decision::Problem(
                ProblemKind::UnsupportedMediaType,
                "gRPC-Web text (base64) is not supported: send application/grpc-web+proto".into(),
                Vec::new(),
            )
        }
        RouteAction::Proxy(_) | RouteAction::Split(_) => Decision::Proxy,
        RouteAction::Respond(_) | RouteAction::Aggregate(_) => {
            Decision::Respond(Arc::clone(m.route))
        }
    }
}

/// What routing decided, owned so the session can be written to afterwards.
pub(super) enum Decision {
    Proxy,
    Respond(Arc<crate::router::Route>),
    Problem(ProblemKind, String, Vec<Method>),
}

/// The two gRPC-Web encodings.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GrpcWebKind {
    /// `application/grpc-web[+proto]`: bridged by Pingora's module.
    Binary,
    /// `application/grpc-web-text[+proto]` (base64): not supported.
    Text,
}

pub(super) fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
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

pub(super) fn grpc_web_kind(req: &pingora::http::RequestHeader) -> Option<GrpcWebKind> {
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

/// Turns on response compression for this request with the route's `offered` codings.
pub(super) fn enable_compression(session: &mut Session, offered: &[Algorithm]) {
    // Disjoint fields: the request is read while the module state is changed.
    let req = session.downstream_session.req_header();
    if let Some(compression) = session.downstream_modules_ctx.get_mut::<Compression>() {
        compression.enable(req, offered);
    }
}
