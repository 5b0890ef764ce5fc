//! `oauth2-introspection`: accepts opaque bearer tokens by asking the authorization server's
//! introspection endpoint about them (RFC 7662), then checks audience, scopes and consumer
//! with the same rules as `jwt-auth`.
//!
//! Answers are cached by the SHA-256 of the token in a bounded cache: positive ones (an active
//! token) for `cache_ttl` and never past the token's `exp`, negative ones (an inactive or
//! expired token) for `negative_cache_ttl`. Requests that carry one uncached token at the same
//! time share one introspection call: the first starts it as a task of its own (so a client
//! that goes away does not cancel it for the others) and the rest wait for its outcome. When
//! the endpoint fails (unreachable, a timeout, an error status, an answer that is not an
//! introspection response), cached answers keep serving until they expire and other tokens get
//! 503. Neither the token nor the client secret is ever logged or echoed.

use crate::support::config_types::HumanDuration;
use crate::support::consumer::{Consumer, Consumers};
use crate::support::credentials::{self, Kinds, Source};
use crate::support::failure_limit::{FailureLimit, MaxFailures};
use crate::support::outbound::{self, Redirects};
use crate::support::token_checks::{self, now_secs, Refusal, TokenRules};
use crate::{Claims, Flow, Phases, Plugin, PluginState, Rejection, RequestView};
use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// The configuration name.
pub const NAME: &str = "oauth2-introspection";
/// The problem `type` slug of a token that could not be checked.
pub const UNAVAILABLE_SLUG: &str = "introspection-unavailable";
/// Answers cached per plugin instance.
const CACHE_ENTRIES: usize = 50_000;
/// Introspection calls under way at once per plugin instance; tokens beyond get 503.
const MAX_IN_FLIGHT: usize = 1024;
/// The largest introspection answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The least time between two warnings about a failing endpoint.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// The fingerprint a token is known by: its SHA-256.
type Fingerprint = [u8; 32];

/// `[routes.R.plugins.oauth2-introspection]`. No `Debug`: it holds the client secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RFC 7662 endpoint; `https://` (plain `http://` only for loopback).
    pub introspection_url: String,
    /// Gantry's client id at the authorization server.
    pub client_id: String,
    /// Gantry's client secret (or `client_secret_file`).
    pub client_secret: Option<String>,
    /// A file holding the client secret, read at load.
    pub client_secret_file: Option<String>,
    /// How the client authenticates: `basic` (HTTP Basic) or `post` (form fields). Default
    /// `basic`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Where the token is read from. Default `["header:authorization"]`.
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
    /// Scopes that must all be granted (the answer's `scope`).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Accepted `aud` values (any one). Default: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The answer's member whose value is looked up in `[consumers.*].jwt_subject`.
    pub consumer_claim: Option<String>,
    /// How long an active token's answer is reused (never past its `exp`). Default `"60s"`.
    pub cache_ttl: Option<HumanDuration>,
    /// How long an inactive token's answer is reused. Default `"5s"`.
    pub negative_cache_ttl: Option<HumanDuration>,
    /// The longest one introspection call may take. Default `"2s"`.
    pub timeout: Option<HumanDuration>,
    /// Remove the token from the request before it goes upstream. Default `false`.
    #[serde(default)]
    pub hide_credentials: bool,
    /// Failed attempts allowed per client and window. Default: unlimited.
    pub max_failures: Option<MaxFailures>,
}

/// How Gantry authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
}

fn default_sources() -> Vec<String> {
    vec!["header:authorization".into()]
}

/// Gantry's client credentials, ready to send.
enum ClientCredentials {
    /// The `Authorization` value (marked sensitive).
    Basic(HeaderValue),
    /// Form fields.
    Post { id: String, secret: String },
}

/// What the endpoint's answer means for requests carrying the token.
struct Decision {
    /// The token's, again: rules out two tokens sharing a 64-bit cache key.
    fingerprint: Fingerprint,
    /// The consumer the token names (when `consumer_claim` is set), or why it is refused.
    verdict: Result<Option<Arc<Consumer>>, Refusal>,
}

/// Why a token could not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unavailable {
    /// The endpoint failed.
    Failed,
    /// Too many calls are under way.
    Busy,
}

