//! Distributed tracing (`[tracing]`): W3C trace context in and out, one OpenTelemetry server
//! span per request and one client span per upstream attempt, exported over OTLP/HTTP.
//!
//! - `context.rs`: `traceparent`/`tracestate` parsing and writing, ids;
//! - this file: the compiled settings, each request's [`RequestTrace`] (sampling, attempts)
//!   and the spans it becomes when the request ends;
//! - `export.rs`: the bounded span queue and the background exporter.
//!
//! Sampling: a parent's sampled flag is followed only from `server.trusted_proxies`; for every
//! other request the route's `tracing.sample_ratio` (or the global one) decides by a random draw,
//! so a client can neither force its requests into the collector (a sampled flag, or a trace id
//! chosen to fall under a ratio) nor keep them out of it. An unsampled request still has a trace
//! id (access log, problem bodies) and passes an unsampled context on; it records nothing.

pub mod context;
pub mod export;

use crate::access_log::Record;
use context::{Parent, SpanId, TraceId};
use gantry_plugins::trace_events::{EventValue, TraceEvent, TraceEvents};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `[tracing]`, compiled.
#[derive(Debug)]
pub struct TracingSettings {
    /// Where spans go.
    pub endpoint: Endpoint,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Further resource attributes.
    pub resource: Vec<(String, String)>,
    /// The share of requests sampled without a trusted parent (a route may override it).
    pub sample_ratio: f64,
    /// Headers sent to the collector (secrets: never logged or shown).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Queueing and batching.
    pub batch: BatchSettings,
}

/// The collector's OTLP/HTTP endpoint.
pub struct Endpoint {
    /// The URL as configured (it has no credentials: the loader refuses them).
    pub url: String,
    /// Its host (a name or an IP address).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// `https`.
    pub tls: bool,
    /// The request target (path and query).
    pub target: String,
    /// The CA certificates trusted for an `https` collector (`ca_file`); the system's otherwise.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

/// `tracing.batch`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSettings {
    /// Spans held at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How often the queue is exported (sooner when it holds `max_batch`).
    pub interval: Duration,
    /// The longest one export may take.
    pub timeout: Duration,
}

/// The defaults of `tracing.batch`, as OpenTelemetry's batch span processor has them (but a
/// larger queue, for a gateway's rate).
pub const DEFAULT_BATCH: BatchSettings = BatchSettings {
    max_queue: 8192,
    max_batch: 512,
    interval: Duration::from_secs(2),
    timeout: Duration::from_secs(5),
};

/// The trace context of one request, from its head to its end.
#[derive(Debug)]
pub struct RequestTrace {
    /// The trace (the client's, continued, or a new one).
    pub trace_id: TraceId,
    /// The gateway's server span.
    pub span_id: SpanId,
    /// The client's span, when it sent a well-formed `traceparent`.
    pub parent: Option<Parent>,
    /// The client's `tracestate`, passed on with its parent.
    pub tracestate: Option<HeaderValue>,
    /// The direct peer is a trusted proxy (its sampled flag is followed).
    parent_trusted: bool,
    /// Spans are recorded and exported.
    pub sampled: bool,
    /// The current upstream attempt's client span.
    attempt_span: SpanId,
    /// What a sampled request records for its spans.
    recording: Option<Box<Recording>>,
}

/// The upstream attempts of a sampled request.
#[derive(Debug, Default)]
struct Recording {
    attempts: Vec<Attempt>,
}

/// One upstream attempt: a client span.
#[derive(Debug)]
struct Attempt {
    span_id: SpanId,
    number: u32,
    backend: SocketAddr,
    started: Instant,
    reused: Option<bool>,
    ended: Option<Instant>,
    status: Option<u16>,
    error: Option<&'static str>,
}

impl RequestTrace {
    /// The context of a request with `headers`, from a direct peer that is (`trusted`) or is
    /// not a trusted proxy; sampling is decided once the route is known ([`Self::sample`]).
    pub fn begin(headers: &HeaderMap, trusted: bool) -> Self {
        let parent = context::parent(headers);
        RequestTrace {
            trace_id: parent.map_or_else(context::new_trace_id, |p| p.trace_id),
            span_id: context::new_span_id(),
            tracestate: parent.and_then(|_| context::tracestate(headers)),
            parent,
            parent_trusted: trusted,
            sampled: false,
            attempt_span: [0; 8],
            recording: None,
        }
    }

