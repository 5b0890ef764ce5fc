//! A `GET` through a cluster outside the proxy loop, with the cluster's resilience: its
//! breaker, balancer and outlier detection, and its retry policy (conditions, statuses,
//! attempts, per-try timeout, backoff and budget). The calls of `aggregate` routes use it, and
//! so do plugins that name a cluster (`forward-auth`), through [`PluginClusters`].

use super::exchange::{exchange, ExchangeError, Stage};
use super::hash_key::ip_key;
use super::{Cluster, InFlight, Picked, RetryReason};
use async_trait::async_trait;
use bytes::Bytes;
use gantry_plugins::{ClusterClient, Clusters, ServiceAnswer, ServiceFailure};
use http::{header, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

/// The final answer of a call.
pub struct Answer {
    /// Its header.
    pub header: ResponseHeader,
    /// Its whole body.
    pub body: Vec<u8>,
}

/// Why a call has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The cluster already has `max_requests` in flight.
    Overloaded,
    /// No healthy backend is left to try.
    NoBackend,
    /// The last try's exchange failed.
    Exchange(ExchangeError),
}

/// Sends `prepare`'s request for each picked backend (`key`: the client's hash key) through
/// `cluster`, retrying as its policy allows, and reads at most `max_body` bytes of the
/// answer's body.
pub async fn get(
    cluster: &Cluster,
    connector: &Connector,
    key: &[u8],
    max_body: usize,
    prepare: impl Fn(&Picked) -> RequestHeader,
) -> Result<Answer, CallError> {
    let Some(_slot) = cluster.admit() else {
        cluster.metrics.record_overloaded();
        return Err(CallError::Overloaded);
    };
    cluster.retry_budget.record_request();
    let policy = &cluster.resilience.retry;
    let mut failed = Vec::new();
    let mut attempts = 0;
    loop {
        if attempts > 0 {
            tokio::time::sleep(policy.backoff.delay(attempts)).await;
        }
        let Some(picked) = cluster.select(key, &failed) else {
            return Err(CallError::NoBackend);
        };
        let req = prepare(&picked);
        let (addr, mut peer) = (picked.addr, picked.peer);
        peer.options.response_header_not_after = policy
            .per_try_timeout
            .and_then(|t| tokio::time::Instant::now().checked_add(t));
        attempts += 1;
        let _in_flight = InFlight::enter(&picked.state.in_flight);
        let started = std::time::Instant::now();
        let mut body = Vec::new();
        let sink = |chunk: Bytes| {
            body.extend_from_slice(&chunk);
            body.len() <= max_body
        };
        let reason = match exchange(connector, &peer, req, None, sink).await {
            Ok(header) => {
                cluster.record_latency(addr, started.elapsed());
                let answer = Answer { header, body };
                if !cluster.judge_status(addr, answer.header.status.as_u16()) {
                    return Ok(answer);
                }
                failed.push(addr);
                let status = RetryReason::Status;
                if !(policy.allows(status, &http::Method::GET)
                    && cluster.may_retry(Some(status), attempts, &failed))
                {
                    return Ok(answer);
                }
                continue;
            }
            Err(e) => e,
        };
        cluster.record_failed_attempt(addr, started.elapsed());
        failed.push(addr);
        if !(policy.allows(reason.reason, &http::Method::GET)
            && cluster.may_retry(Some(reason.reason), attempts, &failed))
        {
            return Err(CallError::Exchange(reason));
        }
    }
}

/// The connections of plugins' cluster calls, shared by every configuration generation.
static PLUGIN_CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// The configuration's clusters as plugins see them ([`Clusters`]).
pub struct PluginClusters {
    /// Every cluster by name; `None` for one that failed to compile.
    pub clusters: BTreeMap<String, Option<Arc<Cluster>>>,
}

impl Clusters for PluginClusters {
    fn client(&self, name: &str) -> Result<Arc<dyn ClusterClient>, String> {
        match self.clusters.get(name) {
            Some(Some(cluster)) => Ok(Arc::new(PluginCluster(Arc::clone(cluster)))),
            Some(None) => Err(format!("cluster `{name}` has errors of its own")),
            None => Err(format!(
                "cluster `{name}` is not defined (define [clusters.{name}] or fix the name)"
            )),
        }
    }
}

/// One cluster a plugin calls.
struct PluginCluster(Arc<Cluster>);

#[async_trait]
impl ClusterClient for PluginCluster {
    async fn get(
        &self,
        request: RequestHeader,
        client_ip: Option<IpAddr>,
        max_body: usize,
    ) -> Result<ServiceAnswer, ServiceFailure> {
        let mut ip_buf = [0u8; 16];
        let key = ip_key(client_ip, &mut ip_buf);
        let prepare = |picked: &Picked| {
            let mut req = request.clone();
            if !req.headers.contains_key(header::HOST) {
                if let Some(host) = backend_host(picked) {
                    // Cannot fail: the value is a valid header value.
                    req.insert_header(header::HOST, host).ok();
                }
            }
            req
        };
        match get(&self.0, &PLUGIN_CONNECTOR, key, max_body, prepare).await {
            Ok(answer) => Ok(ServiceAnswer {
                header: answer.header,
                body: Bytes::from(answer.body),
            }),
            Err(CallError::Overloaded | CallError::NoBackend) => Err(ServiceFailure::Unavailable),
            Err(CallError::Exchange(e)) => Err(match (e.stage, e.reason) {
                (Stage::BodyRefused, _) => ServiceFailure::TooLarge,
                (_, RetryReason::Timeout) => ServiceFailure::TimedOut,
                _ => ServiceFailure::Failed,
            }),
        }
    }
}

/// `Host` for a backend: its name as written in the cluster (or the cluster's `sni`), else
/// its address, with the port.
fn backend_host(picked: &Picked) -> Option<HeaderValue> {
    let name = picked.peer.sni.as_str();
    let host = if name.is_empty() {
        picked.addr.to_string()
    } else {
        format!("{name}:{}", picked.addr.port())
    };
    HeaderValue::from_str(&host).ok()
}
