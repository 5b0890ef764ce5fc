//! `basic-auth`: authenticates `Authorization: Basic` credentials against consumers' argon2
//! password hashes.
//!
//! argon2 is deliberately slow (tens of milliseconds), so a verification never runs on the
//! proxy's threads: it runs on the blocking pool, at most [`MAX_PARALLEL_VERIFICATIONS`] at a
//! time, and a successful one is cached for [`CACHE_TTL`] keyed by a SHA-256 of the user and
//! password, so a client that reuses its credentials pays the hash once.

use crate::consumer::{Consumer, Consumers};
use crate::{Flow, Phases, Plugin, PluginState, Rejection};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use pingora::proxy::Session;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The configuration name.
pub const NAME: &str = "basic-auth";
/// argon2 verifications running at once; others wait their turn.
pub const MAX_PARALLEL_VERIFICATIONS: usize = 2;
/// How long a verified user and password stay verified.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_ENTRIES: usize = 10_000;
/// Verified for unknown users, so they take as long to refuse as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Sm7xa4VpI1wsYw2kMDb7Slz9YjN9UZuJQmwAlbl1Svo";

/// `[routes.R.plugins.basic-auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The realm named in `WWW-Authenticate`. Default `"gantry"`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_realm() -> String {
    "gantry".into()
}

/// A compiled `basic-auth`.
pub struct BasicAuth {
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    verified: MemoryCache<[u8; 32], [u8; 32]>,
    permits: Arc<Semaphore>,
}

impl BasicAuth {
    /// Compiles `config` against the configured consumers.
    pub fn new(config: Config, consumers: Arc<Consumers>) -> Result<Self, String> {
        let realm = &config.realm;
        if realm.is_empty()
            || !realm.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            || realm.contains('"')
        {
            return Err("`realm` must be printable ASCII without quotes".into());
        }
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .map_err(|_| "`realm` is not usable in a header".to_string())?;
        Ok(BasicAuth {
            consumers,
            challenge,
            verified: MemoryCache::new(CACHE_ENTRIES),
            permits: Arc::new(Semaphore::new(MAX_PARALLEL_VERIFICATIONS)),
        })
    }

    fn reject(&self, slug: &'static str, detail: &str) -> Flow {
        Flow::Reject(Rejection::unauthorized(slug, detail, &self.challenge))
    }

    /// Verifies `password` against `hash` on the blocking pool.
    async fn verify(&self, hash: Arc<str>, password: Vec<u8>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(&password, &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    async fn authenticate(&self, user: &str, password: &[u8]) -> Option<Arc<Consumer>> {
        let mut hasher = Sha256::new();
        hasher.update(user.as_bytes());
        hasher.update([0]);
        hasher.update(password);
        let fingerprint: [u8; 32] = hasher.finalize().into();
        let account = self.consumers.with_password(user);
        if let (Some(cached), _) = self.verified.get(&fingerprint) {
            if bool::from(cached.ct_eq(&fingerprint)) {
                return account.map(|(consumer, _)| Arc::clone(consumer));
            }
        }
        let (consumer, hash) = match account {
            Some((consumer, hash)) => (Some(consumer), Arc::clone(hash)),
            None => (None, Arc::from(DUMMY_HASH)),
        };
        let ok = self.verify(hash, password.to_vec()).await && consumer.is_some();
        if ok {
            self.verified
                .put(&fingerprint, fingerprint, Some(CACHE_TTL));
        }
        consumer.filter(|_| ok).cloned()
    }
}

/// `user` and `password` from an `Authorization: Basic` value.
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let encoded = value
        .strip_prefix(b"Basic ")
        .or_else(|| value.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[async_trait]
impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        2000
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn on_request(
        &self,
        session: &mut Session,
        state: &mut PluginState,
    ) -> pingora::Result<Flow> {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION);
        let Some(header) = header else {
            return Ok(self.reject("missing-credentials", "basic credentials are required"));
        };
        let Some((user, password)) = credentials(header.as_bytes()) else {
            return Ok(self.reject(
                "invalid-credentials",
                "the Authorization header is not valid Basic credentials",
            ));
        };
        match self.authenticate(&user, &password).await {
            Some(consumer) => {
                state.consumer = Some(consumer);
                Ok(Flow::Continue)
            }
            None => Ok(self.reject("invalid-credentials", "the user name or password is wrong")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_decoded() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pa:ss")
        );
        assert_eq!(
            credentials(v.as_bytes()),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(credentials(b"Bearer x"), None);
        assert_eq!(credentials(b"Basic !!!"), None);
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2_hash() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn realms_with_quotes_are_refused() {
        let consumers = Arc::new(Consumers::default());
        assert!(BasicAuth::new(
            Config {
                realm: "a\"b".into()
            },
            Arc::clone(&consumers)
        )
        .is_err());
        assert!(BasicAuth::new(
            Config {
                realm: "users".into()
            },
            consumers
        )
        .is_ok());
    }
}
