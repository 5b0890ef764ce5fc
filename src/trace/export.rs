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
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;

/// How often queued spans are exported once shutdown has begun.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// The most bytes (protobuf-encoded) the queued spans may take together, whatever
/// `max_queue` allows: a span holds at most a few KiB a client controls (each string
/// attribute is cut to 1 KiB), and this bounds the queue's memory.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

/// Spans waiting for export, oldest first, and their encoded size.
#[derive(Default)]
struct Queued {
    spans: VecDeque<(Span, usize)>,
    bytes: usize,
}

/// Spans waiting for export.
struct SpanQueue {
    queued: Mutex<Queued>,
    /// Wakes the exporter when a batch is full.
    full: Notify,
}

static QUEUE: LazyLock<SpanQueue> = LazyLock::new(|| SpanQueue {
    queued: Mutex::new(Queued::default()),
    full: Notify::new(),
});

/// Queues a finished request's spans, or drops and counts them when the queue would pass
/// `settings`' `max_queue` or [`MAX_QUEUE_BYTES`].
pub fn submit(spans: Vec<Span>, settings: &TracingSettings) {
    if spans.is_empty() {
        return;
    }
    let batch = &settings.batch;
    let sized: Vec<(Span, usize)> = spans
        .into_iter()
        .map(|s| {
            let len = s.encoded_len();
            (s, len)
        })
        .collect();
    let bytes: usize = sized.iter().map(|(_, len)| len).sum();
    let mut queue = QUEUE.queued.lock();
    if queue.spans.len() + sized.len() > batch.max_queue || queue.bytes + bytes > MAX_QUEUE_BYTES {
        drop(queue);
        crate::metrics::tracing_spans_dropped("queue_full", sized.len() as u64);
        return;
    }
    queue.bytes += bytes;
    queue.spans.extend(sized);
    let full = queue.spans.len() >= batch.max_batch;
    drop(queue);
    if full {
        QUEUE.full.notify_one();
    }
}

/// Takes at most `max` queued spans, oldest first.
fn take(max: usize) -> Vec<Span> {
    let mut queue = QUEUE.queued.lock();
    let n = queue.spans.len().min(max);
    let taken: Vec<(Span, usize)> = queue.spans.drain(..n).collect();
    queue.bytes -= taken.iter().map(|(_, len)| len).sum::<usize>();
    drop(queue);
    taken.into_iter().map(|(span, _)| span).collect()
}

/// The background service that exports queued spans.
pub struct SpanExporter {
    live: Arc<Live>,
    /// The connector for the settings it was made for: a reload gets a new one, so pooled
    /// connections made under an old `ca_file` (Pingora's pool does not key on it) are not
    /// reused.
    connector: Mutex<(Option<Arc<TracingSettings>>, Arc<Connector>)>,
}

impl SpanExporter {
    /// Exports spans to the collector of `live`'s running configuration.
    pub fn new(live: Arc<Live>) -> Self {
        SpanExporter {
            live,
            connector: Mutex::new((None, Arc::new(Connector::new(None)))),
        }
    }

    /// The connector for `settings`.
    fn connector(&self, settings: &Arc<TracingSettings>) -> Arc<Connector> {
        let mut current = self.connector.lock();
        if !current.0.as_ref().is_some_and(|s| Arc::ptr_eq(s, settings)) {
            *current = (Some(Arc::clone(settings)), Arc::new(Connector::new(None)));
        }
        Arc::clone(&current.1)
    }

    /// Exports what the queue holds, in batches, while there is a full batch (or, with
    /// `everything`, until it is empty).
    async fn export_queued(&self, everything: bool) {
        loop {
            let config = self.live.current();
            let Some(settings) = config.tracing.as_ref() else {
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

    /// Sends one batch; one deadline (`batch.timeout`) covers the lookup, the connect, the
    /// request and the answer.
    async fn export(
        &self,
        settings: &Arc<TracingSettings>,
        spans: Vec<Span>,
    ) -> Result<(), String> {
        let timeout = settings.batch.timeout;
        tokio::time::timeout(timeout, self.send(settings, encode(settings, spans)))
            .await
            .map_err(|_| format!("not done within {timeout:?}"))?
    }

    async fn send(&self, settings: &Arc<TracingSettings>, body: Vec<u8>) -> Result<(), String> {
        let endpoint = &settings.endpoint;
        let addr = resolve(endpoint).await?;
        let peer = peer(endpoint, addr, settings.batch.timeout);
        let mut req = RequestHeader::build("POST", endpoint.target.as_bytes(), Some(4))
            .map_err(|e| e.to_string())?;
        let set = |req: &mut RequestHeader, name: http::HeaderName, value: http::HeaderValue| {
            req.insert_header(name, value).map_err(|e| e.to_string())
        };
        let host = host_header(endpoint).parse().map_err(|_| "bad host")?;
        set(&mut req, http::header::HOST, host)?;
        set(
            &mut req,
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        )?;
        set(&mut req, http::header::CONTENT_LENGTH, body.len().into())?;
        for (name, value) in &settings.headers {
            set(&mut req, name.clone(), value.clone())?;
        }
        // The answer (an ExportTraceServiceResponse, usually empty) is read and discarded:
        // nothing of it is kept, and the deadline bounds the reading.
        let connector = self.connector(settings);
        let answer = exchange(&connector, &peer, req, Some(body.into()), |_| true)
            .await
            .map_err(|e| format!("{:?} at {:?}", e.reason, e.stage))?;
        match answer.status.as_u16() {
            200..=299 => Ok(()),
            status => Err(format!("the collector answered {status}")),
        }
    }
}

/// The `Host` of the export request: the port only when it is not the scheme's default, an
/// IPv6 address in brackets.
fn host_header(endpoint: &Endpoint) -> String {
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    match (endpoint.tls, endpoint.port) {
        (false, 80) | (true, 443) => host,
        (_, port) => format!("{host}:{port}"),
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
        // finish with goes while they drain (until the runtime stops, after the grace period).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(host: &str, port: u16, tls: bool) -> Endpoint {
        Endpoint {
            url: String::new(),
            host: host.into(),
            port,
            tls,
            target: "/v1/traces".into(),
            ca: None,
        }
    }

    #[test]
    fn the_host_header_keeps_a_port_only_when_it_is_not_the_default() {
        assert_eq!(host_header(&endpoint("otel", 80, false)), "otel");
        assert_eq!(host_header(&endpoint("otel", 443, true)), "otel");
        assert_eq!(host_header(&endpoint("otel", 443, false)), "otel:443");
        assert_eq!(host_header(&endpoint("::1", 4318, false)), "[::1]:4318");
    }
}