/// The outcome of one introspection call, shared by the requests waiting for it.
type Outcome = Result<Arc<Decision>, Unavailable>;

/// A compiled `oauth2-introspection`.
pub struct Introspection {
    sources: Vec<Source>,
    failures: FailureLimit,
    hide_credentials: bool,
    endpoint: Arc<Endpoint>,
}

/// The introspection endpoint, the answers it gave and the calls under way.
struct Endpoint {
    url: Url,
    /// `scheme://host[:port]` of `url`, for logs.
    origin: String,
    client: reqwest::Client,
    credentials: ClientCredentials,
    rules: TokenRules,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    cache: MemoryCache<Fingerprint, Arc<Decision>>,
    /// The calls under way, by token: what their waiters subscribe to.
    in_flight: Mutex<HashMap<Fingerprint, watch::Receiver<Option<Outcome>>>>,
    started: Instant,
    /// Milliseconds since `started` of the last warning (0: never).
    warned_ms: AtomicU64,
}

impl Introspection {
    /// Compiles `config`: checks the URL, reads the secret file, parses the sources.
    pub fn new(config: Config, consumers: Arc<Consumers>) -> Result<Self, String> {
        let url = outbound::secure_url(
            "introspection_url",
            &config.introspection_url,
            "tokens and client secrets sent",
        )?;
        let secret = client_secret(&config)?;
        if config.client_id.is_empty() {
            return Err("`client_id` must not be empty".into());
        }
        let credentials = match config.client_auth {
            ClientAuth::Basic => {
                ClientCredentials::Basic(basic_credentials(&config.client_id, &secret)?)
            }
            ClientAuth::Post => ClientCredentials::Post {
                id: config.client_id,
                secret,
            },
        };
        let timeout = config.timeout.map_or(Duration::from_secs(2), |d| d.0);
        if timeout.is_zero() {
            return Err("`timeout` must be more than 0s".into());
        }
        let endpoint = Endpoint {
            origin: outbound::origin(&url),
            url,
            client: outbound::client(timeout, Redirects::Refuse)?,
            credentials,
            rules: TokenRules::new(
                config.audiences,
                config.required_scopes,
                config.consumer_claim,
                consumers,
            ),
            cache_ttl: config.cache_ttl.map_or(Duration::from_secs(60), |d| d.0),
            negative_cache_ttl: config
                .negative_cache_ttl
                .map_or(Duration::from_secs(5), |d| d.0),
            cache: MemoryCache::new(CACHE_ENTRIES),
            in_flight: Mutex::new(HashMap::new()),
            started: Instant::now(),
            warned_ms: AtomicU64::new(0),
        };
        Ok(Introspection {
            sources: Source::parse_all(&config.sources, "sources", Kinds::Token)?,
            failures: FailureLimit::new(config.max_failures)?,
            hide_credentials: config.hide_credentials,
            endpoint: Arc::new(endpoint),
        })
    }
}

/// The secret from exactly one of `client_secret` and `client_secret_file` (whose trailing
/// line break is not part of it). Errors never quote it.
fn client_secret(config: &Config) -> Result<String, String> {
    let secret = match (&config.client_secret, &config.client_secret_file) {
        (Some(secret), None) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read client_secret_file `{path}`: {e}"))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        _ => return Err("set exactly one of `client_secret` and `client_secret_file`".into()),
    };
    if secret.is_empty() {
        return Err("the client secret must not be empty".into());
    }
    Ok(secret)
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as RFC 6749 §2.3.1 asks.
fn basic_credentials(id: &str, secret: &str) -> Result<HeaderValue, String> {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id), encode(secret));
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| "the client credentials do not fit in a header".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

impl Unavailable {
    fn rejection(self) -> Rejection {
        Rejection {
            status: 503,
            slug: UNAVAILABLE_SLUG,
            title: "Service Unavailable",
            detail: match self {
                Unavailable::Failed => {
                    "the token could not be checked: the authorization server is unavailable"
                }
                Unavailable::Busy => {
                    "the token could not be checked: too many checks are under way"
                }
            }
            .into(),
            headers: Vec::new(),
        }
    }
}

impl Endpoint {
    /// The cached decision about the token `fingerprint`.
    fn cached(&self, fingerprint: &Fingerprint) -> Option<Arc<Decision>> {
        self.cache
            .get(fingerprint)
            .0
            .filter(|d| bool::from(d.fingerprint.ct_eq(fingerprint)))
    }

