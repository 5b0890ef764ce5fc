//! Unit-test helpers that drive plugin hooks the way the gateway does, through a
//! [`RequestView`] and a [`PluginState`], without a connection.

use crate::support::consumer::{ConsumerSpec, Consumers};
use crate::{Flow, Plugin, PluginState, RequestView};
use pingora::http::RequestHeader;
use std::sync::Arc;

/// A request header with `headers`.
pub(crate) fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build(method, target.as_bytes(), None).expect("request");
    for (name, value) in headers {
        req.append_header(name.to_string(), *value).expect("header");
    }
    req
}

/// A state for a request from `ip` on route `route`.
pub(crate) fn state(route: &str, ip: &str) -> PluginState {
    let mut state = PluginState {
        route: Arc::from(route),
        ..PluginState::default()
    };
    state.client.ip = Some(ip.parse().expect("ip"));
    state
}

/// Runs `plugin`'s request phase on `header` and `state`.
pub(crate) fn on_request(
    plugin: &dyn Plugin,
    header: &RequestHeader,
    state: &mut PluginState,
) -> Flow {
    let mut view = RequestView {
        header,
        has_body: false,
        state,
    };
    block_on(plugin.on_request(&mut view)).expect("request phase")
}

/// Consumers from `(name, groups, keys)`.
pub(crate) fn consumers(specs: &[(&str, &[&str], &[&str])]) -> Arc<Consumers> {
    let owned: Vec<(String, Vec<String>, Vec<String>)> = specs
        .iter()
        .map(|(name, groups, keys)| {
            let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
            (name.to_string(), strings(groups), strings(keys))
        })
        .collect();
    let specs = owned.iter().map(|(name, groups, keys)| ConsumerSpec {
        name,
        groups,
        keys,
        password: None,
        jwt_subject: None,
        certificate_subjects: &[],
    });
    Arc::new(Consumers::new(specs).expect("valid consumers"))
}

/// Runs `future` to completion on a current-thread runtime.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(future)
}
