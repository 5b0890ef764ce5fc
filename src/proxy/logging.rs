//! The end of a request: its status (499 for a client that left), metrics and access-log record.

use super::cache_hooks::cache_policy;
use super::ctx::Failure;
use super::request::request_host;
use super::RequestCtx;
use super::{Gateway, ProblemKind};
use crate::access_log::Record;
use crate::trace::context::{span_id_hex, trace_id_hex, HexId};
use gantry_plugins::gateway::CacheStatus;
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
    trace_ids: Option<&'a (HexId<32>, HexId<16>)>,
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
        client_ip: ctx.state.client.ip,
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
        attempts: ctx.attempts,
        route: ctx
            .route
            .as_ref()
            .map_or(crate::metrics::UNMATCHED, |r| &r.name),
        cluster: ctx.cluster.as_ref().map(|c| &*c.name),
        consumer: ctx.state.consumer.as_deref().map(|c| &*c.name),
        cache: ctx.state.cache_status.map(|c| c.as_str()),
        rate_limit: match (rate_limited, ctx.state.rate_limit_counted) {
            (true, _) => Some("limited"),
            (false, true) => Some("allowed"),
            (false, false) => None,
        },
        error: ctx.error.map(Failure::slug),
        user_agent: header(header::USER_AGENT),
        referer: header(header::REFERER).map(|r| r.split('?').next().unwrap_or_default()),
        trace_id: trace_ids.map(|(trace, _)| trace.as_str()),
        span_id: trace_ids.map(|(_, span)| span.as_str()),
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

impl Gateway {
    pub(super) async fn log_request(
        &self,
        session: &mut Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
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
            route.plugins.run_log(&ctx.state, status).await;
        }
        if ctx.error.is_none() {
            ctx.error = e.and_then(ProblemKind::from_error).map(Failure::Gateway);
        }
        let took = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let rate_limited =
            ctx.error == Some(Failure::Plugin(gantry_plugins::gateway::RATE_LIMITED_SLUG));
        let metrics = ctx.route.as_ref().map_or(&self.unmatched, |r| &r.metrics);
        metrics.record(&session.req_header().method, status, took, rate_limited);
        if cache_policy(ctx).is_some() {
            let cache = ctx.state.cache_status.unwrap_or(CacheStatus::Bypass);
            metrics.record_cache(cache);
        }
        let sampled = ctx.trace.as_ref().is_some_and(|t| t.sampled);
        if !self.access_log.enabled() && !sampled {
            return;
        }
        let trace_ids = ctx
            .trace
            .as_ref()
            .map(|t| (trace_id_hex(&t.trace_id), span_id_hex(&t.span_id)));
        let record = access_record(session, ctx, status, took, rate_limited, trace_ids.as_ref());
        if self.access_log.enabled() {
            self.access_log.write(&record);
        }
        let tracing = ctx.config.as_ref().and_then(|c| c.tracing.as_deref());
        if let (Some(trace), Some(tracing), Some(started)) = (&ctx.trace, tracing, ctx.started) {
            let scheme = ctx.state.client.scheme.as_str();
            let spans = trace.finish(&record, started, scheme, &ctx.state.trace);
            crate::trace::export::submit(spans, tracing);
        }
    }
}
