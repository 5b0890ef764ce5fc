//! `key-auth`: authenticates a request by an API key that belongs to a consumer.
//!
//! The key is read only when the request carries exactly one copy of it across all sources
//! (see [`credentials`]).

use crate::support::consumer::Consumers;
use crate::support::credentials::{self, Kinds, Source};
use crate::support::failure_limit::{FailureLimit, MaxFailures};
use crate::{Flow, Phases, Plugin, PluginState, Rejection, RequestView};
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
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

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let key = match credentials::take_one(&self.sources, request, &self.failures) {
            Ok(Some(key)) => key,
            Ok(None) => {
                return Ok(Flow::Reject(Rejection::unauthorized(
                    "missing-credentials",
                    "an API key is required",
                    &self.challenge,
                )))
            }
            Err(refused) => return Ok(refused),
        };
        match self.consumers.by_key(key) {
            Some(consumer) => {
                request.state.consumer = Some(Arc::clone(consumer));
                Ok(Flow::Continue)
            }
            None => Ok(self.failures.failed(
                request.client_ip(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::config_types::HumanDuration;
    use crate::testing::{block_on, consumers, on_request, request, state};
    use std::time::Duration;

    fn key_auth(max_failures: Option<u32>) -> KeyAuth {
        KeyAuth::new(
            Config {
                sources: vec!["header:x-api-key".into(), "query:api_key".into()],
                hide_credentials: true,
                max_failures: max_failures.map(|count| MaxFailures {
                    count,
                    per: HumanDuration(Duration::from_secs(60)),
                }),
            },
            consumers(&[("alice", &["staff"], &["alice-key-0123456789"])]),
        )
        .expect("valid key-auth")
    }

    fn refusal(flow: &Flow) -> Option<(u16, &'static str)> {
        match flow {
            Flow::Reject(r) => Some((r.status, r.slug)),
            _ => None,
        }
    }

    #[test]
    fn a_valid_key_resolves_the_consumer() {
        let plugin = key_auth(None);
        let req = request("GET", "/", &[("x-api-key", "alice-key-0123456789")]);
        let mut s = state("r", "10.0.0.1");
        assert_eq!(on_request(&plugin, &req, &mut s), Flow::Continue);
        assert_eq!(s.consumer.as_deref().map(|c| &*c.name), Some("alice"));
    }

    #[test]
    fn missing_wrong_and_doubled_keys_are_refused() {
        let plugin = key_auth(None);
        let verdict = |target: &str, headers: &[(&str, &str)]| {
            let mut s = state("r", "10.0.0.1");
            let flow = on_request(&plugin, &request("GET", target, headers), &mut s);
            assert!(s.consumer.is_none());
            refusal(&flow)
        };
        assert_eq!(verdict("/", &[]), Some((401, "missing-credentials")));
        assert_eq!(
            verdict("/", &[("x-api-key", "guess")]),
            Some((401, "invalid-credentials"))
        );
        // A second copy could be the one a backend reads.
        let doubled = verdict(
            "/?api_key=alice-key-0123456789",
            &[("x-api-key", "alice-key-0123456789")],
        );
        assert_eq!(doubled.map(|(status, _)| status), Some(400));
    }

    #[test]
    fn failures_past_the_limit_refuse_that_client_only() {
        let plugin = key_auth(Some(2));
        let wrong = request("GET", "/", &[("x-api-key", "guess")]);
        let right = request("GET", "/", &[("x-api-key", "alice-key-0123456789")]);
        for _ in 0..2 {
            let flow = on_request(&plugin, &wrong, &mut state("r", "10.0.0.9"));
            assert_eq!(refusal(&flow), Some((401, "invalid-credentials")));
        }
        let locked = on_request(&plugin, &right, &mut state("r", "10.0.0.9"));
        assert_eq!(refusal(&locked).map(|(status, _)| status), Some(429));
        let other = on_request(&plugin, &right, &mut state("r", "10.0.0.10"));
        assert_eq!(other, Flow::Continue);
    }

    #[test]
    fn the_key_is_hidden_from_the_upstream() {
        let plugin = key_auth(None);
        let mut upstream = request(
            "GET",
            "/p?api_key=alice-key-0123456789&x=1",
            &[("x-api-key", "alice-key-0123456789")],
        );
        block_on(plugin.on_upstream_request(&mut upstream, &mut state("r", "10.0.0.1")))
            .expect("upstream request");
        assert!(upstream.headers.get("x-api-key").is_none());
        assert!(!upstream.uri.to_string().contains("alice-key-0123456789"));
    }
}
