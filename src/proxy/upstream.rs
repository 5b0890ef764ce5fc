//! The upstream phase: choosing a backend (again on each retry), deciding retries, the request
//! body plugins, the request sent upstream (prefix, forwarding headers, gRPC-Web, plugins, the
//! rewritten path check) and the upstream's response header.

use super::problem::{
    ALL_BACKENDS_FAILED, BODY_REJECTED, NO_HEALTHY_BACKEND, REWRITTEN_PATH_REFUSED,
};
use super::request::peer_ip;
use super::{Gateway, RequestCtx};
use crate::forwarded::{self, X_REQUEST_ID_WIRE};
use crate::router::RouteAction;
use crate::upstream::hash_key::ip_key;
use http::{header, Uri};
use pingora::http::ResponseHeader;
use pingora::modules::http::grpc_web::GrpcWebBridge;
use pingora::protocols::http::bridge::grpc_web::GrpcWebCtx;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::time::Instant;

impl Gateway {
    pub(super) async fn select_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(RouteAction::Proxy(cluster)) = ctx.route.as_ref().map(|r| &r.action) else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a cluster");
        };
        let mut ip_buf = [0u8; 16];
        let client = ip_key(ctx.state.client.ip, &mut ip_buf);
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

    pub(super) fn decide_retry(&self, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
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
        Ok(())
    }

    pub(super) async fn observe_upstream_response(
        &self,
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
            route
                .plugins
                .run_upstream_response(upstream_response, &mut ctx.state)
                .await?;
        }
        Ok(())
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
