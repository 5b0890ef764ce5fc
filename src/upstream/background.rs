//! The background service that runs every cluster's own tasks: its active health checks and
//! its DNS refresh. One service (on one thread) serves all clusters, rather than a Pingora
//! service and thread per cluster. The tasks follow the running configuration: after a
//! reload, clusters kept as they were keep their tasks (and the counts and addresses those
//! hold), new ones start theirs and removed ones stop.

use super::Cluster;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::watch;

/// The service; [`ClusterTasks::new`] also gives the sender that hands it each new set of
/// clusters.
pub struct ClusterTasks {
    clusters: watch::Receiver<Vec<Arc<Cluster>>>,
}

impl ClusterTasks {
    /// The service for `clusters`, and the sender that gives it new ones.
    pub fn new(clusters: Vec<Arc<Cluster>>) -> (watch::Sender<Vec<Arc<Cluster>>>, ClusterTasks) {
        let (tx, rx) = watch::channel(clusters);
        (tx, ClusterTasks { clusters: rx })
    }
}

/// Identifies a cluster: a reload that keeps a cluster keeps the same `Arc`.
fn id(cluster: &Arc<Cluster>) -> usize {
    Arc::as_ptr(cluster) as usize
}

/// Everything `cluster` runs in the background, as one future (`None`: nothing).
fn tasks_of(cluster: &Arc<Cluster>) -> Option<BoxFuture<'static, ()>> {
    let health = cluster.health_probe().map(|p| p.run().boxed());
    let dns = cluster.dns_refresher().map(FutureExt::boxed);
    match (health, dns) {
        (Some(h), Some(d)) => Some(futures::future::join(h, d).map(|_| ()).boxed()),
        (h, d) => h.or(d),
    }
}

#[async_trait]
impl BackgroundService for ClusterTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut clusters = self.clusters.clone();
        let mut running: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let current = clusters.borrow_and_update().clone();
            let wanted: HashSet<usize> = current.iter().map(id).collect();
            running.retain(|id, task| {
                let keep = wanted.contains(id);
                if !keep {
                    task.abort();
                }
                keep
            });
            for cluster in &current {
                if running.contains_key(&id(cluster)) {
                    continue;
                }
                if let Some(tasks) = tasks_of(cluster) {
                    running.insert(id(cluster), tokio::spawn(tasks));
                }
            }
            tokio::select! {
                changed = clusters.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        for task in running.values() {
            task.abort();
        }
    }
}
