//! Upstream clusters: backends, balancing, peers, active health checks, and what real traffic
//! teaches (outlier detection, in-flight counts, the retry budget).
//!
//! A cluster wraps a `pingora-load-balancing` [`LoadBalancer`] (weighted round robin or ketama
//! consistent hashing). Peers (address plus timeouts) are built once per backend at load, so
//! picking an upstream costs a selection and a clone, nothing else.

pub mod exchange;
pub mod hash_key;
mod health;
mod in_flight;
mod outlier;
mod retry;
mod split;

pub use hash_key::HashOn;
pub use health::{HealthCheckSpec, HealthChecks, HealthProbe};
pub use in_flight::InFlight;
pub use outlier::{now_ms, BackendState, OutlierPolicy};
pub use retry::{Backoff, RetryBudget, RetryPolicy, RetryReason};
pub use split::TrafficSplit;

use ahash::AHashMap;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The latency a failure counts as in `peak_ewma`: a backend that fails fast must not look
/// fast.
const FAILURE_LATENCY: Duration = Duration::from_secs(1);

/// Selection walks at most this many ring/list steps looking for an acceptable backend.
const MAX_SELECT_STEPS: usize = 256;

/// Timeouts applied to every connection of a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each read (response header and every body chunk).
    pub read: Duration,
    /// Each write.
    pub write: Duration,
    /// Idle time of a pooled connection.
    pub idle: Duration,
}

/// One resolved backend of a cluster.
#[derive(Debug, Clone)]
pub struct BackendAddr {
    /// The resolved socket address.
    pub addr: SocketAddr,
    /// Relative weight (round robin only).
    pub weight: usize,
    /// The host name it was written with (empty for an IP address): its default TLS SNI.
    pub host: String,
}

/// The HTTP version spoken to a cluster's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over cleartext TCP, with prior knowledge.
    H2c,
}

/// How the gateway connects to a cluster's backends.
#[derive(Debug, Clone)]
pub struct Transport {
    /// The HTTP version.
    pub protocol: Protocol,
    /// Connect with TLS.
    pub tls: bool,
    /// The TLS server name; `None`: each backend's host name.
    pub sni: Option<String>,
    /// Verify the certificate chain and host name.
    pub verify: bool,
}

impl Transport {
    /// Applies the transport to `peer`'s options.
    pub fn apply(&self, options: &mut pingora::upstreams::peer::PeerOptions) {
        match self.protocol {
            Protocol::Http1 => options.set_http_version(1, 1),
            Protocol::H2 | Protocol::H2c => options.set_http_version(2, 2),
        }
        options.verify_cert = self.verify;
        options.verify_hostname = self.verify;
    }
}

/// How a cluster meets failure and overload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resilience {
    /// Which failed attempts are tried again.
    pub retry: RetryPolicy,
    /// Passive health checking, when configured.
    pub outlier: Option<OutlierPolicy>,
    /// The most requests in flight to the cluster (circuit breaker).
    pub max_requests: Option<usize>,
}

/// One backend: how to reach it and what traffic has seen of it.
struct Member {
    peer: HttpPeer,
    state: Arc<BackendState>,
}

/// How a cluster picks a backend (`balancer` and `hash_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancing {
    /// Weighted round robin.
    RoundRobin,
    /// Ketama consistent hashing on this key.
    ConsistentHash(HashOn),
    /// Power of two random choices over requests in flight per unit of weight.
    LeastRequest,
    /// Power of two random choices over peak-EWMA latency times requests in flight.
    PeakEwma,
}

/// What a least-loaded balancer compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Requests,
    PeakEwma,
}

/// One backend as the least-loaded balancers see it.
struct Candidate {
    backend: Backend,
    addr: SocketAddr,
    weight: f64,
    state: Arc<BackendState>,
}

impl Candidate {
    /// The load compared by power of two choices: lower is better.
    fn score(&self, load: Load, now: u64) -> f64 {
        let in_flight = self
            .state
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        let cost = match load {
            // One more than in flight, so weights still count when every backend is idle.
            Load::Requests => in_flight + 1.0,
            // A backend never measured costs as if it answered in 1 µs.
            Load::PeakEwma => self.state.ewma_micros(now).max(1.0) * (in_flight + 1.0),
        };
        cost / self.weight
    }
}

