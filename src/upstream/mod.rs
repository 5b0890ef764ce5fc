//! Upstream clusters: backends, balancing, peers and active health checks.
//!
//! A cluster wraps a `pingora-load-balancing` [`LoadBalancer`] (weighted round robin or ketama
//! consistent hashing). Peers (address plus timeouts) are built once per backend at load, so
//! picking an upstream costs a selection and a clone, nothing else.

pub mod hash_key;
mod health;

pub use hash_key::HashOn;
pub use health::{HealthCheckSpec, HealthChecks, HealthProbe};

use ahash::AHashMap;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// The selection algorithm and its balancer.
enum Selector {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>, HashOn),
}

/// A named group of backends.
pub struct Cluster {
    /// The cluster's name (`clusters.NAME`).
    pub name: Arc<str>,
    selector: Selector,
    peers: AHashMap<SocketAddr, HttpPeer>,
    /// Connection failures retried on another backend.
    pub retries: u32,
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
            .field("backends", &self.peers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Cluster {
    /// Builds a cluster. `hash_on` is `Some` for consistent hashing.
    pub fn new(
        name: &str,
        backends: &[BackendAddr],
        hash_on: Option<HashOn>,
        timeouts: Timeouts,
        transport: &Transport,
        retries: u32,
        health: Option<HealthCheckSpec>,
    ) -> Cluster {
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
        let checks = health.as_ref().map(|h| h.build(transport, &health_sni));
        let fingerprint =
            format!("{backends:?} {hash_on:?} {timeouts:?} {transport:?} {retries} {health:?}");
        let selector = match hash_on {
            None => Selector::RoundRobin(Arc::new(balancer(&set, checks))),
            Some(key) => Selector::Consistent(Arc::new(balancer(&set, checks)), key),
        };
        let peers = backends
            .iter()
            .map(|b| (b.addr, peer_for(b, &timeouts, transport)))
            .collect();
        Cluster {
            name: name.into(),
            selector,
            peers,
            retries,
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

    /// What the consistent hash is keyed on, or `None` for round robin.
    pub fn hash_on(&self) -> Option<&HashOn> {
        match &self.selector {
            Selector::RoundRobin(_) => None,
            Selector::Consistent(_, key) => Some(key),
        }
    }

    /// Picks a healthy backend not in `tried`. `key` feeds consistent hashing.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<(&SocketAddr, &HttpPeer)> {
        let accept = |b: &Backend, healthy: bool| {
            healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
        };
        let backend = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Selector::Consistent(lb, _) => lb.select_with(key, MAX_SELECT_STEPS, accept),
        }?;
        self.peers.get_key_value(backend.addr.as_inet()?)
    }

    /// Every backend and whether it is healthy now.
    pub fn backend_health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = match &self.selector {
            Selector::RoundRobin(lb) => lb.backends(),
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
            Selector::RoundRobin(lb) => HealthProbe::RoundRobin(Arc::clone(lb), spec.interval),
            Selector::Consistent(lb, _) => HealthProbe::Consistent(Arc::clone(lb), spec.interval),
        })
    }
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
