//! RFC 9457 problem+json error responses, written in one place for every error.
//!
//! Each kind has a stable `type` URI (`urn:gantry:problem:SLUG`) documented in `docs/errors.md`.
//! Every body carries the request id; the `detail` never contains secrets or upstream internals.

use gantry_plugins::gateway::NOT_EDITABLE;
use gantry_plugins::Rejection;
use http::{header, HeaderName, HeaderValue, Method};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// Error type raised by `upstream_peer` when no backend of the cluster is healthy.
pub const NO_HEALTHY_BACKEND: ErrorType = ErrorType::Custom("no healthy backend");
/// Error type raised by `request_body_filter` when a plugin refuses the body; the refusal
/// itself waits in the request's context.
pub const BODY_REJECTED: ErrorType = ErrorType::Custom("request body refused");
/// Error type raised by `upstream_request_filter` when a rewrite produced a path a client could
/// not have sent (a 400).
pub const REWRITTEN_PATH_REFUSED: ErrorType = ErrorType::Custom("rewritten path refused");
/// Error type raised by `upstream_peer` when the cluster has `max_requests` in flight.
pub const UPSTREAM_OVERLOADED: ErrorType = ErrorType::Custom("cluster overloaded");
/// Error type raised by `upstream_response_filter` to retry a response with a retried status.
pub const STATUS_RETRY: ErrorType = ErrorType::Custom("status retried");
/// Error type raised when every backend tried for a request failed to connect.
pub const ALL_BACKENDS_FAILED: ErrorType = ErrorType::Custom("every backend tried failed");

/// The stable kinds of error a client can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// 400: the request cannot be routed as sent.
    MalformedRequest,
    /// 404: no route matched.
    NoRoute,
    /// 405: a route matched the path but not the method.
    MethodNotAllowed,
    /// 408: the request head was not complete within `server.header_timeout`.
    RequestTimeout,
    /// 415: the body's media type is not supported here (gRPC-Web text).
    UnsupportedMediaType,
    /// 431: the request line and headers are larger than `server.max_request_header_size`.
    HeaderTooLarge,
    /// 501: a transfer coding other than `chunked`.
    UnsupportedTransferCoding,
    /// 500: a bug or an unexpected internal failure.
    Internal,
    /// 502: the upstream could not be reached or answered badly.
    UpstreamUnavailable,
    /// 502: the route edits the upstream's JSON response, and this one cannot be edited.
    ResponseNotEditable,
    /// 503: the cluster has no healthy backend.
    NoHealthyBackend,
    /// 503: the cluster has `max_requests` in flight (circuit breaker).
    UpstreamOverloaded,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
}

