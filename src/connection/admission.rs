//! Connection admission: `server.max_connections` and `server.max_connections_per_ip`.
//!
//! A connection over either limit is closed at once, before a byte is read, and counted in
//! `gantry_connections_refused_total{reason}`. The limits are read from the running
//! configuration at each accept, so a reload changes them for new connections.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` connections are open.
    MaxConnections,
    /// `server.max_connections_per_ip` connections from this address are open.
    MaxConnectionsPerIp,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The open connections, in all and per client address.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Admission {
    /// Admits a connection from `ip` under `max` in all and `max_per_ip` (none: no limit).
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: usize,
        max_per_ip: Option<usize>,
    ) -> Result<Permit, Refused> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::MaxConnections);
        }
        let tracked = match (ip, max_per_ip) {
            (Some(ip), Some(limit)) => {
                let mut per_ip = self.per_ip.lock();
                let count = per_ip.entry(ip).or_insert(0);
                if *count >= limit {
                    // `limit` is at least 1 (checked at load), so this entry is in use.
                    drop(per_ip);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refused::MaxConnectionsPerIp);
                }
                *count += 1;
                Some(ip)
            }
            _ => None,
        };
        Ok(Permit {
            admission: Arc::clone(self),
            ip: tracked,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.admission.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The default `server.max_connections`: half the file-descriptor limit (a proxied client
/// connection may hold an upstream one too) less a reserve for listeners, logs and health
/// checks, and at least 64.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let half = fd_limit.saturating_sub(128) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(64)
}

/// Raises the soft file-descriptor limit to the hard one (as Go and Envoy deployments expect)
/// and returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) if current < maximum => {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                maximum
            } else {
                current
            }
        }
        (Some(current), _) => current,
        // Unlimited (RLIM_INFINITY): the kernel's own bound on descriptors applies.
        (None, _) => u64::from(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_permits_free_their_places() {
        let a = Arc::new(Admission::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = a.admit(Some(ip), 3, Some(2)).unwrap();
        let p2 = a.admit(Some(ip), 3, Some(2)).unwrap();
        assert_eq!(
            a.admit(Some(ip), 3, Some(2)).unwrap_err(),
            Refused::MaxConnectionsPerIp
        );
        let p3 = a.admit(Some(other), 3, Some(2)).unwrap();
        assert_eq!(
            a.admit(Some(other), 3, Some(2)).unwrap_err(),
            Refused::MaxConnections
        );
        assert_eq!(a.open.load(Ordering::Acquire), 3);
        drop(p1);
        let _p4 = a.admit(Some(ip), 3, Some(2)).unwrap();
        drop((p2, p3));
        assert_eq!(a.open.load(Ordering::Acquire), 1);
        assert_eq!(
            a.per_ip.lock().len(),
            1,
            "addresses with no connection are forgotten"
        );
    }

    #[test]
    fn the_default_follows_the_descriptor_limit() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(100), 64);
        assert_eq!(default_max_connections(1 << 20), ((1 << 20) - 128) / 2);
    }
}
