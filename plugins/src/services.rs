//! Calls a plugin makes through the gateway's clusters.
//!
//! A plugin table may name a `[clusters.NAME]` of the configuration (`cluster = "auth"` in
//! `forward-auth`). This crate knows nothing of clusters: the gateway hands the registry its
//! [`Clusters`] in [`crate::registry::BuildContext`], and a plugin asks it for a
//! [`ClusterClient`] when it is built, so an unknown name is a configuration error and a call
//! goes through the cluster's balancing, health, breaker, retries and timeouts.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;

/// The answer to a call: the final response header and the body, read up to the caller's
/// bound.
#[derive(Debug)]
pub struct ServiceAnswer {
    /// The response header.
    pub header: ResponseHeader,
    /// The body.
    pub body: Bytes,
}

/// Why a call has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceFailure {
    /// No backend could take the call: none is healthy, or the cluster's breaker is open.
    Unavailable,
    /// The connection failed or was reset, or the answer was not HTTP.
    Failed,
    /// A timeout of the cluster passed.
    TimedOut,
    /// The answer's body was longer than the caller's bound.
    TooLarge,
}

/// One cluster, as a plugin calls it.
#[async_trait]
pub trait ClusterClient: Send + Sync {
    /// Sends `request` (a `GET` without a body; `Host` is set to the chosen backend's name when
    /// the request has none) through the cluster for a client at `client_ip` (the key of
    /// hash balancing), and reads at most `max_body` bytes of the answer's body.
    async fn get(
        &self,
        request: RequestHeader,
        client_ip: Option<IpAddr>,
        max_body: usize,
    ) -> Result<ServiceAnswer, ServiceFailure>;
}

/// The configuration's clusters, for the plugins that name one.
pub trait Clusters: Send + Sync {
    /// A client for the cluster `name`, or why there is none (a message naming the cluster,
    /// with a hint when one helps).
    fn client(&self, name: &str) -> Result<Arc<dyn ClusterClient>, String>;
}
