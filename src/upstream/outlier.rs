//! Passive health checking (outlier detection): each backend's record of what real traffic
//! saw (requests in flight, failures in a row, ejections, peak-EWMA latency), and the
//! ejections it earns.
//!
//! A backend that fails `consecutive_failures` times in a row (connect errors, resets,
//! timeouts and the policy's statuses) is ejected: balancers skip it until its ejection ends
//! or an active health check passes. Each repeated ejection lasts once more than the last (up
//! to [`MAX_EJECTION_MULTIPLIER`] times `ejection_time`); the multiplier decays by one for
//! each `ejection_time` the backend then serves without being ejected. No more than
//! `max_ejected_percent` of the cluster is ejected at once: past it, failing backends keep
//! serving. Everything is a few atomics per backend, updated without locks.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

/// A repeated ejection lasts at most this many times `ejection_time`.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// The time constant of the peak-EWMA latency (Finagle's and linkerd's default).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A compiled `[clusters.NAME.outlier]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: u32,
    /// Statuses counted as failures.
    pub statuses: Vec<u16>,
    /// The first ejection's length.
    pub ejection_time: Duration,
    /// The largest share of the cluster ejected at once, in percent.
    pub max_ejected_percent: u32,
}

impl OutlierPolicy {
    /// Whether a response with `status` counts as a failure.
    pub fn is_failure(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

/// The clock ejections are measured on.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since [`EPOCH`], from 1 (0 means "never").
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// What one backend has seen from real traffic: in-flight requests, failures in a row,
/// ejections, and its latency average (for `peak_ewma`).
#[derive(Default)]
pub struct BackendState {
    /// Requests to it under way now.
    pub in_flight: Arc<AtomicUsize>,
    /// Failures since its last success.
    consecutive_failures: AtomicU32,
    /// Until when it is ejected ([`now_ms`] milliseconds); 0 when it never was.
    ejected_until: AtomicU64,
    /// The current ejection's multiplier of `ejection_time`.
    multiplier: AtomicU32,
    /// Times it was ejected.
    pub ejections: AtomicU64,
    /// Peak-EWMA latency to the response header, in microseconds (`f64` bits).
    ewma_micros: AtomicU64,
    /// When `ewma_micros` was last updated ([`now_ms`]).
    ewma_at: AtomicU64,
}

impl BackendState {
    /// Whether it is ejected at `now` ([`now_ms`]).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// When its ejection ends, if it is ejected now.
    pub fn ejected_until(&self) -> Option<SystemTime> {
        let now = now_ms();
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then(|| SystemTime::now() + Duration::from_millis(until - now))
    }

    /// Feeds one latency (to the response header, or to a failure) into the peak EWMA: a
    /// higher latency is taken at once, a lower one blends in with a weight that grows with
    /// the time since the last one ([`EWMA_DECAY`]).
    pub fn observe_latency(&self, latency: Duration) {
        let now = now_ms();
        let sample = latency.as_micros() as f64;
        let previous = f64::from_bits(self.ewma_micros.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        let ewma = if sample > previous {
            sample
        } else {
            let keep = (-elapsed / EWMA_DECAY.as_millis() as f64).exp();
            previous * keep + sample * (1.0 - keep)
        };
        self.ewma_micros.store(ewma.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// The peak-EWMA latency in microseconds as of now: it decays toward zero while no
    /// request measures it, so a backend that was slow is probed again after a while.
    pub fn ewma_micros(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma_micros.load(Ordering::Relaxed));
        let idle = now.saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        ewma * (-idle / EWMA_DECAY.as_millis() as f64).exp()
    }

    /// Failures since its last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// A response that was not a failure.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Ends an ejection early (an active health check passed).
    pub fn uneject(&self) {
        let now = now_ms();
        if self.is_ejected(now) {
            self.ejected_until.store(now, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure; true when it reached the threshold, so the backend should be ejected.
    fn record_failure(&self, policy: &OutlierPolicy) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= policy.consecutive_failures
    }

    /// Ejects it at `now` for `ejection_time` times its (decayed, then grown) multiplier.
    fn eject(&self, policy: &OutlierPolicy, now: u64) {
        let base = (policy.ejection_time.as_millis() as u64).max(1);
        let last_until = self.ejected_until.load(Ordering::Relaxed);
        let served = now.saturating_sub(last_until) / base;
        let decayed = u64::from(self.multiplier.load(Ordering::Relaxed)).saturating_sub(served);
        let multiplier = (decayed + 1).min(u64::from(MAX_EJECTION_MULTIPLIER));
        self.multiplier.store(multiplier as u32, Ordering::Relaxed);
        self.ejected_until
            .store(now + base * multiplier, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records a failure of `backend`, one of `all` (the whole cluster): ejects it when it reached
/// the threshold and the cluster's ejected share allows. True when it was ejected now. The
/// count and the ejection are two steps, so failures of several backends at the same instant
/// may eject one more than the share; selection then still falls back to ejected backends when
/// no other is left.
pub fn record_failure(
    policy: &OutlierPolicy,
    backend: &BackendState,
    all: &[&BackendState],
) -> bool {
    if !backend.record_failure(policy) {
        return false;
    }
    let now = now_ms();
    if backend.is_ejected(now) {
        return false;
    }
    let ejected = all.iter().filter(|b| b.is_ejected(now)).count();
    // As in Envoy, a non-zero share always allows one ejection, whatever the cluster's size.
    let share = all.len() * policy.max_ejected_percent as usize / 100;
    let allowed = if policy.max_ejected_percent > 0 {
        share.max(1)
    } else {
        0
    };
    if ejected + 1 > allowed {
        return false;
    }
    backend.eject(policy, now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            statuses: vec![503],
            ejection_time: Duration::from_millis(1000),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_a_success_resets_the_count() {
        let p = policy();
        let (a, b) = (BackendState::default(), BackendState::default());
        let all = [&a, &b];
        assert!(!record_failure(&p, &a, &all));
        assert!(!record_failure(&p, &a, &all));
        a.record_success();
        assert!(!record_failure(&p, &a, &all));
        assert!(!record_failure(&p, &a, &all));
        assert!(record_failure(&p, &a, &all));
        assert!(a.is_ejected(now_ms()));
        assert!(!b.is_ejected(now_ms()));
        a.uneject();
        assert!(!a.is_ejected(now_ms()));
    }

    #[test]
    fn never_ejects_more_than_the_share() {
        let p = policy();
        let (a, b) = (BackendState::default(), BackendState::default());
        let all = [&a, &b];
        for _ in 0..3 {
            record_failure(&p, &a, &all);
        }
        for _ in 0..10 {
            assert!(!record_failure(&p, &b, &all), "b stays: half is ejected");
        }
        assert!(a.is_ejected(now_ms()) && !b.is_ejected(now_ms()));
    }

    #[test]
    fn a_single_backend_may_be_ejected() {
        let p = policy();
        let a = BackendState::default();
        for _ in 0..2 {
            assert!(!record_failure(&p, &a, &[&a]));
        }
        assert!(
            record_failure(&p, &a, &[&a]),
            "one ejection is always allowed"
        );
    }

    #[test]
    fn repeated_ejections_grow_and_decay() {
        let p = policy();
        let s = BackendState::default();
        s.eject(&p, 10);
        assert_eq!(s.ejected_until.load(Ordering::Relaxed), 1010);
        // Ejected again as soon as it returned: twice as long.
        s.eject(&p, 1010);
        assert_eq!(s.ejected_until.load(Ordering::Relaxed), 3010);
        // Ejected again after serving 5 s: the multiplier decayed to 0 first.
        s.eject(&p, 8010);
        assert_eq!(s.ejected_until.load(Ordering::Relaxed), 9010);
        // Capped.
        for _ in 0..20 {
            let until = s.ejected_until.load(Ordering::Relaxed);
            s.eject(&p, until);
        }
        let until = s.ejected_until.load(Ordering::Relaxed);
        s.eject(&p, until);
        assert_eq!(s.ejected_until.load(Ordering::Relaxed) - until, 10_000);
    }
}
