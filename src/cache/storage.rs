//! The in-memory `pingora-cache` [`Storage`]: sharded, byte-counted, with every variant of a
//! URL kept under its primary key so that one purge removes them all.
//!
//! Pingora's own `MemCache` is documented as test-only (it copies every body on each hit and
//! never frees what it stores). Here bodies are immutable [`Bytes`], so a hit hands out a
//! reference-counted view without copying; entries are counted in bytes and the eviction
//! manager (`pingora-cache`'s sharded LRU, fed the same weights) keeps the total under
//! `[cache] max_size`.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use pingora::cache::eviction::{CacheEntryId, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

/// Shards of the entry map: lookups of different keys rarely contend.
const SHARDS: usize = 32;

/// Bytes counted for an entry beyond its body and serialized header: the map slot, the key
/// and the bookkeeping.
const ENTRY_OVERHEAD: usize = 160;

/// The largest buffer reserved up front for a body from its `Content-Length`.
const MAX_PRESIZE: usize = 8 << 20;

/// One stored response: a variant of a URL.
struct Entry {
    /// Unique per fill, in the order fills started: the eviction manager tracks entries by
    /// it, so evicting an old copy never removes a newer one stored under the same key.
    id: u64,
    /// The key the eviction manager tracks this entry by.
    compact: CompactCacheKey,
    /// `CacheMeta`: its internal fields serialized, and the header parsed.
    meta: Arc<StoredMeta>,
    body: Bytes,
    /// What this entry counts toward `max_size`.
    weight: usize,
}

/// Every stored variant of one URL.
#[derive(Default)]
struct Url {
    /// By variant (primary and variance hashed together, what `pingora-cache` looks up).
    variants: HashMap<HashBinary, Entry>,
    /// Fills that started before the last purge of this URL are not stored when they finish.
    purged_before: u64,
}

/// A stored `CacheMeta`. The header is kept parsed: `CacheMeta::deserialize` would
/// decompress (zstd) and parse it on every hit, which cost more than the rest of a hit.
struct StoredMeta {
    internal: Vec<u8>,
    header: ResponseHeader,
}

impl StoredMeta {
    fn new(meta: &CacheMeta) -> Result<StoredMeta> {
        Ok(StoredMeta {
            internal: meta.serialize()?.0,
            header: meta.response_header_copy(),
        })
    }

    /// The `CacheMeta` again: the internal fields deserialized around an empty header, then
    /// the stored header put in.
    fn to_meta(&self) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&self.internal, &EMPTY_HEADER)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    /// Bytes this takes in memory, near enough: the parsed header's names and values plus
    /// the bookkeeping of each.
    fn size(&self) -> usize {
        let headers: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 64)
            .sum();
        self.internal.len() + headers + 128
    }
}

/// An empty response header, serialized once.
static EMPTY_HEADER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let header = ResponseHeader::build(200, Some(0)).expect("a 200 header builds");
    let now = std::time::SystemTime::now();
    CacheMeta::new(now, now, 0, 0, header)
        .serialize()
        .map(|(_, header)| header)
        .unwrap_or_default()
});

type Shard = RwLock<HashMap<HashBinary, Url>>;

/// The node's cache storage.
pub struct MemoryStorage {
    shards: Box<[Shard]>,
    bytes: AtomicUsize,
    entries: AtomicUsize,
    next_id: AtomicU64,
    /// Told when an entry is replaced or purged here, so it stops counting it.
    eviction: Option<&'static (dyn EvictionManager + Sync)>,
}

impl MemoryStorage {
    /// An empty storage whose entries `eviction` tracks.
    pub fn new(eviction: Option<&'static (dyn EvictionManager + Sync)>) -> Self {
        MemoryStorage {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            eviction,
        }
    }

