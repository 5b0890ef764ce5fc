//! Password hashes (argon2) run fairly between clients: one client's flood of logins cannot
//! make another client's login fail.
//!
//! Hashes run on the blocking pool, [`SLOTS`] at a time, and wait for a slot in one FIFO queue
//! (tokio's semaphore is fair) for at most [`QUEUE_TIMEOUT`]. Each client (its IP, IPv6 by /64,
//! see [`client_key`]) may have at most [`PER_CLIENT`] checks queued or running; a client past
//! its share is refused at once ([`Refused::OverShare`], 429) and never enters the queue. So a
//! flooding client holds at most [`PER_CLIENT`] places, and a newcomer waits behind at most that
//! many of its checks: about one hash time with the flood's share spread over the slots. At
//! most [`MAX_PENDING`] checks are queued or running in all ([`Refused::Busy`], 503, beyond),
//! so the queue and the per-client table are bounded. Many clients flooding at once share the
//! slots equally; that is a capacity limit, which `max_failures` and `rate-limit` address.

use crate::support::failure_limit::client_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Hashes running at once.
pub const SLOTS: usize = 2;
/// Checks one client may have queued or running.
pub const PER_CLIENT: usize = 2;
/// Checks queued or running in all.
pub const MAX_PENDING: usize = 64;
/// The longest a check waits for a slot.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a check was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client already has [`PER_CLIENT`] checks queued or running.
    OverShare,
    /// The queue is full, or no slot was free within [`QUEUE_TIMEOUT`].
    Busy,
}

#[derive(Default)]
struct Pending {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// The slots and the per-client shares of one plugin instance.
pub struct PasswordChecks {
    slots: Arc<Semaphore>,
    pending: Arc<Mutex<Pending>>,
}

/// A client's place among the pending checks, given back when dropped.
struct Share {
    pending: Arc<Mutex<Pending>>,
    client: IpAddr,
}

/// A running slot: the client's share and the permit, held until the hash has finished.
pub struct Slot {
    _share: Share,
    _permit: OwnedSemaphorePermit,
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // The table is consistent after every statement; a panic elsewhere cannot corrupt it.
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut pending = lock(&self.pending);
        pending.total = pending.total.saturating_sub(1);
        if let Some(n) = pending.by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.by_client.remove(&self.client);
            }
        }
    }
}

impl Default for PasswordChecks {
    fn default() -> Self {
        PasswordChecks {
            slots: Arc::new(Semaphore::new(SLOTS)),
            pending: Arc::default(),
        }
    }
}

impl PasswordChecks {
    fn reserve(&self, client: IpAddr) -> Result<Share, Refused> {
        let mut pending = lock(&self.pending);
        if pending.by_client.get(&client).copied().unwrap_or(0) >= PER_CLIENT {
            return Err(Refused::OverShare);
        }
        if pending.total >= MAX_PENDING {
            return Err(Refused::Busy);
        }
        pending.total += 1;
        *pending.by_client.entry(client).or_insert(0) += 1;
        Ok(Share {
            pending: Arc::clone(&self.pending),
            client,
        })
    }

    /// Waits for a slot for `client`'s next check.
    pub async fn slot(&self, client: Option<IpAddr>) -> Result<Slot, Refused> {
        let share = self.reserve(client_key(client))?;
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| Refused::Busy)?
            .map_err(|_| Refused::Busy)?;
        Ok(Slot {
            _share: share,
            _permit: permit,
        })
    }
}

impl Slot {
    /// Runs `hash` on the blocking pool; `None` if it panicked. The slot and the client's
    /// share are held by the hash itself, so a client that goes away meanwhile frees nothing
    /// early.
    pub async fn run<R: Send + 'static>(
        self,
        hash: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        tokio::task::spawn_blocking(move || {
            let _held = self;
            hash()
        })
        .await
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("ip"))
    }

    #[tokio::test]
    async fn a_client_past_its_share_is_refused_and_others_are_not() {
        let checks = PasswordChecks::default();
        let flooder = ip("192.0.2.1");
        let held: Vec<Slot> = vec![
            checks.slot(flooder).await.expect("first"),
            checks.slot(flooder).await.expect("second"),
        ];
        assert_eq!(checks.slot(flooder).await.err(), Some(Refused::OverShare));
        // Both slots are taken: another client queues, and runs once one is freed.
        let checks = Arc::new(checks);
        let other = tokio::spawn({
            let checks = Arc::clone(&checks);
            async move { checks.slot(ip("192.0.2.2")).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(other.await.expect("joined"), Ok(()));
    }

    #[tokio::test]
    async fn shares_come_back_when_checks_finish() {
        let checks = PasswordChecks::default();
        let client = ip("2001:db8::1");
        for _ in 0..3 * PER_CLIENT {
            let slot = checks.slot(client).await.expect("slot");
            assert_eq!(slot.run(|| 7).await, Some(7));
        }
        assert_eq!(lock(&checks.pending).total, 0);
        assert!(lock(&checks.pending).by_client.is_empty());
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let checks = PasswordChecks::default();
        let mut shares = Vec::new();
        for i in 0..MAX_PENDING {
            shares.push(checks.reserve(IpAddr::from([10, 0, (i / 256) as u8, i as u8])));
        }
        assert!(shares.iter().all(Result::is_ok));
        assert_eq!(
            checks.reserve(IpAddr::from([10, 1, 0, 0])).err(),
            Some(Refused::Busy)
        );
    }
}
