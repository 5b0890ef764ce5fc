//! The gateway's request metrics, recorded without allocating or locking on the request path
//! and rendered in the Prometheus text format at `/metrics`.
//!
//! Every route and cluster gets its counters when the configuration loads (kept by name, so a
//! reload keeps counting where it was): a request then only increments atomics it already
//! points to. Label values are bounded: routes and clusters come from the configuration (an
//! unmatched request is route `-`; TLS listeners too), methods are the nine standard ones or `OTHER`, and statuses
//! are the common codes or their class (`2xx`...).

use gantry_plugins::gateway::CacheStatus;
use http::Method;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

/// The Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Histogram upper bounds, in seconds.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Methods with their own label value; anything else is `OTHER`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Statuses with their own label value; others are counted under their class.
const STATUSES: [u16; 27] = [
    101, 200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
    415, 429, 431, 499, 500, 502, 503, 504,
];

/// `1xx` to `5xx`, after [`STATUSES`]; `0` (no response) is the last slot.
const STATUS_SLOTS: usize = STATUSES.len() + 5 + 1;

/// A latency histogram over [`BUCKETS`].
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// One route's counters.
pub struct RouteMetrics {
    requests: Box<[AtomicU64]>,
    duration: Histogram,
    rate_limited: AtomicU64,
    /// By [`CacheStatus`] (routes with the `cache` plugin).
    cache: [AtomicU64; CacheStatus::ALL.len()],
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            requests: (0..METHODS.len() * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            duration: Histogram::default(),
            rate_limited: AtomicU64::new(0),
            cache: Default::default(),
        }
    }
}