/// The selection algorithm and its balancer.
enum Selector {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>, HashOn),
    /// Power of two choices over `candidates`; the round-robin balancer only carries the
    /// active health checks' verdicts.
    LeastLoaded(Arc<LoadBalancer<RoundRobin>>, Load, Vec<Candidate>),
}

/// A named group of backends.
pub struct Cluster {
    /// The cluster's name (`clusters.NAME`).
    pub name: Arc<str>,
    selector: Selector,
    members: AHashMap<SocketAddr, Member>,
    /// Retries, outlier detection and the breaker.
    pub resilience: Resilience,
    /// Retries taken against `resilience.retry`'s budget.
    pub retry_budget: RetryBudget,
    /// Requests in flight to the cluster, for `resilience.max_requests`.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    health: Option<HealthCheckSpec>,
    /// The HTTP version spoken to the backends.
    pub protocol: Protocol,
    /// Upstream latency, kept across reloads by cluster name.
    pub metrics: Arc<crate::metrics::ClusterMetrics>,
    /// Everything the cluster was built from: a reload keeps this cluster (and its backends'
    /// health) when the new definition is the same.
    fingerprint: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("backends", &self.members.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Cluster {
    /// Builds a cluster.
    pub fn new(
        name: &str,
        backends: &[BackendAddr],
        balancing: Balancing,
        timeouts: Timeouts,
        transport: &Transport,
        resilience: Resilience,
        health: Option<HealthCheckSpec>,
    ) -> Cluster {
        let members: AHashMap<SocketAddr, Member> = backends
            .iter()
            .map(|b| {
                let member = Member {
                    peer: peer_for(b, &timeouts, transport),
                    state: Arc::default(),
                };
                (b.addr, member)
            })
            .collect();
        let set: BTreeSet<Backend> = backends
            .iter()
            .map(|b| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr),
                weight: b.weight.max(1),
                ext: Default::default(),
            })
            .collect();
        let health_sni = transport
            .sni
            .clone()
            .or_else(|| backends.first().map(|b| b.host.clone()))
            .unwrap_or_default();
        let states = members
            .iter()
            .map(|(addr, m)| (*addr, Arc::clone(&m.state)))
            .collect();
        let checks = health
            .as_ref()
            .map(|h| h.build(transport, &health_sni, states));
        let fingerprint = format!(
            "{backends:?} {balancing:?} {timeouts:?} {transport:?} {resilience:?} {health:?}"
        );
        let least_loaded = |load| {
            let candidates = set
                .iter()
                .filter_map(|backend| {
                    let addr = *backend.addr.as_inet()?;
                    Some(Candidate {
                        backend: backend.clone(),
                        addr,
                        weight: backend.weight as f64,
                        state: Arc::clone(&members.get(&addr)?.state),
                    })
                })
                .collect();
            (load, candidates)
        };
        let selector = match balancing {
            Balancing::RoundRobin => Selector::RoundRobin(Arc::new(balancer(&set, checks))),
            Balancing::ConsistentHash(key) => {
                Selector::Consistent(Arc::new(balancer(&set, checks)), key)
            }
            Balancing::LeastRequest | Balancing::PeakEwma => {
                let load = match balancing {
                    Balancing::PeakEwma => Load::PeakEwma,
                    _ => Load::Requests,
                };
                let (load, candidates) = least_loaded(load);
                Selector::LeastLoaded(Arc::new(balancer(&set, checks)), load, candidates)
            }
        };
        Cluster {
            name: name.into(),
            selector,
            members,
            resilience,
            retry_budget: RetryBudget::default(),
            in_flight: Arc::default(),
            health,
            protocol: transport.protocol,
            metrics: crate::metrics::cluster(name),
            fingerprint,
        }
    }

    /// True when `other` was built from the same definition.
    pub fn same_definition(&self, other: &Cluster) -> bool {
        self.fingerprint == other.fingerprint
    }

    /// What the consistent hash is keyed on, or `None` for the other balancers.
    pub fn hash_on(&self) -> Option<&HashOn> {
        match &self.selector {
            Selector::Consistent(_, key) => Some(key),
            _ => None,
        }
    }

