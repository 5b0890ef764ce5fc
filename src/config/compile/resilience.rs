//! Compiles a cluster's resilience settings: the retry policy (or the `retries` shorthand),
//! outlier detection and the circuit breaker's limit.

use super::{parse_method, span_of, Compiler};
use crate::config::error::KeyPath;
use crate::config::model::{self, OutlierSection, RetrySection};
use crate::upstream::{Backoff, OutlierPolicy, RetryPolicy, RetryReason};
use http::Method;
use std::time::Duration;
use toml::Spanned;

/// The most `retries` of a cluster (the shorthand), and one less than the most `attempts`.
const MAX_RETRIES: u32 = 15;

/// The longest deadline, try limit, backoff or ejection: a day.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Compiler<'_, '_> {
    /// `retries` or `[retry]` of cluster `key`; writing both is an error.
    pub(super) fn retry_policy(
        &mut self,
        key: &KeyPath,
        retries: Option<u32>,
        retry: Option<RetrySection>,
    ) -> RetryPolicy {
        let budget = (
            model::DEFAULT_BUDGET_PERCENT,
            model::DEFAULT_BUDGET_MIN_PER_SECOND,
        );
        let backoff = Backoff {
            base: model::DEFAULT_BACKOFF_BASE,
            max: model::DEFAULT_BACKOFF_MAX,
        };
        let idempotent = || {
            model::DEFAULT_RETRY_METHODS
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect::<Vec<_>>()
        };
        let Some(r) = retry else {
            let retries = retries.unwrap_or(model::DEFAULT_RETRIES);
            if retries > MAX_RETRIES {
                let msg = format!("retries must be at most {MAX_RETRIES}");
                self.report(None, &key.child("retries"), msg, None);
            }
            return RetryPolicy::new(
                &[RetryReason::ConnectFailure],
                Vec::new(),
                retries.min(MAX_RETRIES) + 1,
                None,
                backoff,
                idempotent(),
                budget.0,
                budget.1,
            );
        };
        let key = key.child("retry");
        if retries.is_some() {
            self.report(
                None,
                &key,
                "`retries` and `[retry]` both set the retry policy",
                Some(
                    "remove `retries`: `retries = N` is `retry = { on = [\"connect-failure\"], attempts = N + 1 }`"
                        .into(),
                ),
            );
        }
        let on = match &r.on {
            Some(names) => self.parse_list(names, &key.child("on"), |name| {
                RetryReason::parse(name).ok_or_else(|| {
                    format!(
                        "unknown retry condition `{name}`; use connect-failure, reset, timeout or status"
                    )
                })
            }),
            None => RetryReason::ALL.to_vec(),
        };
        let statuses = self.statuses(&key.child("statuses"), r.statuses.as_deref());
        let attempts = match &r.attempts {
            Some(a) if !(1..=MAX_RETRIES + 1).contains(a.get_ref()) => {
                let msg = format!("attempts must be between 1 and {}", MAX_RETRIES + 1);
                self.report(span_of(a), &key.child("attempts"), msg, None);
                1
            }
            Some(a) => *a.get_ref(),
            None => model::DEFAULT_RETRY_ATTEMPTS,
        };
        if r.statuses.is_some() && !on.contains(&RetryReason::Status) {
            let msg = "statuses are retried only with \"status\" in `on`";
            let hint = Some("add \"status\" to on, or remove statuses".into());
            self.report(None, &key.child("statuses"), msg, hint);
        }
        let per_try_timeout = r
            .per_try_timeout
            .map(|d| self.wait(d.0, &key, "per_try_timeout"));
        let backoff = match r.backoff {
            Some(b) => {
                let bkey = key.child("backoff");
                let backoff = Backoff {
                    base: b.base.map_or(backoff.base, |d| d.0),
                    max: b.max.map_or(backoff.max, |d| self.wait(d.0, &bkey, "max")),
                };
                if backoff.max < backoff.base {
                    self.report(
                        None,
                        &bkey.child("max"),
                        "backoff.max is shorter than backoff.base",
                        None,
                    );
                }
                backoff
            }
            None => backoff,
        };
        let budget = match r.budget {
            Some(b) => {
                let percent = match &b.percent {
                    Some(p) if *p.get_ref() > 100 => {
                        let msg = "budget.percent must be between 0 and 100";
                        self.report(span_of(p), &key.child("budget").child("percent"), msg, None);
                        budget.0
                    }
                    Some(p) => *p.get_ref(),
                    None => budget.0,
                };
                (percent, b.min_per_second.unwrap_or(budget.1))
            }
            None => budget,
        };
        let methods = match &r.methods {
            Some(names) => self.parse_list(names, &key.child("methods"), parse_method),
            None => idempotent(),
        };
        RetryPolicy::new(
            &on,
            statuses,
            attempts,
            per_try_timeout,
            backoff,
            methods,
            budget.0,
            budget.1,
        )
    }

    /// `[outlier]` of cluster `key`.
    pub(super) fn outlier_policy(&mut self, key: &KeyPath, o: OutlierSection) -> OutlierPolicy {
        let key = key.child("outlier");
        let consecutive_failures = match &o.consecutive_failures {
            Some(n) if *n.get_ref() == 0 => {
                let msg = "consecutive_failures must be at least 1";
                let ckey = key.child("consecutive_failures");
                self.report(span_of(n), &ckey, msg, None);
                1
            }
            Some(n) => *n.get_ref(),
            None => model::DEFAULT_CONSECUTIVE_FAILURES,
        };
        let max_ejected_percent = match &o.max_ejected_percent {
            Some(p) if *p.get_ref() > 100 => {
                let msg = "max_ejected_percent must be between 0 and 100";
                let pkey = key.child("max_ejected_percent");
                self.report(span_of(p), &pkey, msg, None);
                model::DEFAULT_MAX_EJECTED_PERCENT
            }
            Some(p) => *p.get_ref(),
            None => model::DEFAULT_MAX_EJECTED_PERCENT,
        };
        OutlierPolicy {
            consecutive_failures,
            statuses: self.statuses(&key.child("statuses"), o.statuses.as_deref()),
            ejection_time: o.ejection_time.map_or(model::DEFAULT_EJECTION_TIME, |d| {
                self.wait(d.0, &key, "ejection_time")
            }),
            max_ejected_percent,
        }
    }

    /// A wait written at `key.field`: above zero and at most [`MAX_WAIT`].
    pub(super) fn wait(&mut self, d: Duration, key: &KeyPath, field: &str) -> Duration {
        if d.is_zero() || d > MAX_WAIT {
            let msg = format!("{field} must be greater than zero and at most 24h");
            self.report(None, &key.child(field), msg, None);
            return d.clamp(Duration::from_millis(1), MAX_WAIT);
        }
        d
    }

    /// A list of failure statuses (400 to 599), or the default.
    fn statuses(&mut self, key: &KeyPath, statuses: Option<&[Spanned<u16>]>) -> Vec<u16> {
        let Some(statuses) = statuses else {
            return model::DEFAULT_FAILURE_STATUSES.to_vec();
        };
        let mut out = Vec::new();
        for (i, status) in statuses.iter().enumerate() {
            let code = *status.get_ref();
            if (400..=599).contains(&code) {
                out.push(code);
            } else {
                let msg = format!("{code} is not an error status (400 to 599)");
                self.report(span_of(status), &key.index(i), msg, None);
            }
        }
        out
    }
}