    /// Decides sampling: a trusted parent's flag, else a draw at `ratio`. Returns whether the
    /// request is sampled.
    pub fn sample(&mut self, ratio: f64) -> bool {
        self.sampled = match self.parent {
            Some(parent) if self.parent_trusted => parent.sampled,
            _ => ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio),
        };
        if self.sampled {
            self.recording = Some(Box::default());
        }
        self.sampled
    }

    /// A new upstream attempt (`number`, from 1) to `backend` starts now.
    pub fn start_attempt(&mut self, number: u32, backend: SocketAddr) {
        self.attempt_span = context::new_span_id();
        if let Some(recording) = &mut self.recording {
            recording.attempts.push(Attempt {
                span_id: self.attempt_span,
                number,
                backend,
                started: Instant::now(),
                reused: None,
                ended: None,
                status: None,
                error: None,
            });
        }
    }

    fn attempt(&mut self) -> Option<&mut Attempt> {
        self.recording.as_mut()?.attempts.last_mut()
    }

    /// The current attempt has its connection, new or pooled (`reused`).
    pub fn attempt_connected(&mut self, reused: bool) {
        if let Some(a) = self.attempt() {
            a.reused = Some(reused);
        }
    }

    /// The current attempt's response header arrived with `status`.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(a) = self.attempt() {
            a.status = Some(status);
            a.ended = Some(Instant::now());
        }
    }

    /// The current attempt failed (`why`: the retry condition or error it was).
    pub fn attempt_failed(&mut self, why: &'static str) {
        if let Some(a) = self.attempt().filter(|a| a.error.is_none()) {
            a.error = Some(why);
            a.ended.get_or_insert_with(Instant::now);
        }
    }

    /// `traceparent` for the current upstream attempt (its client span is the parent).
    pub fn upstream_traceparent(&self) -> HeaderValue {
        context::traceparent(&self.trace_id, &self.attempt_span, self.sampled)
    }

    /// `traceparent` for a call the gateway makes for the request outside its attempts (an
    /// `aggregate` call, a mirrored copy, a plugin's call): the server span is its parent, so
    /// the callee's spans hang off a span the collector has.
    pub fn child_traceparent(&self) -> HeaderValue {
        context::traceparent(&self.trace_id, &self.span_id, self.sampled)
    }

    /// Sets `traceparent` (and the client's `tracestate`) on a request the gateway sends.
    pub fn propagate(
        &self,
        headers: &mut pingora::http::RequestHeader,
        traceparent: HeaderValue,
    ) -> pingora::Result<()> {
        headers.insert_header(context::TRACEPARENT, traceparent)?;
        match &self.tracestate {
            Some(state) => headers.insert_header(context::TRACESTATE, state.clone())?,
            // Most requests have none: the lookup is cheaper than a removal's.
            None if headers.headers.contains_key(context::TRACESTATE) => {
                headers.remove_header(&context::TRACESTATE);
            }
            None => {}
        }
        Ok(())
    }

    /// The spans of the finished request described by `record`: the server span (with the
    /// plugins' `events`) and one client span per attempt. Empty when it was not sampled.
    pub fn finish(
        &self,
        record: &Record<'_>,
        started: Instant,
        scheme: &'static str,
        events: &TraceEvents,
    ) -> Vec<Span> {
        let Some(recording) = &self.recording else {
            return Vec::new();
        };
        let clock = Clock::now();
        let mut spans = Vec::with_capacity(1 + recording.attempts.len());
        spans.push(self.server_span(record, started, scheme, events, &clock));
        for attempt in &recording.attempts {
            spans.push(self.client_span(attempt, record, &clock));
        }
        spans
    }

    fn server_span(
        &self,
        r: &Record<'_>,
        started: Instant,
        scheme: &'static str,
        events: &TraceEvents,
        clock: &Clock,
    ) -> Span {
        let method = Method::of(r.method);
        let route = match r.route {
            "" | crate::metrics::UNMATCHED => None,
            route => Some(route),
        };
        let mut attributes = vec![
            text("url.path", r.path),
            text("url.scheme", scheme),
            int("http.response.status_code", i64::from(r.status)),
            text("server.address", r.host),
            text("network.protocol.version", protocol_version(r.protocol)),
            text("gantry.request_id", r.request_id),
        ];
        method.attributes(&mut attributes);
        if let Some(route) = route {
            attributes.push(text("http.route", route));
        }
        if let Some(ip) = r.client_ip {
            attributes.push(text("client.address", &ip.to_string()));
        }
        if let Some(ua) = r.user_agent {
            attributes.push(text("user_agent.original", ua));
        }
        let error = server_error(r);
        if let Some(error) = &error {
            attributes.push(text("error.type", error));
        }
        for (key, value) in [
            ("gantry.cluster", r.cluster),
            ("gantry.consumer", r.consumer),
            ("gantry.cache.status", r.cache),
            ("gantry.rate_limit.outcome", r.rate_limit),
        ] {
            if let Some(value) = value {
                attributes.push(text(key, value));
            }
        }
        let name = match route {
            None => method.name.to_string(),
            Some(route) => text_value(&format!("{} {route}", method.name)),
        };
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self
                .tracestate
                .as_ref()
                .and_then(|s| s.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            parent_span_id: self.parent.map(|p| p.span_id.to_vec()).unwrap_or_default(),
            flags: SAMPLED_FLAGS | remote_parent_flags(self.parent.is_some()),
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: clock.unix_nanos(started),
            end_time_unix_nano: clock.now_nanos,
            attributes,
            events: events.events().iter().map(|e| event(e, clock)).collect(),
            dropped_events_count: events.dropped(),
            // A server span's status is an error for a 5xx only (OpenTelemetry's HTTP
            // conventions): a refused request is the client's failure.
            status: error.filter(|_| r.status >= 500).map(|e| error_status(&e)),
            ..Span::default()
        }
    }

    fn client_span(&self, a: &Attempt, r: &Record<'_>, clock: &Clock) -> Span {
        let method = Method::of(r.method);
        let mut attributes = vec![
            text("server.address", &a.backend.ip().to_string()),
            int("server.port", i64::from(a.backend.port())),
            int("gantry.attempt", i64::from(a.number)),
        ];
        if a.number > 1 {
            attributes.push(int("http.request.resend_count", i64::from(a.number - 1)));
        }
        if let Some(reused) = a.reused {
            attributes.push(boolean("gantry.connection.reused", reused));
        }
        if let Some(status) = a.status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        if let Some(cluster) = r.cluster {
            attributes.push(text("gantry.cluster", cluster));
        }
        let error = match (a.error, a.status) {
            (Some(why), _) => Some(why.to_string()),
            (None, Some(status)) if status >= 400 => Some(status.to_string()),
            // An attempt still open when the request ended: the client left, or it was the
            // last and its response went out.
            _ => None,
        };
        if let Some(error) = &error {
            attributes.push(text("error.type", error));
        }
        method.attributes(&mut attributes);
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: a.span_id.to_vec(),
            parent_span_id: self.span_id.to_vec(),
            flags: SAMPLED_FLAGS | remote_parent_flags(false),
            name: method.name.to_string(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: clock.unix_nanos(a.started),
            end_time_unix_nano: a.ended.map_or(clock.now_nanos, |e| clock.unix_nanos(e)),
            attributes,
            status: error.map(|e| error_status(&e)),
            ..Span::default()
        }
    }
}

