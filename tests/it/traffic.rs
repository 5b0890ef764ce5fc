//! Traffic management across clusters: weighted splits, sticky splits, draining.

use crate::common::{check_config, client, Gantry, Upstream};
use serde_json::Value;
use std::collections::HashMap;

fn split_config(a: &Upstream, b: &Upstream, weights: (u32, u32), extra: &str) -> String {
    format!(
        "[clusters.stable]\nbackends = [\"{}\"]\n[clusters.canary]\nbackends = [\"{}\"]\n\
         [routes.users]\npaths = [\"/\"]\n\
         clusters = [{{ name = \"stable\", weight = {} }}, {{ name = \"canary\", weight = {} }}]\n{extra}",
        a.addr, b.addr, weights.0, weights.1
    )
}

#[tokio::test]
async fn a_90_10_split_sends_about_a_tenth_to_the_canary() {
    let (a, b) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let g = Gantry::start(&split_config(&a, &b, (90, 10), ""));
    let c = client();
    for _ in 0..2000 {
        let resp = c.get(g.url("/")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(a.hits() + b.hits(), 2000);
    // 10 % of 2,000 is 200; four standard deviations (13.4 each) either side.
    assert!((146..=254).contains(&b.hits()), "canary got {}", b.hits());
}

#[tokio::test]
async fn a_sticky_split_keeps_each_key_on_one_cluster_and_weight_0_drains() {
    let (a, b) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let g = Gantry::start(&split_config(
        &a,
        &b,
        (50, 50),
        "split_key = \"header:x-user-id\"\n",
    ));
    let c = client();
    let mut owner: HashMap<u32, String> = HashMap::new();
    for user in 0..100u32 {
        for _ in 0..3 {
            let resp = c
                .get(g.url("/"))
                .header("x-user-id", user.to_string())
                .send()
                .await
                .expect("request");
            let v: Value = resp.json().await.expect("json");
            let up = v["upstream"].as_str().expect("upstream").to_string();
            let first = owner.entry(user).or_insert_with(|| up.clone());
            assert_eq!(*first, up, "user {user} moved between clusters");
        }
    }
    let canary = owner.values().filter(|u| *u == "canary").count();
    assert!(
        (25..=75).contains(&canary),
        "{canary} of 100 keys on the canary"
    );

    let drained = Gantry::start(&split_config(&a, &b, (1, 0), ""));
    let before = b.hits();
    for _ in 0..50 {
        let resp = c.get(drained.url("/")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(b.hits(), before, "a weight of 0 gets nothing");
}

#[test]
fn split_mistakes_are_config_errors() {
    let (ok, out) = check_config(
        "[clusters.a]\nbackends = [\"127.0.0.1:9\"]\n\
         [routes.r]\npaths = [\"/\"]\ncluster = \"a\"\nclusters = [{ name = \"a\" }, { name = \"b\" }]\n\
         [routes.s]\npaths = [\"/s\"]\nclusters = [{ name = \"a\", weight = 0 }, { name = \"a\", weight = 0 }]\n\
         [routes.t]\npaths = [\"/t\"]\ncluster = \"a\"\nsplit_key = \"header:x\"\n",
    );
    assert!(!ok, "{out}");
    for expected in [
        "a route has one of `cluster`, `clusters`, `respond` and `aggregate`, not several",
        "cluster `a` is listed twice",
        "split_key applies to a traffic split",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    let (ok, out) = check_config(
        "[clusters.a]\nbackends = [\"127.0.0.1:9\"]\n[clusters.b]\nbackends = [\"127.0.0.1:10\"]\n\
         [routes.s]\npaths = [\"/s\"]\nclusters = [{ name = \"a\", weight = 0 }, { name = \"b\", weight = 0 }]\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("every weight is 0"), "{out}");
}
