//! Hot reload: by `POST /reload` and `SIGHUP`, refused when invalid, keeping backend health,
//! and without failing a request under load.

use crate::common::{
    admin_metrics, check_config, client, eventually, free_port, wait_for_port, Gantry, Upstream,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-0123456789";

fn admin_section(admin: u16) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n")
}

async fn reload(admin: u16) -> reqwest::Response {
    client()
        .post(format!("http://127.0.0.1:{admin}/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reload answered")
}

async fn admin_json(admin: u16, path: &str) -> serde_json::Value {
    client()
        .get(format!("http://127.0.0.1:{admin}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn valid_files_are_swapped_in_and_invalid_ones_refused() {
    let admin = free_port();
    let routes = |body: &str| {
        format!(
            "{}[redis]\nurl = \"redis://:hunter2@127.0.0.1:1\"\n\
             [routes.hello]\npaths = [\"/hello\"]\nrespond = {{ body = \"{body}\" }}\n",
            admin_section(admin)
        )
    };
    let g = Gantry::start(&routes("one"));
    wait_for_port(admin);
    assert_eq!(g.get("/hello", &[]).await.text().await.unwrap(), "one");

    g.rewrite_config("", &routes("two"));
    let done = reload(admin).await;
    assert_eq!(done.status(), 200);
    let done: serde_json::Value = done.json().await.unwrap();
    assert_eq!(done["generation"], 2);
    assert_eq!(done["needs_restart"], serde_json::json!([]));
    assert_eq!(g.get("/hello", &[]).await.text().await.unwrap(), "two");

    // An invalid file: every error with its line, and the running configuration stays.
    g.rewrite_config(
        "",
        &format!(
            "{}[routes.broken]\npaths = [\"/x\"]\ncluster = \"nope\"\n",
            routes("three")
        ),
    );
    let refused = reload(admin).await;
    assert_eq!(refused.status(), 422);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["type"], "urn:gantry:problem:config-invalid");
    let error = &refused["errors"][0];
    assert_eq!(error["key"], "routes.broken.cluster");
    assert!(error["line"].as_u64().unwrap() > 0);
    assert_eq!(g.get("/hello", &[]).await.text().await.unwrap(), "two");

    // SIGHUP reloads too.
    g.rewrite_config("", &routes("four"));
    g.signal(libc::SIGHUP);
    eventually("the reloaded body is served", || async {
        (g.get("/hello", &[]).await.text().await.unwrap() == "four").then_some(())
    })
    .await;
    let status = admin_json(admin, "/status").await;
    assert_eq!(status["config"]["generation"], 3);

    // Listeners only change with a restart: said, not silently ignored.
    g.rewrite_config("h2c = false", &routes("five"));
    let done: serde_json::Value = reload(admin).await.json().await.unwrap();
    assert_eq!(done["needs_restart"], serde_json::json!(["server.h2c"]));

    let metrics = admin_metrics(admin).await;
    assert!(
        metrics.contains("gantry_config_reloads_total{result=\"success\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );

    // GET /config: the running file, secrets redacted.
    let config = admin_json(admin, "/config").await;
    assert_eq!(config["generation"], 4);
    assert_eq!(config["config"]["admin"]["token"], "REDACTED");
    assert_eq!(
        config["config"]["redis"]["url"],
        "redis://REDACTED@127.0.0.1:1"
    );
    assert_eq!(
        config["config"]["routes"]["hello"]["respond"]["body"],
        "five"
    );
    let text = config.to_string();
    assert!(!text.contains(TOKEN) && !text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn unchanged_clusters_keep_their_backends_health() {
    let good = Upstream::start("good").await;
    let sick = Upstream::start("sick").await;
    sick.healthy.store(false, Ordering::SeqCst);
    let admin = free_port();
    let body = |extra: &str| {
        format!(
            "{}[clusters.c]\nbackends = [\"{}\", \"{}\"]\n\
             [clusters.c.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\nunhealthy_threshold = 1\n\
             [routes.r]\npaths = [\"/\"]\ncluster = \"c\"\n{extra}",
            admin_section(admin),
            good.addr,
            sick.addr
        )
    };
    let g = Gantry::start(&body(""));
    wait_for_port(admin);
    eventually("the sick backend is marked down", || async {
        let clusters = admin_json(admin, "/clusters").await;
        let backends = clusters["clusters"]["c"]["backends"].as_array()?.clone();
        backends
            .iter()
            .any(|b| b["address"] == sick.addr.to_string() && b["healthy"] == false)
            .then_some(())
    })
    .await;
    // A reload that leaves the cluster as it was (a new route elsewhere): no request may reach
    // the sick backend, as it would if health were reset to "up".
    g.rewrite_config(
        "",
        &body("[routes.other]\npaths = [\"/other\"]\nrespond = { body = \"x\" }\n"),
    );
    assert_eq!(reload(admin).await.status(), 200);
    let before = sick.hits();
    for _ in 0..20 {
        assert_eq!(g.get("/any", &[]).await.status(), 200);
    }
    assert_eq!(sick.hits(), before, "the sick backend kept its health");
    assert_eq!(g.get("/other", &[]).await.text().await.unwrap(), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let up = Upstream::start("up").await;
    let admin = free_port();
    let body = |n: usize| {
        format!(
            "{}[clusters.c]\nbackends = [\"{}\"]\n\
             [routes.r]\npaths = [\"/\"]\ncluster = \"c\"\n\
             [routes.r.plugins.response-transform]\nset_headers = {{ \"x-generation\" = \"{n}\" }}\n",
            admin_section(admin),
            up.addr
        )
    };
    let g = Arc::new(Gantry::start(&body(0)));
    wait_for_port(admin);
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (g, ok, failed, stop) = (g.clone(), ok.clone(), failed.clone(), stop.clone());
        load.spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let served = match http.get(g.url("/load")).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if served { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    for n in 1..=20 {
        let before = ok.load(Ordering::Relaxed);
        g.rewrite_config("", &body(n));
        let done = reload(admin).await;
        assert_eq!(done.status(), 200, "reload {n}");
        // Requests kept flowing across this reload.
        eventually("requests flow around the reload", || async {
            (ok.load(Ordering::Relaxed) - before >= 10).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let served = ok.load(Ordering::Relaxed);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{served} served");
    // About 4,500 per second here (16 clients; the gateway is a test build with optimized
    // dependencies): the figure is printed, the test asserts that nothing failed.
    eprintln!(
        "{served} requests in {elapsed:.1}s ({:.0}/s) across 20 reloads",
        served as f64 / elapsed
    );
    let last = g.get("/load", &[]).await;
    assert_eq!(last.headers()["x-generation"], "20");
}

#[tokio::test]
async fn a_removed_cluster_stops_being_probed() {
    // A TCP health check target that counts the probes' connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let admin = free_port();
    let probed = format!(
        "{}[clusters.probed]\nbackends = [\"{addr}\"]\n\
         [clusters.probed.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\n\
         [routes.r]\npaths = [\"/\"]\ncluster = \"probed\"\n",
        admin_section(admin)
    );
    let g = Gantry::start(&probed);
    wait_for_port(admin);
    eventually("the cluster is probed", || async {
        (probes.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;

    g.rewrite_config(
        "",
        &format!(
            "{}[routes.r]\npaths = [\"/\"]\nrespond = {{ body = \"gone\" }}\n",
            admin_section(admin)
        ),
    );
    assert_eq!(reload(admin).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = probes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        probes.load(Ordering::SeqCst),
        after,
        "no probe after the reload"
    );
    assert_eq!(g.get("/", &[]).await.text().await.unwrap(), "gone");
    accept.abort();
}

#[tokio::test]
async fn secrets_never_appear_in_checks_reload_answers_or_the_config_endpoint() {
    let admin = free_port();
    let up = Upstream::start("echo").await;
    let good = format!(
        "{}[clusters.echo]\nbackends = [\"{}\"]\n[routes.r]\npaths = [\"/\"]\ncluster = \"echo\"\n\
         [routes.r.plugins.request-transform]\n\
         set_headers = {{ authorization = \"Bearer sekrit-header-1\" }}\n\
         set_query = {{ api_key = \"sekrit-query-2\" }}\n",
        admin_section(admin),
        up.addr
    );
    let g = Gantry::start(&good);
    wait_for_port(admin);
    let config = admin_json(admin, "/config").await.to_string();
    assert!(!config.contains("sekrit"), "{config}");
    assert!(config.contains("REDACTED"), "{config}");

    // Broken files whose errors sit on lines holding secrets.
    let short_secret = format!(
        "{good}[routes.j]\npaths = [\"/j\"]\ncluster = \"echo\"\n\
         [routes.j.plugins.jwt-auth]\nalgorithms = [\"HS256\"]\nsecret = \"sekrit-short-3\"\n"
    );
    let bad_header = format!(
        "{good}[routes.h]\npaths = [\"/h\"]\ncluster = \"echo\"\n\
         [routes.h.plugins.request-transform]\n\
         set_headers = {{ authorization = \"Bearer sekrit-4\", \"bad name\" = \"x\" }}\n"
    );
    // A secret in the wrong type (a key list written as a string, a Redis URL list as one URL):
    // serde's message would quote the value.
    let wrong_type = format!(
        "{good}[consumers.c]\nkeys = \"sekrit-key-5\"\n[redis]\nurls = \"redis://:sekrit-6@h:6379\"\n"
    );
    // A control character in a transform's header value is refused without echoing it.
    let control_char = format!(
        "{good}[routes.c]\npaths = [\"/c\"]\ncluster = \"echo\"\n\
         [routes.c.plugins.request-transform]\n\
         set_headers = {{ x-token = \"sekrit-7\\r\\nx-admin: 1\" }}\n"
    );
    for broken in [short_secret, bad_header, wrong_type, control_char] {
        let (ok, output) = check_config(&broken);
        assert!(!ok, "{broken}");
        assert!(!output.contains("sekrit"), "{output}");
        g.rewrite_config("", &broken);
        let refused = reload(admin).await;
        assert_eq!(refused.status(), 422);
        let answer = refused.text().await.unwrap();
        assert!(!answer.contains("sekrit"), "{answer}");
    }
    assert!(!g.log().contains("sekrit"), "{}", g.log());
}
