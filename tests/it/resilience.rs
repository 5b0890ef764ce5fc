//! Upstream resilience against real failing upstreams: outlier detection, retries on statuses,
//! resets and timeouts, per-try timeouts and route deadlines, the retry budget and the circuit
//! breaker. Faults are injected by the test ([`crate::common::Faults`]).

use crate::common::{
    admin_metrics, assert_problem, check_config, client, eventually, free_port, wait_for_metric,
    wait_for_port, Gantry, Upstream,
};
use serde_json::Value;

fn two_backends(cluster: &str, a: &Upstream, b: &Upstream, extra: &str) -> String {
    format!(
        "[clusters.{cluster}]\nbackends = [\"{}\", \"{}\"]\n{extra}\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"{cluster}\"\n",
        a.addr, b.addr
    )
}

pub fn admin_listener(admin: u16) -> String {
    format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"test-admin-token-0123456789\"")
}

pub async fn clusters(admin: u16) -> Value {
    client()
        .get(format!("http://127.0.0.1:{admin}/clusters"))
        .bearer_auth("test-admin-token-0123456789")
        .send()
        .await
        .expect("clusters")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn a_backend_answering_503_is_ejected_and_returns_after_its_ejection_time() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.faults.answer(503);
    let admin = free_port();
    let g = Gantry::start_with(
        &admin_listener(admin),
        &two_backends(
            "users",
            &bad,
            &good,
            "[clusters.users.retry]\n\
             [clusters.users.outlier]\nconsecutive_failures = 3\nejection_time = \"4s\"",
        ),
    );
    wait_for_port(admin);
    let c = client();
    // Each 503 is retried on the healthy backend: no client sees it.
    for i in 0..30 {
        let resp = c.get(g.url("/users/7")).send().await.expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(bad.hits(), 3, "ejected after three failures in a row");
    assert_eq!(good.hits(), 30);
    let state = clusters(admin).await;
    let backend = state["clusters"]["users"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == bad.addr.to_string())
        .expect("bad backend listed")
        .clone();
    assert!(backend["ejected_until"].is_string(), "{backend}");
    let metrics = admin_metrics(admin).await;
    assert!(metrics.contains("gantry_upstream_ejections_total{cluster=\"users\"} 1"));
    assert!(
        metrics.contains("gantry_upstream_retries_total{cluster=\"users\",reason=\"status\"} 3"),
        "{metrics}"
    );
    // Healed, it gets traffic again once its ejection ends.
    bad.faults.answer(0);
    eventually("the ejected backend serves again", || async {
        let resp = c.get(g.url("/")).send().await.expect("request");
        let v: Value = resp.json().await.expect("json");
        (v["upstream"] == "bad").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_hanging_backend_times_out_per_try_and_the_other_one_answers() {
    let (stuck, good) = (
        Upstream::start("stuck").await,
        Upstream::start("good").await,
    );
    stuck.faults.hang(true);
    let g = Gantry::start(&format!(
        "{}timeout = \"20s\"\n",
        two_backends(
            "users",
            &stuck,
            &good,
            "[clusters.users.retry]\nper_try_timeout = \"1s\"\nbudget = { percent = 100 }"
        )
    ));
    let c = client();
    for i in 0..6 {
        let resp = c.get(g.url("/")).send().await.expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["upstream"], "good");
    }
    assert!(stuck.hits() >= 1, "the stuck backend was tried");
}

#[tokio::test]
async fn the_route_deadline_gives_504_when_every_try_is_slow() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.faults.hang(true);
    b.faults.hang(true);
    let g = Gantry::start(&format!(
        "{}timeout = \"400ms\"\n",
        two_backends("users", &a, &b, "[clusters.users.retry]\nattempts = 5")
    ));
    let started = std::time::Instant::now();
    let resp = client().get(g.url("/")).send().await.expect("request");
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    assert_problem(resp, 504, "upstream-timeout").await;
}

#[tokio::test]
async fn retries_stay_within_the_budget_when_every_backend_fails() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.faults.answer(503);
    b.faults.answer(503);
    let g = Gantry::start(&two_backends(
        "users",
        &a,
        &b,
        "[clusters.users.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"1ms\" }\n\
         budget = { percent = 10, min_per_second = 0 }",
    ));
    let c = client();
    for _ in 0..200 {
        let resp = c.get(g.url("/")).send().await.expect("request");
        // The last answer is passed on as the upstream wrote it.
        assert_eq!(resp.status(), 503);
    }
    let sent = a.hits() + b.hits();
    let retries = sent - 200;
    assert!(retries >= 10, "some retries were allowed: {retries}");
    assert!(
        retries <= 21,
        "10 % of 200 requests, one in flight: {retries}"
    );
}

#[tokio::test]
async fn post_is_not_retried_on_a_status_and_a_large_body_is_not_replayed() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.faults.answer(503);
    let g = Gantry::start(&two_backends(
        "users",
        &bad,
        &good,
        "[clusters.users.retry]\nbudget = { percent = 100 }",
    ));
    let c = client();
    let mut refused = 0;
    for _ in 0..10 {
        let resp = c.post(g.url("/")).body("x").send().await.expect("request");
        if resp.status() == 503 {
            refused += 1;
        }
    }
    assert!(refused > 0, "round robin reached the failing backend");
    assert_eq!(bad.hits() + good.hits(), 10, "no POST was sent twice");
    // PUT is idempotent: retried with a small body, not with one past the 64 KiB buffer.
    for _ in 0..6 {
        let resp = c
            .put(g.url("/"))
            .body("small")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    let before = bad.hits() + good.hits();
    let large = vec![b'x'; 200 * 1024];
    let mut large_refused = 0;
    for _ in 0..6 {
        let resp = c
            .put(g.url("/"))
            .body(large.clone())
            .send()
            .await
            .expect("request");
        if resp.status() == 503 {
            large_refused += 1;
        }
    }
    assert!(
        large_refused > 0,
        "some large PUTs reached the failing backend"
    );
    assert_eq!(
        bad.hits() + good.hits() - before,
        6,
        "no large body was replayed"
    );
}

#[tokio::test]
async fn the_breaker_answers_503_at_once_beyond_max_requests() {
    let up = Upstream::start("slow").await;
    up.faults.hang(true);
    let admin = free_port();
    let g = Gantry::start_with(
        &admin_listener(admin),
        &format!(
            "[clusters.users]\nbackends = [\"{}\"]\nmax_requests = 2\n\
             [routes.all]\npaths = [\"/\"]\ncluster = \"users\"\n",
            up.addr
        ),
    );
    wait_for_port(admin);
    let url = g.url("/");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await })
        })
        .collect();
    eventually("two requests held upstream", || async {
        (up.hits() == 2).then_some(())
    })
    .await;
    let resp = client().get(g.url("/")).send().await.expect("request");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(resp, 503, "upstream-overloaded").await;
    assert_eq!(
        up.hits(),
        2,
        "the refused request never reached the upstream"
    );
    wait_for_metric(
        admin,
        "gantry_upstream_overloaded_total{cluster=\"users\"} 1",
    )
    .await;
    for h in held {
        h.abort();
    }
}

