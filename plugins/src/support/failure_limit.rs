//! `max_failures`: failed authentication attempts counted per client, and a client past its
//! count refused with 429 before any verification work (no hash, no signature check) until
//! its window ends.
//!
//! A client is its IP address; IPv6 clients are grouped by their /64 prefix, which one host
//! usually holds whole. A client's window starts with its first failure and lasts `per`;
//! within it, `count` failures are answered normally and every later attempt gets 429 with
//! `Retry-After` (the seconds left in the window).
//!
//! Counters live in a fixed-size TinyUFO cache ([`ENTRIES`] clients per plugin instance): a
//! flood of distinct addresses cannot grow memory, and its admission policy keeps the clients
//! that fail often, so one-off addresses do not evict a guessing client's counter. Counts are
//! exact per client (no shared buckets: one client's failures never lock out another), and
//! threads racing on a client's first failure may lose a count or two.

use crate::support::config_types::HumanDuration;
use crate::{Flow, Rejection};
use http::HeaderValue;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The problem `type` slug of a client refused for too many failed attempts.
pub const SLUG: &str = "too-many-failures";
/// Clients tracked per plugin instance.
pub const ENTRIES: usize = 32_768;

/// `max_failures = { count = 10, per = "1m" }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxFailures {
    /// Failed attempts answered normally within a window.
    pub count: u32,
    /// The window's length; at least `"1s"`.
    pub per: HumanDuration,
}

/// The client that attempts are counted under: its IP, IPv6 by /64, an unknown client as `::`.
pub fn client_key(ip: Option<IpAddr>) -> IpAddr {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V6(v6)) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        Some(v4) => v4,
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

struct Window {
    /// The client, again: rules out two clients sharing a 64-bit cache key.
    client: IpAddr,
    ends: Instant,
    failures: AtomicU32,
}

struct Limit {
    count: u32,
    per: Duration,
    windows: MemoryCache<IpAddr, Arc<Window>>,
}

/// A plugin's failure counters (none without `max_failures`).
pub struct FailureLimit(Option<Limit>);

impl FailureLimit {
    /// Validates `config`; `None` (no `max_failures`) limits nothing.
    pub fn new(config: Option<MaxFailures>) -> Result<Self, String> {
        let Some(c) = config else {
            return Ok(FailureLimit(None));
        };
        if c.count == 0 {
            return Err("`max_failures.count` must be at least 1".into());
        }
        if c.per.0 < Duration::from_secs(1) {
            return Err("`max_failures.per` must be at least \"1s\"".into());
        }
        Ok(FailureLimit(Some(Limit {
            count: c.count,
            per: c.per.0,
            windows: MemoryCache::new(ENTRIES),
        })))
    }

    fn window(limit: &Limit, client: IpAddr, now: Instant) -> Option<Arc<Window>> {
        limit
            .windows
            .get(&client)
            .0
            .filter(|w| w.client == client && now < w.ends)
    }

    /// The 429 for `client` when it is past its count; cheap, so call it first.
    pub fn check(&self, client: Option<IpAddr>) -> Option<Rejection> {
        let limit = self.0.as_ref()?;
        let now = Instant::now();
        let window = Self::window(limit, client_key(client), now)?;
        if window.failures.load(Ordering::Relaxed) < limit.count {
            return None;
        }
        let retry_after = window
            .ends
            .saturating_duration_since(now)
            .as_secs_f64()
            .ceil();
        Some(Rejection {
            status: 429,
            slug: SLUG,
            title: "Too many failed attempts",
            detail: "too many failed authentication attempts from this client; retry later".into(),
            headers: vec![(
                http::header::RETRY_AFTER,
                HeaderValue::from((retry_after as u64).max(1)),
            )],
        })
    }

    /// Counts a failed attempt of `client`.
    pub fn record(&self, client: Option<IpAddr>) {
        let Some(limit) = &self.0 else { return };
        let client = client_key(client);
        let now = Instant::now();
        match Self::window(limit, client, now) {
            Some(window) => {
                window.failures.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let window = Window {
                    client,
                    ends: now + limit.per,
                    failures: AtomicU32::new(1),
                };
                limit
                    .windows
                    .put(&client, Arc::new(window), Some(limit.per));
            }
        }
    }

    /// `rejection`, counted as a failed attempt of `client`.
    pub fn failed(&self, client: Option<IpAddr>, rejection: Rejection) -> Flow {
        self.record(client);
        Flow::Reject(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(count: u32) -> FailureLimit {
        FailureLimit::new(Some(MaxFailures {
            count,
            per: HumanDuration(Duration::from_secs(60)),
        }))
        .expect("valid")
    }

    #[test]
    fn clients_past_their_count_are_refused_until_the_window_ends() {
        let limit = limit(3);
        let a = Some("192.0.2.1".parse().unwrap());
        let b = Some("192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limit.check(a).is_none());
            limit.record(a);
        }
        let refused = limit.check(a).expect("refused");
        assert_eq!(refused.status, 429);
        let (name, value) = &refused.headers[0];
        assert_eq!(name, http::header::RETRY_AFTER);
        let secs: u64 = value.to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        assert!(limit.check(b).is_none(), "another client is not affected");
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64_prefix() {
        let limit = limit(1);
        limit.record(Some("2001:db8:1:2::1".parse().unwrap()));
        assert!(limit
            .check(Some("2001:db8:1:2:ffff::9".parse().unwrap()))
            .is_some());
        assert!(limit
            .check(Some("2001:db8:1:3::1".parse().unwrap()))
            .is_none());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_key(Some(mapped)),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_flood_of_addresses_does_not_reset_a_frequent_failer() {
        let limit = limit(5);
        let guesser = Some("198.51.100.1".parse().unwrap());
        for i in 0..(ENTRIES as u32 * 2) {
            if i % 64 == 0 {
                limit.record(guesser);
            }
            limit.record(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert!(limit.check(guesser).is_some());
    }

    #[test]
    fn counts_and_windows_are_validated() {
        let config = |count, per| MaxFailures {
            count,
            per: HumanDuration(Duration::from_millis(per)),
        };
        assert!(FailureLimit::new(Some(config(0, 60_000))).is_err());
        assert!(FailureLimit::new(Some(config(3, 500))).is_err());
        assert!(FailureLimit::new(None).expect("off").check(None).is_none());
    }
}
