//! Upstream clusters: backends, balancing, peers, active health checks, and what real traffic
//! teaches (outlier detection, in-flight counts, the retry budget).
//!
//! A cluster wraps a `pingora-load-balancing` [`LoadBalancer`] (weighted round robin or ketama
//! consistent hashing). Peers (address plus timeouts) are built once per backend, at load or
//! when DNS brings a new address, so picking an upstream costs a selection and a clone.
//!
//! The backends are a [`Membership`] behind an `ArcSwap`: DNS re-resolution ([`dns`]) swaps
//! in a new one in which addresses that stay keep their peer (so their pooled connections) and
//! their state, and the balancer keeps their health.

mod background;
pub mod call;
pub mod dns;
pub mod exchange;
pub mod hash_key;
mod health;
mod in_flight;
mod outlier;
mod retry;
mod split;

pub use background::ClusterTasks;
pub use hash_key::HashOn;
pub use health::HealthCheckSpec;
use health::HealthProbe;
pub use in_flight::InFlight;
pub use outlier::{now_ms, BackendState, OutlierPolicy};
pub use retry::{Backoff, RetryBudget, RetryPolicy, RetryReason};
pub use split::TrafficSplit;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use dns::DnsBackends;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::CertKey;
use std::collections::{BTreeSet, HashMap};
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The client certificate and key presented in the TLS handshake.
    pub client_cert_key: Option<Arc<CertKey>>,
}

