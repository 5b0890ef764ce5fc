//! The `[redis]` connection shared by every plugin that keeps cluster-wide state.
//!
//! A fixed pool of multiplexed connections (`pool_size`), opened lazily on first use. Each
//! worker thread keeps to one connection (threads share when there are more threads than
//! connections), opened on its own runtime: the concurrent requests of a thread pipeline
//! together over it, which measured far cheaper than spreading them over many connections, and
//! no reply crosses threads. A connection that fails at the connection level is dropped and
//! opened again by the next call.
//!
//! Every call is bounded by `timeout`. One failure fails only its own call; after
//! [`TRIP_AFTER`] failures in a row the store is marked down for [`RETRY_AFTER`]: meanwhile
//! callers get [`StoreUnavailable`] at once instead of each waiting out the timeout, then the
//! next call tries Redis again, so the store recovers on its own. Failures are counted
//! (`gantry_redis_errors_total`, in the process's Prometheus registry) and logged at most once
//! per [`WARN_INTERVAL`], with one line when Redis answers again; the URL's password never
//! reaches a log.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, ScriptInvocation, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the store stays marked down after [`TRIP_AFTER`] failures in a row.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Failures in a row that mark Redis down.
pub const TRIP_AFTER: u32 = 3;
/// Redirects followed per Redis Cluster command.
const CLUSTER_RETRIES: u32 = 2;
/// At most one warning per this interval while Redis keeps failing.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// `gantry_redis_errors_total`: Redis operations that failed, timed out or were skipped
/// because Redis was down.
/// Redis operations that failed, timed out or were skipped because Redis was down
/// (`gantry_redis_errors_total`).
static REDIS_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Redis operations that failed so far.
pub fn errors_total() -> u64 {
    REDIS_ERRORS.load(Ordering::Relaxed)
}
static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's connection in every pool.
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

/// Checks one `redis://` URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    url.into_connection_info()
        .map(drop)
        .map_err(|e| format!("invalid Redis URL: {e}"))
}

/// `[redis]`, validated by the gateway's configuration loader.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One URL, or the seed nodes of a Redis Cluster.
    pub urls: Vec<String>,
    /// Talk the Redis Cluster protocol.
    pub cluster: bool,
    /// The longest one command may take.
    pub timeout: Duration,
    /// The most connections opened (one per worker thread, up to this).
    pub pool_size: usize,
    /// Prepended to every key, so several deployments can share one Redis.
    pub key_prefix: String,
}

/// Why plugins cannot use Redis: the configuration has no `[redis]`, or it has errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisUnavailable {
    /// No `[redis]` section.
    NotConfigured,
    /// `[redis]` has errors (reported on their own).
    Invalid,
}

impl RedisUnavailable {
    /// What a plugin needing Redis reports.
    pub fn explain(self) -> &'static str {
        match self {
            RedisUnavailable::NotConfigured => {
                "this needs a [redis] section with `url` (for example url = \"redis://127.0.0.1:6379\")"
            }
            RedisUnavailable::Invalid => "this needs the [redis] section, which has errors (see them)",
        }
    }
}

/// Redis could not answer in time; the caller applies its `on_store_error` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable;

enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Failure bookkeeping: consecutive failures, when Redis may be tried again, and warnings.
struct Outage {
    epoch: Instant,
    /// Failures since the last success.
    consecutive: AtomicU32,
    /// Milliseconds since `epoch` before which Redis is not tried.
    down_until: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one (0: never warned).
    last_warning: AtomicU64,
    /// Failures since the last warning.
    unreported: AtomicU64,
    /// A warning was logged since Redis last answered, so its recovery is worth a line.
    warned: AtomicBool,
}

impl Outage {
    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One pooled connection, replaced after a connection-level failure.
#[derive(Default)]
struct Slot {
    connection: ArcSwapOption<Connection>,
    /// Serialises opening, so concurrent requests do not each open one.
    opening: tokio::sync::Mutex<()>,
}

/// The shared Redis connection pool.
pub struct RedisStore {
    target: Target,
    /// The server(s) without credentials, for logs.
    display: String,
    timeout: Duration,
    key_prefix: String,
    pool: Box<[Slot]>,
    outage: Outage,
}

impl RedisStore {
    /// Checks the URLs and prepares the pool; nothing connects until first use.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        // Registers the error counter at load time, so /metrics shows it from the start.
        let mut infos = Vec::with_capacity(settings.urls.len());
        for url in &settings.urls {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| format!("invalid Redis URL: {e}"))?;
            infos.push(info);
        }
        let display = infos
            .iter()
            .map(|i| i.addr().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let target = if settings.cluster {
            // Redirects (MOVED, ASK) need retries; `run`'s timeout still bounds the call.
            ClusterClient::builder(infos)
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .retries(CLUSTER_RETRIES)
                .build()
                .map(|c| Target::Cluster(Box::new(c)))
        } else {
            let [info] = <[_; 1]>::try_from(infos)
                .map_err(|_| "several `urls` need `cluster = true`; use `url` for one server")?;
            redis::Client::open(info).map(Target::Single)
        }
        .map_err(|e| format!("invalid Redis settings: {e}"))?;
        Ok(RedisStore {
            target,
            display,
            timeout: settings.timeout,
            key_prefix: settings.key_prefix,
            pool: (0..settings.pool_size.max(1))
                .map(|_| Slot::default())
                .collect(),
            outage: Outage {
                epoch: Instant::now(),
                consecutive: AtomicU32::new(0),
                down_until: AtomicU64::new(0),
                last_warning: AtomicU64::new(0),
                unreported: AtomicU64::new(0),
                warned: AtomicBool::new(false),
            },
        })
    }

