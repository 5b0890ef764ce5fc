//! A cluster's retry policy: which failed attempts are tried again (by condition and method),
//! how many tries in all, each try's limit, the wait before a retry (exponential backoff with
//! full jitter) and the budget that caps how much extra load retries put on the cluster.

use http::Method;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Why an attempt failed, as far as retrying is concerned; the `reason` label of
/// `gantry_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection was made (refused, unreachable, connect or TLS timeout): nothing was sent.
    ConnectFailure,
    /// The connection closed or was reset before the response header.
    Reset,
    /// No response header within the read timeout or the try's limit.
    Timeout,
    /// The response header had one of the policy's statuses.
    Status,
}

impl RetryReason {
    /// Every reason, in label order.
    pub const ALL: [RetryReason; 4] = [
        RetryReason::ConnectFailure,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::Status,
    ];

    /// The name used in `retry.on` and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect-failure",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status => "status",
        }
    }

    /// The reason named `name` in `retry.on`.
    pub fn parse(name: &str) -> Option<RetryReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// `backoff = { base, max }`: retry `n` (from 1) waits a uniformly random time in
/// `[0, min(max, base * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's ceiling.
    pub base: Duration,
    /// The ceiling of every retry.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of retry `n` (from 1).
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `n` (from 1): full jitter under [`Self::ceiling`].
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n).as_micros() as u64;
        Duration::from_micros(fastrand::u64(0..=ceiling))
    }
}

/// A compiled `[clusters.NAME.retry]` (or the `retries = N` shorthand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The conditions retried, one bit per [`RetryReason`].
    on: u8,
    /// The statuses `status` retries.
    statuses: Vec<u16>,
    /// Total tries, the first included (at least 1).
    pub attempts: u32,
    /// Each try's limit until the response header.
    pub per_try_timeout: Option<Duration>,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// Methods retried on conditions other than a connect failure.
    methods: Vec<Method>,
    /// Retries allowed as a percentage of requests, over the budget window.
    pub budget_percent: u32,
    /// Retries allowed each second whatever the percentage.
    pub budget_min_per_second: u32,
}

impl RetryPolicy {
    /// A policy from its parts; `attempts` is at least 1.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        on: &[RetryReason],
        statuses: Vec<u16>,
        attempts: u32,
        per_try_timeout: Option<Duration>,
        backoff: Backoff,
        methods: Vec<Method>,
        budget_percent: u32,
        budget_min_per_second: u32,
    ) -> RetryPolicy {
        RetryPolicy {
            on: on.iter().fold(0, |bits, r| bits | r.bit()),
            statuses,
            attempts: attempts.max(1),
            per_try_timeout,
            backoff,
            methods,
            budget_percent,
            budget_min_per_second,
        }
    }

    /// Whether `reason` is one of the conditions retried.
    pub fn retries_on(&self, reason: RetryReason) -> bool {
        self.on & reason.bit() != 0
    }

    /// Whether a response with `status` is a failure to retry.
    pub fn retries_status(&self, status: u16) -> bool {
        self.retries_on(RetryReason::Status) && self.statuses.contains(&status)
    }

    /// Whether an attempt of a `method` request that failed for `reason` may be tried again
    /// (attempts, backends, body and budget aside). A connect failure sent nothing, so it is
    /// retried whatever the method.
    pub fn allows(&self, reason: RetryReason, method: &Method) -> bool {
        self.retries_on(reason)
            && (reason == RetryReason::ConnectFailure || self.methods.contains(method))
    }

    /// The conditions retried, for the admin API.
    pub fn conditions(&self) -> Vec<&'static str> {
        RetryReason::ALL
            .into_iter()
            .filter(|r| self.retries_on(*r))
            .map(RetryReason::as_str)
            .collect()
    }
}

/// The budget window, in one-second slots.
const WINDOW_SECONDS: usize = 10;

/// One second of the budget window.
#[derive(Default)]
struct Slot {
    /// The second (since [`EPOCH`]) this slot counts.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// The clock the budget windows count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The seconds since [`EPOCH`].
fn now_second() -> u64 {
    EPOCH.elapsed().as_secs() + 1
}

/// A cluster's retry budget: over a sliding window of ten one-second slots, retries are
/// allowed while they stay under `percent` of the requests, or while fewer than
/// `min_per_second` were taken this second (the floor for quiet clusters, as Envoy's
/// `min_retry_concurrency`). Extra load is at most the larger of the two, so never more than
/// their sum. Counting is lock-free; concurrent retries may each see the others' taken places
/// and overshoot the share by at most the retries decided in the same instant, and a slot
/// that rolls over while another thread counts in it may lose that one count.
#[derive(Default)]
pub struct RetryBudget {
    slots: [Slot; WINDOW_SECONDS],
}

impl RetryBudget {
    /// Counts a request to the cluster (its first attempt).
    pub fn record_request(&self) {
        self.record_request_at(now_second());
    }