#[test]
fn retries_and_retry_together_are_refused() {
    let (ok, out) = check_config(
        "[clusters.c]\nbackends = [\"127.0.0.1:9\"]\nretries = 2\n[clusters.c.retry]\nattempts = 3\n\
         [routes.r]\npaths = [\"/\"]\ncluster = \"c\"\n",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("`retries` and `[retry]` both set the retry policy"),
        "{out}"
    );
    let (ok, out) = check_config(
        "[clusters.c]\nbackends = [\"127.0.0.1:9\"]\n[clusters.c.retry]\non = [\"sometimes\"]\n\
         statuses = [200]\n[clusters.c.outlier]\nmax_ejected_percent = 150\n\
         [routes.r]\npaths = [\"/\"]\ncluster = \"c\"\n",
    );
    assert!(!ok, "{out}");
    for expected in [
        "unknown retry condition `sometimes`",
        "200 is not an error status",
        "max_ejected_percent must be between 0 and 100",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    let (ok, out) =
        check_config("[routes.r]\npaths = [\"/\"]\ntimeout = \"1s\"\nrespond = { body = \"x\" }\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("timeout bounds the wait for an upstream"),
        "{out}"
    );
}

/// The share of 300 requests, 12 at a time, that a backend 200 ms slower than its two peers
/// receives under `balancer`.
async fn slow_share(balancer: &str) -> f64 {
    let ups = [
        Upstream::start("fast1").await,
        Upstream::start("fast2").await,
        Upstream::start("slow").await,
    ];
    ups[2]
        .faults
        .delay_ms
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    let g = Gantry::start(&format!(
        "[clusters.c]\nbalancer = \"{balancer}\"\nbackends = [{}]\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"c\"\n",
        list.join(", ")
    ));
    let url = g.url("/");
    let workers: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                for _ in 0..25 {
                    let resp = c.get(&url).send().await.expect("request");
                    assert_eq!(resp.status(), 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let total: usize = ups.iter().map(Upstream::hits).sum();
    assert_eq!(total, 300);
    ups[2].hits() as f64 / total as f64
}

#[tokio::test]
async fn least_request_sends_a_slow_backend_a_small_share() {
    let share = slow_share("least_request").await;
    assert!(share < 0.15, "the slow backend got {:.0} %", share * 100.0);
}

#[tokio::test]
async fn peak_ewma_sends_a_slow_backend_a_small_share() {
    let share = slow_share("peak_ewma").await;
    assert!(share < 0.15, "the slow backend got {:.0} %", share * 100.0);
}
