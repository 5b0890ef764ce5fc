//! `jwt-auth`: verifies JSON Web Tokens (signature, `exp`/`nbf`/`iat`, issuer, audience,
//! scopes, claims) and maps them to consumers.
//!
//! Keys come from a secret, a key file, a JWKS file, a JWKS URL, or the identity provider's
//! OpenID configuration (`discovery = true`), whose `jwks_uri` then serves as the JWKS URL.
//!
//! An RSA or ECDSA verification costs more than a whole proxied request, so verified tokens are
//! cached, keyed by the SHA-256 of the whole token and expiring with the token (at most
//! [`CACHE_TTL`]): a client that reuses its token pays for the signature once.

use crate::support::config_types::HumanDuration;
use crate::support::consumer::{Consumer, Consumers};
use crate::support::credentials::{self, Kinds, Source};
use crate::support::failure_limit::{FailureLimit, MaxFailures};
use crate::support::jwks::{KeySet, RemoteJwks};
use crate::support::token_checks::{self, now_secs, Refusal, TokenRules};
use crate::{Flow, Phases, Plugin, PluginState, RequestView};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The configuration name.
pub const NAME: &str = "jwt-auth";
/// The longest a verified token stays cached (it never outlives its `exp`).
pub const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_ENTRIES: usize = 50_000;
/// The largest accepted clock skew.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// Verified claims of a token.
pub type Claims = Map<String, Value>;

/// `[routes.R.plugins.jwt-auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Accepted signature algorithms. Required; `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Required `iss`. Default: not checked.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one). Required with `jwks_url` or `discovery` unless
    /// `any_audience`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept tokens for any audience with `jwks_url` or `discovery`. Default `false`.
    #[serde(default)]
    pub any_audience: bool,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration`. Default `false`.
    #[serde(default)]
    pub discovery: bool,
    /// A JWKS URL, fetched in the background.
    pub jwks_url: Option<String>,
    /// A JWKS file, read at load.
    pub jwks_file: Option<String>,
    /// A PEM public key file (RSA, EC or Ed25519), read at load.
    pub public_key_file: Option<String>,
    /// The shared secret for HS256/384/512.
    pub secret: Option<String>,
    /// How old a fetched JWKS may get before it is refreshed. Default `"5m"`.
    pub jwks_refresh: Option<HumanDuration>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default `"0s"`.
    pub leeway: Option<HumanDuration>,
    /// Scopes that must all be granted (`scope`, space separated, or `scp`, an array).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claims that must have exactly these values.
    #[serde(default)]
    pub required_claims: BTreeMap<String, Value>,
    /// The claim whose value is looked up in `[consumers.*].jwt_subject`. Default: none.
    pub consumer_claim: Option<String>,
    /// Let requests without a token through, without a consumer. Default `false`.
    #[serde(default)]
    pub anonymous: bool,
    /// Upstream headers set from claims: `{ "x-user-id" = "sub" }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Where the token is read from. Default `["header:authorization"]`.
    #[serde(default = "default_sources")]
    pub token_sources: Vec<String>,
    /// Remove the token from the request before it goes upstream. Default `false`.
    #[serde(default)]
    pub hide_credentials: bool,
    /// Failed attempts allowed per client and window. Default: unlimited.
    pub max_failures: Option<MaxFailures>,
}

fn default_sources() -> Vec<String> {
    vec!["header:authorization".into()]
}

enum Keys {
    Static(KeySet),
    Remote(Arc<RemoteJwks>),
}

struct Verified {
    fingerprint: [u8; 32],
    claims: Arc<Claims>,
    consumer: Option<Arc<Consumer>>,
}

/// A compiled `jwt-auth`.
pub struct JwtAuth {
    keys: Keys,
    /// One validation per accepted algorithm: jsonwebtoken refuses a validation that lists
    /// algorithms of another family than the key.
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    rules: TokenRules,
    required_claims: Vec<(String, Value)>,
    anonymous: bool,
    forward_claims: Vec<(HeaderName, String)>,
    sources: Vec<Source>,
    hide_credentials: bool,
    failures: FailureLimit,
    cache: MemoryCache<[u8; 32], Arc<Verified>>,
}

