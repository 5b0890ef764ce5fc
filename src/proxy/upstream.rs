//! The upstream phase: choosing a backend (again on each retry), deciding retries, the request
//! body plugins, the request sent upstream (prefix, forwarding headers, gRPC-Web, plugins, the
//! rewritten path check, the mirror's copy) and the upstream's response header.

use super::problem::{
    ALL_BACKENDS_FAILED, BODY_REJECTED, NO_HEALTHY_BACKEND, REWRITTEN_PATH_REFUSED, STATUS_RETRY,
    UPSTREAM_OVERLOADED,
};
use super::request::peer_ip;
use super::{Gateway, RequestCtx};
use crate::forwarded::{self, X_REQUEST_ID_WIRE};
use crate::upstream::hash_key::ip_key;
use crate::upstream::{Cluster, InFlight, RetryReason};
use http::{header, Uri};
use pingora::http::ResponseHeader;
use pingora::modules::http::grpc_web::GrpcWebBridge;
use pingora::protocols::http::bridge::grpc_web::GrpcWebCtx;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Gateway {
    pub(super) async fn select_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(cluster) = proxied_cluster(ctx).cloned() else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a cluster");
        };
        if ctx.attempts == 0 {
            let Some(slot) = cluster.admit() else {
                cluster.metrics.record_overloaded();
                return Error::e_explain(
                    UPSTREAM_OVERLOADED,
                    format!("cluster {}: max_requests in flight", cluster.name),
                );
            };
            ctx.cluster_slot = Some(slot);
            cluster.retry_budget.record_request();
            ctx.deadline = ctx
                .route
                .as_ref()
                .and_then(|r| r.timeout)
                .and_then(|t| ctx.started.unwrap_or_else(Instant::now).checked_add(t));
        } else {
            // A retry waits its backoff, within the route's deadline.
            let delay = cluster.resilience.retry.backoff.delay(ctx.attempts);
            let delay = match ctx.deadline {
                Some(deadline) => delay.min(deadline.saturating_duration_since(Instant::now())),
                None => delay,
            };
            tokio::time::sleep(delay).await;
        }
        let remaining = match ctx.deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return deadline_passed(),
            },
            None => None,
        };
        let mut ip_buf = [0u8; 16];
        let client = ip_key(ctx.state.client.ip, &mut ip_buf);
        let key = match cluster.hash_on() {
            Some(hash_on) => hash_on.key(session.req_header(), client),
            None => &[],
        };
        match cluster.select(key, &ctx.failed) {
            Some(picked) => {
                ctx.backend = Some(picked.addr);
                ctx.backend_slot = Some(InFlight::enter(&picked.state.in_flight));
                ctx.attempts += 1;
                if let Some(trace) = &mut ctx.trace {
                    trace.start_attempt(ctx.attempts, picked.addr);
                }
                ctx.upstream_started = Some(Instant::now());
                ctx.upstream_connected = None;
                let mut peer = Box::new(picked.peer);
                limit_attempt(
                    &mut peer,
                    cluster.resilience.retry.per_try_timeout,
                    remaining,
                );
                Ok(peer)
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

    /// After a failed connect (`connected` false) or a failed exchange: records the backend's
    /// failure and decides whether the request is tried again.
    pub(super) fn decide_retry(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
        connected: Option<bool>,
    ) -> Box<Error> {
        let Some(cluster) = proxied_cluster(ctx).cloned() else {
            return e;
        };
        if *e.etype() == STATUS_RETRY {
            // Decided when the response header arrived.
            return e;
        }
        let reason = match connected {
            None => RetryReason::ConnectFailure,
            Some(_) if *e.esource() != ErrorSource::Upstream => {
                if let Some(trace) = &mut ctx.trace {
                    let downstream = *e.esource() == ErrorSource::Downstream;
                    trace.attempt_failed(if downstream {
                        "client-failure"
                    } else {
                        "gateway-failure"
                    });
                }
                e.set_retry(false);
                return e;
            }
            Some(_) => match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => RetryReason::Timeout,
                _ => RetryReason::Reset,
            },
        };
        if let Some(trace) = &mut ctx.trace {
            trace.attempt_failed(reason.as_str());
        }
        // What Pingora itself knows is safe to try again says nothing about the backend: a
        // pooled connection it had already closed, an HTTP/2 stream refused or a connection
        // going away (GOAWAY) before the request was processed. Tried again for idempotent
        // requests, outside the policy's conditions and budget, without counting a failure.
        let safe_by_pingora = connected.is_some()
            && match e.retry {
                pingora::RetryType::ReusedOnly => connected == Some(true),
                pingora::RetryType::Decided(retry) => retry,
            };
        let stale = safe_by_pingora;
        if !stale {
            if let Some(addr) = ctx.backend {
                let took = ctx
                    .upstream_started
                    .map(|s| s.elapsed())
                    .unwrap_or_default();
                cluster.record_failed_attempt(addr, took);
                ctx.failed.push(addr);
            }
        }
        let policy = &cluster.resilience.retry;
        let method = &session.req_header().method;
        let retry = if stale {
            method_idempotent(method)
                && !ctx.state.response_from_upstream
                && self.may_try_again(session, ctx, &cluster, None)
        } else {
            policy.allows(reason, method)
                && !ctx.state.response_from_upstream
                && self.may_try_again(session, ctx, &cluster, Some(reason))
        };
        e.set_retry(retry);
        e
    }

    /// Whether another attempt may follow after a failure for `reason` (`None`: one Pingora
    /// knows is safe): attempts, the deadline, a replayable body (none yet through a plugin
    /// that holds body state), a backend to send it to, and last (it takes one) the cluster's
    /// retry budget. Connect failures and Pingora's safe retries are not charged to the budget:
    /// they add no load on the backend.
    fn may_try_again(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cluster: &Cluster,
        reason: Option<RetryReason>,
    ) -> bool {
        let body_replayable = !session.as_ref().retry_buffer_truncated()
            && (ctx.state.request_body_bytes == 0
                || !ctx
                    .route
                    .as_ref()
                    .is_some_and(|r| r.plugins.edits_request_body()));
        ctx.deadline.is_none_or(|d| Instant::now() < d)
            && body_replayable
            && cluster.may_retry(reason, ctx.attempts, &ctx.failed)
    }

    pub(super) async fn filter_request_body(
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
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some(rejection) = route
            .plugins
            .run_request_body(body, end_of_stream, &mut ctx.state)
        {
            ctx.body_rejection = Some(rejection);
            return Error::e_explain(BODY_REJECTED, "a plugin refused the request body");
        }
        ctx.mirroring
            .body_sent(body.as_ref(), end_of_stream, &self.connector);
        Ok(())
    }

    pub(super) async fn prepare_upstream_request(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Each attempt (a retry resends the body through the body filters) starts counting and
        // buffering the body afresh.
        ctx.state.request_body_bytes = 0;
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
            ctx.state.client.scheme.as_str(),
            host,
        )?;
        upstream.insert_header(X_REQUEST_ID_WIRE, ctx.state.request_id.clone())?;
        if let Some(trace) = &ctx.trace {
            trace.propagate(upstream, trace.upstream_traceparent())?;
        }
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
            route
                .plugins
                .run_upstream_request(upstream, &mut ctx.state)
                .await?;
        }
        // A rewritten path is held to the rules of a client's.
        if let Err(why) = forwarded::check_path(upstream.uri.path()) {
            return Error::e_explain(REWRITTEN_PATH_REFUSED, why);
        }
        // An upgrade's frames are not a request to copy.
        let mirror = ctx.route.as_ref().and_then(|r| r.mirror.as_ref());
        if let Some(mirror) = mirror.filter(|_| !session.is_upgrade_req()) {
            let trace = ctx.trace.as_deref();
            ctx.mirroring
                .header_sent(mirror, upstream, ctx.state.client.ip, trace);
        }
        Ok(())
    }

    pub(super) async fn observe_upstream_response(
        &self,
        session: &Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let now = Instant::now();
        ctx.upstream_responded = Some(now);
        // A 1xx is passed on to the client (a response has started): neither timed nor judged.
        let final_header = !upstream_response.status.is_informational();
        if let Some(trace) = ctx.trace.as_mut().filter(|_| final_header) {
            trace.attempt_answered(upstream_response.status.as_u16());
        }
        if let Some(cluster) = proxied_cluster(ctx).cloned().filter(|_| final_header) {
            if let Some(started) = ctx.upstream_started {
                cluster.metrics.upstream_duration.observe(now - started);
                if let Some(addr) = ctx.backend {
                    cluster.record_latency(addr, now - started);
                }
            }
            self.judge_status(session, ctx, &cluster, upstream_response.status.as_u16())?;
        }
        if let Some(route) = &ctx.route {
            route
                .plugins
                .run_upstream_response(upstream_response, &mut ctx.state)
                .await?;
        }
        Ok(())
    }
}