    /// Picks a healthy, non-ejected backend, one not in `tried` while there is one. `key`
    /// feeds consistent hashing.
    /// When only ejected backends are left, they serve (the least bad keep serving).
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<(&SocketAddr, &HttpPeer)> {
        let skip_ejected = self.resilience.outlier.is_some();
        self.select_among(key, tried, skip_ejected)
            .or_else(|| (!tried.is_empty()).then(|| self.select_among(key, &[], skip_ejected))?)
            .or_else(|| skip_ejected.then(|| self.select_among(key, tried, false))?)
            .or_else(|| {
                (skip_ejected && !tried.is_empty()).then(|| self.select_among(key, &[], false))?
            })
    }

    fn select_among(
        &self,
        key: &[u8],
        tried: &[SocketAddr],
        skip_ejected: bool,
    ) -> Option<(&SocketAddr, &HttpPeer)> {
        let outlier = skip_ejected;
        let now = if outlier { outlier::now_ms() } else { 0 };
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.addr.as_inet().is_some_and(|a| {
                    !tried.contains(a)
                        && (!outlier
                            || self
                                .members
                                .get(a)
                                .is_some_and(|m| !m.state.is_ejected(now)))
                })
        };
        let backend = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Selector::Consistent(lb, _) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Selector::LeastLoaded(lb, load, candidates) => {
                let backends = lb.backends();
                let ok = |c: &Candidate| {
                    !tried.contains(&c.addr)
                        && (!outlier || !c.state.is_ejected(now))
                        && backends.ready(&c.backend)
                };
                let now = if *load == Load::PeakEwma {
                    outlier::now_ms()
                } else {
                    now
                };
                let chosen = two_choices(candidates, ok, |c| c.score(*load, now))?;
                return self.member(&chosen.addr);
            }
        }?;
        self.member(backend.addr.as_inet()?)
    }

    fn member(&self, addr: &SocketAddr) -> Option<(&SocketAddr, &HttpPeer)> {
        let (addr, member) = self.members.get_key_value(addr)?;
        Some((addr, &member.peer))
    }

    /// A latency seen from `backend` (to its response header, or to its failure), for
    /// `peak_ewma`.
    pub fn record_latency(&self, backend: SocketAddr, latency: Duration) {
        if let Selector::LeastLoaded(_, Load::PeakEwma, _) = &self.selector {
            if let Some(member) = self.members.get(&backend) {
                member.state.observe_latency(latency);
            }
        }
    }

    /// What traffic has seen of `backend`.
    pub fn state(&self, backend: &SocketAddr) -> Option<&Arc<BackendState>> {
        self.members.get(backend).map(|m| &m.state)
    }

    /// Counts a request in flight to the cluster, or `None` when `max_requests` are already.
    pub fn admit(&self) -> Option<InFlight> {
        let guard = InFlight::enter(&self.in_flight);
        match self.resilience.max_requests {
            Some(max) if guard.count() > max => None,
            _ => Some(guard),
        }
    }

    /// A failure of `backend` seen by a request (connect error, reset, timeout or a failure
    /// status): counted, and fed to outlier detection. True when it ejected the backend.
    pub fn record_failure(&self, backend: SocketAddr) -> bool {
        self.metrics.record_failure(backend);
        let (Some(policy), Some(member)) = (&self.resilience.outlier, self.members.get(&backend))
        else {
            return false;
        };
        let all: Vec<&BackendState> = self.members.values().map(|m| &*m.state).collect();
        let ejected = outlier::record_failure(policy, &member.state, &all);
        if ejected {
            self.metrics.record_ejection();
            log::warn!(
                "cluster {}: backend {backend} ejected after {} failures in a row",
                self.name,
                policy.consecutive_failures
            );
        }
        ejected
    }

    /// Whether a request that made `attempts` tries and saw `failed` fail may try again after
    /// a failure for `reason` (`None`: one Pingora knows is safe): attempts remain, a backend
    /// can take it, and last (it takes one) the retry budget allows. Connect failures and
    /// Pingora's safe retries are not charged to the budget: they add no load on a backend.
    /// The caller has checked the condition, the method and the body.
    pub fn may_retry(
        &self,
        reason: Option<RetryReason>,
        attempts: u32,
        failed: &[SocketAddr],
    ) -> bool {
        let policy = &self.resilience.retry;
        let charged = matches!(reason, Some(r) if r != RetryReason::ConnectFailure);
        let may = attempts < policy.attempts
            && self.select(&[], failed).is_some()
            && (!charged || self.retry_budget.try_retry(policy));
        if may {
            self.metrics
                .record_retry(reason.unwrap_or(RetryReason::Reset).index());
        }
        may
    }

    /// Judges a final response status from `backend`: an outlier failure (recorded, and a
    /// slow answer for `peak_ewma`) or a success. True when the status is one the retry
    /// policy retries (also counted as the backend's failure).
    pub fn judge_status(&self, backend: SocketAddr, status: u16) -> bool {
        let outlier_failure = self
            .resilience
            .outlier
            .as_ref()
            .is_some_and(|o| o.is_failure(status));
        if outlier_failure {
            self.record_failure(backend);
            self.record_latency(backend, FAILURE_LATENCY);
        } else {
            self.record_success(backend);
        }
        let retried = self.resilience.retry.retries_status(status);
        if retried && !outlier_failure {
            self.metrics.record_failure(backend);
        }
        retried
    }

    /// A failure of `backend` after `took` (connect error, reset, timeout): recorded, and a
    /// slow answer for `peak_ewma` however fast it failed.
    pub fn record_failed_attempt(&self, backend: SocketAddr, took: Duration) {
        self.record_failure(backend);
        self.record_latency(backend, took.max(FAILURE_LATENCY));
    }

    /// A response from `backend` that was not a failure.
    pub fn record_success(&self, backend: SocketAddr) {
        if self.resilience.outlier.is_some() {
            if let Some(member) = self.members.get(&backend) {
                member.state.record_success();
            }
        }
    }

    /// Every backend and whether it is healthy now.
    pub fn backend_health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = match &self.selector {
            Selector::RoundRobin(lb) | Selector::LeastLoaded(lb, ..) => lb.backends(),
            Selector::Consistent(lb, _) => lb.backends(),
        };
        backends
            .get_backend()
            .iter()
            .filter_map(|b| Some((*b.addr.as_inet()?, backends.ready(b))))
            .collect()
    }

    /// The probe that runs this cluster's health checks, if it has any.
    pub fn health_probe(&self) -> Option<HealthProbe> {
        let spec = self.health.as_ref()?;
        Some(match &self.selector {
            Selector::RoundRobin(lb) | Selector::LeastLoaded(lb, ..) => {
                HealthProbe::RoundRobin(Arc::clone(lb), spec.interval)
            }
            Selector::Consistent(lb, _) => HealthProbe::Consistent(Arc::clone(lb), spec.interval),
        })
    }
}

