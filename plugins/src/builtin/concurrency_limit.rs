//! `concurrency-limit`: caps the requests in flight per key.
//!
//! A slot is taken in the request phase and held by the request's state, which the gateway drops
//! when the request ends however it ends (response sent, upstream error or timeout, client gone),
//! so a slot can never leak. Counting uses `pingora-limits`' fixed-memory estimator: with very
//! many distinct keys, collisions can only over-count.

use crate::support::limit_key::{KeySpec, LimitKey};
use crate::{Flow, Phases, Plugin, Rejection, RequestView, Slot, SlotAllocator};
use async_trait::async_trait;
use http::HeaderValue;
use pingora_limits::inflight::{Guard, Inflight};
use serde::Deserialize;

/// The configuration name.
pub const NAME: &str = "concurrency-limit";

/// `[routes.R.plugins.concurrency-limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests in flight allowed per key. Required, at least 1.
    pub max_inflight: u32,
    /// What is counted: `client_ip`, `consumer`, `route`, `header:NAME`, or a list. Default `"route"`.
    #[serde(default = "default_key")]
    pub key: KeySpec,
}

fn default_key() -> KeySpec {
    KeySpec::One("route".into())
}

/// A compiled `concurrency-limit`.
pub struct ConcurrencyLimit {
    max: isize,
    key: LimitKey,
    inflight: Inflight,
    /// The request's place, given back when the request's state is dropped.
    held: Slot<Guard>,
}

impl ConcurrencyLimit {
    /// Compiles `config`.
    pub fn new(config: Config, slots: &mut SlotAllocator) -> Result<Self, String> {
        if config.max_inflight == 0 {
            return Err("`max_inflight` must be at least 1".into());
        }
        Ok(ConcurrencyLimit {
            max: config.max_inflight as isize,
            key: LimitKey::new(&config.key)?,
            inflight: Inflight::new(),
            held: slots.claim(),
        })
    }
}

#[async_trait]
impl Plugin for ConcurrencyLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let key = self.key.hash(request.header, request.state);
        let (slot, in_flight) = self.inflight.incr(key, 1);
        if in_flight > self.max {
            // Dropping `slot` gives the place back at once.
            return Ok(Flow::Reject(Rejection {
                status: 503,
                slug: "concurrency-limited",
                title: "Too many requests in flight",
                detail: "this route is at its limit of concurrent requests; retry shortly".into(),
                headers: vec![(http::header::RETRY_AFTER, HeaderValue::from_static("1"))],
            }));
        }
        request.state.slots.set(self.held, slot);
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mistakes_are_errors() {
        let bad = |max, key: &str| {
            ConcurrencyLimit::new(
                Config {
                    max_inflight: max,
                    key: KeySpec::One(key.into()),
                },
                &mut SlotAllocator::default(),
            )
            .is_err()
        };
        assert!(bad(0, "route"));
        assert!(bad(1, "cookie:x"));
        assert!(!bad(1, "header:x-tenant"));
    }
}
