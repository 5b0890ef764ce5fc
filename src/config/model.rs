//! The file model: serde structs that mirror `gantry.toml` exactly.
//!
//! These types are the public configuration interface and nothing else; they are never used on
//! the request path. [`super::compile`] turns them into the runtime model. Every struct denies
//! unknown keys so a misspelt key is an error, never silently ignored. Defaults are documented
//! on each field and in `docs/configuration.md`.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use toml::Spanned;

pub use gantry_plugins::gateway::{HumanDuration, HumanSize};

/// The headers stripped from untrusted peers by default (`server.strip_untrusted_headers`), in
/// `docs/configuration.md` too.
pub const DEFAULT_STRIPPED: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
    "x-host",
];

/// Headers Gantry sets from the connection (`forwarded.rs`): an untrusted peer's copies are
/// removed along with `server.strip_untrusted_headers`.
pub const FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Headers only Gantry sets, for an authenticated consumer: every client's copies are removed,
/// a trusted peer's too.
pub const CONSUMER_HEADERS: &[&str] = &["x-consumer-name", "x-consumer-groups"];

/// `server.listen`'s default: loopback only, so a fresh install is not open to the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `server.grace_period`'s default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// `server.header_timeout`'s default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.keepalive_timeout`'s default.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// `server.max_request_header_size`'s default, in bytes (64 KiB).
pub const DEFAULT_MAX_REQUEST_HEADER_SIZE: usize = 64 * 1024;
/// `server.upstream_keepalive_pool_size`'s default. Above the concurrency a busy thread sees:
/// with 1,000 clients on one thread a cap of 128 made two of three requests open a new upstream
/// connection (the ones beyond the cap were closed on release), which halved throughput
/// (BENCHMARKS.md, issue 15). Idle ones still close after the cluster's `idle_timeout`.
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 1024;
/// `server.pid_file`'s default name, in the runtime directory.
pub const DEFAULT_PID_FILE: &str = "gantry.pid";
/// `server.upgrade_sock`'s default name, in the runtime directory.
pub const DEFAULT_UPGRADE_SOCK: &str = "upgrade.sock";

/// `[server]`: listeners and process-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Let idle worker threads steal connections from busy ones. Default `false`: each thread
    /// keeps the connections it accepted (nginx's model), which measured faster.
    #[serde(default)]
    pub work_stealing: bool,
    /// Plain-text listeners (HTTP/1.1 and h2c on the same port). Default `["127.0.0.1:8080"]`
    /// ([`DEFAULT_LISTEN`]).
    #[serde(default = "default_listen")]
    pub listen: Vec<Spanned<String>>,
    /// Worker threads. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// Peers whose `X-Forwarded-*` and `X-Request-Id` headers are believed. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Accept HTTP/2 prior-knowledge (h2c) on the plain listeners. Default `true`.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// How long SIGTERM waits for in-flight requests before exiting. Default `"5s"`
    /// ([`DEFAULT_GRACE_PERIOD`]).
    pub grace_period: Option<HumanDuration>,
    /// How long a request head may take: from accept on a new connection, from its first byte
    /// on a kept-alive one. Default `"10s"` ([`DEFAULT_HEADER_TIMEOUT`]).
    pub header_timeout: Option<HumanDuration>,
    /// Most client connections open at once. Default: half the file-descriptor limit less 64.
    pub max_connections: Option<usize>,
    /// Most client connections open at once from one IP address. Default: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// How long an idle client keep-alive connection is kept open. Default `"60s"`
    /// ([`DEFAULT_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Option<HumanDuration>,
    /// Largest accepted request line plus headers; larger requests get a 431. Default `"64KiB"`
    /// ([`DEFAULT_MAX_REQUEST_HEADER_SIZE`]).
    pub max_request_header_size: Option<HumanSize>,
    /// Idle upstream connections kept per worker thread. Default `128`
    /// ([`DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE`]).
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Headers removed from requests of peers outside `trusted_proxies` (backends believe
    /// them). Default: the method overrides and forwarding variants listed in
    /// `docs/configuration.md`; `[]` keeps every header.
    pub strip_untrusted_headers: Option<Vec<Spanned<String>>>,
    /// The pid file (used with `--daemon`). Default `gantry.pid` ([`DEFAULT_PID_FILE`]) in the
    /// runtime directory (see `crate::runtime_dir`).
    pub pid_file: Option<String>,
    /// The Unix socket that hands listeners over on `--upgrade`. Default `upgrade.sock`
    /// ([`DEFAULT_UPGRADE_SOCK`]) in the runtime directory.
    pub upgrade_sock: Option<String>,
    /// Where logs go when running with `--daemon`. Default: stderr.
    pub error_log: Option<String>,
    /// `[[server.tls]]`: TLS listeners. Default: none.
    #[serde(default)]
    pub tls: Vec<TlsSection>,
    /// `"ip:port"` nameservers for backends written as host names. Default: the system's
    /// `resolv.conf` (and hosts file).
    #[serde(default)]
    pub resolvers: Vec<Spanned<String>>,
}

