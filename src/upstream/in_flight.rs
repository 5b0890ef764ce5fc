//! Requests in flight: a counter that a request holds one place in until it ends, for the
//! circuit breaker (per cluster) and for `least_request` and the admin API (per backend).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One request's place in a counter; dropping it leaves.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicUsize>,
    /// The count when this request entered, itself included.
    at_entry: usize,
}

impl InFlight {
    /// Enters `counter`.
    pub fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        let at_entry = counter.fetch_add(1, Ordering::AcqRel) + 1;
        InFlight {
            counter: Arc::clone(counter),
            at_entry,
        }
    }

    /// Requests in flight when this one entered, itself included.
    pub fn count(&self) -> usize {
        self.at_entry
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_held() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = InFlight::enter(&counter);
        let b = InFlight::enter(&counter);
        assert_eq!((a.count(), b.count()), (1, 2));
        drop(a);
        assert_eq!(counter.load(Ordering::Acquire), 1);
        drop(b);
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }
}
