//! `forward-auth`: an auth service decides on each request (Traefik `forwardAuth`, nginx
//! `auth_request`).
//!
//! The plugin sends the service a `GET` describing the request (`X-Forwarded-Method`, `-Uri`,
//! `-Host`, `-Proto`, `-For`, the request id, `traceparent`) with the configured request
//! headers, never the body, to a `url` or through a `cluster` of the configuration. A 2xx lets
//! the request through with the answer's `upstream_headers` set upstream (the client's copies
//! are always removed first) and, with `consumer_header`, the consumer it names. A 3xx or 4xx
//! goes to the client as the service wrote it (status, bounded body, `client_headers`): the one
//! exception to problem+json, so login redirects and custom denials work. A 5xx, a timeout or a
//! failed connection follows `on_error`.
//!
//! Allowed decisions may be cached (`cache = { ttl }`), keyed by a SHA-256 of the method,
//! scheme, host, target and the listed request headers' values, so no credential is held in
//! clear; refusals are never cached (they may carry per-request state, like a login's cookie).

use crate::registry::BuildContext;
use crate::services::{ClusterClient, ServiceFailure};
use crate::slots::{Slot, SlotAllocator};
use crate::support::config_types::HumanDuration;
use crate::support::consumer::{Consumer, Consumers};
use crate::support::header_aliases::remove_headers_and_aliases;
use crate::trace_events::EventValue;
use crate::{Answer, Flow, Phases, Plugin, PluginState, Rejection, RequestView};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The configuration name.
pub const NAME: &str = "forward-auth";

/// The problem type of a failed auth service under `on_error = "deny"` (503).
pub const UNAVAILABLE_SLUG: &str = "auth-unavailable";

/// The problem type of a 2xx answer naming a consumer the configuration lacks (403).
pub const UNKNOWN_CONSUMER_SLUG: &str = "consumer-not-configured";

/// The longest auth answer body read; a longer one is a failure of the service.
pub const MAX_ANSWER_BODY: usize = 64 * 1024;

/// `timeout` when unset.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest `timeout`: every request of the route waits for the answer.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `cache.max_entries` when unset.
const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// The largest `cache.max_entries`.
const MAX_CACHE_ENTRIES: usize = 1_000_000;

/// An allowed decision whose upstream headers are larger is not cached (the cache's memory
/// stays bounded by `max_entries` times this).
const MAX_CACHED_HEADER_BYTES: usize = 8 * 1024;

/// `client_headers` when unset.
const DEFAULT_CLIENT_HEADERS: [&str; 2] = ["www-authenticate", "location"];

/// At most one warning per this interval about a failing auth service, so an outage does not
/// flood the log (every failure is counted in the metric).
const WARN_INTERVAL_SECS: u64 = 1;

/// The headers the plugin writes on the auth call itself.
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Headers about a message's own framing or connection, never copied between messages.
const FRAMING: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// `[routes.R.plugins.forward-auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The auth service's `http://` or `https://` URL.
    pub url: Option<String>,
    /// Or a `[clusters.NAME]` of the configuration.
    pub cluster: Option<String>,
    /// The path (and query) called on the cluster. Default `/`.
    pub path: Option<String>,
    /// Request headers copied to the auth call.
    #[serde(default)]
    pub request_headers: Vec<String>,
    /// Headers of a 2xx answer set on the request upstream.
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// Headers of a 3xx or 4xx answer passed to the client. Default
    /// `["www-authenticate", "location"]`.
    pub client_headers: Option<Vec<String>>,
    /// The header of a 2xx answer that names the request's consumer.
    pub consumer_header: Option<String>,
    /// How long to wait for the answer. Default `1s`.
    pub timeout: Option<HumanDuration>,
    /// What a failed auth service means. Default `deny`.
    #[serde(default)]
    pub on_error: OnError,
    /// Keep allowed decisions for a while.
    pub cache: Option<CacheConfig>,
}

/// What a failing auth service (5xx, timeout, no connection) means for the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse it: 503 `auth-unavailable`.
    #[default]
    Deny,
    /// Let it through, without a consumer or upstream headers.
    Allow,
}

/// `cache = { ttl = "30s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an allowed decision is reused.
    pub ttl: HumanDuration,
    /// The most decisions kept. Default 10000.
    pub max_entries: Option<usize>,
}

/// Where the auth calls go.
enum AuthService {
    /// A URL, through the plugin's own client.
    Url {
        client: reqwest::Client,
        url: reqwest::Url,
    },
    /// A cluster of the configuration, through the gateway.
    Cluster {
        client: Arc<dyn ClusterClient>,
        path: String,
    },
}

/// The auth service's answer.
struct AuthAnswer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// An allowed decision: what the request carries upstream.
struct Allowed {
    /// The cache key it is stored under (zero when not cached), checked again on a hit to rule
    /// out a collision of the cache's 64-bit hashes.
    fingerprint: [u8; 32],
    /// The answer's `upstream_headers`.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The consumer `consumer_header` named.
    consumer: Option<Arc<Consumer>>,
}

