//! The node's response cache: one bounded [`MemoryStorage`] shared by every route with the
//! `cache` plugin, the sharded LRU eviction manager of `pingora-cache` that keeps it under
//! `[cache] max_size`, and the cache lock that turns concurrent misses for one key into one
//! upstream fetch.
//!
//! `pingora-cache` needs `'static` references, so the node cache is created once per process,
//! the first time a configuration with caching is served.

pub mod storage;

use crate::config::CacheSettings;
use gantry_plugins::gateway::CacheStatus;
use pingora::cache::eviction::lru::Manager;
use pingora::cache::key::{hash_key, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheKey, CacheOptionOverrides, CachePhase, HttpCache, NoCacheReason};
use std::sync::OnceLock;
use std::time::Duration;
pub use storage::MemoryStorage;

/// Shards of the LRU (each has its own lock).
const LRU_SHARDS: usize = 16;

/// Expected entries per LRU shard, to size its tables up front.
const LRU_SHARD_CAPACITY: usize = 1024;

/// How long a request filling the cache holds the key's lock before waiters give up on it
/// and fetch for themselves.
const LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for another request filling the same key.
const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's cache.
pub struct NodeCache {
    /// Where responses are stored.
    pub storage: &'static MemoryStorage,
    eviction: &'static Manager<LRU_SHARDS>,
    lock: &'static CacheKeyLockImpl,
    max_object_size: usize,
}

static NODE: OnceLock<NodeCache> = OnceLock::new();

/// The process's cache, created with `settings` on first use.
pub fn node(settings: &CacheSettings) -> &'static NodeCache {
    NODE.get_or_init(|| {
        let eviction: &'static Manager<LRU_SHARDS> = Box::leak(Box::new(Manager::with_capacity(
            settings.max_size,
            LRU_SHARD_CAPACITY,
        )));
        let storage: &'static MemoryStorage =
            Box::leak(Box::new(MemoryStorage::new(Some(eviction))));
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(LOCK_AGE_TIMEOUT));
        NodeCache {
            storage,
            eviction,
            lock,
            max_object_size: settings.max_object_size,
        }
    })
}

/// The process's cache if some configuration created it.
pub fn running() -> Option<&'static NodeCache> {
    NODE.get()
}

impl NodeCache {
    /// Turns caching on for this request.
    pub fn enable(&'static self, cache: &mut HttpCache) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(LOCK_WAIT_TIMEOUT);
        cache.enable(
            self.storage,
            Some(self.eviction),
            None,
            Some(self.lock),
            Some(overrides),
        );
        cache.set_max_file_size_bytes(self.max_object_size);
    }

    /// Removes every stored variant of the URL whose primary key hashes to `primary`;
    /// returns how many entries went.
    pub fn purge(&self, primary: &HashBinary) -> usize {
        self.storage.remove_primary(primary)
    }
}

/// The cache key of a framed primary key (from `CachePolicy::primary_key`). Its hash is
/// computed once here: `pingora-cache` asks for it several times per request.
pub fn key_for(primary: Vec<u8>) -> CacheKey {
    let hash = hash_key(&primary);
    let mut key = CacheKey::new(primary, "");
    key.set_primary_bin_override(hash);
    key
}

/// What the cache did for a request, from its final phase.
pub fn status(phase: CachePhase) -> CacheStatus {
    match phase {
        CachePhase::Hit => CacheStatus::Hit,
        CachePhase::Miss => CacheStatus::Miss,
        CachePhase::Expired => CacheStatus::Expired,
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheStatus::Revalidated,
        CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus::Stale,
        CachePhase::Disabled(NoCacheReason::NeverEnabled)
        | CachePhase::Uninit
        | CachePhase::Bypass
        | CachePhase::CacheKey => CacheStatus::Bypass,
        CachePhase::Disabled(_) => CacheStatus::NotStored,
    }
}