/// `[[server.tls]]`: one TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// `IP:port`. Required.
    pub listen: Spanned<String>,
    /// Certificate chains and keys (PEM files), chosen by SNI; the first is the default.
    pub certificates: Vec<Spanned<CertificateSection>>,
    /// Offer HTTP/2 by ALPN (with HTTP/1.1). Default `true`.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// PEM CA certificates that client certificates must chain to; setting it makes the
    /// listener ask clients for a certificate. Default: none (no client certificates).
    pub client_ca: Option<Spanned<String>>,
    /// `required` (a handshake without a valid certificate is refused) or `optional` (plugins
    /// decide). Only with `client_ca`. Default `required`.
    pub client_auth: Option<Spanned<crate::client_auth::ClientAuthMode>>,
}

/// `{ cert = "chain.pem", key = "key.pem" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// The PEM certificate chain, leaf first.
    pub cert: String,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            work_stealing: false,
            listen: default_listen(),
            threads: None,
            trusted_proxies: Vec::new(),
            h2c: true,
            grace_period: None,
            keepalive_timeout: None,
            header_timeout: None,
            max_connections: None,
            max_connections_per_ip: None,
            max_request_header_size: None,
            upstream_keepalive_pool_size: None,
            strip_untrusted_headers: None,
            pid_file: None,
            upgrade_sock: None,
            error_log: None,
            tls: Vec::new(),
            resolvers: Vec::new(),
        }
    }
}

fn default_listen() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, DEFAULT_LISTEN.to_string())]
}

fn default_true() -> bool {
    true
}

/// `balancer = "…"` of a cluster.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Weighted round robin (the default).
    #[default]
    RoundRobin,
    /// Ketama consistent hashing keyed by `hash_on`.
    ConsistentHash,
    /// Power of two random choices over requests in flight (per unit of weight).
    LeastRequest,
    /// Power of two random choices over peak-EWMA latency times requests in flight.
    PeakEwma,
}

/// `clusters.*.connect_timeout`'s default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `clusters.*.read_timeout`'s default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// `clusters.*.write_timeout`'s default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// `clusters.*.idle_timeout`'s default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `clusters.*.retries`'s default.
pub const DEFAULT_RETRIES: u32 = 2;