impl RouteMetrics {
    /// Records a finished request: its method, the status sent (0 for none) and how long it
    /// took; `rate_limited` when a rate limit refused it.
    pub fn record(&self, method: &Method, status: u16, took: Duration, rate_limited: bool) {
        let slot = method_slot(method) * STATUS_SLOTS + status_slot(status);
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took);
        if rate_limited {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RouteMetrics {
    /// Records what the cache did for a request.
    pub fn record_cache(&self, status: CacheStatus) {
        self.cache[status as usize].fetch_add(1, Ordering::Relaxed);
    }
}

fn method_slot(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|s| *s == status) {
        Some(i) => i,
        None if (100..600).contains(&status) => STATUSES.len() + (status / 100 - 1) as usize,
        None => STATUS_SLOTS - 1,
    }
}

fn status_label(slot: usize) -> String {
    match slot {
        s if s < STATUSES.len() => STATUSES[s].to_string(),
        s if s < STATUS_SLOTS - 1 => format!("{}xx", s - STATUSES.len() + 1),
        _ => "0".into(),
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

/// The `reason` label values of `gantry_upstream_retries_total`, in the order of the upstream
/// module's `RetryReason` (a unit test there holds them equal).
pub const RETRY_REASONS: [&str; 4] = ["connect-failure", "reset", "timeout", "status"];

/// One cluster's counters.
#[derive(Default)]
pub struct ClusterMetrics {
    /// From choosing a backend to the upstream's response header.
    pub upstream_duration: Histogram,
    /// Failed connections and exchanges per backend: how many, and the last one. Written
    /// only when a backend fails.
    failures: Mutex<HashMap<SocketAddr, (u64, SystemTime)>>,
    /// Retries by reason, in [`RETRY_REASONS`] order.
    retries: [AtomicU64; RETRY_REASONS.len()],
    /// Requests refused by the circuit breaker (`max_requests`).
    overloaded: AtomicU64,
    /// Backends ejected by outlier detection.
    ejections: AtomicU64,
}

impl ClusterMetrics {
    /// A request could not connect to, or did not get an answer from, `backend`.
    pub fn record_failure(&self, backend: SocketAddr) {
        let mut failures = self.failures.lock();
        let entry = failures
            .entry(backend)
            .or_insert((0, SystemTime::UNIX_EPOCH));
        entry.0 += 1;
        entry.1 = SystemTime::now();
    }

    /// A retry, for the reason at `reason` in [`RETRY_REASONS`].
    pub fn record_retry(&self, reason: usize) {
        if let Some(n) = self.retries.get(reason) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request refused because `max_requests` were in flight.
    pub fn record_overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// A backend ejected by outlier detection.
    pub fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times `backend` failed, and when it last did.
    pub fn failures(&self, backend: SocketAddr) -> (u64, Option<SystemTime>) {
        match self.failures.lock().get(&backend) {
            Some((n, last)) => (*n, Some(*last)),
            None => (0, None),
        }
    }
}

/// What became of a request chosen for mirroring: the `outcome` label of
/// `gantry_mirror_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// The mirror's backend answered with a status below 500.
    Sent,
    /// No backend, a connect error, a reset, a timeout or a 5xx answer.
    Failed,
    /// The request body went over `max_body`: nothing was sent.
    DroppedBodyTooLarge,
    /// Every mirror place in flight was taken: nothing was sent.
    DroppedQueueFull,
    /// The mirror cluster's circuit breaker (`max_requests`) refused it: nothing was sent.
    DroppedOverloaded,
}

impl MirrorOutcome {
    /// Every outcome, in label order.
    const ALL: [MirrorOutcome; 5] = [
        MirrorOutcome::Sent,
        MirrorOutcome::Failed,
        MirrorOutcome::DroppedBodyTooLarge,
        MirrorOutcome::DroppedQueueFull,
        MirrorOutcome::DroppedOverloaded,
    ];

    /// The label value.
    fn label(self) -> &'static str {
        match self {
            MirrorOutcome::Sent => "sent",
            MirrorOutcome::Failed => "failed",
            MirrorOutcome::DroppedBodyTooLarge => "dropped_body_too_large",
            MirrorOutcome::DroppedQueueFull => "dropped_queue_full",
            MirrorOutcome::DroppedOverloaded => "dropped_overloaded",
        }
    }
}

/// One route's mirroring to one cluster: requests by outcome.
#[derive(Default)]
pub struct MirrorMetrics {
    outcomes: [AtomicU64; MirrorOutcome::ALL.len()],
}

impl MirrorMetrics {
    /// Counts a mirrored request's outcome.
    pub fn record(&self, outcome: MirrorOutcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for MirrorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorMetrics")
    }
}

/// Every route's and cluster's counters, by name, for the life of the process.
#[derive(Default)]
struct Registry {
    routes: BTreeMap<String, Arc<RouteMetrics>>,
    clusters: BTreeMap<String, Arc<ClusterMetrics>>,
    /// By route, then mirror cluster.
    mirrors: BTreeMap<(String, String), Arc<MirrorMetrics>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// Downstream connections being served.
static CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "-";

/// The counters of route `name` (created on first use; kept across reloads).
pub fn route(name: &str) -> Arc<RouteMetrics> {
    Arc::clone(REGISTRY.lock().routes.entry(name.to_string()).or_default())
}

/// The counters of cluster `name`.
pub fn cluster(name: &str) -> Arc<ClusterMetrics> {
    Arc::clone(
        REGISTRY
            .lock()
            .clusters
            .entry(name.to_string())
            .or_default(),
    )
}

/// The mirroring counters of route `route` to cluster `cluster`.
pub fn mirror(route: &str, cluster: &str) -> Arc<MirrorMetrics> {
    Arc::clone(
        REGISTRY
            .lock()
            .mirrors
            .entry((route.to_string(), cluster.to_string()))
            .or_default(),
    )
}

/// Counts a downstream connection for as long as the guard lives.
pub struct ConnectionGuard(());

impl ConnectionGuard {
    /// A connection started.
    pub fn open() -> Self {
        CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Appends the request metrics to `out` in the Prometheus text format. `health` lists every
/// backend of the running configuration: cluster, backend address, healthy.
pub fn render(out: &mut String, health: &[(String, String, bool)]) {
    render_routes_and_clusters(out);
    render_health(out, health);
    render_process(out);
}

/// The per-route and per-cluster families.
fn render_routes_and_clusters(out: &mut String) {
    let registry = REGISTRY.lock();
    out.push_str("# HELP gantry_requests_total Requests by route, method and status sent\n");
    out.push_str("# TYPE gantry_requests_total counter\n");
    for (route, m) in &registry.routes {
        let route = escape(route);
        for (i, counter) in m.requests.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let method = METHODS[i / STATUS_SLOTS];
                let status = status_label(i % STATUS_SLOTS);
                let _ = writeln!(
                    out,
                    "gantry_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
    histograms(
        out,
        "gantry_request_duration_seconds",
        "Time from the request header to the last byte sent",
        "route",
        registry.routes.iter().map(|(name, m)| (name, &m.duration)),
    );
    out.push_str("# HELP gantry_rate_limited_total Requests refused by a rate limit\n");
    out.push_str("# TYPE gantry_rate_limited_total counter\n");
    for (route, m) in &registry.routes {
        let n = m.rate_limited.load(Ordering::Relaxed);
        let route = escape(route);
        let _ = writeln!(out, "gantry_rate_limited_total{{route=\"{route}\"}} {n}");
    }
    out.push_str("# HELP gantry_cache_total Responses of caching routes by cache status\n");
    out.push_str("# TYPE gantry_cache_total counter\n");
    for (route, m) in &registry.routes {
        let route = escape(route);
        for label in ["hit", "miss", "expired", "revalidated", "stale", "bypass"] {
            let n: u64 = CacheStatus::ALL
                .iter()
                .filter(|s| cache_label(**s) == label)
                .map(|s| m.cache[*s as usize].load(Ordering::Relaxed))
                .sum();
            if n > 0 {
                let _ = writeln!(
                    out,
                    "gantry_cache_total{{route=\"{route}\",status=\"{label}\"}} {n}"
                );
            }
        }
    }
    out.push_str(
        "# HELP gantry_upstream_retries_total Attempts tried again, by cluster and reason\n",
    );
    out.push_str("# TYPE gantry_upstream_retries_total counter\n");
    for (cluster, m) in &registry.clusters {
        let cluster = escape(cluster);
        for (reason, n) in RETRY_REASONS.iter().zip(&m.retries) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "gantry_upstream_retries_total{{cluster=\"{cluster}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    for (name, help, value) in [
        (
            "gantry_upstream_overloaded_total",
            "Requests refused by the circuit breaker (max_requests), by cluster",
            (|m: &ClusterMetrics| &m.overloaded) as fn(&ClusterMetrics) -> &AtomicU64,
        ),
        (
            "gantry_upstream_ejections_total",
            "Backends ejected by outlier detection, by cluster",
            |m: &ClusterMetrics| &m.ejections,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (cluster, m) in &registry.clusters {
            let n = value(m).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {n}", escape(cluster));
        }
    }
    out.push_str(
        "# HELP gantry_mirror_requests_total Requests chosen for mirroring, by route, mirror cluster and outcome\n",
    );
    out.push_str("# TYPE gantry_mirror_requests_total counter\n");
    for ((route, cluster), m) in &registry.mirrors {
        let (route, cluster) = (escape(route), escape(cluster));
        for (outcome, n) in MirrorOutcome::ALL.iter().zip(&m.outcomes) {
            let n = n.load(Ordering::Relaxed);
            let outcome = outcome.label();
            let _ = writeln!(
                out,
                "gantry_mirror_requests_total{{route=\"{route}\",cluster=\"{cluster}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    histograms(
        out,
        "gantry_upstream_duration_seconds",
        "Time from choosing a backend to its response header",
        "cluster",
        registry
            .clusters
            .iter()
            .map(|(name, m)| (name, &m.upstream_duration)),
    );
}

/// `gantry_upstream_health` from the running clusters' health.
fn render_health(out: &mut String, health: &[(String, String, bool)]) {
    out.push_str("# HELP gantry_upstream_health Backend health: 1 healthy, 0 not\n");
    out.push_str("# TYPE gantry_upstream_health gauge\n");
    for (cluster, backend, healthy) in health {
        let _ = writeln!(
            out,
            "gantry_upstream_health{{cluster=\"{}\",backend=\"{backend}\"}} {}",
            escape(cluster),
            u8::from(*healthy)
        );
    }
}

/// The process-wide families: connections, refusals, reloads, the access log, Redis, the cache.
fn render_process(out: &mut String) {
    out.push_str("# HELP gantry_connections_active Downstream connections being served\n");
    out.push_str("# TYPE gantry_connections_active gauge\n");
    let _ = writeln!(
        out,
        "gantry_connections_active {}",
        CONNECTIONS.load(Ordering::Relaxed)
    );
    labelled_counters(
        out,
        "gantry_connections_refused_total",
        "Connections closed at accept by a connection limit",
        "reason",
        &REFUSED_CONNECTIONS,
    );
    labelled_counters(
        out,
        "gantry_request_heads_refused_total",
        "Request heads refused by the connection loop, by problem type",
        "reason",
        &REFUSED_HEADS,
    );
    render_tls_listeners(out);
    labelled_counters(
        out,
        "gantry_config_reloads_total",
        "Configuration reloads by result",
        "result",
        &RELOADS,
    );
    counter(
        out,
        "gantry_access_log_dropped_total",
        "Access log records dropped because the writer fell behind",
        ACCESS_LOG_DROPPED.load(Ordering::Relaxed),
    );
    labelled_counters(
        out,
        "gantry_tracing_spans_dropped_total",
        "Trace spans not exported: the queue was full, the collector failed, or tracing was switched off",
        "reason",
        &SPANS_DROPPED,
    );
    counter(
        out,
        "gantry_tracing_spans_exported_total",
        "Trace spans the collector accepted",
        SPANS_EXPORTED.load(Ordering::Relaxed),
    );
    counter(
        out,
        "gantry_redis_errors_total",
        "Redis operations that failed, timed out or were skipped because Redis was down",
        gantry_plugins::gateway::redis_errors_total(),
    );
    labelled_counters(
        out,
        "gantry_forward_auth_decisions_total",
        "forward-auth decisions: allowed, cached (allowed from the decision cache), refused (a 3xx or 4xx answer), unknown_consumer, failed (then on_error)",
        "outcome",
        gantry_plugins::gateway::forward_auth_decisions_total(),
    );
    if let Some(cache) = crate::cache::running() {
        gauge(
            out,
            "gantry_cache_bytes",
            "Bytes held by the response cache",
            cache.storage.bytes() as u64,
        );
        gauge(
            out,
            "gantry_cache_entries",
            "Responses held by the response cache",
            cache.storage.entries() as u64,
        );
    }
}

/// Why a TLS handshake failed: the `reason` label of `gantry_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshakeFailure {
    /// A listener with `client_auth = "required"` got no client certificate.
    NoClientCertificate,
    /// The client certificate does not chain to `client_ca`, has expired, or is otherwise
    /// invalid.
    BadClientCertificate,
    /// The client ended the handshake with an alert (it refused the server's certificate,
    /// for example).
    ClientAlert,
    /// Any other TLS error: no common version or cipher suite, or not TLS at all.
    Protocol,
    /// The connection closed or failed during the handshake.
    Connection,
}

impl TlsHandshakeFailure {
    /// Every reason, in label order.
    const ALL: [TlsHandshakeFailure; 5] = [
        TlsHandshakeFailure::NoClientCertificate,
        TlsHandshakeFailure::BadClientCertificate,
        TlsHandshakeFailure::ClientAlert,
        TlsHandshakeFailure::Protocol,
        TlsHandshakeFailure::Connection,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            TlsHandshakeFailure::NoClientCertificate => "no_client_certificate",
            TlsHandshakeFailure::BadClientCertificate => "bad_client_certificate",
            TlsHandshakeFailure::ClientAlert => "client_alert",
            TlsHandshakeFailure::Protocol => "protocol",
            TlsHandshakeFailure::Connection => "connection",
        }
    }
}

/// One TLS listener's failed handshakes, by reason.
#[derive(Default)]
pub struct TlsListenerMetrics {
    failures: [AtomicU64; TlsHandshakeFailure::ALL.len()],
}

impl TlsListenerMetrics {
    /// Counts a failed handshake.
    pub fn record_handshake_failure(&self, reason: TlsHandshakeFailure) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Every TLS listener's counters, by address, for the life of the process.
static TLS_LISTENERS: LazyLock<Mutex<BTreeMap<SocketAddr, Arc<TlsListenerMetrics>>>> =
    LazyLock::new(Mutex::default);

/// The counters of the TLS listener on `addr`.
pub fn tls_listener(addr: SocketAddr) -> Arc<TlsListenerMetrics> {
    Arc::clone(TLS_LISTENERS.lock().entry(addr).or_default())
}

/// `gantry_tls_handshake_failures_total`, every reason of every TLS listener.
fn render_tls_listeners(out: &mut String) {
    let name = "gantry_tls_handshake_failures_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS handshakes that failed, by listener and reason\n# TYPE {name} counter"
    );
    for (listener, m) in TLS_LISTENERS.lock().iter() {
        for (reason, n) in TlsHandshakeFailure::ALL.iter().zip(&m.failures) {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{listener}\",reason=\"{}\"}} {}",
                reason.label(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Configuration reloads, by result.
static RELOADS: [(&str, AtomicU64); 2] = [
    ("success", AtomicU64::new(0)),
    ("failure", AtomicU64::new(0)),
];

/// Access log records dropped because the writer fell behind.
static ACCESS_LOG_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Trace spans dropped, by reason.
static SPANS_DROPPED: [(&str, AtomicU64); 3] = [
    ("queue_full", AtomicU64::new(0)),
    ("export_failed", AtomicU64::new(0)),
    ("disabled", AtomicU64::new(0)),
];

/// Trace spans the collector accepted.
static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);

/// `n` trace spans were dropped for `reason`.
pub fn tracing_spans_dropped(reason: &str, n: u64) {
    count_reason_by(&SPANS_DROPPED, reason, n);
}

/// `n` trace spans were exported.
pub fn tracing_spans_exported(n: u64) {
    SPANS_EXPORTED.fetch_add(n, Ordering::Relaxed);
}

/// A configuration reload finished: applied (`true`) or refused.
pub fn config_reloaded(applied: bool) {
    count_reason(&RELOADS, if applied { "success" } else { "failure" });
}

/// An access log record was dropped.
pub fn access_log_dropped() {
    ACCESS_LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Access log records dropped so far.
pub fn access_log_dropped_total() -> u64 {
    ACCESS_LOG_DROPPED.load(Ordering::Relaxed)
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Counters keyed by one `reason` label.
type ReasonCounters = [(&'static str, AtomicU64)];

/// Connections refused at accept, by limit.
static REFUSED_CONNECTIONS: [(&str, AtomicU64); 2] = [
    ("max_connections", AtomicU64::new(0)),
    ("max_connections_per_ip", AtomicU64::new(0)),
];

/// Heads refused by the connection loop, by problem slug.
static REFUSED_HEADS: [(&str, AtomicU64); 4] = [
    ("malformed-request", AtomicU64::new(0)),
    ("header-too-large", AtomicU64::new(0)),
    ("request-timeout", AtomicU64::new(0)),
    ("unsupported-transfer-coding", AtomicU64::new(0)),
];

fn count_reason(counters: &ReasonCounters, reason: &str) {
    count_reason_by(counters, reason, 1);
}

/// Adds `n` to the counter of `reason`.
fn count_reason_by(counters: &ReasonCounters, reason: &str, n: u64) {
    if let Some((_, count)) = counters.iter().find(|(r, _)| *r == reason) {
        count.fetch_add(n, Ordering::Relaxed);
    }
}

/// A connection closed at accept because the limit `reason` was reached.
pub fn connection_refused(reason: &str) {
    count_reason(&REFUSED_CONNECTIONS, reason);
}

/// A request head refused with the problem type `slug`.
pub fn head_refused(slug: &str) {
    count_reason(&REFUSED_HEADS, slug);
}

fn labelled_counters(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    counters: &ReasonCounters,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in counters {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{value}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}

/// One histogram family: `name` for each labelled histogram.
fn histograms<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    each: impl Iterator<Item = (&'a String, &'a Histogram)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (value, histogram) in each {
        let labels = format!("{label}=\"{}\"", escape(value));
        histogram.render(out, name, &labels);
    }
}

/// The `status` label of `gantry_cache_total`: `X-Cache-Status` in lowercase.
fn cache_label(status: CacheStatus) -> &'static str {
    match status {
        CacheStatus::Hit => "hit",
        CacheStatus::Miss => "miss",
        CacheStatus::Expired => "expired",
        CacheStatus::Revalidated => "revalidated",
        CacheStatus::Stale => "stale",
        CacheStatus::NotStored | CacheStatus::Bypass => "bypass",
    }
}

/// A label value with `\\`, `"` and newlines escaped (route names are TOML keys, which may
/// hold anything).
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_methods_map_to_bounded_labels() {
        assert_eq!(status_label(status_slot(200)), "200");
        assert_eq!(status_label(status_slot(418)), "4xx");
        assert_eq!(status_label(status_slot(599)), "5xx");
        assert_eq!(status_label(status_slot(0)), "0");
        assert_eq!(status_label(status_slot(700)), "0");
        assert_eq!(
            METHODS[method_slot(&Method::from_bytes(b"PURGE").unwrap())],
            "OTHER"
        );
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn tls_failure_reasons_count_in_label_order() {
        for (i, reason) in TlsHandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.label());
        }
    }

    #[test]
    fn mirror_outcomes_count_in_label_order() {
        for (i, outcome) in MirrorOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{}", outcome.label());
        }
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "r=\"a\"");
        assert!(out.contains("x_bucket{r=\"a\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{r=\"a\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{r=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{r=\"a\"} 3\n"), "{out}");
    }
}
