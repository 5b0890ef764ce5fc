//! `rate-limit` (local and Redis) and `concurrency-limit` through the real gateway, with a real
//! `redis-server` per test.

use crate::common::redis_server::RedisServer;
use crate::common::{assert_problem, eventually, Gantry, Upstream};
use std::time::{Duration, Instant};

fn header(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()[name]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number")
}

/// Routes exercising counts, keys and group overrides under `policy`.
fn budget_routes(policy: &str) -> String {
    format!(
        r#"
[consumers.gold]
groups = ["gold"]
keys = ["gold-key-123"]
[consumers.basic]
keys = ["basic-key-123"]

[routes.ip]
paths = ["/ip"]
respond = {{ body = "ok" }}
[routes.ip.plugins.rate-limit]
limits = [{{ requests = 3, per = "60s" }}, {{ requests = 100, per = "1h" }}]
policy = "{policy}"

[routes.tenant]
paths = ["/tenant"]
respond = {{ body = "ok" }}
[routes.tenant.plugins.rate-limit]
limits = [{{ requests = 2, per = "60s" }}]
key = "header:x-tenant"
policy = "{policy}"

[routes.plans]
paths = ["/plans"]
respond = {{ body = "ok" }}
[routes.plans.plugins.key-auth]
[routes.plans.plugins.rate-limit]
limits = [{{ requests = 1, per = "60s" }}]
key = "consumer"
group_limits = {{ gold = [{{ requests = 3, per = "60s" }}] }}
policy = "{policy}"
"#
    )
}

async fn check_budgets(g: &Gantry) {
    // Exact counts, the tightest limit's headers, then 429 with Retry-After.
    for remaining in [2, 1, 0] {
        let resp = g.get("/ip", &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "ratelimit-limit"), 3);
        assert_eq!(header(&resp, "ratelimit-remaining"), remaining);
        assert!((1..=60).contains(&header(&resp, "ratelimit-reset")));
    }
    let resp = g.get("/ip", &[]).await;
    let retry = header(&resp, "retry-after");
    // At most two windows: the sliding estimate lets the window's count decay through the next.
    assert!((1..=120).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&resp, "ratelimit-limit"), 3);
    assert_eq!(header(&resp, "ratelimit-remaining"), 0);
    assert_problem(resp, 429, "rate-limited").await;

    // Keyed by header: each tenant has its own budget; a request without the header is
    // counted under its client IP, not unlimited.
    for tenant in ["a", "b"] {
        for _ in 0..2 {
            let resp = g.get("/tenant", &[("x-tenant", tenant)]).await;
            assert_eq!(resp.status(), 200, "tenant {tenant}");
        }
        let resp = g.get("/tenant", &[("x-tenant", tenant)]).await;
        assert_eq!(resp.status(), 429, "tenant {tenant}");
    }
    for expected in [200, 200, 429] {
        assert_eq!(g.get("/tenant", &[]).await.status(), expected);
    }

    // Keyed by consumer, with a per-group override.
    for (key, allowed) in [("gold-key-123", 3), ("basic-key-123", 1)] {
        for i in 0..=allowed {
            let resp = g.get("/plans", &[("x-api-key", key)]).await;
            let want = if i < allowed { 200 } else { 429 };
            assert_eq!(resp.status(), want, "{key} request {i}");
        }
    }
}

#[tokio::test]
async fn local_limits_count_per_key_and_tell_clients_their_budget() {
    check_budgets(&Gantry::start(&budget_routes("local"))).await;
}

#[tokio::test]
async fn redis_limits_count_per_key_and_tell_clients_their_budget() {
    let redis = RedisServer::start();
    let g = Gantry::start(&format!("{}{}", redis.section(), budget_routes("redis")));
    check_budgets(&g).await;
    // One hash per key and window length, readable and in one Cluster slot per request.
    let keys = redis.keys("gantry:rl:*");
    for want in [
        "gantry:rl:{route:ip|ip=127.0.0.1}:0:60000",
        "gantry:rl:{route:ip|ip=127.0.0.1}:1:3600000",
        "gantry:rl:{route:tenant|header=a}:0:60000",
        "gantry:rl:{route:tenant|no-header-ip=127.0.0.1}:0:60000",
        "gantry:rl:{route:plans|consumer=gold}:group=gold:0:60000",
        "gantry:rl:{route:plans|consumer=basic}:0:60000",
    ] {
        assert!(keys.iter().any(|k| k == want), "no {want} in {keys:?}");
    }
}

#[tokio::test]
async fn redis_cluster_mode_limits_the_same_way() {
    let redis = RedisServer::start_cluster();
    let g = Gantry::start(&format!(
        "{}[routes.ip]\npaths = [\"/ip\"]\nrespond = {{ body = \"ok\" }}\n\
         [routes.ip.plugins.rate-limit]\nlimits = [{{ requests = 2, per = \"60s\" }}, \
         {{ requests = 10, per = \"1h\" }}]\npolicy = \"redis\"\n",
        redis.section()
    ));
    for expected in [200, 200, 429] {
        assert_eq!(g.get("/ip", &[]).await.status(), expected);
    }
}

