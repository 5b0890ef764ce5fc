//! `key-auth`: authenticates a request by an API key that belongs to a consumer.

use crate::consumer::Consumers;
use crate::{query, Flow, Phases, Plugin, PluginState, Rejection};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
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
    /// Where the key is read from, in order. Default `["header:x-api-key"]`.
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
    /// Remove the key from the request before it goes upstream. Default `true`.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
}

fn default_sources() -> Vec<String> {
    vec!["header:x-api-key".into()]
}

fn default_true() -> bool {
    true
}

enum Source {
    Header(HeaderName),
    Query(String),
}

/// A compiled `key-auth`.
pub struct KeyAuth {
    sources: Vec<Source>,
    hide_credentials: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

impl KeyAuth {
    /// Compiles `config` against the configured consumers.
    pub fn new(config: Config, consumers: Arc<Consumers>) -> Result<Self, String> {
        if config.sources.is_empty() {
            return Err("`sources` needs at least one entry, like \"header:x-api-key\"".into());
        }
        let sources = config
            .sources
            .iter()
            .map(|s| match s.split_once(':') {
                Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                    .map(Source::Header)
                    .map_err(|_| format!("`{name}` is not a valid header name")),
                Some(("query", name)) if !name.is_empty() => Ok(Source::Query(name.to_string())),
                _ => Err(format!(
                    "invalid source `{s}`: use header:NAME or query:NAME"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyAuth {
            sources,
            hide_credentials: config.hide_credentials,
            consumers,
            challenge: HeaderValue::from_static("Key realm=\"gantry\""),
        })
    }

    fn key<'r>(&self, req: &'r RequestHeader) -> Option<&'r [u8]> {
        self.sources.iter().find_map(|source| match source {
            Source::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
            Source::Query(name) => req
                .uri
                .query()
                .and_then(|q| query::param(q, name))
                .map(str::as_bytes),
        })
    }
}

#[async_trait]
impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        2010
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
    }

    async fn on_request(
        &self,
        session: &mut Session,
        state: &mut PluginState,
    ) -> pingora::Result<Flow> {
        let Some(key) = self.key(session.req_header()) else {
            return Ok(Flow::Reject(Rejection::unauthorized(
                "missing-credentials",
                "an API key is required",
                &self.challenge,
            )));
        };
        match self.consumers.by_key(key) {
            Some(consumer) => {
                state.consumer = Some(Arc::clone(consumer));
                Ok(Flow::Continue)
            }
            None => Ok(Flow::Reject(Rejection::unauthorized(
                "invalid-credentials",
                "the API key is not valid",
                &self.challenge,
            ))),
        }
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        _state: &mut PluginState,
    ) -> pingora::Result<()> {
        if !self.hide_credentials {
            return Ok(());
        }
        for source in &self.sources {
            match source {
                Source::Header(name) => {
                    upstream.remove_header(name);
                }
                Source::Query(name) => {
                    if let Some(uri) = query::without_param(&upstream.uri, name) {
                        upstream.set_uri(uri);
                    }
                }
            }
        }
        Ok(())
    }
}