/// W3C trace flags of an exported span: sampled.
const SAMPLED_FLAGS: u32 = 1;

/// OTLP's span flags for whether the parent is known (bit 8) and remote (bit 9).
fn remote_parent_flags(remote: bool) -> u32 {
    0x100 | if remote { 0x200 } else { 0 }
}

/// `error.type` of a server span: the gateway's problem type, or a 5xx status.
fn server_error(r: &Record<'_>) -> Option<String> {
    match (r.error, r.status) {
        (Some(slug), _) => Some(slug.to_string()),
        (None, status) if status >= 500 => Some(status.to_string()),
        _ => None,
    }
}

fn error_status(message: &str) -> Status {
    Status {
        message: message.to_string(),
        code: status::StatusCode::Error as i32,
    }
}

/// `1.1` of `HTTP/1.1`, `2` of `HTTP/2.0`.
fn protocol_version(protocol: &str) -> &str {
    match protocol {
        "HTTP/2.0" => "2",
        p => p.strip_prefix("HTTP/").unwrap_or(p),
    }
}

/// A request method as OpenTelemetry records it: the known methods by name, any other as
/// `_OTHER` (span name `HTTP`), its own name kept, cut, in `http.request.method_original`, so
/// a client cannot make a span larger than the attribute bound with a long method.
struct Method<'a> {
    /// `http.request.method`.
    name: &'static str,
    /// The method as sent, when it is not a known one.
    original: Option<&'a str>,
}

/// The methods of RFC 9110 and RFC 5789 (`PATCH`).
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl<'a> Method<'a> {
    fn of(method: &'a str) -> Self {
        match KNOWN_METHODS.iter().find(|m| **m == method) {
            Some(known) => Method {
                name: known,
                original: None,
            },
            None => Method {
                name: "HTTP",
                original: Some(method),
            },
        }
    }

    fn attributes(&self, out: &mut Vec<KeyValue>) {
        match self.original {
            None => out.push(text("http.request.method", self.name)),
            Some(original) => {
                out.push(text("http.request.method", "_OTHER"));
                out.push(text("http.request.method_original", original));
            }
        }
    }
}

fn event(e: &TraceEvent, clock: &Clock) -> span::Event {
    span::Event {
        time_unix_nano: clock.unix_nanos(e.at),
        name: e.name.to_string(),
        attributes: e
            .attributes
            .iter()
            .map(|(key, value)| match value {
                EventValue::Word(w) => text(key, w),
                EventValue::Name(n) => text(key, n),
                EventValue::Int(i) => int(key, *i),
            })
            .collect(),
        dropped_attributes_count: 0,
    }
}

