//! Verification keys for `jwt-auth`: static keys (a secret, a PEM file, a JWKS file) or a
//! remote JWKS fetched in the background, from a configured URL or from the `jwks_uri` of the
//! issuer's OpenID configuration (OIDC discovery).
//!
//! A remote set is fetched on first use, refreshed in the background once it is older than
//! `jwks_refresh`, and fetched again at once (attempts are at least [`MIN_FETCH_INTERVAL`] apart) when a
//! token names a `kid` the set does not have, which is how key rotation shows up. When the
//! identity provider is down, the last good set is kept and a warning is logged per attempt.
//!
//! With discovery, every attempt reads `{issuer}/.well-known/openid-configuration` first. Its
//! `issuer` must equal the configured issuer exactly (mix-up protection, OpenID Connect
//! Discovery 1.0 §4.3): a document naming another issuer is never used, the key set is
//! dropped so tokens are refused, and an error is logged per attempt.

use crate::support::outbound::{self, Redirects};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The least time between two fetch attempts, whatever caused them (first use, age, unknown
/// `kid`), so a failing identity provider is not hammered.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of one JWKS or OpenID configuration request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The largest OpenID configuration read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// The most characters of a foreign issuer name a log line quotes.
const MAX_QUOTED_ISSUER: usize = 200;

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

/// Where a remote key set is found.
enum Location {
    /// A configured `jwks_url`.
    Jwks(Url),
    /// The `jwks_uri` of the OpenID configuration of `issuer`, read from `document`.
    Discovery { issuer: String, document: Url },
}

/// The part of an OpenID configuration Gantry reads.
#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: Option<String>,
}

/// Why a fetch attempt brought no key set.
enum FetchError {
    /// The identity provider could not be reached or answered something unusable.
    Failed(String),
    /// The OpenID configuration names this issuer, not the configured one.
    ForeignIssuer(String),
}

/// A JWKS fetched from an identity provider.
pub struct RemoteJwks {
    location: Location,
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
        let url = outbound::secure_url("jwks_url", url, "keys fetched")?;
        RemoteJwks::at(Location::Jwks(url), refresh)
    }

    /// A set fetched from the `jwks_uri` of `issuer`'s OpenID configuration, both read again
    /// every `refresh`.
    pub fn discovered(issuer: &str, refresh: Duration) -> Result<Self, String> {
        let parsed = outbound::secure_url("issuer", issuer, "keys discovered")?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(
                "with `discovery = true`, `issuer` must be a URL without a query or \
                        fragment (OpenID Connect Discovery 1.0)"
                    .into(),
            );
        }
        let document = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let document = Url::parse(&document).map_err(|e| format!("`issuer`: {e}"))?;
        let issuer = issuer.to_string();
        RemoteJwks::at(Location::Discovery { issuer, document }, refresh)
    }

    fn at(location: Location, refresh: Duration) -> Result<Self, String> {
        Ok(RemoteJwks {
            location,
            client: outbound::client(FETCH_TIMEOUT, Redirects::FollowSecure)?,
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
            Err(FetchError::Failed(e)) => {
                log::warn!("jwt-auth: {e}; keeping the last good key set")
            }
            Err(FetchError::ForeignIssuer(named)) => {
                self.current.store(None);
                let quoted: String = named.chars().take(MAX_QUOTED_ISSUER).collect();
                log::error!(
                    "jwt-auth: the OpenID configuration of issuer {:?} names the issuer \
                     {quoted:?}: they must be equal exactly, so its keys are not used and \
                     tokens are refused",
                    self.issuer().unwrap_or_default()
                );
            }
        }
    }

    /// The configured issuer, with discovery.
    fn issuer(&self) -> Option<&str> {
        match &self.location {
            Location::Jwks(_) => None,
            Location::Discovery { issuer, .. } => Some(issuer),
        }
    }

    async fn download(&self) -> Result<KeySet, FetchError> {
        let jwks = match &self.location {
            Location::Jwks(url) => url.clone(),
            Location::Discovery { issuer, document } => self.jwks_uri(issuer, document).await?,
        };
        self.get(&jwks, MAX_JWKS_BYTES)
            .await
            .and_then(|body| KeySet::from_jwks(&body))
            .map_err(|e| {
                FetchError::Failed(format!(
                    "fetching the JWKS from {} failed: {e}",
                    outbound::origin(&jwks)
                ))
            })
    }

    /// The `jwks_uri` of the OpenID configuration at `document`, which must be `issuer`'s.
    async fn jwks_uri(&self, issuer: &str, document: &Url) -> Result<Url, FetchError> {
        let failed = |e: String| {
            FetchError::Failed(format!(
                "reading the OpenID configuration at {} failed: {e}",
                outbound::origin(document)
            ))
        };
        let body = self
            .get(document, MAX_DOCUMENT_BYTES)
            .await
            .map_err(failed)?;
        let found: OpenIdConfiguration = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("not an OpenID configuration: {e}")))?;
        if found.issuer != issuer {
            return Err(FetchError::ForeignIssuer(found.issuer));
        }
        let jwks_uri = found
            .jwks_uri
            .ok_or_else(|| failed("it has no `jwks_uri`".into()))?;
        outbound::secure_url("jwks_uri", &jwks_uri, "keys fetched").map_err(failed)
    }

    /// The body of a successful `GET url`, at most `limit` bytes.
    async fn get(&self, url: &Url, limit: usize) -> Result<Bytes, String> {
        let resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(outbound::describe)?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        outbound::read_capped(resp, limit).await
    }
}
