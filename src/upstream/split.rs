//! Traffic split: a route's requests shared by weight across several clusters, sticky when the
//! route names a `split_key` (the same key value always lands on the same cluster while the
//! weights stay the same).

use super::{Cluster, HashOn};
use std::sync::Arc;

/// A compiled `clusters = [{ name, weight }, …]` with its optional `split_key`.
#[derive(Debug)]
pub struct TrafficSplit {
    /// Each cluster with its weight (0 drains it).
    clusters: Vec<(Arc<Cluster>, u32)>,
    /// The sum of the weights, above 0.
    total: u32,
    /// What a sticky split is keyed on.
    key: Option<HashOn>,
}

impl TrafficSplit {
    /// A split over `clusters`; `None` when every weight is 0.
    pub fn new(clusters: Vec<(Arc<Cluster>, u32)>, key: Option<HashOn>) -> Option<TrafficSplit> {
        let total = clusters.iter().map(|(_, w)| *w).sum();
        (total > 0).then_some(TrafficSplit {
            clusters,
            total,
            key,
        })
    }

    /// What a sticky split is keyed on.
    pub fn key(&self) -> Option<&HashOn> {
        self.key.as_ref()
    }

    /// The clusters and their weights.
    pub fn clusters(&self) -> impl Iterator<Item = &(Arc<Cluster>, u32)> {
        self.clusters.iter()
    }

    /// The cluster for a request: by the CRC-32 of `key` (the `split_key` value) when given, at
    /// random otherwise.
    pub fn choose(&self, key: Option<&[u8]>) -> &Arc<Cluster> {
        let point = match key {
            Some(key) => crc32fast::hash(key) % self.total,
            None => fastrand::u32(..self.total),
        };
        self.pick(point)
    }

    fn pick(&self, mut point: u32) -> &Arc<Cluster> {
        for (cluster, weight) in &self.clusters {
            if point < *weight {
                return cluster;
            }
            point -= weight;
        }
        // Unreachable: `point` is below the total of the weights.
        &self.clusters[self.clusters.len() - 1].0
    }
}
