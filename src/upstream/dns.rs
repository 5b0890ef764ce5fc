//! DNS for backends written as host names: resolved when the configuration is loaded, then
//! again in the background (never on a request's path) on the record's TTL or the cluster's
//! `dns_refresh`, through `hickory-resolver` (the system's `resolv.conf` and hosts file, or
//! `server.resolvers`).
//!
//! A lookup that fails (timeout, refusal, no address) keeps the name's last good addresses and
//! is logged once, when it starts failing; its recovery is logged too.

use super::BackendAddr;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest refresh interval a record's TTL can ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest refresh interval a record's TTL can ask for.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// How long one lookup (all its attempts) may take.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// Each query's own timeout inside a lookup.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where names are looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nameservers(pub Arc<[SocketAddr]>);

impl Nameservers {
    /// A resolver for these nameservers (empty: the system's configuration).
    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.0.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let servers = self
                .0
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = 2;
        builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))
    }
}

/// A backend written as `host:port` with a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBackend {
    /// The host name.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Its weight, given to every address it resolves to.
    pub weight: usize,
}

impl NamedBackend {
    fn backends(&self, addrs: &[SocketAddr]) -> Vec<BackendAddr> {
        addrs
            .iter()
            .map(|addr| BackendAddr {
                addr: *addr,
                weight: self.weight,
                host: self.host.clone(),
            })
            .collect()
    }
}

/// The part of a cluster that DNS keeps up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsBackends {
    /// Where the names are looked up.
    pub nameservers: Nameservers,
    /// `dns_refresh`; `None`: each record's TTL, within [`MIN_REFRESH`] and [`MAX_REFRESH`].
    pub refresh: Option<Duration>,
    /// Backends written as IP addresses: never looked up.
    pub fixed: Vec<BackendAddr>,
    /// Backends written as host names.
    pub named: Vec<NamedBackend>,
}

/// One lookup's answer: sorted, deduplicated addresses and how long they may be kept.
async fn lookup(
    resolver: &TokioResolver,
    name: &NamedBackend,
) -> Result<(Vec<SocketAddr>, Duration), String> {
    let answer = tokio::time::timeout(LOOKUP_DEADLINE, resolver.lookup_ip(name.host.as_str()))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let mut addrs: Vec<SocketAddr> = answer
        .iter()
        .map(|ip| SocketAddr::new(ip, name.port))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no address".into());
    }
    let ttl = answer
        .valid_until()
        .saturating_duration_since(Instant::now());
    Ok((addrs, ttl))
}

/// Resolves every named backend once, for loading a configuration: on a thread of its own
/// (the caller may be inside a runtime or not). One error per name that failed.
pub fn resolve_at_load(
    nameservers: &Nameservers,
    named: &[NamedBackend],
) -> Vec<Result<Vec<BackendAddr>, String>> {
    let count = named.len();
    let nameservers = nameservers.clone();
    let named = named.to_vec();
    let work = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the DNS lookup: {e}"))?;
        runtime.block_on(async {
            let resolver = nameservers.resolver()?;
            // All at once: a load waits for the slowest name, not for their sum.
            let lookups = named.iter().map(|name| {
                let resolver = &resolver;
                async move {
                    lookup(resolver, name)
                        .await
                        .map(|(addrs, _)| name.backends(&addrs))
                        .map_err(|e| format!("cannot resolve `{}`: {e}", name.host))
                }
            });
            Ok::<_, String>(futures::future::join_all(lookups).await)
        })
    };
    let failed_all = |e: String, n: usize| (0..n).map(|_| Err(e.clone())).collect();
    match std::thread::spawn(work).join() {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => failed_all(e, count),
        Err(_) => failed_all("the DNS lookup failed".into(), count),
    }
}

/// What one name last resolved to, and whether its lookups are failing now.
struct NameState {
    addrs: Vec<SocketAddr>,
    failing: bool,
}

/// Keeps a cluster's named backends resolved: each round looks every name up and hands the
/// full backend list to `apply` when it changed.
pub struct Refresher {
    cluster: Arc<str>,
    dns: DnsBackends,
    names: Vec<NameState>,
}

impl Refresher {
    /// A refresher starting from the addresses `current` (what the load resolved).
    pub fn new(cluster: Arc<str>, dns: DnsBackends, current: &[BackendAddr]) -> Refresher {
        let names = dns
            .named
            .iter()
            .map(|n| NameState {
                addrs: current
                    .iter()
                    .filter(|b| b.host == n.host && b.addr.port() == n.port)
                    .map(|b| b.addr)
                    .collect(),
                failing: false,
            })
            .collect();
        Refresher {
            cluster,
            dns,
            names,
        }
    }

    /// Looks every name up; returns the new backend list when it changed, and when to look
    /// again.
    async fn round(&mut self, resolver: &TokioResolver) -> (Option<Vec<BackendAddr>>, Duration) {
        // Ask the nameservers, not the resolver's cache: `dns_refresh` may be shorter than a
        // record's TTL.
        resolver.clear_cache();
        let mut changed = false;
        let mut next = MAX_REFRESH;
        for (name, state) in self.dns.named.iter().zip(&mut self.names) {
            match lookup(resolver, name).await {
                Ok((addrs, ttl)) => {
                    if state.failing {
                        log::info!(
                            "cluster {}: `{}` resolves again: {addrs:?}",
                            self.cluster,
                            name.host
                        );
                        state.failing = false;
                    }
                    next = next.min(ttl);
                    if addrs != state.addrs {
                        log::info!(
                            "cluster {}: `{}` now resolves to {addrs:?} (was {:?})",
                            self.cluster,
                            name.host,
                            state.addrs
                        );
                        state.addrs = addrs;
                        changed = true;
                    }
                }
                Err(e) => {
                    if !state.failing {
                        log::warn!(
                            "cluster {}: cannot resolve `{}` ({e}); keeping {:?}",
                            self.cluster,
                            name.host,
                            state.addrs
                        );
                        state.failing = true;
                    }
                    next = next.min(MIN_REFRESH);
                }
            }
        }
        let wait = self
            .dns
            .refresh
            .unwrap_or_else(|| next.clamp(MIN_REFRESH, MAX_REFRESH));
        (changed.then(|| self.backends()), wait)
    }

    /// Every backend: the fixed ones, then each name's current addresses.
    fn backends(&self) -> Vec<BackendAddr> {
        let mut out = self.dns.fixed.clone();
        for (name, state) in self.dns.named.iter().zip(&self.names) {
            for backend in name.backends(&state.addrs) {
                // Two names may share an address: it is one backend, with the first weight.
                if !out.iter().any(|x| x.addr == backend.addr) {
                    out.push(backend);
                }
            }
        }
        out
    }

    /// Refreshes until aborted, handing each changed backend list to `apply`. The first round
    /// comes after `dns_refresh`, or [`MIN_REFRESH`] (the load did not keep the TTLs).
    pub async fn run<F, Fut>(mut self, apply: F)
    where
        F: Fn(Vec<BackendAddr>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let resolver = match self.dns.nameservers.resolver() {
            Ok(r) => r,
            Err(e) => {
                log::error!("cluster {}: no DNS refresh: {e}", self.cluster);
                return;
            }
        };
        let mut wait = self.dns.refresh.unwrap_or(MIN_REFRESH);
        loop {
            tokio::time::sleep(wait).await;
            let (backends, next) = self.round(&resolver).await;
            if let Some(backends) = backends {
                apply(backends).await;
            }
            wait = next;
        }
    }
}
