//! Load balancing, retries and health checks against real upstreams.

use crate::common::{
    assert_problem, client, dead_addr, free_port, wait_for_metric, wait_for_port, Gantry, Upstream,
};
use serde_json::Value;
use std::collections::HashMap;

async fn upstream_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    v["upstream"].as_str().expect("upstream name").to_string()
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let g = Gantry::start(&format!(
        "[clusters.rr]\nbackends = [\"{}\", {{ addr = \"{}\", weight = 3 }}]\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"rr\"\n",
        a.addr, b.addr
    ));
    let c = client();
    for _ in 0..1000 {
        let resp = c.get(g.url("/")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 1000);
    assert!(
        (220..=280).contains(&ha),
        "a got {ha}, b got {hb}; expected about 250/750"
    );
}

#[tokio::test]
async fn consistent_hashing_is_sticky_and_spreads() {
    let ups = [
        Upstream::start("h0").await,
        Upstream::start("h1").await,
        Upstream::start("h2").await,
    ];
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    let g = Gantry::start(&format!(
        "[clusters.carts]\nbalancer = \"consistent_hash\"\nhash_on = \"header:x-user-id\"\nbackends = [{}]\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"carts\"\n",
        list.join(", ")
    ));
    let c = client();
    let mut owner: HashMap<u32, String> = HashMap::new();
    for user in 0..60u32 {
        for _ in 0..3 {
            let resp = c
                .get(g.url("/cart"))
                .header("x-user-id", user.to_string())
                .send()
                .await
                .expect("request");
            let up = upstream_of(resp).await;
            let first = owner.entry(user).or_insert_with(|| up.clone());
            assert_eq!(*first, up, "user {user} moved between backends");
        }
    }
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for o in owner.values() {
        *per_backend.entry(o.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "every backend owns some keys: {per_backend:?}"
    );
    assert!(
        per_backend.values().all(|n| *n >= 5),
        "spread: {per_backend:?}"
    );
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_backend() {
    let live = Upstream::start("live").await;
    let g = Gantry::start(&format!(
        "[clusters.flaky]\nbackends = [\"{}\", \"{}\"]\nretries = 1\nconnect_timeout = \"500ms\"\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"flaky\"\n",
        dead_addr(),
        live.addr
    ));
    let c = client();
    for _ in 0..40 {
        assert_eq!(
            upstream_of(c.get(g.url("/")).send().await.expect("request")).await,
            "live"
        );
    }
    assert_eq!(live.hits(), 40);
}

#[tokio::test]
async fn all_backends_refusing_is_a_502_problem() {
    let g = Gantry::start(&format!(
        "[clusters.down]\nbackends = [\"{}\", \"{}\"]\nretries = 3\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"down\"\n",
        dead_addr(),
        dead_addr()
    ));
    let resp = client().get(g.url("/")).send().await.expect("request");
    assert_problem(resp, 502, "upstream-unavailable").await;
}

#[tokio::test]
async fn health_checks_eject_a_dead_backend_and_all_down_is_503() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let admin = free_port();
    let g = Gantry::start_with(
        &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\""),
        &format!(
            "[clusters.hc]\nbackends = [\"{}\", \"{}\"]\nretries = 0\n\
             [clusters.hc.health_check]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
             healthy_threshold = 1\nunhealthy_threshold = 2\n\
             [routes.all]\npaths = [\"/\"]\ncluster = \"hc\"\n",
            a.addr, b.addr
        ),
    );
    wait_for_port(admin);
    let health = |backend: std::net::SocketAddr, value: u8| async move {
        let line =
            format!("gantry_upstream_health{{cluster=\"hc\",backend=\"{backend}\"}} {value}");
        wait_for_metric(admin, &line).await
    };
    let c = client();
    for _ in 0..10 {
        upstream_of(c.get(g.url("/")).send().await.expect("request")).await;
    }
    assert!(a.hits() > 0 && b.hits() > 0);

    // Kill b; once two checks fail it is marked down and no request may fail.
    b.kill();
    health(b.addr, 0).await;
    for _ in 0..100 {
        assert_eq!(
            upstream_of(c.get(g.url("/")).send().await.expect("request")).await,
            "a"
        );
    }

    // An unhealthy answer (503 from /healthz) also marks a backend down.
    a.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    health(a.addr, 0).await;
    let resp = c.get(g.url("/")).send().await.expect("request");
    assert_problem(resp, 503, "no-healthy-backend").await;

    // And it comes back after one good check.
    a.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    health(a.addr, 1).await;
    assert_eq!(
        upstream_of(c.get(g.url("/")).send().await.expect("request")).await,
        "a"
    );
}
