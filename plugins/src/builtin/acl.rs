//! `acl`: lets only some consumers or groups through, after an authentication plugin.

use crate::support::consumer::Consumer;
use crate::{Flow, Phases, Plugin, Rejection, RequestView};
use async_trait::async_trait;
use http::HeaderValue;
use serde::Deserialize;

/// The configuration name.
pub const NAME: &str = "acl";

/// `[routes.R.plugins.acl]`. Deny lists win over allow lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Consumers in any of these groups may pass.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Consumers in any of these groups are refused.
    #[serde(default)]
    pub deny_groups: Vec<String>,
    /// These consumers may pass.
    #[serde(default)]
    pub allow_consumers: Vec<String>,
    /// These consumers are refused.
    #[serde(default)]
    pub deny_consumers: Vec<String>,
}

/// A compiled `acl`.
pub struct Acl {
    config: Config,
    challenge: HeaderValue,
}

impl Acl {
    /// Checks that at least one list is set.
    pub fn new(config: Config) -> Result<Self, String> {
        let c = &config;
        if c.allow_groups.is_empty()
            && c.deny_groups.is_empty()
            && c.allow_consumers.is_empty()
            && c.deny_consumers.is_empty()
        {
            return Err(
                "set at least one of allow_groups, deny_groups, allow_consumers, deny_consumers"
                    .into(),
            );
        }
        Ok(Acl {
            config,
            challenge: HeaderValue::from_static("Key realm=\"gantry\""),
        })
    }

    fn permits(&self, consumer: &Consumer) -> bool {
        let c = &self.config;
        let in_groups = |list: &[String]| {
            consumer
                .groups
                .iter()
                .any(|g| list.iter().any(|x| **x == **g))
        };
        let named = |list: &[String]| list.iter().any(|x| **x == *consumer.name);
        if named(&c.deny_consumers) || in_groups(&c.deny_groups) {
            return false;
        }
        let has_allow = !c.allow_consumers.is_empty() || !c.allow_groups.is_empty();
        !has_allow || named(&c.allow_consumers) || in_groups(&c.allow_groups)
    }
}

#[async_trait]
impl Plugin for Acl {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let Some(consumer) = &request.state.consumer else {
            return Ok(Flow::Reject(Rejection::unauthorized(
                "missing-credentials",
                "this route needs an authenticated consumer",
                &self.challenge,
            )));
        };
        if self.permits(consumer) {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Reject(Rejection {
            status: 403,
            slug: "consumer-forbidden",
            title: "Forbidden",
            detail: "this consumer is not allowed on this route".into(),
            headers: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{consumers, on_request, request, state};

    fn acl(allow_groups: &[&str], deny_consumers: &[&str]) -> Acl {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Acl::new(Config {
            allow_groups: list(allow_groups),
            deny_groups: Vec::new(),
            allow_consumers: Vec::new(),
            deny_consumers: list(deny_consumers),
        })
        .expect("valid acl")
    }

    fn status(flow: Flow) -> Option<(u16, &'static str)> {
        match flow {
            Flow::Reject(r) => Some((r.status, r.slug)),
            _ => None,
        }
    }

    #[test]
    fn an_anonymous_request_is_unauthorized_with_a_challenge() {
        let req = request("GET", "/", &[]);
        let flow = on_request(&acl(&["staff"], &[]), &req, &mut state("r", "10.0.0.1"));
        let Flow::Reject(rejection) = flow else {
            panic!("passed without a consumer");
        };
        assert_eq!(
            (rejection.status, rejection.slug),
            (401, "missing-credentials")
        );
        assert!(rejection
            .headers
            .iter()
            .any(|(name, _)| name == http::header::WWW_AUTHENTICATE));
    }

    #[test]
    fn groups_allow_and_a_named_deny_wins() {
        let known = consumers(&[
            ("alice", &["staff"], &["alice-key-0123456789"]),
            ("bob", &["guests"], &["bob-key-0123456789ab"]),
            ("mallory", &["staff"], &["mallory-key-01234567"]),
        ]);
        let plugin = acl(&["staff"], &["mallory"]);
        let req = request("GET", "/", &[]);
        let verdict = |key: &str| {
            let mut s = state("r", "10.0.0.1");
            s.consumer = known.by_key(key.as_bytes()).cloned();
            status(on_request(&plugin, &req, &mut s))
        };
        assert_eq!(verdict("alice-key-0123456789"), None);
        assert_eq!(
            verdict("bob-key-0123456789ab"),
            Some((403, "consumer-forbidden"))
        );
        assert_eq!(
            verdict("mallory-key-01234567"),
            Some((403, "consumer-forbidden"))
        );
    }

    #[test]
    fn an_acl_without_lists_is_a_config_error() {
        assert!(Acl::new(Config {
            allow_groups: Vec::new(),
            deny_groups: Vec::new(),
            allow_consumers: Vec::new(),
            deny_consumers: Vec::new(),
        })
        .is_err());
    }
}
