//! Hot reload: `SIGHUP` or `POST /reload` re-reads the configuration file, validates all of it,
//! and swaps it in atomically. On any error the running configuration keeps serving.
//!
//! Each request takes the configuration once, when it starts, and keeps that generation to its
//! end. Clusters defined exactly as before are kept (with their backends' health); the health
//! checks and DNS refresh follow the new set of clusters; TLS listeners get the new certificates
//! and client certificate verification (`client_ca`, `client_auth`). What only a restart can
//! change (listeners, threads, the admin listener, the access log, the cache size) is reported
//! as such and left as it was.

use crate::client_auth::ClientCertSwitch;
use crate::config::{self, Config, ConfigErrors};
use crate::tls::CertStore;
use crate::upstream::Cluster;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// A TLS listener's certificates, replaced by reloads.
#[derive(Debug)]
pub struct CertSwitch(ArcSwap<CertStore>);

impl CertSwitch {
    /// Starts with `certs`.
    pub fn new(certs: Arc<CertStore>) -> Self {
        CertSwitch(ArcSwap::new(certs))
    }
}

impl ResolvesServerCert for CertSwitch {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().resolve(hello)
    }
}

/// What reloads replace on a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsSwitches {
    /// Its certificates.
    pub certs: Arc<CertSwitch>,
    /// Its client certificate verification.
    pub clients: Arc<ClientCertSwitch>,
}

/// The running configuration and how to replace it.
pub struct Live {
    path: PathBuf,
    config: ArcSwap<Config>,
    generation: AtomicU64,
    cluster_tasks: watch::Sender<Vec<Arc<Cluster>>>,
    tls: Vec<(SocketAddr, TlsSwitches)>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The new generation (the first configuration is 1).
    pub generation: u64,
    /// SHA-256 of the new file.
    pub sha256: String,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Live {
    /// `config`, read from `path`, as generation 1; `cluster_tasks` feeds the clusters'
    /// health checks and DNS refresh, and `tls` are what reloads replace on the TLS listeners.
    pub fn new(
        path: PathBuf,
        config: Arc<Config>,
        cluster_tasks: watch::Sender<Vec<Arc<Cluster>>>,
        tls: Vec<(SocketAddr, TlsSwitches)>,
    ) -> Self {
        Live {
            path,
            config: ArcSwap::new(config),
            generation: AtomicU64::new(1),
            cluster_tasks,
            tls,
            reloading: Mutex::new(()),
        }
    }

    /// The configuration new requests use.
    pub fn current(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The running configuration's generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Re-reads and validates the file, then swaps it in. Blocking (file reads, certificate
    /// parsing): call it off the request threads.
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one = self.reloading.lock();
        let old = self.current();
        let new = match config::load_replacing(&self.path, Some(&old)) {
            Ok(new) => Arc::new(new),
            Err(errors) => {
                crate::metrics::config_reloaded(false);
                log::error!(
                    "reload refused, still serving generation {}:\n{errors}",
                    self.generation()
                );
                return Err(errors);
            }
        };
        let needs_restart = restart_only_changes(&old, &new);
        for tls in &new.server.tls {
            if let Some((_, switches)) = self.tls.iter().find(|(addr, _)| *addr == tls.addr) {
                switches.certs.0.store(Arc::clone(&tls.certificates));
                switches.clients.store(Arc::clone(&tls.client_verification));
            }
        }
        self.cluster_tasks.send_replace(new.cluster_list());
        self.config.store(Arc::clone(&new));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::config_reloaded(true);
        log::info!(
            "reloaded {}: generation {generation}, {} routes, {} clusters",
            self.path.display(),
            new.router.len(),
            new.clusters.len()
        );
        if !needs_restart.is_empty() {
            log::warn!(
                "changed settings that take effect after a restart: {}",
                needs_restart.join(", ")
            );
        }
        Ok(Reloaded {
            generation,
            sha256: new.source_sha256.clone(),
            needs_restart,
        })
    }
}

/// The settings that differ between `old` and `new` but are fixed while the process runs.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let tls_addrs = |c: &Config| c.server.tls.iter().map(|t| t.addr).collect::<Vec<_>>();
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(old.server.listen != new.server.listen, "server.listen");
    check(tls_addrs(old) != tls_addrs(new), "server.tls listen");
    check(old.server.threads != new.server.threads, "server.threads");
    check(old.server.h2c != new.server.h2c, "server.h2c");
    check(
        old.admin.as_ref().map(|a| a.addr) != new.admin.as_ref().map(|a| a.addr),
        "admin.listen",
    );
    check(old.log != new.log, "log");
    check(old.cache != new.cache, "cache");
    check(
        !old.grpc_web && new.grpc_web,
        "grpc_web (the bridge module)",
    );
    check(
        !old.compression && new.compression,
        "compress (the compression module)",
    );
    changed
}

/// Reloads on `SIGHUP`. A background service, so that its thread runs in the final process
/// (after `--daemon` forked).
pub struct ReloadOnSighup(pub Arc<Live>);

#[async_trait]
impl BackgroundService for ReloadOnSighup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let live = Arc::clone(&self.0);
        let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]);
        match signals {
            Ok(mut signals) => {
                let handle = signals.handle();
                std::thread::spawn(move || {
                    for _ in signals.forever() {
                        // Errors are logged by reload().
                        let _ = live.reload();
                    }
                });
                let _ = shutdown.changed().await;
                handle.close();
            }
            Err(e) => log::error!("cannot listen for SIGHUP (reloads only by POST /reload): {e}"),
        }
    }
}