    /// Bytes stored now (bodies, headers and per-entry overhead).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Responses stored now, counting each variant.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    fn shard(&self, primary: &HashBinary) -> &Shard {
        &self.shards[primary[0] as usize % SHARDS]
    }

    /// Removes every variant stored under `primary`, and makes fills of it that are under way
    /// not store what they fetched; returns how many entries went.
    pub fn remove_primary(&self, primary: &HashBinary) -> usize {
        let removed: Vec<Entry> = {
            let mut shard = self.shard(primary).write();
            let url = shard.entry(*primary).or_default();
            url.purged_before = self.next_id.load(Ordering::Relaxed);
            url.variants.drain().map(|(_, e)| e).collect()
        };
        for entry in &removed {
            self.forget(entry);
        }
        removed.len()
    }

    /// Stops counting `entry`, here and in the eviction manager.
    fn forget(&self, entry: &Entry) {
        self.bytes.fetch_sub(entry.weight, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        if let Some(eviction) = self.eviction {
            let id = Some(CacheEntryId::new(entry.id));
            eviction.remove(CacheEntryKeyRef::from_entry_id(&entry.compact, id));
        }
    }

    /// Stores `entry` (replacing the variant's older copy); false when the URL was purged
    /// after this fill started.
    fn insert(&self, combined: HashBinary, entry: Entry) -> bool {
        let primary = entry.compact.primary;
        let weight = entry.weight;
        let replaced = {
            let mut shard = self.shard(&primary).write();
            let url = shard.entry(primary).or_default();
            if entry.id < url.purged_before {
                return false;
            }
            url.variants.insert(combined, entry)
        };
        self.bytes.fetch_add(weight, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = replaced {
            self.forget(&old);
        }
        true
    }

    /// Removes the variant `combined` of `primary` (only the copy `id`, when given); returns
    /// the removed entry's id.
    fn remove(&self, primary: &HashBinary, combined: &HashBinary, id: Option<u64>) -> Option<u64> {
        let entry = {
            let mut shard = self.shard(primary).write();
            let url = shard.get_mut(primary)?;
            if id.is_some_and(|id| url.variants.get(combined).map(|e| e.id) != Some(id)) {
                return None;
            }
            let entry = url.variants.remove(combined)?;
            if url.variants.is_empty() && url.purged_before == 0 {
                shard.remove(primary);
            }
            entry
        };
        self.bytes.fetch_sub(entry.weight, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        Some(entry.id)
    }
}

/// Reads a stored body: the whole of it, or a range of it.
struct Hit {
    id: u64,
    body: Bytes,
    /// The entry's weight, so a hit promotes it in the eviction manager at the same weight.
    weight: usize,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "seek start {start} is past the body's {} bytes",
                    self.body.len()
                ),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.clamp(start, self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response body; stores the entry when the body is complete.
struct Miss {
    storage: &'static MemoryStorage,
    id: u64,
    combined: HashBinary,
    compact: CompactCacheKey,
    meta: StoredMeta,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss {
            storage,
            id,
            combined,
            compact,
            meta,
            body,
        } = *self;
        // An exact-size copy: the buffer may have grown to twice the body.
        let body = Bytes::copy_from_slice(&body);
        let weight = body.len() + meta.size() + ENTRY_OVERHEAD;
        let entry = Entry {
            id,
            compact,
            meta: Arc::new(meta),
            body,
            weight,
        };
        let stored = storage.insert(combined, entry);
        Ok(MissFinishType::Created(if stored { weight } else { 0 }))
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let primary = key.primary_bin();
        let combined = key.combined_bin();
        let found = {
            let shard = self.shard(&primary).read();
            shard
                .get(&primary)
                .and_then(|url| url.variants.get(&combined))
                .map(|e| (e.id, Arc::clone(&e.meta), e.body.clone(), e.weight))
        };
        let Some((id, meta, body, weight)) = found else {
            return Ok(None);
        };
        let meta = meta.to_meta()?;
        let end = body.len();
        let hit = Hit {
            id,
            body,
            weight,
            done: false,
            start: 0,
            end,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let meta = StoredMeta::new(meta)?;
        let expected = meta
            .header
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        Ok(Box::new(Miss {
            storage: self,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            combined: key.combined_bin(),
            compact: key.to_compact(),
            meta,
            // Sized for the announced body, within what any entry may be.
            body: BytesMut::with_capacity(expected.min(MAX_PRESIZE)),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let only = match target {
            PurgeTarget::Exact(entry) => entry.entry_id().map(CacheEntryId::get),
            PurgeTarget::Active(_) => None,
        };
        match self.remove(&key.primary_bin(), &key.combined_bin(), only) {
            Some(id) => Ok(PurgeOutcome::Purged(Some(CacheEntryId::new(id)))),
            None => Ok(PurgeOutcome::NotFound),
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let primary = key.primary_bin();
        let combined = key.combined_bin();
        let meta = StoredMeta::new(meta)?;
        let mut shard = self.shard(&primary).write();
        let entry = shard
            .get_mut(&primary)
            .and_then(|url| url.variants.get_mut(&combined));
        Ok(match entry {
            Some(entry) => {
                let weight = entry.body.len() + meta.size() + ENTRY_OVERHEAD;
                self.bytes.fetch_add(weight, Ordering::Relaxed);
                self.bytes.fetch_sub(entry.weight, Ordering::Relaxed);
                entry.weight = weight;
                entry.meta = Arc::new(meta);
                true
            }
            None => false,
        })
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use std::time::{Duration, SystemTime};

    fn meta() -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("etag", "\"v1\"").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    async fn store(storage: &'static MemoryStorage, key: &CacheKey, body: &'static [u8]) {
        let span = Span::inactive().handle();
        let mut miss = storage.get_miss_handler(key, &meta(), &span).await.unwrap();
        miss.write_body(Bytes::from_static(body), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }

    #[tokio::test]
    async fn stores_counts_replaces_and_purges_every_variant() {
        let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(None)));
        let span = Span::inactive().handle();
        let key = CacheKey::new("k", "");
        let mut variant = key.clone();
        variant.set_variance_key([7; 16]);

        store(storage, &key, b"hello").await;
        let one = storage.bytes();
        assert!(one >= 5 + ENTRY_OVERHEAD);
        store(storage, &key, b"hello").await;
        assert_eq!(
            (storage.bytes(), storage.entries()),
            (one, 1),
            "same key replaces"
        );
        store(storage, &variant, b"hallo").await;
        assert_eq!(storage.entries(), 2);

        let (found, mut hit) = storage.lookup(&variant, &span).await.unwrap().unwrap();
        assert_eq!(found.response_header().status, 200);
        assert_eq!(found.headers()["etag"], "\"v1\"");
        assert!(found.is_fresh(SystemTime::now()));
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hallo");
        assert!(hit.read_body().await.unwrap().is_none());
        hit.seek(1, Some(3)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "al");

        // A fill that started before a purge does not store what it fetched.
        let span2 = Span::inactive().handle();
        let mut late = storage
            .get_miss_handler(&key, &meta(), &span2)
            .await
            .unwrap();
        assert_eq!(storage.remove_primary(&key.primary_bin()), 2);
        late.write_body(Bytes::from_static(b"old"), true)
            .await
            .unwrap();
        late.finish().await.unwrap();
        assert_eq!((storage.bytes(), storage.entries()), (0, 0));
        assert!(storage.lookup(&key, &span).await.unwrap().is_none());
    }
}