    /// The decision about `token`: joins the call under way for it, or starts one.
    async fn decide(
        self: &Arc<Self>,
        token: &str,
        fingerprint: Fingerprint,
        traceparent: Option<HeaderValue>,
    ) -> Outcome {
        let mut outcome = {
            let mut calls = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(under_way) = calls.get(&fingerprint) {
                under_way.clone()
            } else if let Some(decision) = self.cached(&fingerprint) {
                // A call for this token ended between the caller's cache look-up and now.
                return Ok(decision);
            } else if calls.len() >= MAX_IN_FLIGHT {
                return Err(Unavailable::Busy);
            } else {
                let (sender, receiver) = watch::channel(None);
                calls.insert(fingerprint, receiver.clone());
                let this = Arc::clone(self);
                let token = token.to_string();
                tokio::spawn(async move {
                    let _done = CallDone(&this, fingerprint);
                    let outcome = this.introspect(&token, fingerprint, traceparent).await;
                    let _ = sender.send(Some(outcome));
                });
                receiver
            }
        };
        let shared = match outcome.wait_for(Option::is_some).await {
            Ok(shared) => shared.clone(),
            // The call's task ended without an outcome.
            Err(_) => None,
        };
        shared.unwrap_or(Err(Unavailable::Failed))
    }

    /// Asks the endpoint about `token` and caches the decision.
    async fn introspect(
        &self,
        token: &str,
        fingerprint: Fingerprint,
        traceparent: Option<HeaderValue>,
    ) -> Outcome {
        let answer = match self.call(token, traceparent).await {
            Ok(answer) => answer,
            Err(e) => {
                self.warn(&e);
                return Err(Unavailable::Failed);
            }
        };
        let (verdict, ttl) = self.judge(&answer, now_secs());
        let decision = Arc::new(Decision {
            fingerprint,
            verdict,
        });
        if !ttl.is_zero() {
            self.cache
                .put(&fingerprint, Arc::clone(&decision), Some(ttl));
        }
        Ok(decision)
    }

    /// One introspection request; the answer when it is a well-formed introspection response.
    async fn call(&self, token: &str, traceparent: Option<HeaderValue>) -> Result<Claims, String> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let ClientCredentials::Basic(value) = &self.credentials {
            request = request.header(http::header::AUTHORIZATION, value.clone());
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let body = self.form(token);
        let response = request
            .body(body)
            .send()
            .await
            .map_err(outbound::describe)?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let body = outbound::read_capped(response, MAX_ANSWER_BYTES).await?;
        let answer: Claims = serde_json::from_slice(&body)
            .map_err(|e| format!("the answer is not a JSON object: {e}"))?;
        if !answer.get("active").is_some_and(Value::is_boolean) {
            return Err("the answer has no boolean `active`".into());
        }
        Ok(answer)
    }

    /// The form of a call about `token`, with the client credentials when they go in the body.
    fn form(&self, token: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        if let ClientCredentials::Post { id, secret } = &self.credentials {
            form.append_pair("client_id", id)
                .append_pair("client_secret", secret);
        }
        form.finish()
    }

    /// What `answer` means at `now`, and how long that may be reused.
    fn judge(
        &self,
        answer: &Claims,
        now: u64,
    ) -> (Result<Option<Arc<Consumer>>, Refusal>, Duration) {
        let refused = |why| (Err(Refusal::Invalid(why)), self.negative_cache_ttl);
        if answer.get("active") != Some(&Value::Bool(true)) {
            return refused("the token is not active");
        }
        let time = |name| {
            answer
                .get(name)
                .map(|v| v.as_f64().map(|t| t.max(0.0) as u64))
        };
        let ttl = match time("exp") {
            None => self.cache_ttl,
            Some(None) => return refused("the token's exp is not a number"),
            Some(Some(exp)) if exp <= now => return refused("the token has expired"),
            Some(Some(exp)) => self.cache_ttl.min(Duration::from_secs(exp - now)),
        };
        match time("nbf") {
            None => {}
            Some(Some(nbf)) if nbf <= now => {}
            Some(Some(_)) => return refused("the token is not valid yet"),
            Some(None) => return refused("the token's nbf is not a number"),
        }
        let verdict = self
            .rules
            .audience(answer)
            .and_then(|()| self.rules.scopes(answer))
            .and_then(|()| self.rules.consumer(answer));
        (verdict, ttl)
    }