/// `[clusters.NAME]`: a named group of upstream backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Selection algorithm. Default `round_robin`.
    #[serde(default)]
    pub balancer: BalancerKind,
    /// What a consistent hash is keyed on. Default `client_ip`.
    pub hash_on: Option<Spanned<String>>,
    /// `"host:port"` strings or `{ addr, weight }` tables. Required, at least one.
    pub backends: Vec<Spanned<BackendSpec>>,
    /// How often host-name backends are looked up again. Default: each record's TTL, within
    /// 1 s and 1 h.
    pub dns_refresh: Option<HumanDuration>,
    /// TCP connect timeout. Default `"5s"` ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Option<HumanDuration>,
    /// Timeout for each read from the upstream (response header and every body chunk).
    /// Default `"60s"` ([`DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: Option<HumanDuration>,
    /// Timeout for each write to the upstream. Default `"60s"` ([`DEFAULT_WRITE_TIMEOUT`]).
    pub write_timeout: Option<HumanDuration>,
    /// How long an idle pooled upstream connection is kept. Default `"60s"`
    /// ([`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Option<HumanDuration>,
    /// Shorthand for `retry = { on = ["connect-failure"], attempts = retries + 1 }`; writing
    /// both is an error. Default `2` ([`DEFAULT_RETRIES`]) when neither is written.
    pub retries: Option<u32>,
    /// The retry policy. Default: `retries`' shorthand.
    pub retry: Option<RetrySection>,
    /// Passive health checking (outlier detection). Default: off.
    pub outlier: Option<OutlierSection>,
    /// Circuit breaker: the most requests in flight to the cluster; beyond it requests fail at
    /// once with 503 `upstream-overloaded`. Default: no limit.
    pub max_requests: Option<usize>,
    /// Active health checking. Default: none (every backend is considered up).
    pub health_check: Option<HealthCheckSection>,
    /// `http1`, `h2` (HTTP/2 over TLS) or `h2c` (HTTP/2 cleartext). Default `http1`.
    #[serde(default)]
    pub protocol: ProtocolKind,
    /// Connect to the backends with TLS. Default `false`.
    #[serde(default)]
    pub tls: bool,
    /// The TLS server name sent and verified. Default: each backend's host name.
    pub sni: Option<String>,
    /// Verify the backends' certificates and host names. Default `true` (with `tls`).
    pub verify: Option<bool>,
    /// The PEM client certificate chain presented to the backends (and health checks), with
    /// `client_key`. Only with `tls`. Default: none.
    pub client_cert: Option<Spanned<String>>,
    /// The PEM private key of `client_cert`. Default: none.
    pub client_key: Option<Spanned<String>>,
}

/// `clusters.*.retry.on`'s default: every condition.
pub const DEFAULT_RETRY_ON: &[&str] = &["connect-failure", "reset", "timeout", "status"];
/// `clusters.*.retry.statuses` and `clusters.*.outlier.statuses`' default.
pub const DEFAULT_FAILURE_STATUSES: &[u16] = &[502, 503, 504];
/// `clusters.*.retry.attempts`' default.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
/// `clusters.*.retry.backoff.base`'s default.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// `clusters.*.retry.backoff.max`'s default.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// `clusters.*.retry.budget.percent`'s default.
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// `clusters.*.retry.budget.min_per_second`'s default.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// `clusters.*.retry.methods`' default: the idempotent methods.
pub const DEFAULT_RETRY_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "PUT", "DELETE"];

/// `[clusters.NAME.retry]`: which failed attempts are tried again, and how often.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Conditions retried: `connect-failure`, `reset`, `timeout`, `status`. Default: all four
    /// ([`DEFAULT_RETRY_ON`]).
    pub on: Option<Vec<Spanned<String>>>,
    /// Statuses that `status` retries. Default `[502, 503, 504]` ([`DEFAULT_FAILURE_STATUSES`]).
    pub statuses: Option<Vec<Spanned<u16>>>,
    /// Total tries, the first included. Default `3` ([`DEFAULT_RETRY_ATTEMPTS`]).
    pub attempts: Option<Spanned<u32>>,
    /// Each try's limit until the response header. Default: none (the cluster's timeouts and
    /// the route's `timeout` bound it).
    pub per_try_timeout: Option<HumanDuration>,
    /// Wait before each retry. Default `{ base = "25ms", max = "250ms" }`.
    pub backoff: Option<BackoffSection>,
    /// How many retries the cluster may see. Default `{ percent = 20, min_per_second = 10 }`.
    pub budget: Option<BudgetSection>,
    /// Methods retried on conditions other than `connect-failure`. Default: the idempotent
    /// methods ([`DEFAULT_RETRY_METHODS`]).
    pub methods: Option<Vec<Spanned<String>>>,
}

