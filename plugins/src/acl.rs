//! `acl`: lets only some consumers or groups through, after an authentication plugin.

use crate::consumer::Consumer;
use crate::{Flow, Phases, Plugin, PluginState, Rejection};
use async_trait::async_trait;
use http::HeaderValue;
use pingora::proxy::Session;
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

    async fn on_request(
        &self,
        _session: &mut Session,
        state: &mut PluginState,
    ) -> pingora::Result<Flow> {
        let Some(consumer) = &state.consumer else {
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
