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
use pingora::cache::eviction::CacheEntryKeyRef;
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

/// Shards of the entry map: lookups of different keys rarely contend.
const SHARDS: usize = 32;

/// Bytes counted for an entry beyond its body and serialized header: the map slot, the key
/// and the bookkeeping.
const ENTRY_OVERHEAD: usize = 160;

/// One stored response: a variant of a URL.
struct Entry {
    /// Primary and variance hashed together (what `pingora-cache` looks up).
    combined: HashBinary,
    /// The key the eviction manager tracks this entry by.
    compact: CompactCacheKey,
    /// `CacheMeta`: its internal fields serialized, and the header parsed.
    meta: Arc<StoredMeta>,
    body: Bytes,
    /// What this entry counts toward `max_size`.
    weight: usize,
}

/// A stored `CacheMeta`. The header is kept parsed: `CacheMeta::deserialize` would
/// decompress (zstd) and parse it on every hit, which cost more than the rest of a hit.
struct StoredMeta {
    internal: Vec<u8>,
    header: ResponseHeader,
}

impl StoredMeta {
    /// Splits `meta`; also returns the serialized header's size, for the entry's weight.
    fn new(meta: &CacheMeta) -> Result<(StoredMeta, usize)> {
        let (internal, header) = meta.serialize()?;
        let stored = StoredMeta {
            internal,
            header: meta.response_header_copy(),
        };
        Ok((stored, header.len()))
    }

    /// The `CacheMeta` again: the internal fields deserialized around an empty header, then
    /// the stored header put in.
    fn to_meta(&self) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&self.internal, &EMPTY_HEADER)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
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

type Shard = RwLock<HashMap<HashBinary, Vec<Entry>>>;

/// The node's cache storage.
pub struct MemoryStorage {
    shards: Box<[Shard]>,
    bytes: AtomicUsize,
    entries: AtomicUsize,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
        }
    }
}

impl MemoryStorage {
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

    /// Removes every variant stored under `primary`; returns their eviction keys.
    pub fn remove_primary(&self, primary: &HashBinary) -> Vec<CompactCacheKey> {
        let removed = self.shard(primary).write().remove(primary);
        removed
            .into_iter()
            .flatten()
            .map(|entry| {
                self.forget(&entry);
                entry.compact
            })
            .collect()
    }

    fn forget(&self, entry: &Entry) {
        self.bytes.fetch_sub(entry.weight, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
    }

    fn insert(&self, entry: Entry) {
        let primary = entry.compact.primary;
        self.bytes.fetch_add(entry.weight, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&primary).write();
        let variants = shard.entry(primary).or_default();
        if let Some(old) = variants.iter_mut().find(|e| e.combined == entry.combined) {
            let old = std::mem::replace(old, entry);
            self.forget(&old);
        } else {
            variants.push(entry);
        }
    }

    /// Removes the variant `combined` of `primary`.
    fn remove(&self, primary: &HashBinary, combined: &HashBinary) -> bool {
        let mut shard = self.shard(primary).write();
        let Some(variants) = shard.get_mut(primary) else {
            return false;
        };
        let Some(at) = variants.iter().position(|e| &e.combined == combined) else {
            return false;
        };
        let entry = variants.swap_remove(at);
        if variants.is_empty() {
            shard.remove(primary);
        }
        drop(shard);
        self.forget(&entry);
        true
    }
}

/// Reads a stored body: the whole of it, or a range of it.
struct Hit {
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
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
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
    combined: HashBinary,
    compact: CompactCacheKey,
    meta: StoredMeta,
    /// The serialized header's size.
    header_len: usize,
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
            combined,
            compact,
            meta,
            header_len,
            body,
        } = *self;
        let weight = body.len() + meta.internal.len() + header_len + ENTRY_OVERHEAD;
        storage.insert(Entry {
            combined,
            compact,
            meta: Arc::new(meta),
            body: body.freeze(),
            weight,
        });
        Ok(MissFinishType::Created(weight))
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
            shard.get(&primary).and_then(|variants| {
                variants
                    .iter()
                    .find(|e| e.combined == combined)
                    .map(|e| (Arc::clone(&e.meta), e.body.clone(), e.weight))
            })
        };
        let Some((meta, body, weight)) = found else {
            return Ok(None);
        };
        let meta = meta.to_meta()?;
        let end = body.len();
        let hit = Hit {
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
        let (meta, header_len) = StoredMeta::new(meta)?;
        Ok(Box::new(Miss {
            storage: self,
            combined: key.combined_bin(),
            compact: key.to_compact(),
            meta,
            header_len,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        if self.remove(&key.primary_bin(), &key.combined_bin()) {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
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
        let meta = Arc::new(StoredMeta::new(meta)?.0);
        let mut shard = self.shard(&primary).write();
        let entry = shard
            .get_mut(&primary)
            .and_then(|variants| variants.iter_mut().find(|e| e.combined == combined));
        Ok(match entry {
            Some(entry) => {
                entry.meta = meta;
                true
            }
            None => false,
        })
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// The eviction key of a removed entry, for the eviction manager.
pub fn eviction_key(key: &CompactCacheKey) -> CacheEntryKeyRef<'_> {
    CacheEntryKeyRef::from_entry_id(key, None)
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
        let storage: &'static MemoryStorage = Box::leak(Box::default());
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

        let (meta, mut hit) = storage.lookup(&variant, &span).await.unwrap().unwrap();
        assert_eq!(meta.response_header().status, 200);
        assert_eq!(meta.headers()["etag"], "\"v1\"");
        assert!(meta.is_fresh(SystemTime::now()));
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hallo");
        assert!(hit.read_body().await.unwrap().is_none());
        hit.seek(1, Some(3)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "al");

        let removed = storage.remove_primary(&key.primary_bin());
        assert_eq!(removed.len(), 2);
        assert_eq!((storage.bytes(), storage.entries()), (0, 0));
        assert!(storage.lookup(&key, &span).await.unwrap().is_none());
    }
}