impl Transport {
    /// Applies the transport to `peer` (a backend's, or a health check's template).
    pub fn apply(&self, peer: &mut HttpPeer) {
        let options = &mut peer.options;
        match self.protocol {
            Protocol::Http1 => options.set_http_version(1, 1),
            Protocol::H2 | Protocol::H2c => options.set_http_version(2, 2),
        }
        options.verify_cert = self.verify;
        options.verify_hostname = self.verify;
        peer.client_cert_key = self.client_cert_key.clone();
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
#[derive(Clone)]
struct Member {
    peer: HttpPeer,
    state: Arc<BackendState>,
    /// The host name it was written with (empty for an IP address).
    host: String,
}

/// The backend a request is sent to.
pub struct Picked {
    /// Its address.
    pub addr: SocketAddr,
    /// How to reach it (a copy the request may adjust).
    pub peer: HttpPeer,
    /// What traffic has seen of it.
    pub state: Arc<BackendState>,
}

/// A cluster's backends at one moment.
struct Membership {
    members: AHashMap<SocketAddr, Member>,
    /// The least-loaded balancers' view of `members` (empty for the others).
    candidates: Vec<Candidate>,
}

impl Membership {
    /// The membership of `backends`: an address in `previous` keeps its peer and state.
    fn build(
        backends: &[BackendAddr],
        previous: Option<&Membership>,
        least_loaded: bool,
        new_peer: impl Fn(&BackendAddr) -> HttpPeer,
    ) -> Membership {
        let members: AHashMap<SocketAddr, Member> = backends
            .iter()
            .map(|b| {
                // The same address under another name is a new backend (its SNI may differ).
                let kept = previous
                    .and_then(|p| p.members.get(&b.addr))
                    .filter(|m| m.host == b.host)
                    .cloned();
                let member = kept.unwrap_or_else(|| Member {
                    peer: new_peer(b),
                    state: Arc::default(),
                    host: b.host.clone(),
                });
                (b.addr, member)
            })
            .collect();
        let candidates = if least_loaded {
            backends
                .iter()
                .filter_map(|b| {
                    Some(Candidate {
                        backend: backend_of(b),
                        addr: b.addr,
                        weight: b.weight.max(1) as f64,
                        state: Arc::clone(&members.get(&b.addr)?.state),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Membership {
            members,
            candidates,
        }
    }
}

/// The backend set the balancer discovers: what the configuration or the last DNS answer
/// gave.
struct Published(Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait]
impl ServiceDiscovery for Published {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((**self.0.load()).clone(), HashMap::new()))
    }
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
    /// Power of two choices over the membership's candidates; the round-robin balancer only
    /// carries the active health checks' verdicts.
    LeastLoaded(Arc<LoadBalancer<RoundRobin>>, Load),
}

impl Selector {
    /// Rebuilds the balancer's selection from the published set, keeping the health of
    /// backends that stay.
    async fn update(&self) {
        let updated = match self {
            Selector::RoundRobin(lb) | Selector::LeastLoaded(lb, _) => lb.update().await,
            Selector::Consistent(lb, _) => lb.update().await,
        };
        // `Published` never fails.
        debug_assert!(updated.is_ok());
    }

    /// The balancer's backends and their health.
    fn backends(&self) -> &Backends {
        match self {
            Selector::RoundRobin(lb) | Selector::LeastLoaded(lb, _) => lb.backends(),
            Selector::Consistent(lb, _) => lb.backends(),
        }
    }
}

/// A named group of backends.
pub struct Cluster {
    /// The cluster's name (`clusters.NAME`).
    pub name: Arc<str>,
    selector: Selector,
    membership: Arc<ArcSwap<Membership>>,
    /// What the balancer discovers.
    published: Arc<ArcSwap<BTreeSet<Backend>>>,
    /// How a new backend's peer is built.
    timeouts: Timeouts,
    transport: Transport,
    /// Backends written as host names, kept resolved; `None` when every backend is an IP.
    dns: Option<DnsBackends>,
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
            .field(
                "backends",
                &self.membership.load().members.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Cluster {
    /// Builds a cluster of `backends` (as resolved at load; `dns` keeps the named ones
    /// resolved).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        backends: &[BackendAddr],
        balancing: Balancing,
        timeouts: Timeouts,
        transport: &Transport,
        resilience: Resilience,
        health: Option<HealthCheckSpec>,
        dns: Option<DnsBackends>,
    ) -> Cluster {
        let least_loaded = matches!(balancing, Balancing::LeastRequest | Balancing::PeakEwma);
        let membership = Arc::new(ArcSwap::from_pointee(Membership::build(
            backends,
            None,
            least_loaded,
            |b| peer_for(b, &timeouts, transport),
        )));
        let published = Arc::new(ArcSwap::from_pointee(
            backends.iter().map(backend_of).collect::<BTreeSet<_>>(),
        ));
        let health_sni = transport
            .sni
            .clone()
            .or_else(|| backends.first().map(|b| b.host.clone()))
            .unwrap_or_default();
        let checks = health
            .as_ref()
            .map(|h| h.build(transport, &health_sni, Arc::clone(&membership)));
        // Written backends, not resolved ones: a reload keeps a DNS cluster whatever the
        // names resolve to now.
        let written = match &dns {
            Some(dns) => format!("{dns:?}"),
            None => format!("{backends:?}"),
        };
        let fingerprint =
            format!("{written} {balancing:?} {timeouts:?} {transport:?} {resilience:?} {health:?}");
        let discovery = || Published(Arc::clone(&published));
        let selector = match balancing {
            Balancing::RoundRobin => Selector::RoundRobin(Arc::new(balancer(discovery(), checks))),
            Balancing::ConsistentHash(key) => {
                Selector::Consistent(Arc::new(balancer(discovery(), checks)), key)
            }
            Balancing::LeastRequest => {
                Selector::LeastLoaded(Arc::new(balancer(discovery(), checks)), Load::Requests)
            }
            Balancing::PeakEwma => {
                Selector::LeastLoaded(Arc::new(balancer(discovery(), checks)), Load::PeakEwma)
            }
        };
        Cluster {
            name: name.into(),
            selector,
            membership,
            published,
            timeouts,
            transport: transport.clone(),
            dns,
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
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<Picked> {
        let pick = |membership: &Membership| {
            let addr = self.select_in(membership, key, tried)?;
            let member = membership.members.get(&addr)?;
            Some(Picked {
                addr,
                peer: member.peer.clone(),
                state: Arc::clone(&member.state),
            })
        };
        // A DNS change may have replaced the balancer's backends since the membership was
        // read: a second read sees them (as members of the union, then of the new set).
        pick(&self.membership.load()).or_else(|| pick(&self.membership.load()))
    }

    /// The address [`Cluster::select`] would pick.
    fn select_in(
        &self,
        membership: &Membership,
        key: &[u8],
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let skip_ejected = self.resilience.outlier.is_some();
        let among = |tried: &[SocketAddr], skip_ejected| {
            self.select_among(membership, key, tried, skip_ejected)
        };
        among(tried, skip_ejected)
            .or_else(|| (!tried.is_empty()).then(|| among(&[], skip_ejected))?)
            .or_else(|| skip_ejected.then(|| among(tried, false))?)
            .or_else(|| (skip_ejected && !tried.is_empty()).then(|| among(&[], false))?)
    }

    fn select_among(
        &self,
        membership: &Membership,
        key: &[u8],
        tried: &[SocketAddr],
        skip_ejected: bool,
    ) -> Option<SocketAddr> {
        let outlier = skip_ejected;
        let now = if outlier { outlier::now_ms() } else { 0 };
        // A backend the balancer still yields may have left the membership a moment ago.
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.addr.as_inet().is_some_and(|a| {
                    !tried.contains(a)
                        && membership
                            .members
                            .get(a)
                            .is_some_and(|m| !outlier || !m.state.is_ejected(now))
                })
        };
        let backend = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Selector::Consistent(lb, _) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Selector::LeastLoaded(lb, load) => {
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
                let chosen = two_choices(&membership.candidates, ok, |c| c.score(*load, now))?;
                return Some(chosen.addr);
            }
        }?;
        backend.addr.as_inet().copied()
    }

    /// A latency seen from `backend` (to its response header, or to its failure), for
    /// `peak_ewma`.
    pub fn record_latency(&self, backend: SocketAddr, latency: Duration) {
        if let Selector::LeastLoaded(_, Load::PeakEwma) = &self.selector {
            if let Some(state) = self.state(&backend) {
                state.observe_latency(latency);
            }
        }
    }

    /// The host name `backend` was written with or resolved from (empty for an IP address).
    pub fn host_of(&self, backend: &SocketAddr) -> String {
        self.membership
            .load()
            .members
            .get(backend)
            .map(|m| m.host.clone())
            .unwrap_or_default()
    }

    /// What traffic has seen of `backend`.
    pub fn state(&self, backend: &SocketAddr) -> Option<Arc<BackendState>> {
        self.membership
            .load()
            .members
            .get(backend)
            .map(|m| Arc::clone(&m.state))
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
        let Some(policy) = &self.resilience.outlier else {
            return false;
        };
        let membership = self.membership.load();
        let Some(member) = membership.members.get(&backend) else {
            return false;
        };
        let all: Vec<&BackendState> = membership.members.values().map(|m| &*m.state).collect();
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
            && self
                .select_in(&self.membership.load(), &[], failed)
                .is_some()
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
            if let Some(state) = self.state(&backend) {
                state.record_success();
            }
        }
    }

    /// Every backend and whether it is healthy now.
    pub fn backend_health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.selector.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| Some((*b.addr.as_inet()?, backends.ready(b))))
            .collect()
    }

    /// Whether the cluster has active health checks.
    pub fn has_health_check(&self) -> bool {
        self.health.is_some()
    }

    /// The probe that runs this cluster's health checks, if it has any.
    fn health_probe(&self) -> Option<HealthProbe> {
        let spec = self.health.as_ref()?;
        Some(match &self.selector {
            Selector::RoundRobin(lb) | Selector::LeastLoaded(lb, ..) => {
                HealthProbe::RoundRobin(Arc::clone(lb), spec.interval)
            }
            Selector::Consistent(lb, _) => HealthProbe::Consistent(Arc::clone(lb), spec.interval),
        })
    }

    /// The task that keeps the named backends resolved, if the cluster has any.
    fn dns_refresher(self: &Arc<Self>) -> Option<impl std::future::Future<Output = ()>> {
        let dns = self.dns.clone()?;
        let current: Vec<BackendAddr> = self.published_backends();
        let refresher = dns::Refresher::new(Arc::clone(&self.name), dns, &current);
        let cluster = Arc::clone(self);
        Some(refresher.run(move |backends| {
            let cluster = Arc::clone(&cluster);
            async move { cluster.replace_backends(&backends).await }
        }))
    }

    /// The backends as the balancer has them now.
    fn published_backends(&self) -> Vec<BackendAddr> {
        let membership = self.membership.load();
        self.published
            .load()
            .iter()
            .filter_map(|b| {
                let addr = *b.addr.as_inet()?;
                Some(BackendAddr {
                    addr,
                    weight: b.weight,
                    host: membership.members.get(&addr)?.host.clone(),
                })
            })
            .collect()
    }

    /// Makes `backends` the cluster's backends. An address that stays keeps its peer (and so
    /// its pooled connections), its state and its health. In between, the membership holds
    /// old and new backends, so whatever the balancer yields is a member.
    async fn replace_backends(&self, backends: &[BackendAddr]) {
        let least_loaded = matches!(self.selector, Selector::LeastLoaded(..));
        let new_peer = |b: &BackendAddr| peer_for(b, &self.timeouts, &self.transport);
        let old = self.membership.load_full();
        let mut both: Vec<BackendAddr> = backends.to_vec();
        both.extend(
            self.published_backends()
                .into_iter()
                .filter(|b| !backends.iter().any(|n| n.addr == b.addr)),
        );
        let union = Membership::build(&both, Some(&old), least_loaded, new_peer);
        self.membership.store(Arc::new(union));
        self.published
            .store(Arc::new(backends.iter().map(backend_of).collect()));
        self.selector.update().await;
        let union = self.membership.load_full();
        let new = Membership::build(backends, Some(&union), least_loaded, new_peer);
        self.membership.store(Arc::new(new));
    }
}

/// The balancer's view of a backend.
fn backend_of(b: &BackendAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr),
        weight: b.weight.max(1),
        ext: Default::default(),
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
    discovery: Published,
    checks: Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut backends = Backends::new(Box::new(discovery));
    if let Some(checks) = checks {
        backends.set_health_check(checks);
    }
    let lb = LoadBalancer::from_backends(backends);
    // Published discovery never waits and never fails: fill the selector now so the first
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
    transport.apply(&mut peer);
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.read);
    peer.options.write_timeout = Some(t.write);
    peer.options.idle_timeout = Some(t.idle);
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(last: u8) -> BackendAddr {
        BackendAddr {
            addr: SocketAddr::from(([127, 0, 0, last], 9000)),
            weight: 1,
            host: "svc.test".into(),
        }
    }

    fn cluster(balancing: Balancing, backends: &[BackendAddr]) -> Cluster {
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        let transport = Transport {
            protocol: Protocol::Http1,
            tls: false,
            sni: None,
            verify: false,
            client_cert_key: None,
        };
        let resilience = Resilience {
            retry: RetryPolicy::new(
                &[RetryReason::ConnectFailure],
                Vec::new(),
                1,
                None,
                Backoff {
                    base: Duration::from_millis(1),
                    max: Duration::from_millis(1),
                },
                Vec::new(),
                20,
                10,
            ),
            outlier: Some(OutlierPolicy {
                consecutive_failures: 1,
                statuses: vec![503],
                ejection_time: Duration::from_secs(60),
                max_ejected_percent: 50,
            }),
            max_requests: None,
        };
        Cluster::new(
            "svc", backends, balancing, timeouts, &transport, resilience, None, None,
        )
    }

    fn picks(c: &Cluster) -> BTreeSet<SocketAddr> {
        (0..200)
            .filter_map(|_| c.select(&[], &[]).map(|p| p.addr))
            .collect()
    }

    #[tokio::test]
    async fn a_new_answer_keeps_the_state_of_addresses_that_stay() {
        for balancing in [Balancing::RoundRobin, Balancing::LeastRequest] {
            let (x, y, z) = (backend(1), backend(2), backend(3));
            let c = cluster(balancing, &[x.clone(), y.clone()]);
            assert!(c.record_failure(x.addr), "x is ejected");
            let x_state = c.state(&x.addr).expect("x");
            assert_eq!(picks(&c), BTreeSet::from([y.addr]));

            c.replace_backends(&[x.clone(), z.clone()]).await;
            let kept = c.state(&x.addr).expect("x stays");
            assert!(Arc::ptr_eq(&x_state, &kept), "x keeps its state");
            assert!(kept.is_ejected(now_ms()), "and its ejection");
            assert!(c.state(&y.addr).is_none(), "y is gone");
            assert_eq!(picks(&c), BTreeSet::from([z.addr]));
            let published: Vec<SocketAddr> =
                c.published_backends().iter().map(|b| b.addr).collect();
            assert_eq!(published, vec![x.addr, z.addr]);
            assert!(c.published_backends().iter().all(|b| b.host == "svc.test"));
        }
    }
}