/// The decision cache.
struct DecisionCache {
    entries: MemoryCache<[u8; 32], Arc<Allowed>>,
    ttl: Duration,
}

/// How a request was decided, as counted in `gantry_forward_auth_decisions_total` and kept
/// in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer.
    Allowed,
    /// A cached 2xx answer.
    Cached,
    /// A 3xx or 4xx answer, passed to the client.
    Refused,
    /// A 2xx answer naming a consumer the configuration lacks.
    UnknownConsumer,
    /// A 5xx, a timeout or a failed connection (then `on_error`).
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Cached,
        Outcome::Refused,
        Outcome::UnknownConsumer,
        Outcome::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Cached => "cached",
            Outcome::Refused => "refused",
            Outcome::UnknownConsumer => "unknown_consumer",
            Outcome::Failed => "failed",
        }
    }
}

/// Decisions so far, by outcome, across every instance (`gantry_forward_auth_decisions_total`).
static DECISIONS: [(&str, AtomicU64); 5] = [
    ("allowed", AtomicU64::new(0)),
    ("cached", AtomicU64::new(0)),
    ("refused", AtomicU64::new(0)),
    ("unknown_consumer", AtomicU64::new(0)),
    ("failed", AtomicU64::new(0)),
];

/// Decisions so far by outcome, for the gateway's metrics.
pub fn decisions_total() -> &'static [(&'static str, AtomicU64)] {
    &DECISIONS
}

/// A compiled `forward-auth`.
pub struct ForwardAuth {
    service: AuthService,
    /// `url`'s origin or `cluster NAME`, for logs (never a path or query, which may hold
    /// credentials).
    target: String,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    /// `upstream_headers` and `consumer_header`: removed from every request upstream.
    stripped: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    consumers: Arc<Consumers>,
    timeout: Duration,
    on_error: OnError,
    cache: Option<DecisionCache>,
    /// The request's allowed decision, for the upstream request.
    granted: Slot<Arc<Allowed>>,
    /// Seconds (since `started`, plus one) of the last warning about a failing service.
    warned_at: AtomicU64,
    started: Instant,
}