/// Routes limited to `limit` per second in delay mode.
fn delay_routes(policy: &str, limit: u32) -> String {
    format!(
        "[routes.smooth]\npaths = [\"/smooth\"]\nrespond = {{ body = \"ok\" }}\n\
         [routes.smooth.plugins.rate-limit]\nlimits = [{{ requests = {limit}, per = \"1s\" }}]\n\
         policy = \"{policy}\"\nmode = \"delay\"\nmax_delay = \"500ms\"\n"
    )
}

/// Sends 20 requests per second (twice the limit) for 2.5 s without waiting for answers;
/// returns each request's status and latency.
async fn offer_twice_the_rate(g: &Gantry) -> Vec<(u16, Duration)> {
    let mut pending = Vec::new();
    let started = Instant::now();
    for i in 0..50u32 {
        let due = Duration::from_millis(50) * i;
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        let req = crate::common::client().get(g.url("/smooth"));
        pending.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = req.send().await.expect("answered").status().as_u16();
            (status, sent.elapsed())
        }));
    }
    let mut results = Vec::new();
    for p in pending {
        results.push(p.await.expect("request task"));
    }
    results
}

fn check_delayed(results: &[(u16, Duration)]) {
    let served: Vec<Duration> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, d)| *d)
        .collect();
    assert!(results.iter().all(|(s, _)| [200, 429].contains(s)));
    // 10/s over 2.5 s of offered load (plus what finishes within max_delay after it).
    assert!(
        (18..=33).contains(&served.len()),
        "{} served: {results:?}",
        served.len()
    );
    // Held, not refused: several requests waited their turn (reject mode holds none), and none
    // was held unboundedly (5x max_delay, for a loaded machine; the exact delays are the
    // limiter's unit tests).
    let held = served
        .iter()
        .filter(|d| **d >= Duration::from_millis(80))
        .count();
    assert!(held >= 5, "{held} held: {served:?}");
    assert!(
        served.iter().all(|d| *d < Duration::from_millis(2500)),
        "{served:?}"
    );
}

#[tokio::test]
async fn local_delay_mode_holds_requests_to_the_rate() {
    let g = Gantry::start(&delay_routes("local", 10));
    check_delayed(&offer_twice_the_rate(&g).await);
}

#[tokio::test]
async fn redis_delay_mode_holds_requests_to_the_rate() {
    let redis = RedisServer::start();
    let g = Gantry::start(&format!("{}{}", redis.section(), delay_routes("redis", 10)));
    check_delayed(&offer_twice_the_rate(&g).await);
}

#[tokio::test]
async fn a_burst_on_each_side_of_a_redis_window_edge_is_not_let_through_twice() {
    let redis = RedisServer::start();
    let g = Gantry::start(&format!(
        "{}[routes.edge]\npaths = [\"/edge\"]\nrespond = {{ body = \"ok\" }}\n\
         [routes.edge.plugins.rate-limit]\nlimits = [{{ requests = 10, per = \"1s\" }}]\n\
         key = \"header:x-attempt\"\npolicy = \"redis\"\n",
        redis.section()
    ));
    // Windows follow Redis's clock; a slow machine may cross the edge mid-burst, so retry
    // with a fresh key until one attempt has both bursts on the intended sides.
    for attempt in 0..3 {
        let key = attempt.to_string();
        // 600 ms into a window: 12 requests, then 12 more 30 ms after the next edge.
        let until_late = {
            let now = redis.now_ms();
            let late = now / 1000 * 1000 + 600;
            Duration::from_millis(if late > now {
                late - now
            } else {
                late + 1000 - now
            })
        };
        tokio::time::sleep(until_late).await;
        let window = redis.now_ms() / 1000;
        let mut before = 0;
        for _ in 0..12 {
            before += usize::from(g.get("/edge", &[("x-attempt", &key)]).await.status() == 200);
        }
        let first_done = redis.now_ms();
        let next_edge = (window + 1) * 1000;
        if first_done >= next_edge {
            eprintln!(
                "attempt {attempt}: the first burst ended {} ms after the edge",
                first_done - next_edge
            );
            continue;
        }
        tokio::time::sleep(Duration::from_millis(next_edge + 30 - first_done)).await;
        let mut after = 0;
        for _ in 0..12 {
            after += usize::from(g.get("/edge", &[("x-attempt", &key)]).await.status() == 200);
        }
        if redis.now_ms() >= next_edge + 500 {
            continue;
        }
        assert_eq!(before, 10, "the limit before the edge");
        // Fixed windows would allow 10 more right after the edge.
        assert!(after <= 5, "{after} allowed just after the edge");
        return;
    }
    panic!("three attempts could not place bursts on both sides of a window edge");
}

