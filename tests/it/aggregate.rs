//! Service composition: one request, several concurrent calls, one merged JSON response.

use crate::common::{assert_problem, check_config, dead_addr, Gantry, Upstream};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The gateway of the composition tests with its two upstreams (kept alive with it).
struct Composition {
    g: Gantry,
    users: Upstream,
    orders: Upstream,
}

async fn composition() -> Composition {
    let users = Upstream::start("users").await;
    let orders = Upstream::start("orders").await;
    let dead = dead_addr();
    let g = Gantry::start(&format!(
        r#"
[clusters.users]
backends = ["{users}"]
[clusters.orders]
backends = ["{orders}"]
[clusters.dead]
backends = ["{dead}"]
retries = 0

[routes.dashboard]
paths = ["~^/dashboard/(?<user>[a-z0-9]+)$"]
methods = ["GET"]
[routes.dashboard.aggregate]
timeout = "800ms"
[routes.dashboard.aggregate.calls.profile]
cluster = "users"
path = "/users/$path.user"
[routes.dashboard.aggregate.calls.orders]
cluster = "orders"
path = "/orders?user=$path.user"
required = false
forward_headers = ["authorization", "accept-language"]

[consumers.app]
keys = ["app-key-123456"]
[routes.guarded]
paths = ["/guarded"]
[routes.guarded.plugins.key-auth]
[routes.guarded.aggregate.calls.profile]
cluster = "users"
path = "/users/$consumer"

[routes.encoded]
paths = ["/encoded"]
[routes.encoded.aggregate.calls.profile]
cluster = "users"
path = "/users/$query.id?view=$query.view"

[routes.partial]
paths = ["/partial"]
[routes.partial.aggregate.calls.profile]
cluster = "users"
path = "/users/me"
[routes.partial.aggregate.calls.orders]
cluster = "dead"
path = "/orders"
required = false

[routes.broken]
paths = ["/broken"]
[routes.broken.aggregate.calls.profile]
cluster = "dead"
path = "/users/me"
[routes.broken.aggregate.calls.orders]
cluster = "orders"
path = "/orders"
required = false

[routes.parallel]
paths = ["/parallel"]
[routes.parallel.aggregate.calls.a]
cluster = "users"
path = "/together/parallel/2"
[routes.parallel.aggregate.calls.b]
cluster = "orders"
path = "/together/parallel/2"

[routes.budget]
paths = ["/budget"]
[routes.budget.aggregate]
timeout = "500ms"
[routes.budget.aggregate.calls.fast]
cluster = "users"
path = "/users/me"
[routes.budget.aggregate.calls.late]
cluster = "orders"
path = "/slow/3000"
required = false
"#,
        users = users.addr,
        orders = orders.addr,
    ));
    Composition { g, users, orders }
}

#[tokio::test]
async fn calls_are_merged_with_captures_plugins_and_encoded_client_input() {
    let Composition {
        g,
        users,
        orders: _orders,
    } = composition().await;
    // All succeed: one object keyed by call name; captures and forwarded headers arrive.
    let resp = g
        .get(
            "/dashboard/alice",
            &[("authorization", "Bearer t"), ("cookie", "private=1")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("gantry-partial").is_none());
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["profile"]["upstream"], "users");
    assert_eq!(body["profile"]["uri"], "/users/alice");
    assert_eq!(body["orders"]["uri"], "/orders?user=alice");
    assert_eq!(body["orders"]["headers"]["authorization"], "Bearer t");
    assert!(body["profile"]["headers"].get("authorization").is_none());
    assert!(body["orders"]["headers"].get("cookie").is_none());
    assert_eq!(
        body["orders"]["headers"]["x-request-id"],
        request_id.as_str()
    );
    assert!(body.get("errors").is_none());

    // The route's plugins apply once, before any call: refused requests call nothing.
    let hits = users.hits();
    assert_problem(g.get("/guarded", &[]).await, 401, "missing-credentials").await;
    assert_eq!(users.hits(), hits, "a refused request makes no call");
    let body: Value = g
        .get("/guarded", &[("x-api-key", "app-key-123456")])
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["profile"]["uri"], "/users/app");
    assert_eq!(body["profile"]["headers"]["x-consumer-name"], "app");

    // Client input is percent-encoded into a call's target: it cannot add segments or params.
    let body: Value = g
        .get("/encoded?id=../admin%3Fx&view=a%20b%26c", &[])
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        body["profile"]["uri"],
        "/users/..%2Fadmin%3Fx?view=a%20b%26c"
    );
    let problem = assert_problem(
        g.get("/encoded?id=..", &[]).await,
        502,
        "aggregate-call-failed",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`..`"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_failed_optional_call_is_partial_and_a_failed_required_one_a_502() {
    let Composition {
        g,
        users: _users,
        orders: _orders,
    } = composition().await;
    // An optional call fails: null, listed under `errors`, named in Gantry-Partial.
    let resp = g.get("/partial", &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["gantry-partial"], "orders");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["profile"]["uri"], "/users/me");
    assert!(body["orders"].is_null());
    assert_eq!(body["errors"]["orders"]["status"], 502);

    // A required call fails: 502 naming it.
    let problem = assert_problem(g.get("/broken", &[]).await, 502, "aggregate-call-failed").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`profile`"),
        "{problem}"
    );
}

#[tokio::test]
async fn calls_run_in_parallel_within_the_budget() {
    let Composition {
        g,
        users: _users,
        orders: _orders,
    } = composition().await;
    // Calls run in parallel: each upstream holds its call until the other call has arrived
    // too (`/together/`), which serial calls never do.
    let resp = g.get("/parallel", &[]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        (&body["a"]["uri"], &body["b"]["uri"]),
        (
            &"/together/parallel/2".into(),
            &"/together/parallel/2".into()
        ),
        "{body}"
    );

    // A call that overruns the budget is cut at the budget; the response is still whole.
    let started = Instant::now();
    let resp = g.get("/budget", &[]).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["gantry-partial"], "late");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["fast"]["uri"], "/users/me");
    assert_eq!(body["errors"]["late"]["status"], 504);
    // Cut at the budget: not before it, and well before the late call's own 3 s (the 504 in
    // `errors` says the budget ended it; the bound is 6x the budget, for a loaded machine).
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(3000),
        "took {took:?} for a 500 ms budget"
    );
}

#[tokio::test]
async fn a_call_to_an_unknown_cluster_or_capture_is_a_config_error() {
    let (ok, text) = check_config(
        "[routes.r]\npaths = [\"/r\"]\n[routes.r.aggregate.calls.a]\ncluster = \"nope\"\npath = \"x/$path.id\"\n",
    );
    assert!(
        !ok && text.contains("cluster `nope` is not defined") && text.contains("$path.id"),
        "{text}"
    );
}

#[tokio::test]
async fn calls_retry_a_failing_status_elsewhere_and_eject_its_backend() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.faults.answer(503);
    let g = Gantry::start(&format!(
        "[clusters.users]\nbackends = [\"{}\", \"{}\"]\n[clusters.users.retry]\n\
         [clusters.users.outlier]\nconsecutive_failures = 2\nejection_time = \"30s\"\n\
         [routes.page]\npaths = [\"/page\"]\n[routes.page.aggregate.calls.profile]\n\
         cluster = \"users\"\npath = \"/users/7\"\n",
        bad.addr, good.addr
    ));
    let c = crate::common::client();
    for i in 0..20 {
        let resp = c.get(g.url("/page")).send().await.expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["profile"]["upstream"], "good", "request {i}: {v}");
    }
    assert_eq!(bad.hits(), 2, "ejected after two failures in a row");
}
