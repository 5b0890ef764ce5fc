//! The span queue and the exporter: finished requests' spans wait in one bounded queue, and a
//! background task sends them to the collector in batches (OTLP/HTTP, protobuf), over a
//! pooled connection of Pingora's connector.
//!
//! A request never waits: a span that finds the queue full (`batch.max_queue`) is dropped and
//! counted (`gantry_tracing_spans_dropped_total{reason="queue_full"}`), and so is a batch the
//! collector refused or did not take within `batch.timeout` (`reason="export_failed"`). The
//! exporter reads `[tracing]` from the running configuration for every batch, so reloads
//! apply to the next one. On shutdown (and so on a graceful upgrade) it exports what is
//! queued at once, then keeps exporting every 100 ms while requests drain.

use super::{Endpoint, TracingSettings};
use crate::reload::Live;
use crate::upstream::exchange::exchange;
use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;

/// The bytes of a collector's answer that are read (and discarded) at most.
const MAX_ANSWER: usize = 64 * 1024;

/// How often queued spans are exported once shutdown has begun.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Spans waiting for export.
struct SpanQueue {
    spans: Mutex<Vec<Span>>,
    /// Wakes the exporter when a batch is full.
    full: Notify,
}

static QUEUE: LazyLock<SpanQueue> = LazyLock::new(|| SpanQueue {
    spans: Mutex::new(Vec::new()),
    full: Notify::new(),
});

/// Queues a finished request's spans, or drops and counts them when the queue would pass
/// `settings`' `max_queue`.
pub fn submit(spans: Vec<Span>, settings: &TracingSettings) {
    if spans.is_empty() {
        return;
    }
    let batch = &settings.batch;
    let mut queue = QUEUE.spans.lock();
    if queue.len() + spans.len() > batch.max_queue {
        drop(queue);
        crate::metrics::tracing_spans_dropped("queue_full", spans.len() as u64);
        return;
    }
    queue.extend(spans);
    let full = queue.len() >= batch.max_batch;
    drop(queue);
    if full {
        QUEUE.full.notify_one();
    }
}

/// Takes at most `max` queued spans, oldest first.
fn take(max: usize) -> Vec<Span> {
    let mut queue = QUEUE.spans.lock();
    let n = queue.len().min(max);
    queue.drain(..n).collect()
}

/// The background service that exports queued spans.
pub struct SpanExporter {
    live: Arc<Live>,
    connector: Connector,
}

impl SpanExporter {
    /// Exports spans to the collector of `live`'s running configuration.
    pub fn new(live: Arc<Live>) -> Self {
        SpanExporter {
            live,
            connector: Connector::new(None),
        }
    }

    /// Exports what the queue holds, in batches, while there is a full batch (or, with
    /// `everything`, until it is empty).
    async fn export_queued(&self, everything: bool) {
        loop {
            let config = self.live.current();
            let Some(settings) = config.tracing.as_deref() else {
                let dropped = take(usize::MAX);
                crate::metrics::tracing_spans_dropped("disabled", dropped.len() as u64);
                return;
            };
            let batch = take(settings.batch.max_batch);
            if batch.is_empty() {
                return;
            }
            let n = batch.len() as u64;
            let sent = batch.len() == settings.batch.max_batch;
            match self.export(settings, batch).await {
                Ok(()) => crate::metrics::tracing_spans_exported(n),
                Err(why) => {
                    log_failure(&settings.endpoint, &why);
                    crate::metrics::tracing_spans_dropped("export_failed", n);
                }
            }
            if !everything && !sent {
                return;
            }
        }
    }

    async fn export(&self, settings: &TracingSettings, spans: Vec<Span>) -> Result<(), String> {
        let body = encode(settings, spans);
        let endpoint = &settings.endpoint;
        let timeout = settings.batch.timeout;
        let addr = tokio::time::timeout(timeout, resolve(endpoint))
            .await
            .map_err(|_| "the collector's name did not resolve in time".to_string())??;
        let peer = peer(endpoint, addr, timeout);
        let mut req = RequestHeader::build("POST", endpoint.target.as_bytes(), Some(4))
            .map_err(|e| e.to_string())?;
        let host = match endpoint.port {
            80 | 443 => endpoint.host.clone(),
            port => format!("{}:{port}", endpoint.host),
        };
        let set = |req: &mut RequestHeader, name: http::HeaderName, value: http::HeaderValue| {
            req.insert_header(name, value).map_err(|e| e.to_string())
        };
        set(
            &mut req,
            http::header::HOST,
            host.parse().map_err(|_| "bad host")?,
        )?;
        set(
            &mut req,
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        )?;
        set(&mut req, http::header::CONTENT_LENGTH, body.len().into())?;
        for (name, value) in &settings.headers {
            set(&mut req, name.clone(), value.clone())?;
        }
        let mut read = 0;
        let answer = tokio::time::timeout(
            timeout,
            exchange(&self.connector, &peer, req, Some(body.into()), |chunk| {
                read += chunk.len();
                read <= MAX_ANSWER
            }),
        )
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| format!("{:?} at {:?}", e.reason, e.stage))?;
        match answer.status.as_u16() {
            200..=299 => Ok(()),
            status => Err(format!("the collector answered {status}")),
        }
    }
}

#[async_trait]
impl BackgroundService for SpanExporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let interval = self
                .live
                .current()
                .tracing
                .as_ref()
                .map_or(Duration::from_secs(1), |t| t.batch.interval);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = QUEUE.full.notified() => self.export_queued(false).await,
                _ = tokio::time::sleep(interval) => self.export_queued(true).await,
            }
        }
        // Shutting down: what is queued goes now, and what the requests still in flight
        // finish with goes while they drain (until the runtime stops).
        loop {
            self.export_queued(true).await;
            tokio::time::sleep(DRAIN_EVERY).await;
        }
    }
}

/// The export request: the resource (`service.name` and `resource`), one scope, the spans.
fn encode(settings: &TracingSettings, spans: Vec<Span>) -> Vec<u8> {
    let mut attributes = vec![super::text("service.name", &settings.service_name)];
    attributes.extend(settings.resource.iter().map(|(k, v)| super::text(k, v)));
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "gantry".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    request.encode_to_vec()
}

/// The collector's address (a name is looked up for each batch, so it may move).
async fn resolve(endpoint: &Endpoint) -> Result<SocketAddr, String> {
    if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, endpoint.port));
    }
    tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", endpoint.host))
}

fn peer(endpoint: &Endpoint, addr: SocketAddr, timeout: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, endpoint.tls, endpoint.host.clone());
    let options = &mut peer.options;
    options.connection_timeout = Some(timeout);
    options.total_connection_timeout = Some(timeout);
    options.read_timeout = Some(timeout);
    options.write_timeout = Some(timeout);
    options.idle_timeout = Some(Duration::from_secs(60));
    options.ca = endpoint.ca.clone();
    peer
}

/// Logs the first failed export and every 100th after it, so a collector
/// that is down does not flood the error log.
fn log_failure(endpoint: &Endpoint, why: &str) {
    static FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n.is_multiple_of(100) {
        log::warn!(
            "tracing: exporting spans to {} failed ({why}); spans are dropped and counted",
            endpoint.url
        );
    }
}