/// `backoff = { … }` of a retry policy: exponential, with full jitter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSection {
    /// The first retry waits up to this. Default `"25ms"` ([`DEFAULT_BACKOFF_BASE`]).
    pub base: Option<HumanDuration>,
    /// No retry waits longer. Default `"250ms"` ([`DEFAULT_BACKOFF_MAX`]).
    pub max: Option<HumanDuration>,
}

/// `budget = { … }` of a retry policy, over a sliding 10 s window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// Retries allowed as a share of requests. Default `20` ([`DEFAULT_BUDGET_PERCENT`]).
    pub percent: Option<Spanned<u32>>,
    /// Retries allowed per second whatever the share. Default `10`
    /// ([`DEFAULT_BUDGET_MIN_PER_SECOND`]).
    pub min_per_second: Option<u32>,
}

/// `clusters.*.outlier.consecutive_failures`' default.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// `clusters.*.outlier.ejection_time`'s default.
pub const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(30);
/// `clusters.*.outlier.max_ejected_percent`'s default.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

/// `[clusters.NAME.outlier]`: backends ejected by what real traffic sees.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Failures in a row that eject a backend. Default `5` ([`DEFAULT_CONSECUTIVE_FAILURES`]).
    pub consecutive_failures: Option<Spanned<u32>>,
    /// Statuses counted as failures, besides connect errors, resets and timeouts. Default
    /// `[502, 503, 504]` ([`DEFAULT_FAILURE_STATUSES`]).
    pub statuses: Option<Vec<Spanned<u16>>>,
    /// How long the first ejection lasts; each repeated one lasts once more, up to ten times.
    /// Default `"30s"` ([`DEFAULT_EJECTION_TIME`]).
    pub ejection_time: Option<HumanDuration>,
    /// The largest share of the cluster ejected at once. Default `50`
    /// ([`DEFAULT_MAX_EJECTED_PERCENT`]).
    pub max_ejected_percent: Option<Spanned<u32>>,
}

/// `protocol = "…"` of a cluster.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolKind {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 over TLS.
    H2,
    /// HTTP/2 cleartext (prior knowledge).
    H2c,
}

/// `clusters.*.backends[*].weight`'s default.
pub const DEFAULT_WEIGHT: usize = 1;

/// One entry of `backends`.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// `host:port`; host names are resolved at load and again in the background.
    pub addr: String,
    /// Relative weight for round robin. Default `1` ([`DEFAULT_WEIGHT`]).
    pub weight: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    addr: String,
    #[serde(default = "default_weight")]
    weight: usize,
}

fn default_weight() -> usize {
    DEFAULT_WEIGHT
}

impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = BackendSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendSpec, E> {
                Ok(BackendSpec {
                    addr: v.to_string(),
                    weight: DEFAULT_WEIGHT,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BackendSpec, A::Error> {
                let t = BackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendSpec {
                    addr: t.addr,
                    weight: t.weight,
                })
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// `type = "…"` of a health check.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// `GET path` must answer one of `expected_statuses` (the default).
    #[default]
    Http,
    /// A TCP connect must succeed.
    Tcp,
}

/// `clusters.*.health_check.path`'s default.
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/";
/// `clusters.*.health_check.host`'s default.
pub const DEFAULT_HEALTH_CHECK_HOST: &str = "localhost";
/// `clusters.*.health_check.interval`'s default.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// `clusters.*.health_check.timeout`'s default.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// `clusters.*.health_check.healthy_threshold`'s default.
pub const DEFAULT_HEALTHY_THRESHOLD: usize = 2;
/// `clusters.*.health_check.unhealthy_threshold`'s default.
pub const DEFAULT_UNHEALTHY_THRESHOLD: usize = 2;
/// `clusters.*.health_check.expected_statuses`'s default.
pub const DEFAULT_EXPECTED_STATUSES: &[u16] = &[200];

/// `[clusters.NAME.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `http` or `tcp`. Default `http`.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// Path probed by HTTP checks. Default `"/"` ([`DEFAULT_HEALTH_CHECK_PATH`]).
    pub path: Option<Spanned<String>>,
    /// `Host` header sent by HTTP checks. Default `"localhost"` ([`DEFAULT_HEALTH_CHECK_HOST`]).
    pub host: Option<Spanned<String>>,
    /// Time between checks. Default `"5s"` ([`DEFAULT_HEALTH_CHECK_INTERVAL`]).
    pub interval: Option<HumanDuration>,
    /// Connect and read timeout of one check. Default `"1s"` ([`DEFAULT_HEALTH_CHECK_TIMEOUT`]).
    pub timeout: Option<HumanDuration>,
    /// Consecutive successes that mark a backend up. Default `2` ([`DEFAULT_HEALTHY_THRESHOLD`]).
    pub healthy_threshold: Option<usize>,
    /// Consecutive failures that mark a backend down. Default `2`
    /// ([`DEFAULT_UNHEALTHY_THRESHOLD`]).
    pub unhealthy_threshold: Option<usize>,
    /// Statuses counted as healthy for HTTP checks. Default `[200]`
    /// ([`DEFAULT_EXPECTED_STATUSES`]).
    pub expected_statuses: Option<Vec<u16>>,
}

/// `[routes.NAME]`: how requests are matched and where they go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Hosts, exact (`api.example.com`) or leading wildcard (`*.example.com`). Default: any host.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Paths: `/p` prefix, `=/p` exact, `~^/re` regex. Required, at least one.
    pub paths: Vec<Spanned<String>>,
    /// Allowed methods. Default: any method.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Headers that must be present with exactly this value. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Higher wins before any other precedence rule. Default `0`.
    #[serde(default)]
    pub priority: i64,
    /// Remove the matched prefix before proxying. Default `false`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Deadline until the response header, retries included; it also caps an `aggregate`
    /// route's calls. Default: none (the cluster's timeouts apply).
    pub timeout: Option<HumanDuration>,
    /// Several clusters sharing the route's traffic by weight (a traffic split): one of
    /// `cluster`, `clusters`, `respond` and `aggregate`.
    pub clusters: Option<Vec<Spanned<SplitEntry>>>,
    /// What a traffic split is keyed on, so the same key lands on the same cluster (`hash_on`'s
    /// syntax: `header:x-user-id`, `cookie:NAME`, `query:NAME`, `client_ip`...). Default: none
    /// (each request is split at random by weight).
    pub split_key: Option<Spanned<String>>,
    /// A copy of a share of the route's requests, as sent upstream, to another cluster (fire
    /// and forget). Only on routes with `cluster` or `clusters`. Default: none.
    pub mirror: Option<Spanned<MirrorSection>>,
    /// The cluster that serves this route (exactly one of `cluster` and `respond`).
    pub cluster: Option<Spanned<String>>,
    /// A direct response served by the gateway itself.
    pub respond: Option<Spanned<RespondSection>>,
    /// Answer by calling several clusters and merging their JSON.
    pub aggregate: Option<Spanned<AggregateSection>>,
    /// Bridge gRPC-Web clients (HTTP/1.1, `application/grpc-web`) to the gRPC upstream.
    /// Default `false`.
    #[serde(default)]
    pub grpc_web: bool,
    /// Response compressions offered, in order of preference: `br`, `gzip`, `zstd`.
    /// Negotiated from `Accept-Encoding`, for compressible types. Default none.
    #[serde(default)]
    pub compress: Vec<Spanned<String>>,
    /// Tracing settings of this route (its sample ratio). Needs `[tracing]`.
    pub tracing: Option<Spanned<RouteTracingSection>>,
    /// Add `Server-Timing` (plugins, upstream-connect, upstream, total) to responses. Default
    /// `false`.
    #[serde(default)]
    pub server_timing: bool,
}

