//! Verification keys for `jwt-auth`: static keys (a secret, a PEM file, a JWKS file) or a
//! remote JWKS fetched in the background.
//!
//! A remote set is fetched on first use, refreshed in the background once it is older than
//! `jwks_refresh`, and fetched again at once (attempts are at least [`MIN_FETCH_INTERVAL`] apart) when a
//! token names a `kid` the set does not have, which is how key rotation shows up. When the
//! identity provider is down, the last good set is kept and a warning is logged per attempt.

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The least time between two fetch attempts, whatever caused them (first use, age, unknown
/// `kid`), so a failing identity provider is not hammered.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of one JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One verification key.
pub struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A set of verification keys.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// A set with one key and no `kid`.
    pub fn single(key: DecodingKey) -> Self {
        KeySet {
            keys: vec![Key {
                kid: None,
                alg: None,
                key,
            }],
        }
    }

    /// Parses a JWKS document; keys this library cannot use are skipped.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::try_from(a).ok());
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err("the JWKS has no usable key".into());
        }
        Ok(KeySet { keys })
    }

    /// The key for a token's `kid` (exact match), or without a `kid` the first key usable for
    /// `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let usable = |k: &&Key| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(usable)
                .find(|k| k.kid.as_deref() == Some(kid)),
            None => self.keys.iter().find(usable),
        }
        .map(|k| &k.key)
    }
}

/// A JWKS fetched from an identity provider.
pub struct RemoteJwks {
    url: String,
    /// `scheme://host` of `url`, for logs (never the path or query, which may hold credentials).
    origin: String,
    client: reqwest::Client,
    refresh: Duration,
    current: ArcSwapOption<KeySet>,
    started: Instant,
    /// A background refresh is running.
    refreshing: AtomicBool,
    /// Milliseconds since `started` of the last successful fetch (0: never).
    fetched_ms: AtomicU64,
    /// Milliseconds since `started` of the last attempt (0: never).
    attempted_ms: AtomicU64,
    single_flight: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    /// A set fetched from `url` and refreshed every `refresh`.
    pub fn new(url: &str, refresh: Duration) -> Result<Self, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("jwks_url `{url}` is not a URL: {e}"))?;
        let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(
                    "jwks_url must be https:// (plain http:// only for loopback): \
                            keys fetched in the clear can be forged"
                        .into(),
                )
            }
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        let origin = format!(
            "{}://{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default()
        );
        Ok(RemoteJwks {
            url: url.to_string(),
            origin,
            client,
            refresh,
            current: ArcSwapOption::empty(),
            started: Instant::now(),
            refreshing: AtomicBool::new(false),
            fetched_ms: AtomicU64::new(0),
            attempted_ms: AtomicU64::new(0),
            single_flight: tokio::sync::Mutex::new(()),
        })
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "never".
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// The current set, fetching it first if there is none, and again if it lacks `kid`.
    pub async fn key_set(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Option<Arc<KeySet>> {
        let now = self.now_ms();
        let current = match self.current.load_full() {
            Some(set) => {
                let age = now.saturating_sub(self.fetched_ms.load(Ordering::Relaxed));
                if age > self.refresh.as_millis() as u64
                    && self.may_fetch(now)
                    && !self.refreshing.swap(true, Ordering::AcqRel)
                {
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        this.fetch(now).await;
                        this.refreshing.store(false, Ordering::Release);
                    });
                }
                set
            }
            None => {
                if self.may_fetch(now) {
                    self.fetch(now).await;
                }
                self.current.load_full()?
            }
        };
        if kid.is_none() || current.find(kid, alg).is_some() || !self.may_fetch(now) {
            return Some(current);
        }
        self.fetch(now).await;
        self.current.load_full()
    }

    /// True when the last attempt is at least [`MIN_FETCH_INTERVAL`] old (or there was none).
    fn may_fetch(&self, now: u64) -> bool {
        let last = self.attempted_ms.load(Ordering::Relaxed);
        last == 0 || now.saturating_sub(last) >= MIN_FETCH_INTERVAL.as_millis() as u64
    }

    /// Fetches the set once, unless another fetch started after `asked_at`.
    async fn fetch(&self, asked_at: u64) {
        let _only_one = self.single_flight.lock().await;
        if self.attempted_ms.load(Ordering::Relaxed) >= asked_at {
            return;
        }
        self.attempted_ms.store(self.now_ms(), Ordering::Relaxed);
        match self.download().await {
            Ok(set) => {
                self.current.store(Some(Arc::new(set)));
                self.fetched_ms.store(self.now_ms(), Ordering::Relaxed);
            }
            Err(e) => log::warn!(
                "jwt-auth: fetching the JWKS from {} failed: {e}; keeping the last good key set",
                self.origin
            ),
        }
    }

    async fn download(&self) -> Result<KeySet, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        KeySet::from_jwks(&body)
    }
}
