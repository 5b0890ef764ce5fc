//! Service composition: a route with `[routes.R.aggregate]` answers one request by calling
//! several services concurrently and merging their JSON into one object keyed by call name.
//!
//! Calls go through the named clusters (their balancing, health state, retries on connection
//! failure, timeouts and TLS) over pooled connections of one shared connector. Each call has
//! its own timeout within the route's overall budget, so the response is ready when the
//! budget ends at the latest. A failed required call fails the whole request (502 naming the
//! call); a failed optional call becomes `null`, is described under `errors`, and is named in
//! the `Gantry-Partial` response header.

use crate::upstream::call::{self, CallError};
use crate::upstream::exchange::{ExchangeError, Stage};
use crate::upstream::hash_key::ip_key;
use crate::upstream::{Cluster, RetryReason};
use gantry_plugins::gateway::Template;
use gantry_plugins::PluginState;
use http::{header, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The largest body read from one call.
const MAX_CALL_BODY: usize = 4 * 1024 * 1024;

/// A compiled `[routes.R.aggregate]`.
#[derive(Debug)]
pub struct Aggregate {
    /// The whole fan-out's budget.
    pub timeout: Duration,
    /// The calls, in configuration order.
    pub calls: Vec<Call>,
}

/// One `[routes.R.aggregate.calls.NAME]`.
#[derive(Debug)]
pub struct Call {
    /// The member of the merged object.
    pub name: String,
    /// Where it goes.
    pub cluster: Arc<Cluster>,
    /// Path and query, rendered per request.
    pub path: Template,
    /// A failure fails the whole response.
    pub required: bool,
    /// This call's own limit (within the budget).
    pub timeout: Option<Duration>,
    /// Client headers passed on.
    pub forward_headers: Vec<HeaderName>,
}

/// Why a call produced no value.
#[derive(Debug)]
pub struct CallFailure {
    /// The status that describes it: the upstream's, 502, 503 or 504.
    pub status: u16,
    /// What happened, without upstream internals.
    pub detail: String,
}

/// The merged result.
pub enum Outcome {
    /// The JSON body, and the optional calls that failed.
    Merged(Value, Vec<String>),
    /// A required call failed.
    RequiredFailed(String, CallFailure),
}

/// What a call needs from the client request.
pub struct ClientRequest<'a> {
    /// The client's request header.
    pub header: &'a RequestHeader,
    /// Plugin state: client IP, consumer, request id.
    pub state: &'a PluginState,
    /// The request's trace context, passed on to each call with a span of its own.
    pub trace: Option<&'a crate::trace::RequestTrace>,
}

impl Aggregate {
    /// Runs every call concurrently and merges the results.
    pub async fn run(&self, connector: &Connector, client: &ClientRequest<'_>) -> Outcome {
        let results = futures::future::join_all(self.calls.iter().map(|call| {
            let limit = call.timeout.map_or(self.timeout, |t| t.min(self.timeout));
            async move {
                match tokio::time::timeout(limit, call.fetch(connector, client)).await {
                    Ok(result) => result,
                    Err(_) => Err(CallFailure {
                        status: 504,
                        detail: format!("no answer within {limit:?}"),
                    }),
                }
            }
        }))
        .await;
        let mut merged = Map::new();
        let mut errors = Map::new();
        let mut partial = Vec::new();
        for (call, result) in self.calls.iter().zip(results) {
            match result {
                Ok(value) => {
                    merged.insert(call.name.clone(), value);
                }
                Err(failure) if call.required => {
                    return Outcome::RequiredFailed(call.name.clone(), failure)
                }
                Err(failure) => {
                    merged.insert(call.name.clone(), Value::Null);
                    errors.insert(
                        call.name.clone(),
                        serde_json::json!({ "status": failure.status, "detail": failure.detail }),
                    );
                    partial.push(call.name.clone());
                }
            }
        }
        if !errors.is_empty() {
            merged.insert("errors".into(), Value::Object(errors));
        }
        Outcome::Merged(Value::Object(merged), partial)
    }
}

