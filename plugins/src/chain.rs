//! A route's plugins as a [`PluginChain`]: grouped by phase, ordered by priority, and run one
//! phase per call, so the gateway's hooks never loop over plugins themselves.

use crate::builtin::cache::CachePolicy;
use crate::builtin::{
    basic_auth, cors, forward_auth, jwt_auth, key_auth, mtls_auth, oauth2_introspection,
};
use crate::plugin::{Flow, Phases, Plugin, Rejection};
use crate::state::{PluginState, RequestView};
use crate::trace_events::EventValue;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// A route's plugins grouped by phase, each group ordered highest priority first.
#[derive(Default)]
pub struct PluginChain {
    request: Box<[Arc<dyn Plugin>]>,
    request_body: Box<[Arc<dyn Plugin>]>,
    upstream_request: Box<[Arc<dyn Plugin>]>,
    upstream_response: Box<[Arc<dyn Plugin>]>,
    response: Box<[Arc<dyn Plugin>]>,
    response_body: Box<[Arc<dyn Plugin>]>,
    log: Box<[Arc<dyn Plugin>]>,
    /// The route's caching rules, when it has the `cache` plugin.
    pub cache: Option<Arc<CachePolicy>>,
    /// The route has an authentication plugin (`jwt-auth`, `key-auth`, `basic-auth`,
    /// `oauth2-introspection`, `forward-auth`, `mtls-auth`).
    pub authenticates: bool,
    /// The route answers CORS preflights (it has the `cors` plugin).
    pub answers_preflights: bool,
    /// A plugin of the route calls another service for its requests (and so gets
    /// [`PluginState::outbound_traceparent`]).
    pub calls_out: bool,
}

impl PluginChain {
    /// Orders `plugins` by priority (then name, for a stable order) and groups them by phase.
    pub fn new(mut plugins: Vec<Arc<dyn Plugin>>) -> Self {
        plugins.sort_by_key(|p| (std::cmp::Reverse(p.priority()), p.name()));
        let of = |phase: Phases| -> Box<[Arc<dyn Plugin>]> {
            plugins
                .iter()
                .filter(|p| p.phases().contains(phase))
                .cloned()
                .collect()
        };
        let has = |names: &[&str]| plugins.iter().any(|p| names.contains(&p.name()));
        PluginChain {
            request: of(Phases::REQUEST),
            request_body: of(Phases::REQUEST_BODY),
            upstream_request: of(Phases::UPSTREAM_REQUEST),
            upstream_response: of(Phases::UPSTREAM_RESPONSE),
            response: of(Phases::RESPONSE),
            response_body: of(Phases::RESPONSE_BODY),
            log: of(Phases::LOG),
            cache: plugins.iter().find_map(|p| p.cache_policy()),
            authenticates: has(&AUTHENTICATION),
            answers_preflights: has(&[cors::NAME]),
            calls_out: plugins.iter().any(|p| p.calls_out()),
        }
    }

    /// Whether a plugin holds or edits the request body (its state would not survive a
    /// replay of the body on a retry).
    pub fn edits_request_body(&self) -> bool {
        !self.request_body.is_empty()
    }