/// `routes.*.clusters[*].weight`'s default.
pub const DEFAULT_SPLIT_WEIGHT: u32 = 1;

/// One entry of a route's `clusters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    /// The cluster. Required.
    pub name: Spanned<String>,
    /// Its share of the route's requests, relative to the others (0 drains it). Default `1`
    /// ([`DEFAULT_SPLIT_WEIGHT`]).
    pub weight: Option<u32>,
}

/// `routes.*.mirror.percent`'s default: every request.
pub const DEFAULT_MIRROR_PERCENT: u32 = 100;
/// `routes.*.mirror.max_body`'s default: 64 KiB.
pub const DEFAULT_MIRROR_MAX_BODY: u64 = 64 * 1024;

/// `mirror = { cluster, percent, max_body }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// The cluster the copies go to. Required.
    pub cluster: Spanned<String>,
    /// The share of the route's requests mirrored, 0 to 100. Default `100`
    /// ([`DEFAULT_MIRROR_PERCENT`]).
    pub percent: Option<Spanned<u32>>,
    /// The largest request body copied; a request with a larger one is not mirrored. Default
    /// `"64KiB"` ([`DEFAULT_MIRROR_MAX_BODY`]).
    pub max_body: Option<Spanned<HumanSize>>,
}

/// `routes.*.respond.status`'s default.
pub const DEFAULT_STATUS: u16 = 200;
/// `routes.*.respond.content_type`'s default.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// `respond = { … }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    /// Status code. Default `200` ([`DEFAULT_STATUS`]).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Body text. Default: empty.
    #[serde(default)]
    pub body: String,
    /// `Content-Type` of the body. Default `"text/plain; charset=utf-8"`
    /// ([`DEFAULT_CONTENT_TYPE`]).
    pub content_type: Option<String>,
    /// Extra response headers. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}

fn default_status() -> u16 {
    DEFAULT_STATUS
}

/// `routes.*.aggregate.timeout`'s default.
pub const DEFAULT_AGGREGATE_TIMEOUT: Duration = Duration::from_secs(1);

/// `[routes.R.aggregate]`: service composition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// The whole fan-out's budget. Default `"1s"` ([`DEFAULT_AGGREGATE_TIMEOUT`]).
    pub timeout: Option<HumanDuration>,
    /// The calls, by name. Required, at least one.
    #[serde(default)]
    pub calls: BTreeMap<String, CallSection>,
}

/// `[routes.R.aggregate.calls.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSection {
    /// The cluster called. Required.
    pub cluster: Spanned<String>,
    /// Path and query, a template (`"/users/$path.user"`). Required.
    pub path: String,
    /// A failure fails the whole response. Default `true`.
    #[serde(default = "default_true")]
    pub required: bool,
    /// This call's own limit within the budget. Default: the budget.
    pub timeout: Option<HumanDuration>,
    /// Client headers passed on to the call. Default: none.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

/// `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (`docs/tracing.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's OTLP/HTTP traces endpoint (`http://host:4318/v1/traces`). Required in
    /// the section.
    pub otlp_endpoint: Spanned<String>,
    /// PEM CA certificates trusted for an `https` endpoint. Default: the system's roots.
    pub ca_file: Option<Spanned<String>>,
    /// `service.name`. Default `"gantry"`.
    pub service_name: Option<Spanned<String>>,
    /// Further resource attributes. Default: none.
    #[serde(default)]
    pub resource: BTreeMap<String, Spanned<String>>,
    /// The share of requests sampled without a trusted sampled parent, 0 to 1. Default 0.01.
    pub sample_ratio: Option<Spanned<f64>>,
    /// Headers sent to the collector (an API key): secrets, never shown. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Queueing and batching.
    pub batch: Option<TracingBatchSection>,
}