impl Call {
    /// The request sent for this call.
    fn request(&self, client: &ClientRequest<'_>) -> Result<RequestHeader, CallFailure> {
        let mut target = String::new();
        if !self
            .path
            .render_uri(client.header, client.state, &mut target)
        {
            return Err(CallFailure {
                status: 400,
                detail: "a variable in the call's path is `.` or `..`".into(),
            });
        }
        let invalid = |_| CallFailure {
            status: 502,
            detail: "the call's path is not a valid request target".into(),
        };
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).map_err(invalid)?;
        // HTTP/2 clients send `:authority` instead of `Host`.
        let host = client
            .header
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| {
                let authority = client.header.uri.authority()?;
                HeaderValue::from_str(authority.as_str()).ok()
            });
        let set = |req: &mut RequestHeader, name: HeaderName, value: HeaderValue| {
            req.insert_header(name, value).map_err(invalid)
        };
        if let Some(host) = host {
            set(&mut req, header::HOST, host)?;
        }
        set(
            &mut req,
            crate::forwarded::X_REQUEST_ID.clone(),
            client.state.request_id.clone(),
        )?;
        if let Some(ip) = client.state.client.ip {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                set(&mut req, HeaderName::from_static("x-forwarded-for"), v)?;
            }
        }
        if let Some(trace) = client.trace {
            trace
                .propagate(&mut req, trace.child_traceparent())
                .map_err(invalid)?;
        }
        crate::forwarded::set_consumer_headers(&mut req, client.state.consumer.as_deref())
            .map_err(invalid)?;
        for name in &self.forward_headers {
            for value in client.header.headers.get_all(name) {
                req.append_header(name.clone(), value.clone())
                    .map_err(invalid)?;
            }
        }
        Ok(req)
    }

    /// One call through the cluster's resilience (see [`call::get`]; a call is a GET), then
    /// the whole body.
    async fn fetch(
        &self,
        connector: &Connector,
        client: &ClientRequest<'_>,
    ) -> Result<Value, CallFailure> {
        let req = self.request(client)?;
        let cluster = &self.cluster;
        let mut ip_buf = [0u8; 16];
        let key = ip_key(client.state.client.ip, &mut ip_buf);
        match call::get(cluster, connector, key, MAX_CALL_BODY, |_| req.clone()).await {
            Ok(answer) => into_value(answer),
            Err(CallError::Overloaded) => Err(CallFailure {
                status: 503,
                detail: format!("cluster `{}` has max_requests in flight", cluster.name),
            }),
            Err(CallError::NoBackend) => Err(CallFailure {
                status: 503,
                detail: format!("cluster `{}` has no healthy backend left", cluster.name),
            }),
            Err(CallError::Exchange(e)) => Err(self.failure(e)),
        }
    }

    /// What a failed exchange with the cluster means for the call.
    fn failure(&self, e: ExchangeError) -> CallFailure {
        let what = match e.stage {
            Stage::Connect => {
                return CallFailure {
                    status: 502,
                    detail: format!("cluster `{}` could not be reached", self.cluster.name),
                }
            }
            Stage::Request => "receiving the request",
            Stage::Answer => "answering",
            Stage::Body => "sending the body",
            Stage::BodyRefused => "sending a body over 4 MiB",
        };
        CallFailure {
            status: if e.reason == RetryReason::Timeout {
                504
            } else {
                502
            },
            detail: format!("the upstream failed while {what}"),
        }
    }
}

/// A call's final answer as the merged document's member: parsed JSON, or the text.
fn into_value(answer: call::Answer) -> Result<Value, CallFailure> {
    let status = answer.header.status.as_u16();
    if !(200..300).contains(&status) {
        return Err(CallFailure {
            status,
            detail: format!("the upstream answered {status}"),
        });
    }
    if gantry_plugins::gateway::is_json(&answer.header.headers) {
        serde_json::from_slice(&answer.body).map_err(|_| CallFailure {
            status: 502,
            detail: "the upstream failed while sending invalid JSON".into(),
        })
    } else {
        Ok(Value::String(
            String::from_utf8_lossy(&answer.body).into_owned(),
        ))
    }
}
