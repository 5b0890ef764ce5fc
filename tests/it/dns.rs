//! DNS re-resolution of backends written as host names, against a DNS server run by the test.

use crate::common::dns_server::DnsServer;
use crate::common::{check_config, client, eventually, free_port, Gantry, Upstream};
use crate::resilience::{admin_listener, clusters};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};

const FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SECOND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The upstream that answered one request through the gateway; every request must succeed.
async fn served_by(g: &Gantry) -> String {
    let resp = client().get(g.url("/")).send().await.expect("request");
    assert_eq!(resp.status(), 200, "a request failed while DNS changed");
    let v: Value = resp.json().await.expect("json");
    v["upstream"].as_str().expect("upstream").to_string()
}

fn named_cluster(dns: &DnsServer, port: u16, extra: &str) -> (String, String) {
    (
        format!("resolvers = [\"{}\"]\n", dns.addr),
        format!(
            "[clusters.svc]\nbackends = [\"svc.gantry.test:{port}\"]\n{extra}\
             [routes.all]\npaths = [\"/\"]\ncluster = \"svc\"\n"
        ),
    )
}

#[tokio::test]
async fn traffic_follows_a_changed_answer_and_a_dead_resolver_keeps_the_last_addresses() {
    let first = Upstream::start_on("first", SocketAddr::from((FIRST, 0))).await;
    let port = first.addr.port();
    let second = Upstream::start_on("second", SocketAddr::from((SECOND, port))).await;
    let dns = DnsServer::start(&[FIRST]);
    let admin = free_port();
    let (server, body) = named_cluster(&dns, port, "");
    let g = Gantry::start_with(&server, &(body + &admin_listener(admin)));
    for _ in 0..5 {
        assert_eq!(served_by(&g).await, "first");
    }
    let backends = |v: Value| v["clusters"]["svc"]["backends"].clone();
    let listed = backends(clusters(admin).await);
    assert_eq!(listed[0]["address"], first.addr.to_string());
    assert_eq!(listed[0]["host"], "svc.gantry.test");

    // No reload: the background refresh (the record's 1 s TTL) finds the new address.
    dns.answer(&[SECOND]);
    eventually("traffic moves to the new address", || async {
        (served_by(&g).await == "second").then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(served_by(&g).await, "second");
    }
    let listed = backends(clusters(admin).await);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["address"], second.addr.to_string());

    // A resolver that stops answering: the last good address keeps serving, logged once.
    let queries = dns.queries();
    dns.go_silent();
    eventually("the failed lookup is logged", || async {
        g.log()
            .contains("cannot resolve `svc.gantry.test`")
            .then_some(())
    })
    .await;
    assert!(dns.queries() > queries);
    for _ in 0..20 {
        assert_eq!(served_by(&g).await, "second");
    }
    assert_eq!(
        g.log().matches("cannot resolve `svc.gantry.test`").count(),
        1
    );
    assert!(first.hits() >= 5 && second.hits() >= 41);
}

#[tokio::test]
async fn an_added_address_takes_traffic_and_a_removed_one_stops() {
    let first = Upstream::start_on("first", SocketAddr::from((FIRST, 0))).await;
    let port = first.addr.port();
    let second = Upstream::start_on("second", SocketAddr::from((SECOND, port))).await;
    let dns = DnsServer::start(&[FIRST]);
    let (server, body) = named_cluster(&dns, port, "dns_refresh = \"1s\"\n");
    let g = Gantry::start_with(&server, &body);
    assert_eq!(served_by(&g).await, "first");
    dns.answer(&[FIRST, SECOND]);
    eventually("the added address takes traffic", || async {
        (served_by(&g).await == "second").then_some(())
    })
    .await;
    dns.answer(&[SECOND]);
    // Once `first` is gone from the answer, round robin over one backend sends it nothing.
    eventually("the removed address stops taking traffic", || async {
        let before = first.hits();
        for _ in 0..10 {
            served_by(&g).await;
        }
        (first.hits() == before).then_some(())
    })
    .await;
    assert!(second.hits() > 10);
}

#[tokio::test]
async fn dns_settings_are_checked() {
    let dns = DnsServer::start(&[]);
    let cluster = |backend: &str, extra: &str| {
        format!(
            "[clusters.svc]\nbackends = [\"{backend}\"]\n{extra}\
             [routes.all]\npaths = [\"/\"]\ncluster = \"svc\"\n"
        )
    };
    let (ok, out) = check_config(&format!(
        "[server]\nresolvers = [\"{}\"]\n{}",
        dns.addr,
        cluster("nowhere.gantry.test:80", "")
    ));
    assert!(!ok);
    assert!(
        out.contains("cannot resolve `nowhere.gantry.test`"),
        "{out}"
    );
    let (ok, out) = check_config(&format!(
        "[server]\nresolvers = [\"dns.example\"]\n{}",
        cluster("127.0.0.1:80", "")
    ));
    assert!(!ok);
    assert!(out.contains("is not an IP address and port"), "{out}");
    let (ok, out) = check_config(&cluster("127.0.0.1:80", "dns_refresh = \"5s\"\n"));
    assert!(!ok);
    assert!(
        out.contains("dns_refresh only applies to backends written as host names"),
        "{out}"
    );
    let (ok, out) = check_config(&cluster("localhost:80", "dns_refresh = \"0s\"\n"));
    assert!(!ok);
    assert!(out.contains("dns_refresh must be more than 0s"), "{out}");
    let (ok, out) = check_config(&cluster("bad name:80", ""));
    assert!(!ok);
    assert!(
        out.contains("neither an IP address nor a host name"),
        "{out}"
    );
}