impl ProblemKind {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ProblemKind::MalformedRequest => 400,
            ProblemKind::NoRoute => 404,
            ProblemKind::MethodNotAllowed => 405,
            ProblemKind::RequestTimeout => 408,
            ProblemKind::UnsupportedMediaType => 415,
            ProblemKind::HeaderTooLarge => 431,
            ProblemKind::Internal => 500,
            ProblemKind::UnsupportedTransferCoding => 501,
            ProblemKind::UpstreamUnavailable | ProblemKind::ResponseNotEditable => 502,
            ProblemKind::NoHealthyBackend | ProblemKind::UpstreamOverloaded => 503,
            ProblemKind::UpstreamTimeout => 504,
        }
    }

    /// The last part of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::MalformedRequest => "malformed-request",
            ProblemKind::NoRoute => "no-route",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::RequestTimeout => "request-timeout",
            ProblemKind::UnsupportedMediaType => "unsupported-media-type",
            ProblemKind::UnsupportedTransferCoding => "unsupported-transfer-coding",
            ProblemKind::HeaderTooLarge => "header-too-large",
            ProblemKind::Internal => "internal-error",
            ProblemKind::UpstreamUnavailable => "upstream-unavailable",
            ProblemKind::ResponseNotEditable => "response-not-editable",
            ProblemKind::NoHealthyBackend => "no-healthy-backend",
            ProblemKind::UpstreamOverloaded => "upstream-overloaded",
            ProblemKind::UpstreamTimeout => "upstream-timeout",
        }
    }

    /// The short human summary.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::MalformedRequest => "Malformed request",
            ProblemKind::NoRoute => "No route matched",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::RequestTimeout => "Request timeout",
            ProblemKind::UnsupportedMediaType => "Unsupported media type",
            ProblemKind::UnsupportedTransferCoding => "Unsupported transfer coding",
            ProblemKind::HeaderTooLarge => "Request header too large",
            ProblemKind::Internal => "Internal error",
            ProblemKind::UpstreamUnavailable => "Upstream unavailable",
            ProblemKind::ResponseNotEditable => "Upstream response not editable",
            ProblemKind::NoHealthyBackend => "No healthy backend",
            ProblemKind::UpstreamOverloaded => "Upstream overloaded",
            ProblemKind::UpstreamTimeout => "Upstream timeout",
        }
    }

    /// Classifies a proxying error; `None` when the client is gone and nothing can be sent.
    pub fn from_error(e: &Error) -> Option<ProblemKind> {
        use ErrorType::*;
        let kind = match (e.etype(), e.esource()) {
            (t, _) if *t == NO_HEALTHY_BACKEND => ProblemKind::NoHealthyBackend,
            (t, _) if *t == UPSTREAM_OVERLOADED => ProblemKind::UpstreamOverloaded,
            (t, _) if *t == ALL_BACKENDS_FAILED => ProblemKind::UpstreamUnavailable,
            (t, _) if *t == REWRITTEN_PATH_REFUSED => ProblemKind::MalformedRequest,
            (t, _) if *t == NOT_EDITABLE => ProblemKind::ResponseNotEditable,
            (HTTPStatus(404), _) => ProblemKind::NoRoute,
            (HTTPStatus(code), _) if (400..500).contains(code) => ProblemKind::MalformedRequest,
            (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
                ProblemKind::UpstreamTimeout
            }
            (_, ErrorSource::Upstream) => ProblemKind::UpstreamUnavailable,
            (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => return None,
            (_, ErrorSource::Downstream) => ProblemKind::MalformedRequest,
            _ => ProblemKind::Internal,
        };
        Some(kind)
    }
}

/// A problem to send.
pub struct Problem<'a> {
    /// HTTP status.
    pub status: u16,
    /// The last part of the `type` URI.
    pub slug: &'static str,
    /// Short summary.
    pub title: &'static str,
    /// One line for the client, without secrets.
    pub detail: &'a str,
    /// Methods for the `Allow` header (405 only).
    pub allow: &'a [Method],
    /// Extra headers (a plugin's `WWW-Authenticate`, for example).
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Close the connection afterwards.
    pub close: bool,
}

/// `Retry-After` of an `upstream-overloaded` answer: the breaker opens and closes in moments.
static RETRY_SOON: [(HeaderName, HeaderValue); 1] =
    [(header::RETRY_AFTER, HeaderValue::from_static("1"))];

impl<'a> Problem<'a> {
    /// A problem of one of the gateway's own kinds.
    pub fn new(kind: ProblemKind, detail: &'a str) -> Self {
        Problem {
            status: kind.status(),
            slug: kind.slug(),
            title: kind.title(),
            detail,
            allow: &[],
            headers: match kind {
                ProblemKind::UpstreamOverloaded => &RETRY_SOON,
                _ => &[],
            },
            close: matches!(
                kind,
                ProblemKind::MalformedRequest | ProblemKind::HeaderTooLarge
            ),
        }
    }

    /// A plugin's refusal.
    pub fn rejected(r: &'a Rejection) -> Self {
        Problem {
            status: r.status,
            slug: r.slug,
            title: r.title,
            detail: &r.detail,
            allow: &[],
            headers: &r.headers,
            close: false,
        }
    }

