//! What `jwt-auth` and `oauth2-introspection` check on the claims of a bearer token once it is
//! known to be genuine (its audience, its scopes, the consumer it names), and how both refuse a
//! token: the same problem types and `WWW-Authenticate` challenges (RFC 6750) for either.

use crate::state::Claims;
use crate::support::consumer::{Consumer, Consumers};
use crate::support::failure_limit::FailureLimit;
use crate::{Flow, Rejection};
use http::HeaderValue;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a usable token (401 `invalid-token`); the text says why, for the client.
    Invalid(&'static str),
    /// A required scope is missing (403 `insufficient-scope`).
    Scope,
    /// A `required_claims` value differs (403 `claim-mismatch`).
    Claims,
    /// The consumer claim maps to no consumer (401 `unknown-consumer`).
    UnknownConsumer,
}

impl Refusal {
    /// A token that did not authenticate (not one that lacks a permission) is a failed attempt.
    pub fn is_failure(&self) -> bool {
        matches!(self, Refusal::Invalid(_) | Refusal::UnknownConsumer)
    }
}

/// The audience, scope and consumer rules of one plugin instance.
pub struct TokenRules {
    audiences: Vec<String>,
    required_scopes: Vec<String>,
    consumer_claim: Option<String>,
    consumers: Arc<Consumers>,
}

impl TokenRules {
    /// Rules that accept any audience of `audiences` (none: not checked), require every scope
    /// of `required_scopes`, and map `consumer_claim` (when set) to one of `consumers`.
    pub fn new(
        audiences: Vec<String>,
        required_scopes: Vec<String>,
        consumer_claim: Option<String>,
        consumers: Arc<Consumers>,
    ) -> Self {
        TokenRules {
            audiences,
            required_scopes,
            consumer_claim,
            consumers,
        }
    }

    /// `aud` (a string or an array of strings) holds one of the accepted audiences; a token
    /// without `aud` is refused when audiences are checked.
    pub fn audience(&self, claims: &Claims) -> Result<(), Refusal> {
        if self.audiences.is_empty() {
            return Ok(());
        }
        let accepted = |v: &Value| {
            v.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| x == a))
        };
        match claims.get("aud") {
            None => Err(Refusal::Invalid("the token has no audience (aud)")),
            Some(Value::Array(values)) if values.iter().any(accepted) => Ok(()),
            Some(value) if accepted(value) => Ok(()),
            Some(_) => Err(Refusal::Invalid("the token's audience is not accepted")),
        }
    }

    /// Every required scope is granted.
    pub fn scopes(&self, claims: &Claims) -> Result<(), Refusal> {
        if self.required_scopes.iter().all(|s| has_scope(claims, s)) {
            Ok(())
        } else {
            Err(Refusal::Scope)
        }
    }

    /// The consumer the token names through `consumer_claim` (looked up in
    /// `[consumers.*].jwt_subject`), `None` when no claim is configured.
    pub fn consumer(&self, claims: &Claims) -> Result<Option<Arc<Consumer>>, Refusal> {
        let Some(claim) = &self.consumer_claim else {
            return Ok(None);
        };
        let subject = claims
            .get(claim)
            .and_then(Value::as_str)
            .ok_or(Refusal::Invalid("the token lacks the consumer claim"))?;
        self.consumers
            .by_subject(subject)
            .cloned()
            .map(Some)
            .ok_or(Refusal::UnknownConsumer)
    }

    /// The answer to `refusal`, counted as a failed attempt of `client` when it is one.
    pub fn refuse(
        &self,
        refusal: Refusal,
        failures: &FailureLimit,
        client: Option<IpAddr>,
    ) -> Flow {
        let failure = refusal.is_failure();
        let rejection = self.rejection(refusal);
        if failure {
            failures.failed(client, rejection)
        } else {
            Flow::Reject(rejection)
        }
    }

    /// The problem answering `refusal`, with its `WWW-Authenticate` challenge.
    fn rejection(&self, refusal: Refusal) -> Rejection {
        let bearer = |error: &str, description: &str| {
            HeaderValue::from_str(&format!(
                "Bearer realm=\"gantry\", error=\"{error}\", error_description=\"{description}\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"gantry\""))
        };
        match refusal {
            Refusal::Invalid(why) => {
                Rejection::unauthorized("invalid-token", why, &bearer("invalid_token", why))
            }
            Refusal::UnknownConsumer => Rejection::unauthorized(
                "unknown-consumer",
                "the token does not belong to a known consumer",
                &bearer("invalid_token", "unknown consumer"),
            ),
            Refusal::Scope => {
                let challenge = HeaderValue::from_str(&format!(
                    "Bearer realm=\"gantry\", error=\"insufficient_scope\", scope=\"{}\"",
                    self.required_scopes.join(" ")
                ))
                .unwrap_or_else(|_| {
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\"")
                });
                Rejection {
                    status: 403,
                    slug: "insufficient-scope",
                    title: "Insufficient scope",
                    detail: "the token lacks a required scope".into(),
                    headers: vec![(http::header::WWW_AUTHENTICATE, challenge)],
                }
            }
            Refusal::Claims => Rejection {
                status: 403,
                slug: "claim-mismatch",
                title: "Forbidden",
                detail: "a required claim of the token has another value".into(),
                headers: Vec::new(),
            },
        }
    }
}