impl Gateway {
    /// A response header's status: a success or a failure of the backend (outlier detection),
    /// and an error that retries the request when the policy retries this status and another
    /// attempt may follow (otherwise the response goes to the client as it is).
    fn judge_status(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        cluster: &Cluster,
        status: u16,
    ) -> Result<()> {
        let Some(addr) = ctx.backend else {
            return Ok(());
        };
        if !cluster.judge_status(addr, status) {
            return Ok(());
        }
        ctx.failed.push(addr);
        let method = &session.req_header().method;
        if cluster.resilience.retry.allows(RetryReason::Status, method)
            && !ctx.state.response_from_upstream
            && self.may_try_again(session, ctx, cluster, Some(RetryReason::Status))
        {
            let mut e = Error::explain(STATUS_RETRY, format!("backend {addr} answered {status}"));
            e.set_retry(true);
            return Err(e.into_up());
        }
        Ok(())
    }
}

/// The cluster a proxied request goes to.
fn proxied_cluster(ctx: &RequestCtx) -> Option<&Arc<Cluster>> {
    ctx.cluster.as_ref()
}

/// The methods RFC 9110 calls idempotent.
fn method_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// Bounds one attempt by the policy's `per_try_timeout` and what is left of the route's
/// deadline, from now: the connect, and with it the wait for the response header (one instant
/// both must be done by).
fn limit_attempt(peer: &mut HttpPeer, per_try: Option<Duration>, remaining: Option<Duration>) {
    let limit = match (per_try, remaining) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => match a.or(b) {
            Some(limit) => limit,
            None => return,
        },
    };
    let options = &mut peer.options;
    for timeout in [
        &mut options.connection_timeout,
        &mut options.total_connection_timeout,
    ] {
        *timeout = Some(timeout.map_or(limit, |t| t.min(limit)));
    }
    options.response_header_not_after = tokio::time::Instant::now().checked_add(limit);
}

/// The route's deadline passed before another attempt could start: a 504.
fn deadline_passed<T>() -> Result<T> {
    let mut e = Error::explain(ErrorType::ReadTimedout, "the route's timeout passed");
    e.as_up();
    Err(e)
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
