//! `Server-Timing` on the responses of a route with `server_timing = true`: how long its
//! request plugins took, the connect to the upstream (0 on a pooled connection) and the wait
//! for its response header (the last attempt), and the total until the response header, in
//! milliseconds (`plugins;dur=0.042, upstream-connect;dur=0.310, upstream;dur=1.870,
//! total;dur=2.391`).

use super::RequestCtx;
use http::HeaderValue;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// `Server-Timing`.
pub(super) const SERVER_TIMING: &str = "server-timing";

/// The header for `ctx`'s request at this point, when its route asks for it.
pub(super) fn server_timing(ctx: &RequestCtx) -> Option<HeaderValue> {
    if !ctx.route.as_ref().is_some_and(|r| r.server_timing) {
        return None;
    }
    let now = Instant::now();
    let mut out = String::with_capacity(96);
    let mut metric = |name: &str, took: Duration| {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{name};dur={:.3}", took.as_secs_f64() * 1000.0);
    };
    if let Some(took) = ctx.plugins_took {
        metric("plugins", took);
    }
    if let (Some(started), Some(connected)) = (ctx.upstream_started, ctx.upstream_connected) {
        metric(
            "upstream-connect",
            connected.saturating_duration_since(started),
        );
        if let Some(responded) = ctx.upstream_responded {
            metric("upstream", responded.saturating_duration_since(connected));
        }
    }
    if let Some(started) = ctx.started {
        metric("total", now.saturating_duration_since(started));
    }
    HeaderValue::from_str(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_routes_that_ask_get_it_and_it_lists_the_phases() {
        let ctx = RequestCtx::default();
        assert!(server_timing(&ctx).is_none());
        let started = Instant::now();
        let route = crate::config::load_str(
            "t.toml",
            "[routes.r]\npaths = [\"/\"]\nrespond = { body = \"x\" }\nserver_timing = true\n",
        )
        .unwrap()
        .router
        .route("r")
        .unwrap();
        let ctx = RequestCtx {
            route: Some(route),
            started: Some(started),
            plugins_took: Some(Duration::from_micros(42)),
            upstream_started: Some(started),
            upstream_connected: Some(started + Duration::from_micros(310)),
            upstream_responded: Some(started + Duration::from_millis(2)),
            ..RequestCtx::default()
        };
        let value = server_timing(&ctx).unwrap();
        let value = value.to_str().unwrap();
        assert!(
            value.starts_with(
                "plugins;dur=0.042, upstream-connect;dur=0.310, upstream;dur=1.690, total;dur="
            ),
            "{value}"
        );
    }
}