/// The 401 answer to a request without a token.
pub fn missing_token() -> Rejection {
    Rejection::unauthorized(
        "missing-credentials",
        "a bearer token is required",
        &HeaderValue::from_static("Bearer realm=\"gantry\""),
    )
}

/// Seconds since the Unix epoch, the unit of `exp`, `nbf` and `iat`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `scope` (space separated, or an array) or `scp` (an array, or space separated) grants `scope`.
fn has_scope(claims: &Claims, scope: &str) -> bool {
    let in_value = |v: &Value| match v {
        Value::String(s) => s.split(' ').any(|x| x == scope),
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(scope)),
        _ => false,
    };
    claims.get("scope").is_some_and(in_value) || claims.get("scp").is_some_and(in_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::consumer::ConsumerSpec;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).expect("json")
    }

    fn rules(audiences: &[&str], scopes: &[&str], consumer_claim: Option<&str>) -> TokenRules {
        let consumers = Consumers::new([ConsumerSpec {
            name: "acme",
            groups: &[],
            keys: &[],
            password: None,
            jwt_subject: Some("acme-client"),
            certificate_subjects: &[],
        }])
        .expect("consumers");
        TokenRules::new(
            audiences.iter().map(|s| s.to_string()).collect(),
            scopes.iter().map(|s| s.to_string()).collect(),
            consumer_claim.map(String::from),
            Arc::new(consumers),
        )
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let claims = claims(r#"{"scope":"a users:read b","scp":["x"]}"#);
        assert!(has_scope(&claims, "users:read"));
        assert!(has_scope(&claims, "x"));
        assert!(!has_scope(&claims, "users"));
        assert_eq!(rules(&[], &["a", "x"], None).scopes(&claims), Ok(()));
        assert_eq!(
            rules(&[], &["a", "y"], None).scopes(&claims),
            Err(Refusal::Scope)
        );
    }

    #[test]
    fn one_accepted_audience_is_enough_and_none_is_refused() {
        let rules = rules(&["billing-api", "other"], &[], None);
        assert_eq!(rules.audience(&claims(r#"{"aud":"billing-api"}"#)), Ok(()));
        assert_eq!(rules.audience(&claims(r#"{"aud":["x","other"]}"#)), Ok(()));
        let wrong = Err(Refusal::Invalid("the token's audience is not accepted"));
        assert_eq!(rules.audience(&claims(r#"{"aud":"x"}"#)), wrong);
        assert_eq!(rules.audience(&claims(r#"{"aud":["x",1]}"#)), wrong);
        assert_eq!(rules.audience(&claims(r#"{"aud":7}"#)), wrong);
        assert!(rules.audience(&claims("{}")).is_err());
        let unchecked = super::tests::rules(&[], &[], None);
        assert_eq!(unchecked.audience(&claims("{}")), Ok(()));
    }

    #[test]
    fn the_consumer_claim_names_a_consumer_by_subject() {
        let rules = rules(&[], &[], Some("client_id"));
        let acme = rules
            .consumer(&claims(r#"{"client_id":"acme-client"}"#))
            .expect("mapped");
        assert_eq!(acme.map(|c| c.name.to_string()).as_deref(), Some("acme"));
        assert_eq!(
            rules.consumer(&claims(r#"{"client_id":"nobody"}"#)),
            Err(Refusal::UnknownConsumer)
        );
        assert!(rules.consumer(&claims(r#"{"client_id":5}"#)).is_err());
        let Flow::Reject(scope) = rules.refuse(
            Refusal::Scope,
            &FailureLimit::new(None).expect("no limit"),
            None,
        ) else {
            panic!("a refusal");
        };
        assert_eq!((scope.status, scope.slug), (403, "insufficient-scope"));
        let challenge = scope.headers[0].1.to_str().expect("ascii");
        assert!(challenge.contains("scope=\"\""), "{challenge}");
    }
}