impl JwtAuth {
    /// Compiles `config`: reads key files, checks that the algorithms fit the key source.
    pub fn new(config: Config, consumers: Arc<Consumers>) -> Result<Self, String> {
        let algorithms = parse_algorithms(&config.algorithms)?;
        check_key_source(&config, &algorithms)?;
        let leeway = config.leeway.map_or(0, |d| d.0.as_secs());
        if leeway > MAX_LEEWAY.as_secs() {
            return Err(format!(
                "`leeway` must be at most {}s",
                MAX_LEEWAY.as_secs()
            ));
        }
        let forward_claims = config
            .forward_claims
            .iter()
            .map(|(header, claim)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (h, claim.clone()))
                    .map_err(|_| format!("forward_claims: `{header}` is not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(JwtAuth {
            keys: keys(&config)?,
            validations: validations(&config, &algorithms, leeway),
            leeway,
            forward_claims,
            sources: Source::parse_all(&config.token_sources, "token_sources", Kinds::Token)?,
            failures: FailureLimit::new(config.max_failures)?,
            rules: TokenRules::new(
                config.audiences,
                config.required_scopes,
                config.consumer_claim,
                consumers,
            ),
            required_claims: config.required_claims.into_iter().collect(),
            anonymous: config.anonymous,
            hide_credentials: config.hide_credentials,
            cache: MemoryCache::new(CACHE_ENTRIES),
        })
    }

    /// The answer to a refused token, counting it as a failed attempt when it is one.
    fn refuse(&self, state: &PluginState, refusal: Refusal) -> Flow {
        self.rules.refuse(refusal, &self.failures, state.client.ip)
    }

    /// Verifies `token` completely, or says why it is refused.
    async fn verify(&self, token: &str, fingerprint: [u8; 32]) -> Result<Verified, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            Refusal::Invalid("the token is malformed or its algorithm is not supported")
        })?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Refusal::Invalid("the token's algorithm is not allowed"));
        };
        let kid = header.kid.as_deref();
        let remote_set;
        let set = match &self.keys {
            Keys::Static(set) => set,
            Keys::Remote(jwks) => {
                remote_set = jwks
                    .key_set(kid, header.alg)
                    .await
                    .ok_or(Refusal::Invalid("no signing keys are available"))?;
                &remote_set
            }
        };
        let key = set
            .find(kid, header.alg)
            .ok_or(Refusal::Invalid("the token's signing key is unknown"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            Refusal::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                ErrorKind::InvalidSignature => "the token's signature is not valid",
                ErrorKind::MissingRequiredClaim(_) => {
                    "the token lacks a required claim (exp or iss)"
                }
                ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
                _ => "the token is not valid",
            })
        })?;
        let claims = data.claims;
        let now = now_secs();
        match claims.get("iat").map(Value::as_f64) {
            None => {}
            Some(Some(iat)) if iat <= (now + self.leeway) as f64 => {}
            Some(Some(_)) => return Err(Refusal::Invalid("the token was issued in the future")),
            Some(None) => return Err(Refusal::Invalid("the token's iat is not a number")),
        }
        self.rules.audience(&claims)?;
        self.rules.scopes(&claims)?;
        if !self
            .required_claims
            .iter()
            .all(|(k, v)| claims.get(k) == Some(v))
        {
            return Err(Refusal::Claims);
        }
        let consumer = self.rules.consumer(&claims)?;
        Ok(Verified {
            fingerprint,
            claims: Arc::new(claims),
            consumer,
        })
    }
}

/// Exactly one key source, an audience rule for remote keys, and algorithms that fit the key.
fn check_key_source(config: &Config, algorithms: &[Algorithm]) -> Result<(), String> {
    let sources_set = [
        config.jwks_url.is_some(),
        config.jwks_file.is_some(),
        config.public_key_file.is_some(),
        config.secret.is_some(),
    ];
    let key_sources = sources_set.iter().filter(|s| **s).count();
    if config.discovery {
        if config.issuer.is_none() {
            return Err(
                "`discovery = true` needs `issuer`: the OpenID configuration is \
                        read from {issuer}/.well-known/openid-configuration"
                    .into(),
            );
        }
        if key_sources != 0 {
            return Err(
                "`discovery = true` finds the keys itself: remove jwks_url, \
                        jwks_file, public_key_file and secret"
                    .into(),
            );
        }
    } else if key_sources != 1 {
        return Err(
            "set exactly one of jwks_url, jwks_file, public_key_file, secret (or discovery = true)"
                .into(),
        );
    }
    if config.any_audience && !config.audiences.is_empty() {
        return Err("set either `audiences` or `any_audience = true`, not both".into());
    }
    let remote = if config.discovery {
        Some("`discovery = true`")
    } else {
        config.jwks_url.as_ref().map(|_| "`jwks_url`")
    };
    if let Some(remote) = remote.filter(|_| config.audiences.is_empty() && !config.any_audience) {
        return Err(format!(
            "{remote} needs `audiences`: an identity provider signs tokens for all its \
             applications with the same keys, so without an audience check tokens issued \
             for other applications are accepted (write `any_audience = true` if that is \
             intended)"
        ));
    }
    let hmac = |a: &Algorithm| a.family() == AlgorithmFamily::Hmac;
    if config.secret.is_some() && !algorithms.iter().all(hmac) {
        return Err(
            "a `secret` only verifies HS256, HS384 or HS512: list only those in `algorithms`"
                .into(),
        );
    }
    if config.secret.is_none() && algorithms.iter().any(hmac) {
        return Err(
            "HS* algorithms need `secret`; public keys verify RS*, PS*, ES* and EdDSA only".into(),
        );
    }
    Ok(())
}

