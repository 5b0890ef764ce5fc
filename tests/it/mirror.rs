//! Request mirroring: the mirror gets its share of the requests as they were sent upstream,
//! and nothing it does (hanging, failing, a body too large to copy) reaches the client.

use crate::common::recorder::Recorder;
use crate::common::{
    admin_metrics, check_config, client, dead_addr, eventually, free_port, wait_for_metric, Gantry,
    Upstream,
};
use serde_json::Value;
use std::net::SocketAddr;

/// Clusters `users` (at `primary`) and `shadow` (at `mirror`), an admin listener on `admin`,
/// and route `users` on `/` mirroring to `shadow` with `mirror_keys` (e.g. `percent = 10`).
fn mirror_config(primary: SocketAddr, mirror: SocketAddr, admin: u16, mirror_keys: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"test-admin-token-0123456789\"\n\
         [clusters.users]\nbackends = [\"{primary}\"]\n\
         [clusters.shadow]\nbackends = [\"{mirror}\"]\n\
         [routes.users]\npaths = [\"/\"]\ncluster = \"users\"\n\
         mirror = {{ cluster = \"shadow\"{mirror_keys} }}\n"
    )
}

/// The `gantry_mirror_requests_total` line of route `users` to cluster `cluster`.
fn mirror_line(cluster: &str, outcome: &str, n: usize) -> String {
    format!(
        "gantry_mirror_requests_total{{route=\"users\",cluster=\"{cluster}\",outcome=\"{outcome}\"}} {n}\n"
    )
}

/// The value of one mirror counter of route `users`.
async fn mirror_count(admin: u16, cluster: &str, outcome: &str) -> usize {
    let prefix = format!(
        "gantry_mirror_requests_total{{route=\"users\",cluster=\"{cluster}\",outcome=\"{outcome}\"}} "
    );
    let metrics = admin_metrics(admin).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test]
async fn every_request_is_mirrored_as_it_was_sent_upstream() {
    let (primary, mirror) = (Upstream::start("users").await, Recorder::start().await);
    let admin = free_port();
    let g = Gantry::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"test-admin-token-0123456789\"\n\
         [clusters.users]\nbackends = [\"{}\"]\n[clusters.shadow]\nbackends = [\"{}\"]\n\
         [routes.users]\npaths = [\"/api\"]\nstrip_prefix = true\ncluster = \"users\"\n\
         mirror = {{ cluster = \"shadow\" }}\n\
         [routes.users.plugins.request-transform]\nset_headers = {{ \"x-gateway\" = \"gantry\" }}\n",
        primary.addr, mirror.addr
    ));
    let c = client();
    let mut sent_upstream = Vec::new();
    for i in 0..10 {
        let resp = if i % 2 == 0 {
            c.get(g.url(&format!("/api/users/{i}?x=1"))).send().await
        } else {
            c.post(g.url(&format!("/api/users/{i}")))
                .body(format!("payload {i}"))
                .send()
                .await
        }
        .expect("request");
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.expect("echo");
        assert_eq!(echo["upstream"], "users");
        sent_upstream.push(echo);
    }
    assert_eq!(primary.hits(), 10);
    let seen = eventually("the mirror has every request", || async {
        let seen = mirror.seen();
        (seen.len() == 10).then_some(seen)
    })
    .await;
    wait_for_metric(admin, &mirror_line("shadow", "sent", 10)).await;
    for echo in &sent_upstream {
        let id = echo["headers"]["x-request-id"]
            .as_str()
            .expect("request id");
        let copy = seen
            .iter()
            .find(|r| r.headers["x-request-id"] == id)
            .unwrap_or_else(|| panic!("request {id} was not mirrored"));
        assert_eq!(
            copy.uri,
            echo["uri"].as_str().expect("uri"),
            "rewritten path"
        );
        assert_eq!(copy.headers["x-gateway"], "gantry", "the plugin's header");
        assert_eq!(
            copy.headers["x-forwarded-for"],
            echo["headers"]["x-forwarded-for"].as_str().expect("xff")
        );
        assert_eq!(copy.body, echo["body"].as_str().expect("body").as_bytes());
        // 127.0.0.1:PORT becomes 127.0.0.1-shadow:PORT.
        let host = echo["headers"]["host"].as_str().expect("host");
        let (name, port) = host.rsplit_once(':').expect("a port");
        assert_eq!(copy.headers["host"], format!("{name}-shadow:{port}"));
    }
    assert!(
        seen.iter().any(|r| r.body.starts_with(b"payload")),
        "POST bodies were mirrored"
    );
}

