//! `key-auth`: authenticates a request by an API key that belongs to a consumer.
//!
//! The key is read only when the request carries exactly one copy of it across all sources
//! (see [`credentials`]).

use crate::consumer::Consumers;
use crate::credentials::{self, Kinds, Located, Source};
use crate::failure_limit::{FailureLimit, MaxFailures};
use crate::{Flow, Phases, Plugin, PluginState, Rejection};
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;
use std::sync::Arc;

/// The configuration name.
pub const NAME: &str = "key-auth";

/// `[routes.R.plugins.key-auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the key is read from. Default `["header:x-api-key"]`.
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
    /// Remove the key from the request before it goes upstream. Default `true`.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// Failed attempts allowed per client and window. Default: unlimited.
    pub max_failures: Option<MaxFailures>,
}

fn default_sources() -> Vec<String> {
    vec!["header:x-api-key".into()]
}

fn default_true() -> bool {
    true
}

/// A compiled `key-auth`.
pub struct KeyAuth {
    sources: Vec<Source>,
    hide_credentials: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    failures: FailureLimit,
}

impl KeyAuth {
    /// Compiles `config` against the configured consumers.
    pub fn new(config: Config, consumers: Arc<Consumers>) -> Result<Self, String> {
        Ok(KeyAuth {
            sources: Source::parse_all(&config.sources, "sources", Kinds::HeaderOrQuery)?,
            hide_credentials: config.hide_credentials,
            consumers,
            challenge: HeaderValue::from_static("Key realm=\"gantry\""),
            failures: FailureLimit::new(config.max_failures)?,
        })
    }
}

#[async_trait]
impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
    }

    async fn on_request(
        &self,
        session: &mut Session,
        state: &mut PluginState,
    ) -> pingora::Result<Flow> {
        if let Some(refusal) = self.failures.check(state.client_ip) {
            return Ok(Flow::Reject(refusal));
        }
        let key = match credentials::locate(&self.sources, session.req_header()) {
            Located::Found(key) => key,
            Located::Missing => {
                return Ok(Flow::Reject(Rejection::unauthorized(
                    "missing-credentials",
                    "an API key is required",
                    &self.challenge,
                )))
            }
            Located::Ambiguous => {
                return Ok(self
                    .failures
                    .failed(state.client_ip, credentials::ambiguous()))
            }
        };
        match self.consumers.by_key(key) {
            Some(consumer) => {
                state.consumer = Some(Arc::clone(consumer));
                Ok(Flow::Continue)
            }
            None => Ok(self.failures.failed(
                state.client_ip,
                Rejection::unauthorized(
                    "invalid-credentials",
                    "the API key is not valid",
                    &self.challenge,
                ),
            )),
        }
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        if self.hide_credentials {
            credentials::remove_all(&self.sources, upstream)?;
        }
        Ok(())
    }
}