/// The verification keys from the one configured source.
fn keys(config: &Config) -> Result<Keys, String> {
    Ok(if let Some(secret) = &config.secret {
        if secret.len() < 32 {
            return Err("`secret` must be at least 32 bytes".into());
        }
        Keys::Static(KeySet::single(DecodingKey::from_secret(secret.as_bytes())))
    } else if let Some(path) = &config.public_key_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read public_key_file `{path}`: {e}"))?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem))
            .map_err(|_| format!("`{path}` is not an RSA, EC or Ed25519 public key in PEM"))?;
        Keys::Static(KeySet::single(key))
    } else if let Some(path) = &config.jwks_file {
        let json =
            std::fs::read(path).map_err(|e| format!("cannot read jwks_file `{path}`: {e}"))?;
        Keys::Static(KeySet::from_jwks(&json).map_err(|e| format!("`{path}`: {e}"))?)
    } else {
        let refresh = config
            .jwks_refresh
            .map_or(Duration::from_secs(300), |d| d.0);
        let remote = match (&config.jwks_url, &config.issuer) {
            (Some(url), _) => RemoteJwks::new(url, refresh)?,
            (None, Some(issuer)) => RemoteJwks::discovered(issuer, refresh)?,
            (None, None) => return Err("no key source is configured".into()),
        };
        Keys::Remote(Arc::new(remote))
    })
}

/// One `Validation` per allowed algorithm: `exp` always, `nbf`, and the issuer when set
/// (audiences are checked by [`TokenRules`], as for introspected tokens).
fn validations(
    config: &Config,
    algorithms: &[Algorithm],
    leeway: u64,
) -> Vec<(Algorithm, Validation)> {
    algorithms
        .iter()
        .map(|alg| {
            let mut validation = Validation::new(*alg);
            validation.leeway = leeway;
            validation.validate_nbf = true;
            let mut required = vec!["exp"];
            if config.issuer.is_some() {
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            if let Some(issuer) = &config.issuer {
                validation.set_issuer(&[issuer]);
            }
            validation.validate_aud = false;
            (*alg, validation)
        })
        .collect()
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("`algorithms` must list the accepted algorithms, like [\"RS256\"]".into());
    }
    names
        .iter()
        .map(|name| {
            if name.eq_ignore_ascii_case("none") {
                return Err("the `none` algorithm can never be allowed".to_string());
            }
            name.parse::<Algorithm>().map_err(|_| {
                format!("unknown algorithm `{name}`: use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA")
            })
        })
        .collect()
}