    /// Logs a failed call, at most once per [`WARNING_INTERVAL`].
    fn warn(&self, error: &str) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARNING_INTERVAL.as_millis() as u64;
        if due
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "{NAME}: the introspection endpoint {} failed: {error}; tokens without a cached \
                 answer are refused with 503",
                self.origin
            );
        }
    }
}

/// Ends a call's time in [`Endpoint::in_flight`] when its task finishes, whichever way.
struct CallDone<'e>(&'e Endpoint, Fingerprint);

impl Drop for CallDone<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

#[async_trait]
impl Plugin for Introspection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        if self.hide_credentials {
            Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
        } else {
            Phases::REQUEST
        }
    }

    fn calls_out(&self) -> bool {
        true
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let token = match credentials::take_one(&self.sources, request, &self.failures) {
            Ok(Some(token)) => token,
            Ok(None) => return Ok(Flow::Reject(token_checks::missing_token())),
            Err(refused) => return Ok(refused),
        };
        let endpoint = &self.endpoint;
        let token = match std::str::from_utf8(token) {
            Ok(token) if !token.is_empty() => token,
            _ => {
                let refusal = Refusal::Invalid("the token is malformed");
                let client = request.client_ip();
                return Ok(endpoint.rules.refuse(refusal, &self.failures, client));
            }
        };
        let fingerprint: Fingerprint = Sha256::digest(token.as_bytes()).into();
        let decision = match endpoint.cached(&fingerprint) {
            Some(decision) => decision,
            None => {
                let traceparent = request.state.outbound_traceparent.clone();
                match endpoint.decide(token, fingerprint, traceparent).await {
                    Ok(decision) => decision,
                    Err(unavailable) => return Ok(Flow::Reject(unavailable.rejection())),
                }
            }
        };
        match &decision.verdict {
            Ok(consumer) => {
                if consumer.is_some() {
                    request.state.consumer = consumer.clone();
                }
                Ok(Flow::Continue)
            }
            Err(refusal) => {
                let client = request.client_ip();
                Ok(endpoint.rules.refuse(*refusal, &self.failures, client))
            }
        }
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        credentials::remove_all(&self.sources, upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(config: Value) -> Result<Introspection, String> {
        let config = serde_json::from_value(config).map_err(|e| e.to_string())?;
        Introspection::new(config, Arc::new(Consumers::default()))
    }

    fn base() -> Value {
        json!({
            "introspection_url": "https://idp.example/introspect",
            "client_id": "gantry",
            "client_secret": "s3cret",
            "required_scopes": ["billing:read"],
            "audiences": ["billing-api"],
        })
    }

    fn with(edit: impl FnOnce(&mut Value)) -> Value {
        let mut config = base();
        edit(&mut config);
        config
    }

    #[test]
    fn configuration_errors_name_the_key_and_never_the_secret() {
        assert!(plugin(base()).is_ok());
        let error = |config| plugin(config).err().expect("refused");
        let plain = error(with(|c| {
            c["introspection_url"] = json!("http://idp.example/i")
        }));
        assert!(
            plain.contains("`introspection_url` must be https://"),
            "{plain}"
        );
        assert!(plugin(with(
            |c| c["introspection_url"] = json!("http://127.0.0.1:9/i")
        ))
        .is_ok());
        let both = error(with(|c| c["client_secret_file"] = json!("/nonexistent")));
        assert!(both.contains("exactly one of `client_secret`"), "{both}");
        let neither = error(with(|c| {
            c.as_object_mut().map(|o| o.remove("client_secret"));
        }));
        assert!(neither.contains("exactly one"), "{neither}");
        let unreadable = error(with(|c| {
            c.as_object_mut().map(|o| o.remove("client_secret"));
            c["client_secret_file"] = json!("/nonexistent/secret");
        }));
        assert!(unreadable.contains("client_secret_file"), "{unreadable}");
        assert!(error(with(|c| c["client_auth"] = json!("jwt"))).contains("unknown variant"));
        assert!(error(with(|c| c["sources"] = json!(["body:token"]))).contains("token source"));
        assert!(error(with(|c| c["timeout"] = json!("0s"))).contains("`timeout`"));
        assert!(error(with(|c| c["extra"] = json!(1))).contains("unknown field"));
        for e in [plain, both, unreadable] {
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn the_secret_is_read_from_its_file_without_the_line_break() {
        let dir = std::env::temp_dir().join(format!("gantry-introspection-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").expect("write");
        let config: Config = serde_json::from_value(with(|c| {
            c.as_object_mut().map(|o| o.remove("client_secret"));
            c["client_secret_file"] = json!(dir.to_str());
        }))
        .expect("config");
        assert_eq!(client_secret(&config).as_deref(), Ok("from-file"));
        let _ = std::fs::remove_file(dir);
    }

    #[test]
    fn basic_credentials_are_form_encoded_then_base64() {
        let value = basic_credentials("gantry", "a:b c").expect("header");
        assert!(value.is_sensitive());
        let encoded = value
            .to_str()
            .expect("ascii")
            .strip_prefix("Basic ")
            .expect("basic");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(decoded, b"gantry:a%3Ab+c");
    }

    #[test]
    fn answers_are_judged_by_activity_time_audience_and_scope() {
        let endpoint = plugin(base()).expect("plugin").endpoint;
        let now = 1_000_000;
        let judge = |answer: Value| {
            let answer: Claims = serde_json::from_value(answer).expect("object");
            let (verdict, ttl) = endpoint.judge(&answer, now);
            (verdict.map(|consumer| consumer.is_some()), ttl.as_secs())
        };
        let good = json!({"active": true, "scope": "billing:read", "aud": "billing-api"});
        assert_eq!(judge(good.clone()), (Ok(false), 60));
        let mut soon = good.clone();
        soon["exp"] = json!(now + 7);
        assert_eq!(judge(soon), (Ok(false), 7), "never cached past exp");
        let invalid = |why| (Err(Refusal::Invalid(why)), 5);
        assert_eq!(
            judge(json!({"active": false})),
            invalid("the token is not active")
        );
        let mut expired = good.clone();
        expired["exp"] = json!(now - 1);
        assert_eq!(judge(expired), invalid("the token has expired"));
        let mut early = good.clone();
        early["nbf"] = json!(now + 60);
        assert_eq!(judge(early), invalid("the token is not valid yet"));
        let mut odd = good.clone();
        odd["exp"] = json!("tomorrow");
        assert_eq!(judge(odd), invalid("the token's exp is not a number"));
        let mut scope = good.clone();
        scope["scope"] = json!("billing:write");
        assert_eq!(judge(scope), (Err(Refusal::Scope), 60));
        let mut audience = good;
        audience["aud"] = json!(["other-api"]);
        assert_eq!(
            judge(audience),
            (
                Err(Refusal::Invalid("the token's audience is not accepted")),
                60
            )
        );
    }

    #[tokio::test]
    async fn waiting_requests_share_the_outcome_of_the_call_under_way() {
        let endpoint = plugin(base()).expect("plugin").endpoint;
        let fingerprint = [7; 32];
        let (sender, receiver) = watch::channel(None);
        endpoint
            .in_flight
            .lock()
            .expect("lock")
            .insert(fingerprint, receiver);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let endpoint = Arc::clone(&endpoint);
                tokio::spawn(async move { endpoint.decide("t", fingerprint, None).await })
            })
            .collect();
        let decision = Arc::new(Decision {
            fingerprint,
            verdict: Err(Refusal::Scope),
        });
        sender.send(Some(Ok(decision))).expect("waiters");
        for waiter in waiters {
            let outcome = waiter.await.expect("joined");
            assert_eq!(outcome.map(|d| d.verdict.clone()), Ok(Err(Refusal::Scope)));
        }
        // A call whose task ended without an outcome fails its waiters, it does not hang them.
        let (sender, receiver) = watch::channel(None);
        endpoint
            .in_flight
            .lock()
            .expect("lock")
            .insert(fingerprint, receiver);
        drop(sender);
        let outcome = endpoint.decide("t", fingerprint, None).await;
        assert_eq!(outcome.map(|_| ()), Err(Unavailable::Failed));
    }
}