/// Power of two random choices: two candidates picked at random (each the next acceptable one
/// from a random start), the one with the lower `score` wins. `None` when none is acceptable.
fn two_choices(
    candidates: &[Candidate],
    ok: impl Fn(&Candidate) -> bool,
    score: impl Fn(&Candidate) -> f64,
) -> Option<&Candidate> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let acceptable_from = |start: usize, skip: Option<usize>| {
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| Some(i) != skip && ok(&candidates[i]))
    };
    let first = acceptable_from(fastrand::usize(..n), None)?;
    let Some(second) = acceptable_from(fastrand::usize(..n), Some(first)) else {
        return Some(&candidates[first]);
    };
    let (a, b) = (&candidates[first], &candidates[second]);
    Some(if score(b) < score(a) { b } else { a })
}

fn balancer<S>(
    set: &BTreeSet<Backend>,
    checks: Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut backends = Backends::new(Static::new(set.clone()));
    if let Some(checks) = checks {
        backends.set_health_check(checks);
    }
    let lb = LoadBalancer::from_backends(backends);
    // Static discovery never waits and never fails: fill the selector now so the first
    // request has backends even before the health service runs.
    futures::FutureExt::now_or_never(lb.update());
    lb
}

fn peer_for(backend: &BackendAddr, t: &Timeouts, transport: &Transport) -> HttpPeer {
    let sni = transport
        .sni
        .clone()
        .unwrap_or_else(|| backend.host.clone());
    let mut peer = HttpPeer::new(backend.addr, transport.tls, sni);
    transport.apply(&mut peer.options);
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.read);
    peer.options.write_timeout = Some(t.write);
    peer.options.idle_timeout = Some(t.idle);
    peer
}