    /// Takes one retry from the budget of `policy`; false when it is spent (nothing counted).
    pub fn try_retry(&self, policy: &RetryPolicy) -> bool {
        self.try_retry_at(policy, now_second())
    }

    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[second as usize % WINDOW_SECONDS];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Release);
            slot.retries.store(0, Ordering::Release);
        }
        slot
    }

    fn record_request_at(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry_at(&self, policy: &RetryPolicy, second: u64) -> bool {
        let current = self.slot(second);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let at = slot.second.load(Ordering::Acquire);
            if at + (WINDOW_SECONDS as u64) > second && at <= second {
                requests += u64::from(slot.requests.load(Ordering::Relaxed));
                retries += u64::from(slot.retries.load(Ordering::Relaxed));
            }
        }
        // Taken first and given back when over, so concurrent retries cannot all pass one
        // check.
        let this_second = current.retries.fetch_add(1, Ordering::AcqRel);
        let share = retries * 100 < requests * u64::from(policy.budget_percent);
        let floor = this_second < policy.budget_min_per_second;
        if !(share || floor) {
            current.retries.fetch_sub(1, Ordering::AcqRel);
        }
        share || floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, min_per_second: u32) -> RetryPolicy {
        RetryPolicy::new(
            &[RetryReason::ConnectFailure, RetryReason::Status],
            vec![503],
            3,
            None,
            Backoff {
                base: Duration::from_millis(25),
                max: Duration::from_millis(250),
            },
            vec![Method::GET],
            percent,
            min_per_second,
        )
    }

    #[test]
    fn reasons_match_the_metric_labels() {
        let names = RetryReason::ALL.map(RetryReason::as_str);
        assert_eq!(names, crate::metrics::RETRY_REASONS);
        assert!(RetryReason::ALL
            .iter()
            .enumerate()
            .all(|(i, r)| r.index() == i));
    }

    #[test]
    fn conditions_and_methods() {
        let p = policy(20, 10);
        assert!(p.allows(RetryReason::ConnectFailure, &Method::POST));
        assert!(p.allows(RetryReason::Status, &Method::GET));
        assert!(!p.allows(RetryReason::Status, &Method::POST));
        assert!(!p.allows(RetryReason::Reset, &Method::GET));
        assert!(p.retries_status(503));
        assert!(!p.retries_status(502));
        assert_eq!(p.conditions(), ["connect-failure", "status"]);
    }

    #[test]
    fn backoff_grows_exponentially_up_to_max_with_jitter_below_the_ceiling() {
        let b = policy(20, 10).backoff;
        assert_eq!(b.ceiling(1), Duration::from_millis(25));
        assert_eq!(b.ceiling(2), Duration::from_millis(50));
        assert_eq!(b.ceiling(4), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(250));
        assert_eq!(b.ceiling(40), Duration::from_millis(250));
        for n in 1..6 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
    }

    #[test]
    fn budget_allows_the_share_or_the_floor_per_second() {
        let p = policy(20, 2);
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.record_request_at(5);
        }
        // 20 % of 100 requests; the floor of 2 this second is already used by them.
        let granted = (0..50).filter(|_| budget.try_retry_at(&p, 5)).count();
        assert_eq!(granted, 20);
        // The next second has its own floor, and the window still holds the share.
        let granted = (0..50).filter(|_| budget.try_retry_at(&p, 6)).count();
        assert_eq!(granted, 2);
    }

    #[test]
    fn budget_window_slides() {
        let p = policy(50, 0);
        let budget = RetryBudget::default();
        for _ in 0..10 {
            budget.record_request_at(1);
        }
        assert_eq!((0..20).filter(|_| budget.try_retry_at(&p, 1)).count(), 5);
        // Ten seconds later the old requests and retries have left the window.
        assert_eq!((0..20).filter(|_| budget.try_retry_at(&p, 11)).count(), 0);
        for _ in 0..4 {
            budget.record_request_at(11);
        }
        assert_eq!((0..20).filter(|_| budget.try_retry_at(&p, 11)).count(), 2);
    }
}