/// `tracing.batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingBatchSection {
    /// Spans waiting at most; more are dropped and counted. Default 8192.
    pub max_queue: Option<Spanned<usize>>,
    /// Spans per export request at most. Default 512.
    pub max_batch: Option<Spanned<usize>>,
    /// How often the queue is exported (sooner when a batch is full). Default `"2s"`.
    pub interval: Option<HumanDuration>,
    /// The longest one export may take. Default `"5s"`.
    pub timeout: Option<HumanDuration>,
}

/// `routes.NAME.tracing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTracingSection {
    /// This route's share of sampled requests, replacing `tracing.sample_ratio`.
    pub sample_ratio: Spanned<f64>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `IP:port` of the admin listener (`/metrics`, `/health`). Required in the section.
    pub listen: Spanned<String>,
    /// Bearer token for every endpoint except `/metrics` and `/health`. Default: none (those
    /// endpoints are refused).
    pub token: Option<Spanned<String>>,
}

/// `[log]`: the access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `stdout` (default), `off`, or a file path (reopened on SIGUSR1).
    pub access: Option<Spanned<String>>,
    /// `json` (default) or `combined`.
    pub format: Option<Spanned<String>>,
}

/// `cache.max_size`'s default, in bytes (256 MiB).
pub const DEFAULT_CACHE_MAX_SIZE: usize = 256 << 20;
/// `cache.max_object_size`'s default, in bytes (8 MiB; never above `max_size`).
pub const DEFAULT_CACHE_MAX_OBJECT_SIZE: usize = 8 << 20;

/// `[cache]`: the node's response cache storage, shared by every route's `cache` plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Hard bound on stored bytes; least-recently-used entries are evicted. Default 256MiB
    /// ([`DEFAULT_CACHE_MAX_SIZE`]).
    pub max_size: Option<Spanned<HumanSize>>,
    /// Larger responses are streamed, not stored. Default 8MiB ([`DEFAULT_CACHE_MAX_OBJECT_SIZE`]).
    pub max_object_size: Option<Spanned<HumanSize>>,
}

/// `redis.timeout`'s default: enough for a local network.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// `redis.pool_size`'s default.
pub const DEFAULT_REDIS_POOL_SIZE: usize = 16;
/// `redis.key_prefix`'s default.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "gantry";

/// `[redis]`: the store for cluster-wide plugin state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// One server: `redis://[:password@]host:port[/db]`.
    pub url: Option<Spanned<String>>,
    /// Seed nodes of a Redis Cluster (with `cluster = true`).
    #[serde(default)]
    pub urls: Vec<Spanned<String>>,
    /// Talk the Redis Cluster protocol. Default `false`.
    #[serde(default)]
    pub cluster: bool,
    /// The longest one command may take; the request path never waits longer. Default `"50ms"`
    /// ([`DEFAULT_REDIS_TIMEOUT`]).
    pub timeout: Option<HumanDuration>,
    /// Connections kept open (each carries many requests at once). Default `16`
    /// ([`DEFAULT_REDIS_POOL_SIZE`]).
    pub pool_size: Option<usize>,
    /// Prepended to every key. Default `"gantry"` ([`DEFAULT_REDIS_KEY_PREFIX`]).
    pub key_prefix: Option<String>,
}

/// `[consumers.NAME]`: an identity that authentication plugins resolve requests to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    /// Groups, for `acl`. Default: none.
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys for `key-auth`: `"sha256:HEX"` digests (preferred) or plain keys. Default: none.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Password for `basic-auth`, as an argon2 PHC hash only. Default: none.
    pub password: Option<String>,
    /// Maps a verified JWT whose `consumer_claim` has this value to this consumer. Default: none.
    pub jwt_subject: Option<String>,
    /// Maps a verified client certificate whose `mtls-auth` `subject_claim` (a SAN DNS name, a
    /// SAN URI or the subject CN) is one of these to this consumer; unique across consumers.
    /// Default: none.
    #[serde(default)]
    pub certificate_subjects: Vec<String>,
}
