//! Gantry: an API gateway and edge proxy on Cloudflare's Pingora.
//!
//! A request flows through these modules:
//!
//! ```text
//! config  (TOML file -> validated, compiled Config; every error at once, with line and key)
//!   |
//! server  (Pingora Server: listeners, proxy service, health-check service)
//!   |
//! connection (admission, h2c detection, HTTP/1 heads read with a deadline and a size cap,
//!   |         HTTP/2 deadlines; then Pingora's HTTP proxy)
//! proxy   request_filter: request id, client IP, routing, direct responses, 404/405/400
//!   |     upstream_peer:  cluster selection (again on each connect retry)
//!   |     upstream_request_filter / response_filter: strip_prefix, X-Forwarded-*, X-Request-Id
//!   |     fail_to_proxy:  every error as RFC 9457 problem+json
//! router  (host index -> exact / prefix trie / regex path index)
//! upstream (pingora-load-balancing clusters, peers with timeouts, active health checks)
//! aggregate (service composition: concurrent calls to clusters merged into one JSON)
//! mirror  (request mirroring: a share of a route's requests copied to another cluster)
//! cache   (response cache: bounded in-memory storage, eviction, cache lock)
//! access_log, metrics (one record and a few atomic counters per request)
//! trace   (W3C trace context, OpenTelemetry spans, the OTLP exporter)
//! admin   (its own listener: /metrics, /health, /status, /cache/purge)
//! tls     (TLS listeners: certificates chosen by SNI; upstream client certificates)
//! client_auth (client certificates on TLS listeners: verification, identities, failures)
//! ```
#![forbid(unsafe_code)]

pub mod access_log;
pub(crate) mod admin;
pub(crate) mod aggregate;
pub(crate) mod cache;
pub(crate) mod client_auth;
pub(crate) mod compression;
pub mod config;
pub(crate) mod connection;
pub(crate) mod forwarded;
pub mod metrics;
pub(crate) mod mirror;
pub(crate) mod proxy;
pub(crate) mod reload;
pub mod router;
pub(crate) mod runtime_dir;
pub mod server;
pub(crate) mod tls;
pub(crate) mod trace;
pub(crate) mod upstream;
