//! Distributed tracing against a real OTLP/HTTP receiver started by the test: the exported
//! protobuf is decoded (`opentelemetry-proto`) and its spans checked (ids, parents, attributes,
//! events), along with what upstreams receive, sampling, a failing collector, reloads and the
//! flush at shutdown.

use crate::common::raw_http::RawConn;
use crate::common::recorder::Recorder;
use crate::common::{
    admin_metrics, assert_problem, check_config, client, dead_addr, eventually, free_port,
    wait_for_metric, Gantry, Upstream,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use serde_json::Value;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A collector: every export request it received, decoded.
struct Collector(Recorder);

impl Collector {
    async fn start() -> Collector {
        Collector(Recorder::start().await)
    }

    fn exports(&self) -> Vec<ExportTraceServiceRequest> {
        self.0
            .seen()
            .iter()
            .map(|r| {
                assert_eq!(r.uri, "/v1/traces");
                assert_eq!(r.headers["content-type"], "application/x-protobuf");
                ExportTraceServiceRequest::decode(r.body.clone()).expect("an OTLP export")
            })
            .collect()
    }

    fn spans(&self) -> Vec<Span> {
        self.exports()
            .into_iter()
            .flat_map(|e| e.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// Waits until the collector holds `n` server spans, and returns every span.
    async fn wait_servers(&self, n: usize) -> Vec<Span> {
        eventually(&format!("{n} server spans exported"), || async {
            let spans = self.spans();
            (servers(&spans).len() >= n).then_some(spans)
        })
        .await
    }
}

/// `[tracing]` exporting to `collector` every 50 ms, with `extra` keys.
fn tracing(collector: &Collector, extra: &str) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\n{extra}\n\
         batch = {{ interval = \"50ms\" }}\n",
        collector.0.addr
    )
}

fn admin(port: u16) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{ADMIN_TOKEN}\"\n")
}

fn servers(spans: &[Span]) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    let mut c: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == parent.span_id)
        .collect();
    c.sort_by_key(|s| s.start_time_unix_nano);
    c
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s,
        other => panic!("{key} is not a string attribute: {other:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(i)) => *i,
        other => panic!("{key} is not an int attribute: {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` the echo upstream received, parsed: (trace id, parent span id, flags).
fn upstream_traceparent(echo: &Value) -> (String, String, String) {
    let tp = echo["headers"]["traceparent"]
        .as_str()
        .expect("the upstream got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn a_request_is_one_server_span_and_one_client_span_continuing_the_clients_trace() {
    let (up, collector) = (Upstream::start("users").await, Collector::start().await);
    let g = Gantry::start(&format!(
        "{}[clusters.users]\nbackends = [\"{}\"]\n\
         [routes.users]\npaths = [\"/users\"]\ncluster = \"users\"\n",
        tracing(&collector, "sample_ratio = 1.0\nservice_name = \"edge\"\nresource = { \"deployment.environment\" = \"test\" }"),
        up.addr
    ));
    let resp = g
        .get(
            "/users/7?token=secret",
            &[
                ("traceparent", PARENT),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("user-agent", "t/1"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    let (trace, parent, flags) = upstream_traceparent(&echo);
    assert_eq!(
        trace, PARENT_TRACE,
        "the client's trace is continued upstream"
    );
    assert_eq!(flags, "01");
    assert_eq!(echo["headers"]["tracestate"], "congo=t61rcWkgMzE");

    let spans = collector.wait_servers(1).await;
    let export = &collector.exports()[0];
    let resource = export.resource_spans[0].resource.as_ref().unwrap();
    let resource: Vec<(String, String)> = resource
        .attributes
        .iter()
        .map(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => (kv.key.clone(), s.clone()),
                _ => panic!("a string resource attribute"),
            },
        )
        .collect();
    assert!(resource.contains(&("service.name".into(), "edge".into())));
    assert!(resource.contains(&("deployment.environment".into(), "test".into())));

    let server = servers(&spans)[0];
    assert_eq!(hex(&server.trace_id), PARENT_TRACE);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(server.name, "GET users");
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(text(server, "url.path"), "/users/7");
    assert_eq!(text(server, "http.route"), "users");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(text(server, "client.address"), "127.0.0.1");
    assert_eq!(text(server, "user_agent.original"), "t/1");
    assert!(
        server.start_time_unix_nano > 0 && server.end_time_unix_nano >= server.start_time_unix_nano
    );
    // No attribute carries the query (its values may be credentials).
    let all = format!("{:?}", spans);
    assert!(!all.contains("secret"), "{all}");

    let clients = children(&spans, server);
    assert_eq!(clients.len(), 1, "one client span per attempt");
    let client_span = clients[0];
    assert_eq!(client_span.trace_id, server.trace_id);
    assert_eq!(
        hex(&client_span.span_id),
        parent,
        "the upstream's parent is the client span"
    );
    assert_eq!(text(client_span, "server.address"), "127.0.0.1");
    assert_eq!(int(client_span, "server.port"), i64::from(up.addr.port()));
    assert_eq!(int(client_span, "gantry.attempt"), 1);
    assert_eq!(int(client_span, "http.response.status_code"), 200);
    assert!(attr(client_span, "gantry.connection.reused").is_some());
    assert!(client_span.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client_span.end_time_unix_nano <= server.end_time_unix_nano);
}

#[tokio::test]
async fn a_retry_is_two_client_spans_and_the_second_attempt_is_the_upstreams_parent() {
    let (up, collector) = (Upstream::start("users").await, Collector::start().await);
    let dead = dead_addr();
    let g = Gantry::start(&format!(
        "{}[clusters.users]\nbackends = [\"{dead}\", \"{}\"]\nbalancer = \"round_robin\"\n\
         retry = {{ on = [\"connect-failure\"], attempts = 3 }}\n\
         [routes.users]\npaths = [\"/\"]\ncluster = \"users\"\n",
        tracing(&collector, "sample_ratio = 1.0"),
        up.addr
    ));
    // Round robin: within two requests one starts at the dead backend.
    let mut parents = Vec::new();
    for _ in 0..2 {
        let resp = g.get("/", &[]).await;
        assert_eq!(resp.status(), 200);
        parents.push(upstream_traceparent(&resp.json().await.unwrap()).1);
    }
    let spans = collector.wait_servers(2).await;
    let retried = servers(&spans)
        .into_iter()
        .find(|s| children(&spans, s).len() == 2)
        .expect("a request with two attempts");
    let attempts = children(&spans, retried);
    assert_eq!(int(attempts[0], "gantry.attempt"), 1);
    assert_eq!(text(attempts[0], "error.type"), "connect-failure");
    assert_eq!(int(attempts[0], "server.port"), i64::from(dead.port()));
    assert_eq!(int(attempts[1], "gantry.attempt"), 2);
    assert_eq!(int(attempts[1], "http.request.resend_count"), 1);
    assert_eq!(int(attempts[1], "http.response.status_code"), 200);
    assert!(parents.contains(&hex(&attempts[1].span_id)));
}

#[tokio::test]
async fn a_retried_status_is_a_failed_client_span_and_unmatched_requests_use_the_global_ratio() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.faults.answer(503);
    let collector = Collector::start().await;
    let g = Gantry::start(&format!(
        "{}[clusters.users]\nbackends = [\"{}\", \"{}\"]\nbalancer = \"round_robin\"\n\
         retry = {{ on = [\"status\"], statuses = [503], attempts = 2 }}\n\
         [routes.users]\npaths = [\"/users\"]\ncluster = \"users\"\n",
        tracing(&collector, "sample_ratio = 1.0"),
        bad.addr,
        good.addr
    ));
    for _ in 0..2 {
        assert_eq!(g.get("/users", &[]).await.status(), 200);
    }
    let resp = g.get("/nowhere", &[]).await;
    assert_problem(resp, 404, "no-route").await;
    let spans = collector.wait_servers(3).await;
    let retried = servers(&spans)
        .into_iter()
        .find(|s| children(&spans, s).len() == 2)
        .expect("a request with two attempts");
    let attempts = children(&spans, retried);
    assert_eq!(int(attempts[0], "http.response.status_code"), 503);
    assert_eq!(text(attempts[0], "error.type"), "503");
    assert_eq!(int(attempts[0], "server.port"), i64::from(bad.addr.port()));
    assert_eq!(int(attempts[1], "http.response.status_code"), 200);
    // The unmatched request: sampled at the global ratio, no http.route, a 4xx is no error.
    let unmatched = servers(&spans)
        .into_iter()
        .find(|s| int(s, "http.response.status_code") == 404)
        .expect("the unmatched request's span");
    assert_eq!(unmatched.name, "GET");
    assert!(attr(unmatched, "http.route").is_none());
    assert_eq!(text(unmatched, "error.type"), "no-route");
    assert!(
        unmatched.status.is_none(),
        "a 4xx leaves the server span's status unset"
    );
}

#[tokio::test]
async fn an_unknown_method_is_other_and_cut_and_http2_is_version_2() {
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    let g = Gantry::start_with(
        "h2c = true",
        &format!(
            "{}[clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n",
            tracing(&collector, "sample_ratio = 1.0"),
            up.addr
        ),
    );
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(g.url("/h2")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_2)
    );
    let method = "X".repeat(4000);
    let mut conn = RawConn::connect(g.port).await;
    conn.send(format!("{method} /long HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    assert_eq!(conn.response().await.expect("an answer").status, 200);
    let spans = collector.wait_servers(2).await;
    let h2_span = servers(&spans)
        .into_iter()
        .find(|s| text(s, "url.path") == "/h2")
        .unwrap();
    assert_eq!(text(h2_span, "network.protocol.version"), "2");
    let long = servers(&spans)
        .into_iter()
        .find(|s| text(s, "url.path") == "/long")
        .unwrap();
    assert_eq!(long.name, "HTTP u");
    assert_eq!(text(long, "http.request.method"), "_OTHER");
    assert_eq!(text(long, "http.request.method_original").len(), 1024);
    assert!(spans.iter().all(|s| s.name.len() < 100));
}

#[tokio::test]
async fn plugin_decisions_are_events_of_the_server_span() {
    let (up, collector) = (Upstream::start("api").await, Collector::start().await);
    let g = Gantry::start(&format!(
        "{}[consumers.alice]\nkeys = [\"alice-key-0123456789\"]\n\
         [clusters.api]\nbackends = [\"{}\"]\n\
         [routes.api]\npaths = [\"/\"]\ncluster = \"api\"\n\
         [routes.api.plugins.key-auth]\nsources = [\"header:x-api-key\"]\n\
         [routes.api.plugins.rate-limit]\nlimits = [{{ requests = 1, per = \"60s\" }}]\n",
        tracing(&collector, "sample_ratio = 1.0"),
        up.addr
    ));
    let key = [("x-api-key", "alice-key-0123456789")];
    assert_eq!(g.get("/", &key).await.status(), 200);
    assert_eq!(g.get("/", &key).await.status(), 429);
    assert_eq!(
        g.get("/", &[("x-api-key", "wrong-key-0123456789")])
            .await
            .status(),
        401
    );
    let spans = collector.wait_servers(3).await;
    let by_status = |status: i64| {
        *servers(&spans)
            .iter()
            .find(|s| int(s, "http.response.status_code") == status)
            .unwrap_or_else(|| panic!("a {status} span"))
    };
    let event_attrs = |span: &Span, name: &str| -> Vec<String> {
        span.events
            .iter()
            .filter(|e| e.name == name)
            .flat_map(|e| e.attributes.iter())
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Any::StringValue(s)) => format!("{}={s}", kv.key),
                    other => format!("{}={other:?}", kv.key),
                },
            )
            .collect()
    };
    let ok = by_status(200);
    let auth = event_attrs(ok, "gantry.plugin");
    assert!(
        auth.contains(&"gantry.plugin.name=key-auth".to_string()),
        "{auth:?}"
    );
    assert!(
        auth.contains(&"gantry.consumer=alice".to_string()),
        "{auth:?}"
    );
    assert!(event_attrs(ok, "gantry.rate_limit")
        .contains(&"gantry.rate_limit.outcome=allowed".to_string()));
    assert_eq!(text(ok, "gantry.consumer"), "alice");
    let limited = by_status(429);
    assert!(event_attrs(limited, "gantry.rate_limit")
        .contains(&"gantry.rate_limit.outcome=limited".to_string()));
    assert_eq!(text(limited, "error.type"), "rate-limited");
    let refused = by_status(401);
    let decision = event_attrs(refused, "gantry.plugin");
    assert!(
        decision.contains(&"gantry.plugin.outcome=rejected".to_string()),
        "{decision:?}"
    );
    assert!(
        !format!("{spans:?}").contains("key-0123456789"),
        "no credential is an attribute"
    );
}

#[tokio::test]
async fn the_sampling_ratio_holds_over_a_thousand_requests_and_routes_override_it() {
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    let g = Gantry::start(&format!(
        "{}[clusters.u]\nbackends = [\"{}\"]\n\
         [routes.some]\npaths = [\"/some\"]\ncluster = \"u\"\n\
         [routes.all]\npaths = [\"/all\"]\ncluster = \"u\"\ntracing = {{ sample_ratio = 1.0 }}\n",
        tracing(&collector, "sample_ratio = 0.2"),
        up.addr
    ));
    let c = client();
    for _ in 0..1000 {
        let resp = c.get(g.url("/some")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The marker is sampled (ratio 1.0) and exported after every earlier span.
    assert_eq!(c.get(g.url("/all")).send().await.unwrap().status(), 200);
    let spans = eventually("the marker span", || async {
        let spans = collector.spans();
        servers(&spans)
            .iter()
            .any(|s| text(s, "http.route") == "all")
            .then_some(spans)
    })
    .await;
    let sampled = servers(&spans)
        .iter()
        .filter(|s| text(s, "http.route") == "some")
        .count();
    // Binomial(1000, 0.2): 4 standard deviations are 51.
    assert!(
        (149..=251).contains(&sampled),
        "{sampled} of 1000 sampled at 0.2"
    );
}

#[tokio::test]
async fn a_sampled_parent_forces_export_only_from_a_trusted_proxy() {
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    let body = |collector: &Collector| {
        format!(
            "{}[clusters.u]\nbackends = [\"{}\"]\n\
             [routes.zero]\npaths = [\"/zero\"]\ncluster = \"u\"\n\
             [routes.marker]\npaths = [\"/marker\"]\ncluster = \"u\"\ntracing = {{ sample_ratio = 1.0 }}\n",
            tracing(collector, "sample_ratio = 0.0"),
            up.addr
        )
    };
    let untrusted = Gantry::start(&body(&collector));
    for _ in 0..50 {
        let resp = untrusted.get("/zero", &[("traceparent", PARENT)]).await;
        assert_eq!(resp.status(), 200);
        // Unsampled, but the trace goes on (unsampled) upstream.
        let (trace, _, flags) = upstream_traceparent(&resp.json().await.unwrap());
        assert_eq!((trace.as_str(), flags.as_str()), (PARENT_TRACE, "00"));
    }
    assert_eq!(untrusted.get("/marker", &[]).await.status(), 200);
    let spans = collector.wait_servers(1).await;
    assert_eq!(servers(&spans).len(), 1, "only the marker: {spans:?}");
    assert_eq!(text(servers(&spans)[0], "http.route"), "marker");

    let trusting_collector = Collector::start().await;
    let trusted = Gantry::start_with(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &body(&trusting_collector),
    );
    let resp = trusted.get("/zero", &[("traceparent", PARENT)]).await;
    let (_, _, flags) = upstream_traceparent(&resp.json().await.unwrap());
    assert_eq!(flags, "01");
    let spans = trusting_collector.wait_servers(1).await;
    assert_eq!(text(servers(&spans)[0], "http.route"), "zero");
}

#[tokio::test]
async fn malformed_traceparents_are_tolerated_and_replaced() {
    let up = Upstream::start("u").await;
    let collector = Collector::start().await;
    let g = Gantry::start(&format!(
        "{}[clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n",
        tracing(&collector, "sample_ratio = 0.0"),
        up.addr
    ));
    let malformed = [
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "",
    ];
    for value in malformed {
        let mut conn = RawConn::connect(g.port).await;
        conn.send(
            format!("GET / HTTP/1.1\r\nHost: x\r\ntraceparent: {value}\r\ntracestate: a=b\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let resp = conn.response().await.expect("an answer");
        assert_eq!(resp.status, 200, "{value:?}");
        let echo = resp.json();
        let (trace, _, _) = upstream_traceparent(&echo);
        assert_ne!(trace, PARENT_TRACE);
        assert_eq!(trace.len(), 32);
        assert!(
            echo["headers"].get("tracestate").is_none(),
            "no state without a parent"
        );
    }
    // Two traceparent headers are no parent either.
    let mut conn = RawConn::connect(g.port).await;
    conn.send(
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\ntraceparent: {PARENT}\r\ntraceparent: {PARENT}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let resp = conn.response().await.expect("an answer");
    assert_eq!(resp.status, 200);
    assert_ne!(upstream_traceparent(&resp.json()).0, PARENT_TRACE);
}

#[tokio::test]
async fn a_collector_that_hangs_or_fails_never_fails_a_request_and_drops_are_counted() {
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    collector.0.faults.hang(true);
    let admin_port = free_port();
    let g = Gantry::start(&format!(
        "{}[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0\n\
         batch = {{ max_queue = 20, max_batch = 10, interval = \"50ms\", timeout = \"200ms\" }}\n\
         [clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n",
        admin(admin_port),
        collector.0.addr,
        up.addr
    ));
    let c = client();
    for _ in 0..300 {
        assert_eq!(c.get(g.url("/")).send().await.unwrap().status(), 200);
    }
    let dropped = |reason: &str| {
        let prefix = format!("gantry_tracing_spans_dropped_total{{reason=\"{reason}\"}} ");
        move |metrics: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map_or(0, |n| n.parse().unwrap())
        }
    };
    let metrics = eventually("export failures counted", || async {
        let m = admin_metrics(admin_port).await;
        (dropped("export_failed")(&m) > 0).then_some(m)
    })
    .await;
    // 600 spans (a server and a client span each) against a queue of 20: most are dropped.
    assert!(dropped("queue_full")(&metrics) > 300, "{metrics}");
    // A collector that answers 500 is a failed export, too.
    collector.0.faults.hang(false);
    collector.0.faults.answer(500);
    for _ in 0..10 {
        assert_eq!(c.get(g.url("/")).send().await.unwrap().status(), 200);
    }
    let before = dropped("export_failed")(&metrics);
    eventually("a refused export counted", || async {
        (dropped("export_failed")(&admin_metrics(admin_port).await) > before).then_some(())
    })
    .await;
    collector.0.faults.answer(0);
    assert_eq!(c.get(g.url("/")).send().await.unwrap().status(), 200);
    wait_for_metric(admin_port, "gantry_tracing_spans_exported_total 2\n").await;
}

#[tokio::test]
async fn server_timing_is_only_on_routes_that_ask_for_it() {
    let up = Upstream::start("u").await;
    let g = Gantry::start(&format!(
        "[clusters.u]\nbackends = [\"{}\"]\n\
         [routes.timed]\npaths = [\"/timed\"]\ncluster = \"u\"\nserver_timing = true\n\
         [routes.direct]\npaths = [\"/direct\"]\nrespond = {{ body = \"x\" }}\nserver_timing = true\n\
         [routes.plain]\npaths = [\"/plain\"]\ncluster = \"u\"\n",
        up.addr
    ));
    let resp = g.get("/timed", &[]).await;
    let timing = resp.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    let names: Vec<&str> = timing
        .split(", ")
        .map(|m| m.split(";dur=").next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["plugins", "upstream-connect", "upstream", "total"],
        "{timing}"
    );
    for metric in timing.split(", ") {
        let ms: f64 = metric.split(";dur=").nth(1).unwrap().parse().unwrap();
        assert!(ms >= 0.0);
    }
    let direct = g.get("/direct", &[]).await;
    let timing = direct.headers()["server-timing"].to_str().unwrap();
    assert!(
        timing.starts_with("plugins;dur=") && timing.contains("total;dur="),
        "{timing}"
    );
    assert!(!timing.contains("upstream"));
    assert!(g
        .get("/plain", &[])
        .await
        .headers()
        .get("server-timing")
        .is_none());
}

#[tokio::test]
async fn problems_and_access_log_records_carry_the_trace_id() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let g = Gantry::start(&format!(
        "{}[log]\naccess = \"{}\"\nformat = \"json\"\n\
         [routes.r]\npaths = [\"/r\"]\nrespond = {{ body = \"ok\" }}\n",
        tracing(&collector, "sample_ratio = 0.0"),
        log.display()
    ));
    let resp = g.get("/nowhere", &[("traceparent", PARENT)]).await;
    let problem = assert_problem(resp, 404, "no-route").await;
    assert_eq!(problem["trace_id"], PARENT_TRACE);
    let record: Value = eventually("the access log record", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap())
    })
    .await;
    assert_eq!(record["trace_id"], PARENT_TRACE);
    assert_eq!(record["span_id"].as_str().unwrap().len(), 16);
    assert_ne!(
        record["span_id"], "00f067aa0ba902b7",
        "the gateway's own span"
    );
}

#[tokio::test]
async fn aggregate_calls_and_mirrored_copies_continue_the_trace() {
    let (users, shadow) = (Upstream::start("users").await, Recorder::start().await);
    let collector = Collector::start().await;
    let g = Gantry::start(&format!(
        "{}[clusters.users]\nbackends = [\"{}\"]\n[clusters.shadow]\nbackends = [\"{}\"]\n\
         [routes.mirrored]\npaths = [\"/m\"]\ncluster = \"users\"\nmirror = {{ cluster = \"shadow\" }}\n\
         [routes.composed]\npaths = [\"/c\"]\n\
         [routes.composed.aggregate.calls.profile]\ncluster = \"users\"\npath = \"/profile\"\n",
        tracing(&collector, "sample_ratio = 0.0"),
        users.addr,
        shadow.addr
    ));
    let resp = g.get("/c", &[("traceparent", PARENT)]).await;
    assert_eq!(resp.status(), 200);
    let merged: Value = resp.json().await.unwrap();
    let (trace, span, _) = upstream_traceparent(&merged["profile"]);
    assert_eq!(trace, PARENT_TRACE);
    assert_ne!(span, "00f067aa0ba902b7");

    let resp = g.get("/m", &[("traceparent", PARENT)]).await;
    let (_, primary_parent, _) = upstream_traceparent(&resp.json().await.unwrap());
    let copy = eventually("the mirrored copy", || async { shadow.seen().pop() }).await;
    let tp = copy.headers["traceparent"].to_str().unwrap().to_string();
    assert!(tp.starts_with(&format!("00-{PARENT_TRACE}-")), "{tp}");
    assert!(
        !tp.contains(&primary_parent),
        "the copy has a span id of its own"
    );
}

#[tokio::test]
async fn a_reload_moves_export_to_the_new_collector_and_headers_are_redacted() {
    let up = Upstream::start("u").await;
    let (first, second) = (Collector::start().await, Collector::start().await);
    let admin_port = free_port();
    let body = |collector: &Collector, key: &str| {
        format!(
            "{}{}headers = {{ \"x-api-key\" = \"{key}\" }}\n\
             [clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n\
             headers = {{ \"x-route\" = \"visible\" }}\n",
            admin(admin_port),
            tracing(collector, "sample_ratio = 1.0"),
            up.addr
        )
    };
    let g = Gantry::start(&body(&first, "collector-secret-1"));
    assert_eq!(g.get("/", &[("x-route", "visible")]).await.status(), 200);
    first.wait_servers(1).await;
    assert_eq!(first.0.seen()[0].headers["x-api-key"], "collector-secret-1");

    let config = client()
        .get(format!("http://127.0.0.1:{admin_port}/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!config.contains("collector-secret-1"), "{config}");
    assert!(
        config.contains("x-api-key"),
        "the header's name stays: {config}"
    );
    assert!(
        !config.contains("visible"),
        "a route's match headers stay redacted: {config}"
    );

    g.rewrite_config("", &body(&second, "collector-secret-2"));
    let reload = client()
        .post(format!("http://127.0.0.1:{admin_port}/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    assert_eq!(g.get("/", &[("x-route", "visible")]).await.status(), 200);
    second.wait_servers(1).await;
    assert_eq!(
        second.0.seen()[0].headers["x-api-key"],
        "collector-secret-2"
    );
    assert_eq!(servers(&first.spans()).len(), 1);
}

#[tokio::test]
async fn queued_spans_are_flushed_on_sigterm() {
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    let mut g = Gantry::start(&format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0\n\
         batch = {{ interval = \"1h\" }}\n\
         [clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n",
        collector.0.addr, up.addr
    ));
    for _ in 0..3 {
        assert_eq!(g.get("/", &[]).await.status(), 200);
    }
    assert!(
        collector.spans().is_empty(),
        "nothing exported before the hour"
    );
    g.signal(libc::SIGTERM);
    let spans = collector.wait_servers(3).await;
    assert_eq!(spans.len(), 6);
    g.wait_exit(std::time::Duration::from_secs(30))
        .expect("gantry exits after SIGTERM");
}

#[tokio::test]
async fn the_old_process_flushes_its_spans_in_a_graceful_upgrade() {
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    let mut old = Gantry::start(&format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0\n\
         batch = {{ interval = \"1h\" }}\n\
         [clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n",
        collector.0.addr, up.addr
    ));
    for _ in 0..2 {
        assert_eq!(old.get("/", &[]).await.status(), 200);
    }
    let _new = old.spawn_upgrade();
    old.signal(libc::SIGQUIT);
    let spans = collector.wait_servers(2).await;
    assert_eq!(servers(&spans).len(), 2);
    old.wait_exit(std::time::Duration::from_secs(30))
        .expect("the old process exits after the upgrade");
}

#[tokio::test]
async fn redis_calls_are_events_with_their_outcome() {
    let redis = crate::common::redis_server::RedisServer::start();
    let (up, collector) = (Upstream::start("u").await, Collector::start().await);
    let g = Gantry::start(&format!(
        "{}{}[clusters.u]\nbackends = [\"{}\"]\n[routes.u]\npaths = [\"/\"]\ncluster = \"u\"\n\
         [routes.u.plugins.rate-limit]\nlimits = [{{ requests = 100, per = \"60s\" }}]\npolicy = \"redis\"\n",
        redis.section(),
        tracing(&collector, "sample_ratio = 1.0"),
        up.addr
    ));
    assert_eq!(g.get("/", &[]).await.status(), 200);
    let spans = collector.wait_servers(1).await;
    let event = servers(&spans)[0]
        .events
        .iter()
        .find(|e| e.name == "gantry.redis")
        .expect("a Redis event");
    let value = |key: &str| {
        event
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    };
    assert_eq!(
        value("db.system.name"),
        Some(Any::StringValue("redis".into()))
    );
    assert_eq!(
        value("gantry.redis.outcome"),
        Some(Any::StringValue("ok".into()))
    );
    assert!(matches!(value("gantry.redis.duration_us"), Some(Any::IntValue(us)) if us >= 0));
}

#[tokio::test]
async fn an_https_collector_is_trusted_through_ca_file_only() {
    let collector = crate::common::protocol_upstream::ProtocolUpstream::tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("collector-ca.pem");
    std::fs::write(&ca, &collector.cert_pem).unwrap();
    let port = collector.addr.port();
    let run = |ca_file: String| {
        let admin_port = free_port();
        let g = Gantry::start(&format!(
            "{}[tracing]\notlp_endpoint = \"https://localhost:{port}/v1/traces\"\n{ca_file}\n\
             sample_ratio = 1.0\nbatch = {{ interval = \"50ms\" }}\n\
             [routes.r]\npaths = [\"/\"]\nrespond = {{ body = \"x\" }}\n",
            admin(admin_port)
        ));
        (g, admin_port)
    };
    let (trusting, admin_port) = run(format!("ca_file = \"{}\"", ca.display()));
    assert_eq!(trusting.get("/", &[]).await.status(), 200);
    wait_for_metric(admin_port, "gantry_tracing_spans_exported_total 1\n").await;
    // The system's roots do not know the collector's certificate.
    let (untrusting, admin_port) = run(String::new());
    assert_eq!(untrusting.get("/", &[]).await.status(), 200);
    wait_for_metric(
        admin_port,
        "gantry_tracing_spans_dropped_total{reason=\"export_failed\"} 1\n",
    )
    .await;
}

#[test]
fn tracing_config_errors_are_reported_and_never_echo_header_values() {
    let cases = [
        ("[tracing]\notlp_endpoint = \"ftp://x\"\n", "must be an http:// or https:// URL"),
        ("[tracing]\notlp_endpoint = \"http://u:p@x/v1/traces\"\n", "must not carry credentials"),
        ("[tracing]\notlp_endpoint = \"http://x\"\nsample_ratio = 1.5\n", "between 0 and 1"),
        ("[tracing]\notlp_endpoint = \"http://x\"\nca_file = \"x.pem\"\n", "applies to an https"),
        ("[tracing]\notlp_endpoint = \"https://x\"\nca_file = \"/nonexistent.pem\"\n", "cannot read certificates"),
        ("[tracing]\notlp_endpoint = \"http://x\"\nbatch = { max_queue = 10, max_batch = 20 }\n", "cannot exceed max_queue"),
        ("[tracing]\notlp_endpoint = \"http://x\"\nbatch = { interval = \"0s\" }\n", "interval must be greater than zero"),
        ("[tracing]\notlp_endpoint = \"http://x\"\nheaders = { \"content-type\" = \"x\" }\n", "set by the exporter"),
        ("[tracing]\notlp_endpoint = \"http://x\"\nsampel_ratio = 1\n", "sampel_ratio"),
        ("[routes.r]\npaths = [\"/\"]\nrespond = { body = \"x\" }\ntracing = { sample_ratio = 1.0 }\n", "need a [tracing] section"),
    ];
    for (text, want) in cases {
        let (ok, out) = check_config(text);
        assert!(!ok, "{text} should fail");
        assert!(out.contains(want), "{text}: {out}");
    }
    let (ok, out) = check_config(
        "[tracing]\notlp_endpoint = \"http://x\"\nheaders = { \"x-api-key\" = \"bad\\nsecret-value\" }\n",
    );
    assert!(!ok);
    assert!(
        out.contains("x-api-key") && !out.contains("secret-value"),
        "{out}"
    );
    // The table form: the source line (with the value) is not quoted either.
    for table in [
        "x-honeycomb-team = \"secret-one\\u0001\"",
        "host = \"secret-two\"",
        "\"bad name\" = \"secret-three\"",
    ] {
        let (ok, out) = check_config(&format!(
            "[tracing]\notlp_endpoint = \"http://x\"\n[tracing.headers]\n{table}\n"
        ));
        assert!(!ok, "{table}");
        assert!(!out.contains("secret-"), "{out}");
    }
    let (ok, out) =
        check_config("[tracing]\notlp_endpoint = \"http://user:s3cret x@host/v1/traces\"\n");
    assert!(!ok && !out.contains("s3cret"), "{out}");
    let (ok, out) = check_config("[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\n");
    assert!(ok, "{out}");
}