#[tokio::test]
async fn percent_10_mirrors_about_a_tenth() {
    let (primary, mirror) = (
        Upstream::start("users").await,
        Upstream::start("shadow").await,
    );
    let admin = free_port();
    let g = Gantry::start(&mirror_config(
        primary.addr,
        mirror.addr,
        admin,
        ", percent = 10",
    ));
    let c = client();
    for _ in 0..2000 {
        let resp = c.get(g.url("/")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(primary.hits(), 2000);
    // Every mirror that arrived has been answered and counted.
    let mirrored = eventually("the mirrors are all answered", || async {
        let sent = mirror_count(admin, "shadow", "sent").await;
        (sent == mirror.hits()).then_some(sent)
    })
    .await;
    // 10 % of 2,000 is 200; four standard deviations (13.4 each) either side.
    assert!((146..=254).contains(&mirrored), "{mirrored} mirrored");
}

#[tokio::test]
async fn a_hanging_mirror_never_holds_the_primary_and_the_in_flight_cap_drops_the_rest() {
    let (primary, mirror) = (
        Upstream::start("users").await,
        Upstream::start("shadow").await,
    );
    mirror.faults.hang(true);
    let admin = free_port();
    let g = Gantry::start(&mirror_config(primary.addr, mirror.addr, admin, ""));
    let c = client();
    let get = |i: usize| {
        let (c, url) = (c.clone(), g.url(&format!("/item/{i}")));
        async move {
            let resp = c.get(url).send().await.expect("request");
            assert_eq!(resp.status(), 200);
            let echo: Value = resp.json().await.expect("echo");
            assert_eq!(echo["upstream"], "users");
            assert_eq!(echo["uri"], format!("/item/{i}"));
        }
    };
    // Each answered while every earlier mirror still hangs.
    for i in 0..50 {
        get(i).await;
    }
    eventually("the mirrors pile up at the hanging mirror", || async {
        (mirror.hits() == 50).then_some(())
    })
    .await;
    // Beyond the 256 mirrors in flight, mirrors are dropped; the primaries go on.
    let total = 350;
    for i in 50..total {
        get(i).await;
    }
    assert_eq!(primary.hits(), total);
    eventually("each mirror arrived or was dropped", || async {
        let dropped = mirror_count(admin, "shadow", "dropped_queue_full").await;
        (dropped > 0 && mirror.hits() + dropped == total).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_body_over_max_body_goes_upstream_whole_and_is_not_mirrored() {
    let (primary, mirror) = (
        Upstream::start("users").await,
        Upstream::start("shadow").await,
    );
    let admin = free_port();
    let g = Gantry::start(&mirror_config(
        primary.addr,
        mirror.addr,
        admin,
        ", max_body = \"1KiB\"",
    ));
    let c = client();
    let large = "x".repeat(4096);
    let resp = c.post(g.url("/")).body(large.clone()).send().await;
    let echo: Value = resp.expect("request").json().await.expect("echo");
    assert_eq!(echo["body"], large, "the primary gets the whole body");
    wait_for_metric(admin, &mirror_line("shadow", "dropped_body_too_large", 1)).await;
    // A body within max_body, sent after it, is mirrored: the large one never will be.
    let resp = c.post(g.url("/")).body("small").send().await;
    assert_eq!(resp.expect("request").status(), 200);
    wait_for_metric(admin, &mirror_line("shadow", "sent", 1)).await;
    assert_eq!(mirror.hits(), 1);
}

#[tokio::test]
async fn mirror_failures_are_counted_and_never_reach_the_client() {
    let (primary, failing) = (
        Upstream::start("users").await,
        Upstream::start("shadow").await,
    );
    failing.faults.answer(503);
    let admin = free_port();
    let g = Gantry::start(&format!(
        "{}[clusters.dead]\nbackends = [\"{}\"]\n\
         [routes.users_dead]\npaths = [\"/dead\"]\ncluster = \"users\"\n\
         mirror = {{ cluster = \"dead\" }}\n",
        mirror_config(primary.addr, failing.addr, admin, ""),
        dead_addr()
    ));
    let c = client();
    for path in ["/", "/dead"] {
        for _ in 0..5 {
            let resp = c.get(g.url(path)).send().await.expect("request");
            assert_eq!(resp.status(), 200);
            let echo: Value = resp.json().await.expect("echo");
            assert_eq!(echo["upstream"], "users");
        }
    }
    wait_for_metric(admin, &mirror_line("shadow", "failed", 5)).await;
    wait_for_metric(
        admin,
        "gantry_mirror_requests_total{route=\"users_dead\",cluster=\"dead\",outcome=\"failed\"} 5\n",
    )
    .await;
    assert_eq!(failing.hits(), 5);
    assert_eq!(mirror_count(admin, "shadow", "sent").await, 0);
}

#[test]
fn mirror_mistakes_are_config_errors() {
    let (ok, out) = check_config(
        "[clusters.users]\nbackends = [\"127.0.0.1:9\"]\n\
         [clusters.shadow]\nbackends = [\"127.0.0.1:10\"]\n\
         [routes.a]\npaths = [\"/a\"]\ncluster = \"users\"\nmirror = { cluster = \"shadw\" }\n\
         [routes.b]\npaths = [\"/b\"]\ncluster = \"users\"\nmirror = { cluster = \"shadow\", percent = 101 }\n\
         [routes.c]\npaths = [\"/c\"]\nrespond = { body = \"hi\" }\nmirror = { cluster = \"shadow\" }\n\
         [routes.d]\npaths = [\"/d\"]\ncluster = \"users\"\nmirror = { cluster = \"shadow\", percentage = 5 }\n",
    );
    assert!(!ok, "{out}");
    for expected in [
        "`routes.a.mirror.cluster`",
        "cluster `shadw` is not defined",
        "did you mean `shadow`?",
        "`routes.b.mirror.percent`",
        "percent must be between 0 and 100, not 101",
        "`routes.c.mirror`",
        "mirror copies proxied requests: it applies to routes with `cluster` or `clusters`",
        "percentage",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
}