#[tokio::test]
async fn two_gateways_sharing_redis_enforce_one_combined_limit() {
    let redis = RedisServer::start();
    let routes = format!(
        "{}[routes.shared]\npaths = [\"/shared\"]\nrespond = {{ body = \"ok\" }}\n\
         [routes.shared.plugins.rate-limit]\nlimits = [{{ requests = 10, per = \"60s\" }}]\n\
         key = \"route\"\npolicy = \"redis\"\n",
        redis.section()
    );
    let (a, b) = (Gantry::start(&routes), Gantry::start(&routes));
    let mut allowed = 0;
    for i in 0..16 {
        let g = if i % 2 == 0 { &a } else { &b };
        let resp = g.get("/shared", &[]).await;
        if resp.status() == 200 {
            allowed += 1;
            assert_eq!(header(&resp, "ratelimit-remaining"), 10 - allowed);
        } else {
            assert_eq!(resp.status(), 429);
        }
    }
    assert_eq!(allowed, 10, "one budget across both gateways");
}

#[tokio::test]
async fn when_redis_fails_on_store_error_applies_at_once_and_limiting_resumes_after() {
    let mut redis = RedisServer::start();
    let admin = crate::common::free_port();
    let g = Gantry::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}\
         [routes.allow]\npaths = [\"/allow\"]\nrespond = {{ body = \"ok\" }}\n\
         [routes.allow.plugins.rate-limit]\nlimits = [{{ requests = 3, per = \"60s\" }}]\n\
         policy = \"redis\"\non_store_error = \"allow\"\n\
         [routes.deny]\npaths = [\"/deny\"]\nrespond = {{ body = \"ok\" }}\n\
         [routes.deny.plugins.rate-limit]\nlimits = [{{ requests = 3, per = \"60s\" }}]\n\
         policy = \"redis\"\non_store_error = \"deny\"\n",
        redis.section_with_timeout("50ms")
    ));
    for expected in [200, 200, 200, 429] {
        assert_eq!(g.get("/allow", &[]).await.status(), expected);
    }
    assert_eq!(g.get("/deny", &[]).await.status(), 200);

    redis.stop();
    for _ in 0..10 {
        let started = Instant::now();
        let resp = g.get("/allow", &[]).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(resp.status(), 200, "allow: let through while Redis is down");
        assert!(resp.headers().get("ratelimit-remaining").is_none());
        let started = Instant::now();
        let resp = g.get("/deny", &[]).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_problem(resp, 503, "rate-limit-unavailable").await;
    }
    // Every request decided without Redis is counted for /metrics.
    let metrics = crate::common::client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("admin listener")
        .text()
        .await
        .expect("metrics text");
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gantry_redis_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gantry_redis_errors_total in:\n{metrics}"));
    assert_eq!(errors, 20, "{metrics}");
    let warnings = g.log().matches("failed operation(s)").count();
    assert_eq!(
        warnings,
        1,
        "one warning per interval, not per request:\n{}",
        g.log()
    );

    // Redis comes back empty: limiting resumes by itself with fresh counts.
    redis.restart();
    let resumed = eventually("limiting resumes", || async {
        let resp = g.get("/allow", &[]).await;
        resp.headers()
            .contains_key("ratelimit-remaining")
            .then_some(resp)
    })
    .await;
    assert_eq!(header(&resumed, "ratelimit-remaining"), 2);
    for expected in [200, 200, 429] {
        assert_eq!(g.get("/allow", &[]).await.status(), expected);
    }
    assert_eq!(g.get("/deny", &[]).await.status(), 200);
    assert!(g.log().contains("reachable again"), "{}", g.log());
}

#[tokio::test]
async fn concurrency_limit_caps_in_flight_requests_and_never_leaks_slots() {
    let up = Upstream::start("slow").await;
    let g = Gantry::start(&format!(
        "[clusters.slow]\nbackends = [\"{}\"]\n[routes.slow]\npaths = [\"/slow\"]\ncluster = \"slow\"\n\
         [routes.slow.plugins.concurrency-limit]\nmax_inflight = 2\n",
        up.addr
    ));
    let burst = |ms: u64, n: usize, timeout: Duration| {
        let url = g.url(&format!("/slow/{ms}"));
        futures::future::join_all((0..n).map(move |_| {
            let c = reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .expect("client");
            let url = url.clone();
            async move { c.get(url).send().await }
        }))
    };
    let results = burst(600, 4, Duration::from_secs(5)).await;
    let mut refused = 0;
    for r in results {
        let resp = r.expect("answered");
        if resp.status() == 503 {
            assert_eq!(resp.headers()["retry-after"], "1");
            assert_problem(resp, 503, "concurrency-limited").await;
            refused += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert_eq!(
        refused, 2,
        "two of four parallel requests are over the limit"
    );

    // Clients that give up early still release their slots.
    let gave_up = burst(400, 2, Duration::from_millis(100)).await;
    assert!(gave_up.iter().all(|r| r.is_err()), "the clients timed out");
    // Their slots come back once the gateway sees them gone (at the latest when the upstream
    // answers); a leaked slot would refuse one of the two forever.
    eventually("no slot leaked", || async {
        let results = burst(50, 2, Duration::from_secs(5)).await;
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|resp| resp.status() == 200))
            .then_some(())
    })
    .await;
}