    /// The prefix of every key this deployment writes.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Runs a Lua script in one round trip (EVALSHA, loading the script when Redis lacks it).
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, StoreUnavailable> {
        if self.outage.millis() < self.outage.down_until.load(Ordering::Relaxed) {
            REDIS_ERRORS.fetch_add(1, Ordering::Relaxed);
            return Err(StoreUnavailable);
        }
        let slot = &self.pool[THREAD_SLOT.with(|slot| *slot) % self.pool.len()];
        let attempt = async {
            let mut connection = self.connection(slot).await?;
            script.invoke_async::<T>(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => {
                self.outage.consecutive.store(0, Ordering::Relaxed);
                if self.outage.warned.swap(false, Ordering::Relaxed) {
                    log::warn!("redis {}: reachable again", self.display);
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    slot.connection.store(None);
                }
                Err(self.failed(&e))
            }
            Err(_) => Err(self.failed(&format!("no answer within {:?}", self.timeout))),
        }
    }

    /// A reply that is not what the caller's script returns: counted and logged like a
    /// failure.
    pub fn unexpected_reply(&self, what: &str) -> StoreUnavailable {
        self.failed(&format!("unexpected reply: {what}"))
    }

    async fn connection(&self, slot: &Slot) -> redis::RedisResult<Connection> {
        if let Some(connection) = slot.connection.load_full() {
            return Ok((*connection).clone());
        }
        let _opening = slot.opening.lock().await;
        if let Some(connection) = slot.connection.load_full() {
            return Ok((*connection).clone());
        }
        let connection = match &self.target {
            Target::Single(client) => {
                // `run` bounds every call with one timer; a second one per command inside
                // the connection would only cost time.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(None)
                    .set_number_of_retries(0);
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(Connection::Single)?
            }
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Connection::Cluster)?,
        };
        slot.connection.store(Some(Arc::new(connection.clone())));
        Ok(connection)
    }

    fn failed(&self, error: &dyn std::fmt::Display) -> StoreUnavailable {
        REDIS_ERRORS.fetch_add(1, Ordering::Relaxed);
        let outage = &self.outage;
        let now = outage.millis();
        // One slow answer fails only its own request; a run of failures marks Redis down, so
        // an outage does not hold every request for the whole timeout.
        if outage.consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= TRIP_AFTER {
            outage
                .down_until
                .store(now + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        }
        outage.unreported.fetch_add(1, Ordering::Relaxed);
        let last = outage.last_warning.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + WARN_INTERVAL.as_millis() as u64;
        if due
            && outage
                .last_warning
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unreported = outage.unreported.swap(0, Ordering::Relaxed);
            outage.warned.store(true, Ordering::Relaxed);
            log::warn!(
                "redis {}: {error}; {unreported} failed operation(s) since the last warning; \
                 limits apply `on_store_error` until Redis answers (next warning in {}s at most)",
                self.display,
                WARN_INTERVAL.as_secs()
            );
        }
        StoreUnavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(urls: &[&str], cluster: bool) -> RedisSettings {
        RedisSettings {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            cluster,
            timeout: Duration::from_millis(50),
            pool_size: 2,
            key_prefix: "gantry".into(),
        }
    }

    #[test]
    fn urls_are_checked_and_passwords_stay_out_of_the_display_name() {
        let store =
            RedisStore::new(settings(&["redis://:s3cret@127.0.0.1:6390/2"], false)).expect("valid");
        assert!(!store.display.contains("s3cret"), "{}", store.display);
        assert!(store.display.contains("127.0.0.1:6390"));
        assert!(RedisStore::new(settings(&["http://127.0.0.1"], false)).is_err());
        let two = ["redis://127.0.0.1:1", "redis://127.0.0.1:2"];
        assert!(RedisStore::new(settings(&two, false))
            .err()
            .is_some_and(|e| e.contains("cluster = true")));
        assert!(RedisStore::new(settings(&two, true)).is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_and_is_skipped_once_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let store =
            RedisStore::new(settings(&[&format!("redis://127.0.0.1:{port}")], false)).expect("ok");
        let script = redis::Script::new("return 1");
        let before = errors_total();
        for attempt in 1..=TRIP_AFTER {
            let started = Instant::now();
            assert_eq!(
                store.run::<i64>(&script.prepare_invoke()).await,
                Err(StoreUnavailable)
            );
            assert!(started.elapsed() < Duration::from_millis(200));
            let down = store.outage.millis() < store.outage.down_until.load(Ordering::Relaxed);
            assert_eq!(down, attempt == TRIP_AFTER, "after {attempt} failure(s)");
        }
        // Marked down: the next call does not even try.
        assert_eq!(
            store.run::<i64>(&script.prepare_invoke()).await,
            Err(StoreUnavailable)
        );
        assert!(errors_total() > before + u64::from(TRIP_AFTER));
    }
}
