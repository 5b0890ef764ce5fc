//! The end of a request: its status (499 for a client that left), metrics and access-log record.

use super::request::request_host;
use super::RequestCtx;
use crate::access_log::Record;
use crate::router::RouteAction;
use http::header;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};
use std::time::{Duration, Instant};

/// The access-log record of a finished request.
pub(super) fn access_record<'a>(
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

/// The status logged for a request whose client left before any response (nginx's 499).
pub(super) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Whether `error` is the client closing, resetting or stalling its side of the exchange.
pub(super) fn client_went_away(error: &Error) -> bool {
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

/// `https` when the client connected over TLS, else `http`.
pub(super) fn downstream_scheme(session: &Session) -> &'static str {
    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    }
}