    /// [`Plugin::on_request`] of each plugin; the first refusal or answer ends the phase.
    pub async fn run_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        for plugin in self.request.iter() {
            let flow = plugin.on_request(request).await?;
            record_decision(plugin.name(), &flow, request.state);
            if !matches!(flow, Flow::Continue) {
                return Ok(flow);
            }
        }
        Ok(Flow::Continue)
    }

    /// [`Plugin::on_request_body`] of each plugin; the first refusal ends the phase.
    pub fn run_request_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut PluginState,
    ) -> Option<Rejection> {
        self.request_body
            .iter()
            .find_map(|plugin| plugin.on_request_body(body, end_of_stream, state))
    }

    /// [`Plugin::on_upstream_request`] of each plugin.
    pub async fn run_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        for plugin in self.upstream_request.iter() {
            plugin.on_upstream_request(upstream, state).await?;
        }
        Ok(())
    }

    /// [`Plugin::on_upstream_response`] of each plugin.
    pub async fn run_upstream_response(
        &self,
        response: &mut ResponseHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        for plugin in self.upstream_response.iter() {
            plugin.on_upstream_response(response, state).await?;
        }
        Ok(())
    }

    /// [`Plugin::on_response`] of each plugin.
    pub async fn run_response(
        &self,
        request: &RequestHeader,
        response: &mut ResponseHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        for plugin in self.response.iter() {
            plugin.on_response(request, response, state).await?;
        }
        Ok(())
    }

    /// [`Plugin::on_response_body`] of each plugin.
    pub fn run_response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        for plugin in self.response_body.iter() {
            plugin.on_response_body(body, end_of_stream, state)?;
        }
        Ok(())
    }

    /// [`Plugin::on_log`] of each plugin.
    pub async fn run_log(&self, state: &PluginState, status: u16) {
        for plugin in self.log.iter() {
            plugin.on_log(state, status).await;
        }
    }

    /// The plugins' names in request order, for diagnostics.
    pub fn names(&self) -> Vec<&'static str> {
        let mut seen: Vec<&'static str> = Vec::new();
        for p in self
            .request
            .iter()
            .chain(self.request_body.iter())
            .chain(self.upstream_request.iter())
            .chain(self.upstream_response.iter())
            .chain(self.response.iter())
            .chain(self.response_body.iter())
            .chain(self.log.iter())
        {
            if !seen.contains(&p.name()) {
                seen.push(p.name());
            }
        }
        seen
    }
}

/// Keeps a request-phase plugin's decision for the request's trace: its outcome, the problem
/// type of a refusal, and the consumer an authentication plugin resolved.
fn record_decision(plugin: &'static str, flow: &Flow, state: &mut PluginState) {
    if !state.trace.recording() {
        return;
    }
    let consumer = state
        .consumer
        .as_ref()
        .filter(|_| AUTHENTICATION.contains(&plugin))
        .map(|c| Arc::clone(&c.name));
    state.trace.record("gantry.plugin", || {
        let mut attributes = vec![("gantry.plugin.name", EventValue::Word(plugin))];
        let outcome = match flow {
            Flow::Continue => "continue",
            Flow::Reject(rejection) => {
                attributes.push(("gantry.problem.type", EventValue::Word(rejection.slug)));
                "rejected"
            }
            Flow::Answer(_) => "answered",
        };
        attributes.push(("gantry.plugin.outcome", EventValue::Word(outcome)));
        if let Some(name) = consumer {
            attributes.push(("gantry.consumer", EventValue::Name(name)));
        }
        attributes
    });
}

/// The authentication plugins, whose decision names the consumer.
const AUTHENTICATION: [&str; 6] = [
    jwt_auth::NAME,
    key_auth::NAME,
    basic_auth::NAME,
    oauth2_introspection::NAME,
    forward_auth::NAME,
    mtls_auth::NAME,
];

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    struct Fake(&'static str, i32, Phases);

    #[async_trait]
    impl Plugin for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn priority(&self) -> i32 {
            self.1
        }
        fn phases(&self) -> Phases {
            self.2
        }
    }

    #[test]
    fn chains_are_grouped_by_phase_in_priority_order() {
        let chain = PluginChain::new(vec![
            Arc::new(Fake(
                "transform",
                500,
                Phases::RESPONSE.and(Phases::RESPONSE_BODY),
            )),
            Arc::new(Fake(
                "auth",
                2000,
                Phases::REQUEST.and(Phases::UPSTREAM_REQUEST),
            )),
            Arc::new(Fake("ip", 3000, Phases::REQUEST)),
            Arc::new(Fake("logger", 100, Phases::LOG)),
        ]);
        let names = |group: &[Arc<dyn Plugin>]| group.iter().map(|p| p.name()).collect::<Vec<_>>();
        assert_eq!(names(&chain.request), ["ip", "auth"]);
        assert_eq!(names(&chain.upstream_request), ["auth"]);
        assert!(chain.upstream_response.is_empty());
        assert_eq!(names(&chain.response), ["transform"]);
        assert_eq!(names(&chain.response_body), ["transform"]);
        assert_eq!(names(&chain.log), ["logger"]);
        assert_eq!(chain.names(), ["ip", "auth", "transform", "logger"]);
    }
}