    /// The JSON body; `trace_id` when the request has a trace context.
    pub fn body(&self, request_id: &str, trace_id: Option<&str>) -> String {
        let trace = match trace_id {
            Some(id) => format!(",\"trace_id\":{}", serde_json::Value::from(id)),
            None => String::new(),
        };
        format!(
            "{{\"type\":\"urn:gantry:problem:{}\",\"title\":{},\"status\":{},\"detail\":{},\"request_id\":{}{trace}}}",
            self.slug,
            serde_json::Value::from(self.title),
            self.status,
            serde_json::Value::from(self.detail),
            serde_json::Value::from(request_id),
        )
    }

    /// The whole HTTP/1.1 response, for answers written before Pingora has a session (the
    /// connection loop's refusals); it says `Connection: close`.
    pub fn raw(&self, request_id: &str) -> Vec<u8> {
        let body = self.body(request_id, None);
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\n\
             connection: close\r\n\r\n{body}",
            self.status,
            body.len(),
        )
        .into_bytes()
    }

    /// The response header and body, for callers that adjust the header before writing.
    pub fn response(
        &self,
        request_id: &HeaderValue,
        trace_id: Option<&str>,
    ) -> Result<(ResponseHeader, String)> {
        let body = self.body(request_id.to_str().unwrap_or_default(), trace_id);
        let mut resp = ResponseHeader::build(self.status, Some(5 + self.headers.len()))?;
        resp.insert_header(header::CONTENT_TYPE, "application/problem+json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(crate::forwarded::X_REQUEST_ID_WIRE, request_id.clone())?;
        if !self.allow.is_empty() {
            let allow: Vec<&str> = self.allow.iter().map(Method::as_str).collect();
            resp.insert_header(header::ALLOW, allow.join(", "))?;
        }
        for (name, value) in self.headers {
            resp.insert_header(name.clone(), value.clone())?;
        }
        Ok((resp, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_valid_json_with_escaped_detail() {
        let p = Problem::new(ProblemKind::NoRoute, "no route for \"/x\"\n");
        let v: serde_json::Value =
            serde_json::from_str(&p.body("id-1", Some("4bf9"))).expect("valid json");
        assert_eq!(v["type"], "urn:gantry:problem:no-route");
        assert_eq!(v["status"], 404);
        assert_eq!(v["detail"], "no route for \"/x\"\n");
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["trace_id"], "4bf9");
        let v: serde_json::Value = serde_json::from_str(&p.body("id-1", None)).unwrap();
        assert!(v.get("trace_id").is_none());
    }

    #[test]
    fn errors_map_to_stable_kinds() {
        let e = Error::new(NO_HEALTHY_BACKEND);
        assert_eq!(
            ProblemKind::from_error(&e),
            Some(ProblemKind::NoHealthyBackend)
        );
        let mut e = Error::new(ErrorType::ReadTimedout);
        e.as_up();
        assert_eq!(
            ProblemKind::from_error(&e),
            Some(ProblemKind::UpstreamTimeout)
        );
        let mut e = Error::new(ErrorType::ConnectTimedout);
        e.as_up();
        assert_eq!(
            ProblemKind::from_error(&e),
            Some(ProblemKind::UpstreamTimeout)
        );
        let mut e = Error::new(ErrorType::ConnectRefused);
        e.as_up();
        assert_eq!(
            ProblemKind::from_error(&e),
            Some(ProblemKind::UpstreamUnavailable)
        );
        let e = gantry_plugins::gateway::not_editable(&gantry_plugins::gateway::Unusable::Invalid);
        assert_eq!(
            ProblemKind::from_error(&e),
            Some(ProblemKind::ResponseNotEditable)
        );
        let mut e = Error::new(ErrorType::ConnectionClosed);
        e.as_down();
        assert_eq!(ProblemKind::from_error(&e), None);
    }
}
