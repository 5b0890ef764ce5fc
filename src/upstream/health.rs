//! Active health checks: HTTP or TCP probes that mark backends up and down. They run in the
//! cluster tasks service (`background.rs`), each cluster on its own interval.

use super::{Membership, Transport};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::Backend;
use pingora::lb::LoadBalancer;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::Duration;

/// A compiled `[clusters.NAME.health_check]`.
#[derive(Debug, Clone)]
pub struct HealthCheckSpec {
    /// `Some(request)` for HTTP checks, `None` for TCP.
    pub http_request: Option<RequestHeader>,
    /// Time between checks.
    pub interval: Duration,
    /// Connect and read timeout of one check.
    pub timeout: Duration,
    /// Consecutive successes that mark a backend up.
    pub healthy_threshold: usize,
    /// Consecutive failures that mark a backend down.
    pub unhealthy_threshold: usize,
    /// Statuses counted as healthy (HTTP).
    pub expected_statuses: Vec<u16>,
}

impl HealthCheckSpec {
    /// The Pingora health check this spec describes, over the cluster's `transport` (HTTP
    /// checks speak its protocol and TLS, with `sni`). A check that passes ends the backend's
    /// ejection, if outlier detection ejected it (found in `membership`).
    pub(super) fn build(
        &self,
        transport: &Transport,
        sni: &str,
        membership: Arc<ArcSwap<Membership>>,
    ) -> Box<dyn HealthCheck + Send + Sync> {
        Box::new(UnejectOnPass {
            check: self.probe(transport, sni),
            membership,
        })
    }

    fn probe(&self, transport: &Transport, sni: &str) -> Box<dyn HealthCheck + Send + Sync> {
        match &self.http_request {
            Some(req) => {
                let mut hc = HttpHealthCheck::new("localhost", transport.tls);
                hc.peer_template.sni = sni.to_string();
                transport.apply(&mut hc.peer_template);
                hc.req = req.clone();
                hc.consecutive_success = self.healthy_threshold;
                hc.consecutive_failure = self.unhealthy_threshold;
                hc.peer_template.options.connection_timeout = Some(self.timeout);
                hc.peer_template.options.total_connection_timeout = Some(self.timeout);
                hc.peer_template.options.read_timeout = Some(self.timeout);
                let statuses = self.expected_statuses.clone();
                hc.validator = Some(Box::new(move |resp: &ResponseHeader| {
                    let status = resp.status.as_u16();
                    if statuses.contains(&status) {
                        Ok(())
                    } else {
                        Error::e_explain(
                            ErrorType::CustomCode("unexpected health check status", status),
                            "status not in expected_statuses",
                        )
                    }
                }));
                Box::new(hc)
            }
            None => {
                let mut hc = TcpHealthCheck::new();
                hc.consecutive_success = self.healthy_threshold;
                hc.consecutive_failure = self.unhealthy_threshold;
                hc.peer_template.options.connection_timeout = Some(self.timeout);
                hc
            }
        }
    }
}

/// A health check that also ends a passing backend's ejection.
struct UnejectOnPass {
    check: Box<dyn HealthCheck + Send + Sync>,
    membership: Arc<ArcSwap<Membership>>,
}

#[async_trait]
impl HealthCheck for UnejectOnPass {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.check.check(target).await?;
        if let Some(addr) = target.addr.as_inet() {
            if let Some(member) = self.membership.load().members.get(addr) {
                member.state.uneject();
            }
        }
        Ok(())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.check.health_status_change(target, healthy).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.check.health_threshold(success)
    }
}

/// One cluster's balancer to probe and how often.
#[derive(Clone)]
pub(super) enum HealthProbe {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>, Duration),
    Consistent(Arc<LoadBalancer<Consistent>>, Duration),
}

impl HealthProbe {
    async fn run_once(&self) -> Duration {
        match self {
            HealthProbe::RoundRobin(lb, every) => {
                lb.backends().run_health_check(true).await;
                *every
            }
            HealthProbe::Consistent(lb, every) => {
                lb.backends().run_health_check(true).await;
                *every
            }
        }
    }

    /// Probes on the cluster's interval until aborted.
    pub(super) async fn run(self) {
        loop {
            let every = self.run_once().await;
            tokio::time::sleep(every).await;
        }
    }
}