/// Wall-clock times of the request's instants, from one reading of both clocks.
struct Clock {
    now: Instant,
    now_nanos: u64,
}

impl Clock {
    fn now() -> Self {
        let now_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock {
            now: Instant::now(),
            now_nanos,
        }
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        let ago = self.now.saturating_duration_since(at).as_nanos() as u64;
        self.now_nanos.saturating_sub(ago)
    }
}

/// The longest string attribute value, in bytes: a span's size is bounded whatever a client
/// sends (a path or `User-Agent` of the largest head fits no attribute whole).
pub const MAX_ATTRIBUTE_LEN: usize = 1024;

/// A string attribute, cut to [`MAX_ATTRIBUTE_LEN`] bytes at a character boundary.
pub fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(text_value(value)))
}

/// `value` cut to [`MAX_ATTRIBUTE_LEN`] bytes at a character boundary.
fn text_value(value: &str) -> String {
    let mut end = value.len().min(MAX_ATTRIBUTE_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

fn boolean(key: &str, value: bool) -> KeyValue {
    attribute(key, any_value::Value::BoolValue(value))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            context::TRACEPARENT,
            HeaderValue::from_str(traceparent).unwrap(),
        );
        h
    }

    #[test]
    fn unknown_methods_are_other_and_cut() {
        let long = "X".repeat(10 * MAX_ATTRIBUTE_LEN);
        let m = Method::of(&long);
        assert_eq!(m.name, "HTTP");
        let mut attributes = Vec::new();
        m.attributes(&mut attributes);
        assert_eq!(attributes.len(), 2);
        assert_eq!(attributes[1].key, "http.request.method_original");
        assert!(format!("{attributes:?}").len() < 2 * MAX_ATTRIBUTE_LEN);
        assert_eq!(Method::of("PATCH").name, "PATCH");
        assert_eq!(protocol_version("HTTP/2.0"), "2");
        assert_eq!(protocol_version("HTTP/1.1"), "1.1");
    }

    #[test]
    fn string_attributes_are_bounded_at_a_character_boundary() {
        let long = format!("a{}", "é".repeat(MAX_ATTRIBUTE_LEN));
        let kv = text("user_agent.original", &long);
        let Some(any_value::Value::StringValue(s)) = kv.value.and_then(|v| v.value) else {
            panic!("a string");
        };
        assert_eq!(s.len(), MAX_ATTRIBUTE_LEN - 1);
        assert!(long.starts_with(&s));
    }

    #[test]
    fn a_sampled_parent_is_followed_only_from_a_trusted_peer() {
        let mut trusted = RequestTrace::begin(&headers(PARENT), true);
        assert!(trusted.sample(0.0));
        let mut untrusted = RequestTrace::begin(&headers(PARENT), false);
        assert!(!untrusted.sample(0.0));
        // Either way the trace is continued.
        assert_eq!(untrusted.trace_id, trusted.trace_id);
        let unsampled = PARENT.replace("-01", "-00");
        let mut trusted = RequestTrace::begin(&headers(&unsampled), true);
        assert!(!trusted.sample(1.0));
    }

    #[test]
    fn the_ratio_decides_without_a_trusted_parent() {
        let sampled = (0..10_000)
            .filter(|_| RequestTrace::begin(&HeaderMap::new(), false).sample(0.25))
            .count();
        // 4 standard deviations of a binomial(10,000, 0.25): 173.
        assert!((2327..=2673).contains(&sampled), "{sampled}");
        assert!(RequestTrace::begin(&HeaderMap::new(), false).sample(1.0));
    }

    #[test]
    fn the_upstream_gets_the_attempt_as_parent_and_a_new_span_per_attempt() {
        let mut t = RequestTrace::begin(&headers(PARENT), false);
        t.sample(1.0);
        t.start_attempt(1, "127.0.0.1:1".parse().unwrap());
        let first = t.upstream_traceparent();
        t.attempt_failed("connect_failure");
        t.start_attempt(2, "127.0.0.1:2".parse().unwrap());
        let second = t.upstream_traceparent();
        let parsed = |v: &HeaderValue| context::parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!(parsed(&first).trace_id, t.trace_id);
        assert_ne!(parsed(&first).span_id, parsed(&second).span_id);
        assert_ne!(parsed(&first).span_id, t.span_id);
        assert_eq!(t.recording.as_ref().unwrap().attempts.len(), 2);
        // Calls outside the attempts hang off the server span.
        assert_eq!(parsed(&t.child_traceparent()).span_id, t.span_id);
    }
}