impl ForwardAuth {
    /// Compiles `config`: the service (a cluster named through `ctx`), the header lists, the
    /// bounds.
    pub fn new(
        config: Config,
        ctx: &BuildContext,
        slots: &mut SlotAllocator,
    ) -> Result<Self, String> {
        let (service, target) = service(&config, ctx)?;
        let timeout = config.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(format!(
                "`timeout` must be greater than zero and at most {}s",
                MAX_TIMEOUT.as_secs()
            ));
        }
        let service = match service {
            Service::Url(url) => AuthService::Url {
                client: http_client(timeout)?,
                url,
            },
            Service::Cluster(client, path) => AuthService::Cluster { client, path },
        };
        let plugin_set = [
            &X_FORWARDED_METHOD,
            &X_FORWARDED_URI,
            &X_FORWARDED_HOST,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_FOR,
            &X_REQUEST_ID,
            &TRACEPARENT,
        ];
        let request_headers = header_names("request_headers", &config.request_headers, |n| {
            plugin_set
                .contains(&n)
                .then_some("is set by the plugin itself")
        })?;
        let upstream_headers = header_names("upstream_headers", &config.upstream_headers, no_more)?;
        let client_headers = match &config.client_headers {
            Some(list) => header_names("client_headers", list, no_more)?,
            None => DEFAULT_CLIENT_HEADERS
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
        };
        let consumer_header = config
            .consumer_header
            .as_ref()
            .map(|name| header_names("consumer_header", std::slice::from_ref(name), no_more))
            .transpose()?
            .and_then(|mut names| names.pop());
        let mut stripped = upstream_headers.clone();
        stripped.extend(consumer_header.iter().cloned());
        let cache = config.cache.as_ref().map(decision_cache).transpose()?;
        Ok(ForwardAuth {
            service,
            target,
            request_headers,
            upstream_headers,
            stripped,
            client_headers,
            consumer_header,
            consumers: Arc::clone(&ctx.consumers),
            timeout,
            on_error: config.on_error,
            cache,
            granted: slots.claim(),
            warned_at: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// The headers of the auth call: what describes the request, and the listed request
    /// headers.
    fn call_headers(&self, request: &RequestView<'_>) -> HeaderMap {
        let header = request.header;
        let mut headers = HeaderMap::with_capacity(8 + self.request_headers.len());
        let mut set = |name: &HeaderName, value: Option<HeaderValue>| {
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        };
        set(
            &X_FORWARDED_METHOD,
            HeaderValue::from_str(header.method.as_str()).ok(),
        );
        let target = header.uri.path_and_query().map_or("/", |p| p.as_str());
        set(&X_FORWARDED_URI, HeaderValue::from_str(target).ok());
        set(
            &X_FORWARDED_HOST,
            request.host().and_then(|h| HeaderValue::from_str(h).ok()),
        );
        set(
            &X_FORWARDED_PROTO,
            Some(HeaderValue::from_static(request.scheme().as_str())),
        );
        set(
            &X_FORWARDED_FOR,
            request
                .client_ip()
                .and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()),
        );
        let state = &request.state;
        set(
            &X_REQUEST_ID,
            Some(state.request_id.clone()).filter(|id| !id.is_empty()),
        );
        set(&TRACEPARENT, state.outbound_traceparent.clone());
        for name in &self.request_headers {
            for value in header.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    /// The cache key of `request`: a SHA-256 of what the decision may depend on, each part
    /// length-prefixed so no two requests share one.
    fn fingerprint(&self, request: &RequestView<'_>) -> [u8; 32] {
        let header = request.header;
        let mut hash = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        part(header.method.as_str().as_bytes());
        part(request.scheme().as_str().as_bytes());
        part(request.host().unwrap_or_default().as_bytes());
        part(
            header
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        for name in &self.request_headers {
            let values = header.headers.get_all(name);
            part(&(values.iter().count() as u64).to_be_bytes());
            for value in values {
                part(value.as_bytes());
            }
        }
        hash.finalize().into()
    }

    /// The cached decision for `fingerprint`, if there is one.
    fn cached(&self, fingerprint: &[u8; 32]) -> Option<Arc<Allowed>> {
        let allowed = self.cache.as_ref()?.entries.get(fingerprint).0?;
        bool::from(allowed.fingerprint.ct_eq(fingerprint)).then_some(allowed)
    }

    /// One call to the auth service, within `timeout`.
    async fn ask(
        &self,
        headers: HeaderMap,
        request: &RequestView<'_>,
    ) -> Result<AuthAnswer, String> {
        let call = async {
            match &self.service {
                AuthService::Url { client, url } => ask_url(client, url, headers).await,
                AuthService::Cluster { client, path } => {
                    ask_cluster(client.as_ref(), path, headers, request).await
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer.map_err(|failure| describe(failure).to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// A 2xx answer: the request passes with its upstream headers and consumer.
    fn allow(
        &self,
        state: &mut PluginState,
        answer: &AuthAnswer,
        fingerprint: Option<[u8; 32]>,
    ) -> Flow {
        let consumer = match &self.consumer_header {
            None => None,
            Some(name) => match named_consumer(&answer.headers, name, &self.consumers) {
                Ok(consumer) => consumer,
                Err(()) => {
                    decided(state, Outcome::UnknownConsumer, Some(answer.status));
                    return Flow::Reject(Rejection {
                        status: 403,
                        slug: UNKNOWN_CONSUMER_SLUG,
                        title: "Forbidden",
                        detail: "the auth service named a consumer that is not configured".into(),
                        headers: Vec::new(),
                    });
                }
            },
        };
        let headers: Vec<(HeaderName, HeaderValue)> = self
            .upstream_headers
            .iter()
            .flat_map(|name| {
                let values = answer.headers.get_all(name).iter();
                values.map(move |value| (name.clone(), value.clone()))
            })
            .collect();
        let allowed = Arc::new(Allowed {
            fingerprint: fingerprint.unwrap_or_default(),
            headers,
            consumer,
        });
        if let (Some(cache), Some(fingerprint)) = (&self.cache, fingerprint) {
            if allowed.header_bytes() <= MAX_CACHED_HEADER_BYTES {
                cache
                    .entries
                    .put(&fingerprint, Arc::clone(&allowed), Some(cache.ttl));
            }
        }
        decided(state, Outcome::Allowed, Some(answer.status));
        self.grant(state, allowed)
    }

    /// Lets the request through with `allowed`.
    fn grant(&self, state: &mut PluginState, allowed: Arc<Allowed>) -> Flow {
        if let Some(consumer) = &allowed.consumer {
            state.consumer = Some(Arc::clone(consumer));
        }
        state.slots.set(self.granted, allowed);
        Flow::Continue
    }

    /// A 3xx or 4xx answer, passed to the client: its status and body, the listed headers,
    /// the body's `Content-Type`, and `Cache-Control: no-store` unless the service set one.
    fn refuse(&self, state: &mut PluginState, answer: AuthAnswer) -> Flow {
        decided(state, Outcome::Refused, Some(answer.status));
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for name in &self.client_headers {
            for value in answer.headers.get_all(name) {
                headers.push((name.clone(), value.clone()));
            }
        }
        let has = |headers: &[(HeaderName, HeaderValue)], wanted: &HeaderName| {
            headers.iter().any(|(name, _)| name == wanted)
        };
        if let Some(content_type) = answer.headers.get(CONTENT_TYPE) {
            if !answer.body.is_empty() && !has(&headers, &CONTENT_TYPE) {
                headers.push((CONTENT_TYPE, content_type.clone()));
            }
        }
        if !has(&headers, &CACHE_CONTROL) {
            headers.push((CACHE_CONTROL, HeaderValue::from_static("no-store")));
        }
        Flow::Answer(Answer {
            status: answer.status,
            headers,
            body: answer.body,
        })
    }

    /// The auth service failed (`why`): `on_error` decides.
    fn failed(&self, state: &mut PluginState, status: Option<u16>, why: &str) -> Flow {
        decided(state, Outcome::Failed, status);
        self.warn(&state.route, why);
        match self.on_error {
            OnError::Allow => Flow::Continue,
            OnError::Deny => Flow::Reject(Rejection {
                status: 503,
                slug: UNAVAILABLE_SLUG,
                title: "Authorization unavailable",
                detail: "the auth service could not decide on the request; retry shortly".into(),
                headers: vec![(RETRY_AFTER, HeaderValue::from_static("1"))],
            }),
        }
    }

    /// Logs a failure, at most once per [`WARN_INTERVAL_SECS`].
    fn warn(&self, route: &str, why: &str) {
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + WARN_INTERVAL_SECS;
        if due
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let on_error = match self.on_error {
                OnError::Deny => "refused (on_error = deny)",
                OnError::Allow => "let through (on_error = allow)",
            };
            log::warn!(
                "forward-auth on route `{route}`: the auth service {} failed: {why}; requests are {on_error}",
                self.target
            );
        }
    }
}

#[async_trait]
impl Plugin for ForwardAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
    }

    fn calls_out(&self) -> bool {
        true
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let fingerprint = self.cache.as_ref().map(|_| self.fingerprint(request));
        if let Some(allowed) = fingerprint.as_ref().and_then(|f| self.cached(f)) {
            decided(request.state, Outcome::Cached, None);
            return Ok(self.grant(request.state, allowed));
        }
        let started = Instant::now();
        let headers = self.call_headers(request);
        let answer = self.ask(headers, request).await;
        record_call(request.state, started);
        Ok(match answer {
            Ok(answer) => match answer.status {
                200..=299 => self.allow(request.state, &answer, fingerprint),
                300..=499 => self.refuse(request.state, answer),
                status => {
                    let why = format!("it answered {status}");
                    self.failed(request.state, Some(status), &why)
                }
            },
            Err(why) => self.failed(request.state, None, &why),
        })
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        remove_headers_and_aliases(upstream, &self.stripped);
        if let Some(allowed) = state.slots.get(self.granted) {
            for (name, value) in &allowed.headers {
                upstream.append_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }
}

impl Allowed {
    /// The bytes its headers hold.
    fn header_bytes(&self) -> usize {
        self.headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum()
    }
}

/// Counts a decision and keeps it for the request's trace.
fn decided(state: &mut PluginState, outcome: Outcome, status: Option<u16>) {
    if let Some((_, count)) = Outcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .and_then(|i| DECISIONS.get(i))
    {
        count.fetch_add(1, Ordering::Relaxed);
    }
    state.trace.record("gantry.forward_auth", || {
        let mut attributes = vec![(
            "gantry.forward_auth.outcome",
            EventValue::Word(outcome.as_str()),
        )];
        if let Some(status) = status {
            attributes.push(("http.response.status_code", EventValue::Int(status.into())));
        }
        attributes
    });
}

/// The auth call's duration, for the request's trace.
fn record_call(state: &mut PluginState, started: Instant) {
    state.trace.record("gantry.forward_auth.call", || {
        let micros = started.elapsed().as_micros().min(i64::MAX as u128) as i64;
        vec![("gantry.forward_auth.duration_us", EventValue::Int(micros))]
    });
}

/// The consumer the answer's `name` header names: `None` without one; `Err` for a name the
/// configuration lacks, or several values.
fn named_consumer(
    headers: &HeaderMap,
    name: &HeaderName,
    consumers: &Consumers,
) -> Result<Option<Arc<Consumer>>, ()> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(name) {
            Err(())
        } else {
            Ok(None)
        };
    };
    let named = value.to_str().map_err(|_| ())?.trim();
    if named.is_empty() {
        return Ok(None);
    }
    consumers.named(named).cloned().map(Some).ok_or(())
}

/// What a failed call was, for the log.
fn describe(failure: ServiceFailure) -> &'static str {
    match failure {
        ServiceFailure::Unavailable => "no backend could take the call",
        ServiceFailure::Failed => "the connection failed",
        ServiceFailure::TimedOut => "a timeout passed",
        ServiceFailure::TooLarge => "its answer's body is over 64 KiB",
    }
}

/// A call to a URL.
async fn ask_url(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: HeaderMap,
) -> Result<AuthAnswer, ServiceFailure> {
    let failure = |e: reqwest::Error| {
        if e.is_timeout() {
            ServiceFailure::TimedOut
        } else {
            ServiceFailure::Failed
        }
    };
    let mut response = client
        .get(url.clone())
        .headers(headers)
        .send()
        .await
        .map_err(failure)?;
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(failure)? {
        if body.len() + chunk.len() > MAX_ANSWER_BODY {
            return Err(ServiceFailure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(AuthAnswer {
        status: response.status().as_u16(),
        headers: std::mem::take(response.headers_mut()),
        body: body.freeze(),
    })
}

/// A call through a cluster of the gateway.
async fn ask_cluster(
    client: &dyn ClusterClient,
    path: &str,
    headers: HeaderMap,
    request: &RequestView<'_>,
) -> Result<AuthAnswer, ServiceFailure> {
    let mut call = RequestHeader::build("GET", path.as_bytes(), Some(headers.len()))
        .map_err(|_| ServiceFailure::Failed)?;
    for (name, value) in &headers {
        call.append_header(name.clone(), value.clone())
            .map_err(|_| ServiceFailure::Failed)?;
    }
    let answer = client
        .get(call, request.client_ip(), MAX_ANSWER_BODY)
        .await?;
    Ok(AuthAnswer {
        status: answer.header.status.as_u16(),
        headers: answer.header.headers.clone(),
        body: answer.body,
    })
}

/// The configured service, before its client is built.
enum Service {
    Url(reqwest::Url),
    Cluster(Arc<dyn ClusterClient>, String),
}

/// `url`, or `cluster` with `path`, and how logs name it.
fn service(config: &Config, ctx: &BuildContext) -> Result<(Service, String), String> {
    match (&config.url, &config.cluster) {
        (Some(_), Some(_)) => Err("set one of `url` and `cluster`, not both".into()),
        (None, None) => {
            Err("set `url` (the auth service) or `cluster` (a balanced cluster)".into())
        }
        (Some(url), None) => {
            if config.path.is_some() {
                return Err("`path` applies with `cluster`: a `url` has its own path".into());
            }
            // The URL is not quoted: it may carry credentials.
            let url = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or("`url` must be an http:// or https:// URL with a host")?;
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let origin = format!(
                "{}://{}{port}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            );
            Ok((Service::Url(url), origin))
        }
        (None, Some(name)) => {
            let client = ctx
                .clusters
                .client(name)
                .map_err(|e| format!("`cluster`: {e}"))?;
            let path = config.path.clone().unwrap_or_else(|| "/".into());
            let valid = path.starts_with('/')
                && RequestHeader::build("GET", path.as_bytes(), None).is_ok()
                && path.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                return Err("`path` must be a path starting with `/` (and a query)".into());
            }
            Ok((Service::Cluster(client, path), format!("cluster `{name}`")))
        }
    }
}

/// The client of `url` calls: no redirects followed (a 3xx goes to the client), no proxy
/// from the environment, bounded by `timeout`.
fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the auth service's HTTP client: {e}"))
}

/// A check that refuses nothing beyond framing headers.
fn no_more(_: &HeaderName) -> Option<&'static str> {
    None
}

/// The header names of list `key`: valid names, no framing header, none `refused` refuses.
fn header_names(
    key: &str,
    names: &[String],
    refused: impl Fn(&HeaderName) -> Option<&'static str>,
) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|text| {
            let name = HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| format!("`{key}`: `{text}` is not a valid header name"))?;
            if FRAMING.contains(&name.as_str()) {
                return Err(format!(
                    "`{key}`: `{text}` describes a message's own framing or connection and is never copied"
                ));
            }
            match refused(&name) {
                Some(why) => Err(format!("`{key}`: `{text}` {why}")),
                None => Ok(name),
            }
        })
        .collect()
}

/// `cache = { ttl, max_entries }`.
fn decision_cache(config: &CacheConfig) -> Result<DecisionCache, String> {
    if config.ttl.0.is_zero() {
        return Err("`cache.ttl` must be greater than zero".into());
    }
    let entries = config.max_entries.unwrap_or(DEFAULT_CACHE_ENTRIES);
    if entries == 0 || entries > MAX_CACHE_ENTRIES {
        return Err(format!(
            "`cache.max_entries` must be between 1 and {MAX_CACHE_ENTRIES}"
        ));
    }
    Ok(DecisionCache {
        entries: MemoryCache::new(entries),
        ttl: config.ttl.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{Clusters, ServiceAnswer};
    use crate::support::redis_store::RedisUnavailable;
    use crate::testing::{block_on, consumers, request, state};
    use pingora::http::ResponseHeader;
    use std::sync::Mutex;

    /// What the fake auth service answers: a status and headers (its body follows from the
    /// status), or a failure.
    type Scripted = Result<(u16, Vec<(&'static str, &'static str)>), ServiceFailure>;

    /// How the fake auth service answers a call.
    type Script = fn(&RequestHeader) -> Scripted;

    /// An auth service behind a cluster, answering by `script` and keeping every call.
    struct FakeService {
        script: Script,
        calls: Mutex<Vec<RequestHeader>>,
    }

    #[async_trait]
    impl ClusterClient for FakeService {
        async fn get(
            &self,
            request: RequestHeader,
            _client_ip: Option<std::net::IpAddr>,
            _max_body: usize,
        ) -> Result<ServiceAnswer, ServiceFailure> {
            let answer = (self.script)(&request);
            self.calls.lock().expect("calls").push(request);
            let (status, headers) = answer?;
            let mut header = ResponseHeader::build(status, None).expect("status");
            for (name, value) in headers {
                header.append_header(name, value).expect("header");
            }
            let body = if status == 200 {
                ""
            } else {
                "{\"error\":\"denied\"}"
            };
            Ok(ServiceAnswer {
                header,
                body: Bytes::from(body),
            })
        }
    }

    /// The configuration's one cluster, `auth`.
    struct AuthCluster(Arc<FakeService>);

    impl Clusters for AuthCluster {
        fn client(&self, name: &str) -> Result<Arc<dyn ClusterClient>, String> {
            match name {
                "auth" => Ok(Arc::clone(&self.0) as Arc<dyn ClusterClient>),
                _ => Err(format!("cluster `{name}` is not defined")),
            }
        }
    }

    /// Answers by the call's `authorization`: `Bearer alice` passes as alice,
    /// `Bearer bob` is named twice, `Bearer carol` is no consumer, `Bearer nobody` passes
    /// without headers, `Bearer boom` fails with a 500, `Bearer down` finds no connection;
    /// anything else gets a 401.
    fn by_token(call: &RequestHeader) -> Scripted {
        let token = call
            .headers
            .get("authorization")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        match &token[..] {
            b"Bearer alice" => Ok((200, vec![("x-user-id", "alice"), ("x-user-roles", "admin")])),
            b"Bearer bob" => Ok((200, vec![("x-user-id", "bob"), ("x-user-id", "alice")])),
            b"Bearer carol" => Ok((200, vec![("x-user-id", "carol")])),
            b"Bearer nobody" => Ok((200, vec![("x-internal", "kept back")])),
            b"Bearer boom" => Ok((500, Vec::new())),
            b"Bearer down" => Err(ServiceFailure::Failed),
            _ => Ok((
                401,
                vec![
                    ("www-authenticate", "Bearer realm=\"auth\""),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    ("content-type", "application/json"),
                    ("x-internal", "kept back"),
                ],
            )),
        }
    }

    fn plugin(table: serde_json::Value, script: Script) -> (ForwardAuth, Arc<FakeService>) {
        let service = Arc::new(FakeService {
            script,
            calls: Mutex::new(Vec::new()),
        });
        let mut table = table;
        table["cluster"] = "auth".into();
        let plugin = build(table, AuthCluster(Arc::clone(&service))).expect("valid forward-auth");
        (plugin, service)
    }

    fn build(
        table: serde_json::Value,
        clusters: impl Clusters + 'static,
    ) -> Result<ForwardAuth, String> {
        let config: Config = serde_json::from_value(table).map_err(|e| e.to_string())?;
        let ctx = BuildContext {
            consumers: consumers(&[("alice", &["admin"], &[])]),
            redis: Err(RedisUnavailable::NotConfigured),
            clusters: Arc::new(clusters),
        };
        ForwardAuth::new(config, &ctx, &mut SlotAllocator::default())
    }

    fn decide(plugin: &ForwardAuth, req: &RequestHeader, state: &mut PluginState) -> Flow {
        crate::testing::on_request(plugin, req, state)
    }

    fn bearer(token: &str, target: &str) -> RequestHeader {
        let value = format!("Bearer {token}");
        request(
            "GET",
            target,
            &[("host", "shop.test"), ("authorization", &value)],
        )
    }

    #[test]
    fn the_call_describes_the_request_with_only_the_listed_headers() {
        let (plugin, service) = plugin(
            serde_json::json!({"path": "/check", "request_headers": ["authorization"]}),
            by_token,
        );
        let req = request(
            "POST",
            "/orders/1?x=2",
            &[
                ("host", "shop.test"),
                ("authorization", "Bearer alice"),
                ("cookie", "session=s3cret"),
                ("content-length", "5"),
            ],
        );
        let mut s = state("r", "10.0.0.1");
        s.request_id = HeaderValue::from_static("req-1");
        s.outbound_traceparent = Some(HeaderValue::from_static(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(decide(&plugin, &req, &mut s), Flow::Continue);
        let calls = service.calls.lock().expect("calls");
        let call = &calls[0];
        assert_eq!(
            (call.method.as_str(), call.uri.to_string()),
            ("GET", "/check".into())
        );
        let seen = |name: &str| call.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(seen("x-forwarded-method"), Some("POST"));
        assert_eq!(seen("x-forwarded-uri"), Some("/orders/1?x=2"));
        assert_eq!(seen("x-forwarded-host"), Some("shop.test"));
        assert_eq!(seen("x-forwarded-proto"), Some("http"));
        assert_eq!(seen("x-forwarded-for"), Some("10.0.0.1"));
        assert_eq!(seen("x-request-id"), Some("req-1"));
        assert!(seen("traceparent").is_some_and(|t| t.contains("4bf92f3577b34da6")));
        assert_eq!(seen("authorization"), Some("Bearer alice"));
        // Not listed, or about the client's own body.
        assert_eq!((seen("cookie"), seen("content-length")), (None, None));
    }

    #[test]
    fn an_allowed_request_carries_the_answers_headers_and_never_the_clients() {
        let (plugin, _) = plugin(
            serde_json::json!({
                "request_headers": ["authorization"],
                "upstream_headers": ["x-user-id", "x-user-roles"],
            }),
            by_token,
        );
        let spoofed = [
            ("x-user-id", "root"),
            ("x_user_id", "root"),
            ("x-user-roles", "all"),
        ];
        let upstream = |token: &str| {
            let mut s = state("r", "10.0.0.1");
            assert_eq!(decide(&plugin, &bearer(token, "/"), &mut s), Flow::Continue);
            let mut up = request("GET", "/", &spoofed);
            block_on(plugin.on_upstream_request(&mut up, &mut s)).expect("upstream request");
            up.headers.clone()
        };
        let alice = upstream("alice");
        assert_eq!(alice.get("x-user-id").expect("id"), "alice");
        assert_eq!(alice.get("x-user-roles").expect("roles"), "admin");
        assert!(alice.get("x_user_id").is_none());
        // An answer without the headers still removes the client's copies.
        let nobody = upstream("nobody");
        for name in ["x-user-id", "x_user_id", "x-user-roles", "x-internal"] {
            assert!(nobody.get(name).is_none(), "{name} reached the upstream");
        }
    }

    #[test]
    fn refusals_go_to_the_client_as_the_service_wrote_them() {
        let (plugin, _) = plugin(
            serde_json::json!({
                "request_headers": ["authorization"],
                "client_headers": ["www-authenticate", "set-cookie"],
            }),
            by_token,
        );
        let flow = decide(
            &plugin,
            &bearer("mallory", "/"),
            &mut state("r", "10.0.0.1"),
        );
        let Flow::Answer(answer) = flow else {
            panic!("not an answer: {flow:?}");
        };
        assert_eq!(answer.status, 401);
        assert_eq!(&answer.body[..], b"{\"error\":\"denied\"}");
        let values = |name: &str| -> Vec<&str> {
            answer
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .filter_map(|(_, v)| v.to_str().ok())
                .collect()
        };
        assert_eq!(values("www-authenticate"), ["Bearer realm=\"auth\""]);
        assert_eq!(values("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(values("content-type"), ["application/json"]);
        assert_eq!(values("cache-control"), ["no-store"]);
        assert!(values("x-internal").is_empty());
    }

    #[test]
    fn a_failing_service_follows_on_error() {
        for on_error in ["deny", "allow"] {
            let (plugin, _) = plugin(
                serde_json::json!({
                    "request_headers": ["authorization"],
                    "upstream_headers": ["x-user-id"],
                    "on_error": on_error,
                }),
                by_token,
            );
            for token in ["boom", "down"] {
                let mut s = state("r", "10.0.0.1");
                let flow = decide(&plugin, &bearer(token, "/"), &mut s);
                match (on_error, flow) {
                    ("deny", Flow::Reject(r)) => {
                        assert_eq!((r.status, r.slug), (503, UNAVAILABLE_SLUG));
                    }
                    ("allow", Flow::Continue) => assert!(s.consumer.is_none()),
                    (_, flow) => panic!("{on_error} {token}: {flow:?}"),
                }
            }
        }
    }

    #[test]
    fn an_answer_later_than_the_timeout_is_a_failure() {
        struct Hanging;
        #[async_trait]
        impl ClusterClient for Hanging {
            async fn get(
                &self,
                _: RequestHeader,
                _: Option<std::net::IpAddr>,
                _: usize,
            ) -> Result<ServiceAnswer, ServiceFailure> {
                std::future::pending().await
            }
        }
        struct HangingCluster;
        impl Clusters for HangingCluster {
            fn client(&self, _: &str) -> Result<Arc<dyn ClusterClient>, String> {
                Ok(Arc::new(Hanging))
            }
        }
        let table = serde_json::json!({"cluster": "auth", "timeout": "20ms"});
        let plugin = build(table, HangingCluster).expect("valid");
        let flow = decide(&plugin, &bearer("alice", "/"), &mut state("r", "10.0.0.1"));
        assert!(matches!(flow, Flow::Reject(r) if r.slug == UNAVAILABLE_SLUG));
    }

    #[test]
    fn the_consumer_header_names_a_configured_consumer() {
        let (plugin, _) = plugin(
            serde_json::json!({"request_headers": ["authorization"], "consumer_header": "x-user-id"}),
            by_token,
        );
        let mut s = state("r", "10.0.0.1");
        assert_eq!(
            decide(&plugin, &bearer("alice", "/"), &mut s),
            Flow::Continue
        );
        assert_eq!(s.consumer.as_deref().map(|c| &*c.name), Some("alice"));
        // Without the header the request passes without a consumer.
        let mut s = state("r", "10.0.0.1");
        assert_eq!(
            decide(&plugin, &bearer("nobody", "/"), &mut s),
            Flow::Continue
        );
        assert!(s.consumer.is_none());
        // A name the configuration lacks, or two names, is refused.
        for token in ["carol", "bob"] {
            let flow = decide(&plugin, &bearer(token, "/"), &mut state("r", "10.0.0.1"));
            assert!(
                matches!(&flow, Flow::Reject(r) if (r.status, r.slug) == (403, UNKNOWN_CONSUMER_SLUG)),
                "{token}: {flow:?}"
            );
        }
    }

    #[test]
    fn allowed_decisions_are_cached_per_request_and_credentials_refusals_never() {
        let (plugin, service) = plugin(
            serde_json::json!({
                "request_headers": ["authorization"],
                "upstream_headers": ["x-user-id"],
                "cache": {"ttl": "1h"},
            }),
            by_token,
        );
        let calls = || service.calls.lock().expect("calls").len();
        let upstream_id = |token: &str, target: &str| {
            let mut s = state("r", "10.0.0.1");
            assert_eq!(
                decide(&plugin, &bearer(token, target), &mut s),
                Flow::Continue
            );
            let mut up = request("GET", target, &[]);
            block_on(plugin.on_upstream_request(&mut up, &mut s)).expect("upstream");
            up.headers.get("x-user-id").cloned()
        };
        for _ in 0..3 {
            assert_eq!(upstream_id("alice", "/a").expect("id"), "alice");
        }
        assert_eq!(calls(), 1);
        // Another credential, another path: other decisions.
        assert!(upstream_id("nobody", "/a").is_none());
        upstream_id("alice", "/b");
        assert_eq!(calls(), 3);
        for _ in 0..2 {
            let flow = decide(
                &plugin,
                &bearer("mallory", "/a"),
                &mut state("r", "10.0.0.1"),
            );
            assert!(matches!(flow, Flow::Answer(_)));
        }
        assert_eq!(calls(), 5);
    }

    #[test]
    fn the_cache_key_depends_on_every_part_and_holds_no_credential() {
        let (plugin, _) = plugin(
            serde_json::json!({"request_headers": ["authorization", "cookie"], "cache": {"ttl": "1s"}}),
            by_token,
        );
        let key = |req: &RequestHeader| {
            let mut s = state("r", "10.0.0.1");
            let view = RequestView {
                header: req,
                has_body: false,
                state: &mut s,
            };
            plugin.fingerprint(&view)
        };
        let base = key(&bearer("alice", "/a?x=1"));
        assert_eq!(base, key(&bearer("alice", "/a?x=1")));
        for other in [
            bearer("alicf", "/a?x=1"),
            bearer("alice", "/a?x=2"),
            bearer("alice", "/b?x=1"),
            request(
                "POST",
                "/a?x=1",
                &[("host", "shop.test"), ("authorization", "Bearer alice")],
            ),
            request(
                "GET",
                "/a?x=1",
                &[("host", "other.test"), ("authorization", "Bearer alice")],
            ),
            request(
                "GET",
                "/a?x=1",
                &[
                    ("host", "shop.test"),
                    ("authorization", "Bearer alice"),
                    ("cookie", ""),
                ],
            ),
        ] {
            assert_ne!(base, key(&other));
        }
        assert!(!base.windows(5).any(|w| w == b"alice"));
    }

    #[test]
    fn unusable_configurations_name_the_key() {
        let error = |table: serde_json::Value| match build(
            table,
            AuthCluster(Arc::new(FakeService {
                script: by_token,
                calls: Mutex::new(Vec::new()),
            })),
        ) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        let cases = [
            (serde_json::json!({}), "set `url`"),
            (
                serde_json::json!({"url": "http://a.test/", "cluster": "auth"}),
                "not both",
            ),
            (serde_json::json!({"url": "ftp://a.test/"}), "`url` must be"),
            (
                serde_json::json!({"url": "http://a.test/", "path": "/x"}),
                "`path` applies",
            ),
            (
                serde_json::json!({"cluster": "nope"}),
                "`cluster`: cluster `nope` is not defined",
            ),
            (
                serde_json::json!({"cluster": "auth", "path": "check"}),
                "`path` must",
            ),
            (
                serde_json::json!({"cluster": "auth", "request_headers": ["Host"]}),
                "`request_headers`: `Host`",
            ),
            (
                serde_json::json!({"cluster": "auth", "request_headers": ["x-forwarded-for"]}),
                "set by the plugin",
            ),
            (
                serde_json::json!({"cluster": "auth", "upstream_headers": ["bad header"]}),
                "`upstream_headers`",
            ),
            (
                serde_json::json!({"cluster": "auth", "client_headers": ["content-length"]}),
                "`client_headers`",
            ),
            (
                serde_json::json!({"cluster": "auth", "consumer_header": ""}),
                "`consumer_header`",
            ),
            (
                serde_json::json!({"cluster": "auth", "timeout": "0s"}),
                "`timeout`",
            ),
            (
                serde_json::json!({"cluster": "auth", "cache": {"ttl": "0s"}}),
                "`cache.ttl`",
            ),
            (
                serde_json::json!({"cluster": "auth", "cache": {"ttl": "1s", "max_entries": 0}}),
                "`cache.max_entries`",
            ),
            (
                serde_json::json!({"cluster": "auth", "on_error": "maybe"}),
                "unknown variant",
            ),
            (
                serde_json::json!({"cluster": "auth", "tiemout": "1s"}),
                "unknown field",
            ),
        ];
        for (table, expected) in cases {
            let message = error(table.clone());
            assert!(message.contains(expected), "{table}: {message}");
        }
        // The URL may carry credentials: it is never quoted.
        assert!(!error(serde_json::json!({"url": "ftp://user:pw@a.test/"})).contains("pw"));
    }
}