fn claim_header(value: &Value) -> Option<HeaderValue> {
    match value {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Null => None,
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

#[async_trait]
impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let token = match credentials::take_one(&self.sources, request, &self.failures) {
            Ok(Some(token)) => token,
            Ok(None) if self.anonymous => return Ok(Flow::Continue),
            Ok(None) => return Ok(Flow::Reject(token_checks::missing_token())),
            Err(refused) => return Ok(refused),
        };
        let Ok(token) = std::str::from_utf8(token) else {
            let refusal =
                Refusal::Invalid("the token is malformed or its algorithm is not supported");
            return Ok(self.refuse(request.state, refusal));
        };
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self
            .cache
            .get(&fingerprint)
            .0
            .filter(|v| bool::from(v.fingerprint.ct_eq(&fingerprint)));
        let verified = match cached {
            Some(v) => v,
            None => {
                let token = token.to_string();
                match self.verify(&token, fingerprint).await {
                    Ok(v) => {
                        let v = Arc::new(v);
                        let exp = v.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                        let left = Duration::from_secs(exp.saturating_sub(now_secs()));
                        self.cache
                            .put(&fingerprint, Arc::clone(&v), Some(left.min(CACHE_TTL)));
                        v
                    }
                    Err(refusal) => return Ok(self.refuse(request.state, refusal)),
                }
            }
        };
        if verified.consumer.is_some() {
            request.state.consumer = verified.consumer.clone();
        }
        request.state.jwt_claims = Some(Arc::clone(&verified.claims));
        Ok(Flow::Continue)
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        if self.hide_credentials {
            credentials::remove_all(&self.sources, upstream)?;
        }
        for (header, claim) in &self.forward_claims {
            crate::support::header_aliases::remove_headers_and_aliases(upstream, &[header]);
            let value = state
                .jwt_claims
                .as_ref()
                .and_then(|c| c.get(claim))
                .and_then(claim_header);
            if let Some(value) = value {
                upstream.insert_header(header.clone(), value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_and_mixed_algorithm_families_are_refused() {
        assert!(parse_algorithms(&["none".into()]).is_err());
        assert!(parse_algorithms(&["RS256".into(), "ES256".into()]).is_ok());
        let config = |algs: &[&str], secret: Option<&str>| Config {
            algorithms: algs.iter().map(|s| s.to_string()).collect(),
            issuer: None,
            audiences: vec!["users-api".into()],
            any_audience: false,
            discovery: false,
            jwks_url: secret
                .is_none()
                .then(|| "https://idp.example/jwks".to_string()),
            jwks_file: None,
            public_key_file: None,
            secret: secret.map(String::from),
            jwks_refresh: None,
            leeway: None,
            required_scopes: vec![],
            required_claims: BTreeMap::new(),
            consumer_claim: None,
            anonymous: false,
            forward_claims: BTreeMap::new(),
            token_sources: default_sources(),
            hide_credentials: false,
            max_failures: None,
        };
        let consumers = Arc::new(Consumers::default());
        // An HMAC algorithm next to a public key is the classic key-confusion setup.
        assert!(JwtAuth::new(config(&["RS256", "HS256"], None), Arc::clone(&consumers)).is_err());
        assert!(JwtAuth::new(
            config(&["RS256"], Some("0123456789abcdef0123456789abcdef")),
            Arc::clone(&consumers)
        )
        .is_err());
        assert!(JwtAuth::new(config(&["HS256"], Some("short")), Arc::clone(&consumers)).is_err());
        assert!(JwtAuth::new(
            config(&["HS256"], Some("0123456789abcdef0123456789abcdef")),
            consumers
        )
        .is_ok());
        // Keys fetched over plain HTTP could be forged on the way, except on loopback.
        assert!(RemoteJwks::new("http://idp.example/jwks", Duration::from_secs(60)).is_err());
        assert!(RemoteJwks::new("http://127.0.0.1:8000/jwks", Duration::from_secs(60)).is_ok());
    }

    fn from_json(config: Value) -> Result<JwtAuth, String> {
        let config = serde_json::from_value(config).expect("config");
        JwtAuth::new(config, Arc::new(Consumers::default()))
    }

    #[test]
    fn jwks_url_needs_audiences_or_any_audience() {
        let url = "https://idp.example/jwks";
        let error = from_json(serde_json::json!({"algorithms": ["RS256"], "jwks_url": url}))
            .err()
            .expect("refused");
        assert!(error.contains("any_audience = true"), "{error}");
        assert!(from_json(serde_json::json!({
            "algorithms": ["RS256"], "jwks_url": url, "any_audience": true
        }))
        .is_ok());
        assert!(from_json(serde_json::json!({
            "algorithms": ["RS256"], "jwks_url": url, "any_audience": true, "audiences": ["a"]
        }))
        .is_err());
        // Discovery finds the keys of an issuer, whose tokens also serve other applications.
        let issuer = "https://idp.example/";
        let discovery = |extra: Value| {
            let mut config = serde_json::json!({"algorithms": ["RS256"], "discovery": true});
            config
                .as_object_mut()
                .expect("object")
                .extend(extra.as_object().cloned().expect("object"));
            from_json(config).err()
        };
        assert_eq!(
            discovery(serde_json::json!({"issuer": issuer, "audiences": ["a"]})),
            None
        );
        let no_issuer = discovery(serde_json::json!({"audiences": ["a"]})).expect("refused");
        assert!(no_issuer.contains("needs `issuer`"), "{no_issuer}");
        let with_url =
            discovery(serde_json::json!({"issuer": issuer, "audiences": ["a"], "jwks_url": url}))
                .expect("refused");
        assert!(with_url.contains("finds the keys itself"), "{with_url}");
        let no_audience = discovery(serde_json::json!({"issuer": issuer})).expect("refused");
        assert!(
            no_audience.contains("`discovery = true` needs `audiences`"),
            "{no_audience}"
        );
        let plain =
            discovery(serde_json::json!({"issuer": "http://idp.example/", "any_audience": true}))
                .expect("refused");
        assert!(plain.contains("`issuer` must be https://"), "{plain}");
        // Keys of one's own (a secret, a key file) are not shared with other applications.
        assert!(from_json(serde_json::json!({
            "algorithms": ["HS256"], "secret": "0123456789abcdef0123456789abcdef"
        }))
        .is_ok());
    }
}
