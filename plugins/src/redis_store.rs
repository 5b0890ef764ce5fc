//! The `[redis]` connection shared by every plugin that keeps cluster-wide state.
//!
//! A fixed pool of multiplexed connections (`pool_size`), opened lazily on first use and
//! reopened by the `redis` crate after a failure. Each worker thread keeps to one connection
//! (threads share when there are more threads than connections), opened on its own runtime:
//! the concurrent requests of a thread pipeline together over it, which measured far cheaper
//! than spreading them over many connections, and no reply crosses threads. Every command is bounded by `timeout`. After a
//! failure the store is marked down for [`RETRY_AFTER`]: meanwhile callers get
//! [`StoreUnavailable`] at once instead of each waiting out the timeout, then the next command
//! tries Redis again, so the store recovers on its own. Failures are counted
//! (`gantry_redis_errors_total`, in the process's Prometheus registry) and logged at most once per [`WARN_INTERVAL`]; the URL's password
//! never reaches a log.

use prometheus::IntCounter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, ScriptInvocation, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long the store stays marked down after a failure before Redis is tried again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// At most one warning per this interval while Redis keeps failing.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// `gantry_redis_errors_total`: Redis operations that failed, timed out or were skipped
/// because Redis was down.
static REDIS_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    let counter = IntCounter::new(
        "gantry_redis_errors_total",
        "Redis operations that failed, timed out or were skipped because Redis was down",
    )
    .expect("a valid metric name");
    // Registered once per process; a second registration cannot happen.
    let _ = prometheus::register(Box::new(counter.clone()));
    counter
});
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

/// Failure bookkeeping: when Redis may be tried again and when the last warning was logged.
struct Outage {
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not tried.
    down_until: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one (0: never warned).
    last_warning: AtomicU64,
    /// Failures since the last warning.
    unreported: AtomicU64,
    down: AtomicBool,
}

/// The shared Redis connection pool.
pub struct RedisStore {
    target: Target,
    /// The server(s) without credentials, for logs.
    display: String,
    timeout: Duration,
    key_prefix: String,
    pool: Box<[OnceCell<Connection>]>,
    outage: Outage,
}

impl RedisStore {
    /// Checks the URLs and prepares the pool; nothing connects until first use.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        // Registers the error counter at load time, so /metrics shows it from the start.
        LazyLock::force(&REDIS_ERRORS);
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
            ClusterClient::builder(infos)
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .retries(0)
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
                .map(|_| OnceCell::new())
                .collect(),
            outage: Outage {
                epoch: Instant::now(),
                down_until: AtomicU64::new(0),
                last_warning: AtomicU64::new(0),
                unreported: AtomicU64::new(0),
                down: AtomicBool::new(false),
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
        let now = self.outage.millis();
        if now < self.outage.down_until.load(Ordering::Relaxed) {
            REDIS_ERRORS.inc();
            return Err(StoreUnavailable);
        }
        let attempt = async {
            let mut connection = self.connection().await?;
            script.invoke_async::<T>(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => {
                if self.outage.down.swap(false, Ordering::Relaxed) {
                    log::warn!("redis {}: reachable again", self.display);
                }
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(self.failed(&format!("no answer within {:?}", self.timeout))),
        }
    }

    async fn connection(&self) -> redis::RedisResult<Connection> {
        let slot = THREAD_SLOT.with(|slot| *slot) % self.pool.len();
        let connection = self.pool[slot]
            .get_or_try_init(|| async {
                match &self.target {
                    Target::Single(client) => {
                        // `run` bounds every call with one timer; a second one per
                        // command inside the connection would only cost time.
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(self.timeout))
                            .set_response_timeout(None)
                            .set_number_of_retries(0);
                        ConnectionManager::new_lazy_with_config(client.clone(), config)
                            .map(Connection::Single)
                    }
                    Target::Cluster(client) => {
                        client.get_async_connection().await.map(Connection::Cluster)
                    }
                }
            })
            .await?;
        Ok(connection.clone())
    }

    fn failed(&self, error: &dyn std::fmt::Display) -> StoreUnavailable {
        REDIS_ERRORS.inc();
        let outage = &self.outage;
        let now = outage.millis();
        outage
            .down_until
            .store(now + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        outage.down.store(true, Ordering::Relaxed);
        let unreported = outage.unreported.fetch_add(1, Ordering::Relaxed) + 1;
        let last = outage.last_warning.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + WARN_INTERVAL.as_millis() as u64;
        if due
            && outage
                .last_warning
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            outage.unreported.store(0, Ordering::Relaxed);
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

impl Outage {
    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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
    async fn an_unreachable_redis_fails_fast_and_is_skipped_while_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let store =
            RedisStore::new(settings(&[&format!("redis://127.0.0.1:{port}")], false)).expect("ok");
        let script = redis::Script::new("return 1");
        let before = REDIS_ERRORS.get();
        let started = Instant::now();
        assert_eq!(
            store.run::<i64>(&script.prepare_invoke()).await,
            Err(StoreUnavailable)
        );
        assert!(started.elapsed() < Duration::from_millis(200));
        // Marked down: the next call does not even try.
        assert!(store.outage.millis() < store.outage.down_until.load(Ordering::Relaxed));
        assert_eq!(
            store.run::<i64>(&script.prepare_invoke()).await,
            Err(StoreUnavailable)
        );
        assert!(REDIS_ERRORS.get() >= before + 2);
    }
}
