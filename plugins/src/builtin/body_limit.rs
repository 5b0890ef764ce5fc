//! `body-limit`: refuses request bodies larger than `max_body_size` with 413, from the
//! `Content-Length` header before anything goes upstream, and while a chunked (or
//! length-less HTTP/2) body streams, as soon as the running total passes the limit.

use crate::support::config_types::HumanSize;
use crate::{Flow, Phases, Plugin, PluginState, Rejection, RequestView};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use serde::Deserialize;

/// The configuration name.
pub const NAME: &str = "body-limit";

/// `[routes.R.plugins.body-limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The largest request body accepted, like `"10MiB"`. Required.
    pub max_body_size: HumanSize,
}

/// A compiled `body-limit`.
pub struct BodyLimit {
    max: u64,
}

impl BodyLimit {
    /// Compiles `config`.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(BodyLimit {
            max: config.max_body_size.0,
        })
    }

    fn too_large(&self) -> Rejection {
        Rejection {
            status: 413,
            slug: "body-too-large",
            title: "Request body too large",
            detail: format!("the request body exceeds {} bytes", self.max),
            headers: Vec::new(),
        }
    }
}

#[async_trait]
impl Plugin for BodyLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::REQUEST_BODY)
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let declared = request
            .header
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Ok(match declared {
            Some(length) if length > self.max => Flow::Reject(self.too_large()),
            _ => Flow::Continue,
        })
    }

    fn on_request_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        state: &mut PluginState,
    ) -> Option<Rejection> {
        (state.request_body_bytes > self.max).then(|| self.too_large())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_total_decides() {
        let limit = BodyLimit::new(Config {
            max_body_size: HumanSize(10),
        })
        .expect("valid");
        let mut state = PluginState {
            request_body_bytes: 10,
            ..PluginState::default()
        };
        assert_eq!(limit.on_request_body(&mut None, false, &mut state), None);
        state.request_body_bytes = 11;
        let r = limit
            .on_request_body(&mut None, false, &mut state)
            .expect("over the limit");
        assert_eq!((r.status, r.slug), (413, "body-too-large"));
    }
}
