//! Every response the gateway makes itself: problems, direct responses, plugin answers and
//! merged `aggregate` bodies. Each carries the request id and passes the route's response
//! plugins (CORS headers, for one) before it is written.

use super::ctx::{Failure, AGGREGATE_CALL_FAILED};
use super::problem::REWRITTEN_PATH_REFUSED;
use super::ProblemKind;
use super::{Gateway, Problem, RequestCtx};
use crate::aggregate::{Aggregate, ClientRequest, Outcome};
use crate::forwarded;
use crate::forwarded::X_REQUEST_ID_WIRE;
use crate::router::{Route, RouteAction};
use crate::trace::context::trace_id_hex;
use gantry_plugins::{Flow, PluginState};
use http::{header, Method};
use pingora::http::ResponseHeader;
use pingora::proxy::FailToProxy;
use pingora::proxy::Session;
use pingora::Error;
use pingora::Result;

impl Gateway {
    /// Answers an `aggregate` route: the calls' merged JSON, or a 502 naming the required call
    /// that failed.
    pub(super) async fn write_aggregate(
        &self,
        session: &mut Session,
        aggregate: &Aggregate,
        route: &Route,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = ClientRequest {
            header: session.req_header(),
            state: &ctx.state,
            trace: ctx.trace.as_deref(),
        };
        match aggregate.run(&self.connector, &client).await {
            Outcome::Merged(body, partial) => {
                let body = bytes::Bytes::from(body.to_string());
                let mut resp = ResponseHeader::build(200, Some(5))?;
                resp.insert_header(header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(header::CONTENT_LENGTH, body.len())?;
                if !partial.is_empty() {
                    resp.insert_header("Gantry-Partial", partial.join(", "))?;
                }
                // The merged body is the upstreams' content: response plugins edit it as they
                // would a proxied one.
                let content = Content::Upstream(body);
                write_response(session, Some(route), ctx, resp, content).await
            }
            Outcome::RequiredFailed(name, failure) => {
                let detail = format!("the required call `{name}` failed: {}", failure.detail);
                let problem = Problem {
                    status: 502,
                    slug: AGGREGATE_CALL_FAILED,
                    title: "A composed call failed",
                    detail: &detail,
                    allow: &[],
                    headers: &[],
                    close: false,
                };
                write_problem(session, Some(route), ctx, &problem, Failure::AggregateCall).await
            }
        }
    }

    /// Answers with a plugin's refusal or answer, after the route's response-phase plugins
    /// (CORS headers, for one) have seen the header.
    pub(super) async fn write_plugin_response(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        flow: Flow,
    ) -> Result<()> {
        let route = ctx.route.clone();
        match flow {
            Flow::Continue => Ok(()),
            Flow::Reject(rejection) => {
                let failure = Failure::Plugin(rejection.slug);
                let problem = Problem::rejected(&rejection);
                write_problem(session, route.as_deref(), ctx, &problem, failure).await
            }
            Flow::Answer(answer) => {
                let mut resp =
                    ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
                // Appended: an answer may carry a header twice (two `Set-Cookie`).
                for (name, value) in answer.headers {
                    resp.append_header(name, value)?;
                }
                // RFC 9110: a 204 or 304 carries no body (nor, here, a Content-Length).
                let bodiless = matches!(answer.status, 204 | 304);
                let body = if bodiless {
                    bytes::Bytes::new()
                } else {
                    resp.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
                    answer.body
                };
                let content = Content::Gateway(body);
                write_response(session, route.as_deref(), ctx, resp, content).await
            }
        }
    }
}

/// Writes `problem` as the response, after `route`'s response-phase plugins saw its header.
pub(super) async fn write_problem(
    session: &mut Session,
    route: Option<&Route>,
    ctx: &mut RequestCtx,
    problem: &Problem<'_>,
    failure: Failure,
) -> Result<()> {
    ctx.error = Some(failure);
    if problem.close {
        session.set_keepalive(None);
    }
    let trace_id = ctx.trace.as_ref().map(|t| trace_id_hex(&t.trace_id));
    let trace_id = trace_id.as_ref().map(|t| t.as_str());
    let (resp, body) = problem.response(&ctx.state.request_id, trace_id)?;
    let content = Content::Gateway(bytes::Bytes::from(body));
    write_response(session, route, ctx, resp, content).await
}

/// The body of a response the gateway writes.
pub(super) enum Content {
    /// The gateway's own (a problem, a direct response, a plugin's answer): response-body
    /// plugins leave it alone.
    Gateway(bytes::Bytes),
    /// Upstream content (an `aggregate` route's merged calls): response-body plugins edit it
    /// as they would a proxied body.
    Upstream(bytes::Bytes),
}

/// The one writer of every response the gateway makes: it adds the request id, runs the
/// route's response plugins on the header (and, on upstream content, the body plugins on the
/// whole body before the header goes out, so a body that cannot be edited is still a 502 and
/// its length is known), and leaves the body out for `HEAD`.
pub(super) async fn write_response(
    session: &mut Session,
    route: Option<&Route>,
    ctx: &mut RequestCtx,
    mut resp: ResponseHeader,
    content: Content,
) -> Result<()> {
    resp.insert_header(X_REQUEST_ID_WIRE, ctx.state.request_id.clone())?;
    if let Some(timing) = super::timing::server_timing(ctx) {
        resp.insert_header(super::timing::SERVER_TIMING, timing)?;
    }
    let (body, from_upstream) = match content {
        Content::Gateway(body) => (body, false),
        Content::Upstream(body) => (body, true),
    };
    ctx.state.response_from_upstream = from_upstream;
    let req = session.req_header();
    run_response_plugins(route, req, &mut resp, &mut ctx.state).await?;
    let mut body = (req.method != Method::HEAD).then_some(body);
    if let (true, Some(route)) = (from_upstream && body.is_some(), route) {
        route
            .plugins
            .run_response_body(&mut body, true, &mut ctx.state)?;
        resp.remove_header(&header::TRANSFER_ENCODING);
        resp.insert_header(header::CONTENT_LENGTH, body.as_ref().map_or(0, |b| b.len()))?;
    }
    let body = body.filter(|b| !b.is_empty());
    session
        .write_response_header(Box::new(resp), body.is_none())
        .await?;
    if body.is_some() {
        session.write_response_body(body, true).await?;
    }
    Ok(())
}

/// True once a final (non-1xx) response header went to the client: an upstream's
/// `100 Continue` does not stop an error response from being sent after it.
pub(super) fn final_response_sent(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
}

/// Runs `route`'s response-phase plugins on a response header for `request`.
pub(super) async fn run_response_plugins(
    route: Option<&Route>,
    request: &pingora::http::RequestHeader,
    resp: &mut ResponseHeader,
    state: &mut PluginState,
) -> Result<()> {
    match route {
        Some(route) => route.plugins.run_response(request, resp, state).await,
        None => Ok(()),
    }
}

/// Runs `route`'s response-body plugins on one body chunk.
pub(super) fn run_response_body_plugins(
    route: Option<&Route>,
    body: &mut Option<bytes::Bytes>,
    end_of_stream: bool,
    state: &mut PluginState,
) -> Result<()> {
    match route {
        Some(route) => route.plugins.run_response_body(body, end_of_stream, state),
        None => Ok(()),
    }
}

/// Writes a route's direct response; the route's response-phase plugins see its header too.
pub(super) async fn write_direct_response(
    session: &mut Session,
    route: &Route,
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
    let content = Content::Gateway(direct.body.clone());
    write_response(session, Some(route), ctx, resp, content).await
}

impl Gateway {
    pub(super) async fn answer_failure(
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
                let failure = Failure::Plugin(rejection.slug);
                if let Err(err) =
                    write_problem(session, route.as_deref(), ctx, &problem, failure).await
                {
                    log::debug!("could not send the error response: {err}");
                }
            }
            return FailToProxy {
                error_code: rejection.status,
                can_reuse_downstream: false,
            };
        }
        ctx.error = Some(Failure::Gateway(kind));
        if !final_response_sent(session) {
            let detail = match kind {
                ProblemKind::UpstreamTimeout => "the upstream did not answer in time",
                ProblemKind::NoHealthyBackend => "no backend of the cluster is healthy",
                ProblemKind::UpstreamOverloaded => {
                    "the upstream has as many requests in flight as it accepts; retry shortly"
                }
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
            let failure = Failure::Gateway(kind);
            if let Err(err) = write_problem(session, route.as_deref(), ctx, &problem, failure).await
            {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: kind.status(),
            can_reuse_downstream: false,
        }
    }
}
