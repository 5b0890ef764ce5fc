//! `basic-auth`: authenticates `Authorization: Basic` credentials against consumers' argon2
//! password hashes.
//!
//! argon2 is deliberately slow (tens of milliseconds), so a verification never runs on the
//! proxy's threads: it runs on the blocking pool, shared fairly between clients
//! ([`password_checks`](crate::support::password_checks)), and a successful one is cached for
//! [`CACHE_TTL`] keyed by a SHA-256 of the user and password, so a client that reuses its
//! credentials pays the hash once.

use crate::support::consumer::{Consumer, Consumers};
use crate::support::credentials::{self, Source};
use crate::support::failure_limit::{FailureLimit, MaxFailures};
use crate::support::password_checks::{PasswordChecks, Refused};
use crate::{Flow, Phases, Plugin, PluginState, Rejection, RequestView};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The configuration name.
pub const NAME: &str = "basic-auth";
/// How long a verified user and password stay verified.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// How long a wrong user and password stay known as wrong.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);
const CACHE_ENTRIES: usize = 10_000;
/// Verified for unknown users, so they take as long to refuse as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Sm7xa4VpI1wsYw2kMDb7Slz9YjN9UZuJQmwAlbl1Svo";
const SOURCE: &[Source] = &[Source::Header(http::header::AUTHORIZATION)];

/// `[routes.R.plugins.basic-auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The realm named in `WWW-Authenticate`. Default `"gantry"`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove `Authorization` before the request goes upstream. Default `true`.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// Failed attempts allowed per client and window. Default: unlimited.
    pub max_failures: Option<MaxFailures>,
}

fn default_true() -> bool {
    true
}

fn default_realm() -> String {
    "gantry".into()
}

/// A compiled `basic-auth`.
pub struct BasicAuth {
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    hide_credentials: bool,
    /// Fingerprint -> (fingerprint again, to rule out 64-bit key collisions; whether it passed).
    checked: MemoryCache<[u8; 32], ([u8; 32], bool)>,
    checks: PasswordChecks,
    failures: FailureLimit,
}

/// The outcome of checking credentials.
enum Check {
    Passed(Arc<Consumer>),
    Failed,
    NotRun(Refused),
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
            hide_credentials: config.hide_credentials,
            checked: MemoryCache::new(CACHE_ENTRIES),
            checks: PasswordChecks::default(),
            failures: FailureLimit::new(config.max_failures)?,
        })
    }

    fn reject(&self, slug: &'static str, detail: &str) -> Rejection {
        Rejection::unauthorized(slug, detail, &self.challenge)
    }

    /// The remembered outcome of `fingerprint`, if it was checked lately.
    fn remembered(
        &self,
        fingerprint: &[u8; 32],
        account: Option<&(Arc<Consumer>, Arc<str>)>,
    ) -> Option<Check> {
        let (seen, passed) = self.checked.get(fingerprint).0?;
        if !bool::from(seen.ct_eq(fingerprint)) {
            return None;
        }
        Some(match (passed, account) {
            (true, Some((consumer, _))) => Check::Passed(Arc::clone(consumer)),
            _ => Check::Failed,
        })
    }

    async fn authenticate(&self, state: &PluginState, user: &str, password: &[u8]) -> Check {
        let mut hasher = Sha256::new();
        hasher.update(user.as_bytes());
        hasher.update([0]);
        hasher.update(password);
        let fingerprint: [u8; 32] = hasher.finalize().into();
        let account = self.consumers.with_password(user);
        if let Some(check) = self.remembered(&fingerprint, account) {
            return check;
        }
        let slot = match self.checks.slot(state.client.ip).await {
            Ok(slot) => slot,
            Err(refused) => return Check::NotRun(refused),
        };
        // A request with the same credentials may have been checked while this one waited.
        if let Some(check) = self.remembered(&fingerprint, account) {
            return check;
        }
        let hash = account.map_or_else(|| Arc::from(DUMMY_HASH), |(_, hash)| Arc::clone(hash));
        let password = password.to_vec();
        let ok = slot
            .run(move || {
                PasswordHash::new(&hash).is_ok_and(|parsed| {
                    Argon2::default()
                        .verify_password(&password, &parsed)
                        .is_ok()
                })
            })
            .await
            .unwrap_or(false);
        let passed = ok && account.is_some();
        let ttl = if passed { CACHE_TTL } else { FAILURE_TTL };
        self.checked
            .put(&fingerprint, (fingerprint, passed), Some(ttl));
        match account {
            Some((consumer, _)) if passed => Check::Passed(Arc::clone(consumer)),
            _ => Check::Failed,
        }
    }
}

/// `user` and `password` from an `Authorization: Basic` value.
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    // The scheme name is case-insensitive (RFC 9110).
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The answer to a request whose password check was not run.
fn not_run(refused: Refused) -> Rejection {
    let (status, slug, title, detail) = match refused {
        Refused::OverShare => (
            429,
            "too-many-password-checks",
            "Too many password checks",
            "this client already has password checks running; retry shortly",
        ),
        Refused::Busy => (
            503,
            "auth-busy",
            "Authentication busy",
            "too many password checks are running; retry shortly",
        ),
    };
    Rejection {
        status,
        slug,
        title,
        detail: detail.into(),
        headers: vec![(http::header::RETRY_AFTER, HeaderValue::from_static("1"))],
    }
}

#[async_trait]
impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let header = match credentials::take_one(SOURCE, request, &self.failures) {
            Ok(Some(header)) => header,
            Ok(None) => {
                return Ok(Flow::Reject(
                    self.reject("missing-credentials", "basic credentials are required"),
                ))
            }
            Err(refused) => return Ok(refused),
        };
        let Some((user, password)) = credentials(header) else {
            return Ok(self.failures.failed(
                request.client_ip(),
                self.reject(
                    "invalid-credentials",
                    "the Authorization header is not valid Basic credentials",
                ),
            ));
        };
        match self.authenticate(request.state, &user, &password).await {
            Check::Passed(consumer) => {
                request.state.consumer = Some(consumer);
                Ok(Flow::Continue)
            }
            Check::Failed => Ok(self.failures.failed(
                request.client_ip(),
                self.reject("invalid-credentials", "the user name or password is wrong"),
            )),
            Check::NotRun(refused) => Ok(Flow::Reject(not_run(refused))),
        }
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        if self.hide_credentials {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        Ok(())
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
        let v = format!(
            "BASIC {}",
            base64::engine::general_purpose::STANDARD.encode("a:b")
        );
        assert_eq!(credentials(v.as_bytes()), Some(("a".into(), b"b".to_vec())));
        assert_eq!(credentials(b"Basic !!!"), None);
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2_hash() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn realms_with_quotes_are_refused() {
        let consumers = Arc::new(Consumers::default());
        let config = |realm: &str| Config {
            realm: realm.into(),
            hide_credentials: true,
            max_failures: None,
        };
        assert!(BasicAuth::new(config("a\"b"), Arc::clone(&consumers)).is_err());
        assert!(BasicAuth::new(config("users"), consumers).is_ok());
    }
}
