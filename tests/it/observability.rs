//! The access log and the request metrics after a known sequence of requests.

use crate::common::{
    admin_metrics, client, eventually, free_port, wait_for_port, Gantry, Upstream,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// The JSON records in `path`, waiting until there are `n`.
fn records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<_> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn access_records_and_metrics_describe_each_request() {
    let up = Upstream::start("up").await;
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("access.log");
    let admin = free_port();
    let g = Gantry::start(&format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [clusters.c]\nbackends = [\"{}\"]\n\
         [routes.up]\npaths = [\"/up\"]\ncluster = \"c\"\n\
         [routes.limited]\npaths = [\"/limited\"]\ncluster = \"c\"\n\
         [routes.limited.plugins.rate-limit]\nlimits = [{{ requests = 1, per = \"1m\" }}]\n\
         [routes.cached]\npaths = [\"/cached\"]\ncluster = \"c\"\n[routes.cached.plugins.cache]\n",
        log_path.display(),
        up.addr
    ));
    wait_for_port(admin);

    let mut ids = Vec::new();
    for _ in 0..3 {
        let resp = g.get("/up", &[("user-agent", "probe \"1\"")]).await;
        assert_eq!(resp.status(), 200);
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    assert_eq!(g.get("/missing", &[]).await.status(), 404);
    let secret = client()
        .post(g.url("/up?page=2&api_key=s3cret-key"))
        .header("authorization", "Bearer s3cret-token")
        .header("cookie", "session=s3cret-cookie")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(secret.status(), 200);

    for (path, status) in [
        ("/limited", 200),
        ("/limited", 429),
        ("/cached", 200),
        ("/cached", 200),
    ] {
        assert_eq!(g.get(path, &[]).await.status(), status, "{path}");
    }

    let all = records(&log_path, 9);
    assert_eq!(all.len(), 9, "{all:#?}");
    let limited = &all[6];
    assert_eq!(
        (
            &limited["status"],
            &limited["rate_limit"],
            &limited["error"]
        ),
        (
            &serde_json::json!(429),
            &serde_json::json!("limited"),
            &serde_json::json!("rate-limited")
        )
    );
    assert_eq!(all[5]["rate_limit"], "allowed");
    assert_eq!(
        (&all[7]["cache"], &all[8]["cache"]),
        (&serde_json::json!("MISS"), &serde_json::json!("HIT"))
    );
    let first = &all[0];
    assert_eq!(first["request_id"], ids[0]);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/up");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "up");
    assert_eq!(first["cluster"], "c");
    assert_eq!(first["upstream"], up.addr.to_string());
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["user_agent"], "probe \"1\"");
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert!(first["duration"].as_f64().unwrap() > 0.0);
    assert!(first["upstream_connect"].as_f64().is_some());
    assert!(first["upstream_response"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let missing = &all[3];
    assert_eq!(
        (&missing["status"], &missing["route"], &missing["error"]),
        (
            &serde_json::json!(404),
            &serde_json::json!("-"),
            &serde_json::json!("no-route")
        )
    );
    assert!(missing.get("cluster").is_none());
    let post = &all[4];
    assert_eq!(post["bytes_in"], 5);
    assert_eq!(post["query"], "page=2&api_key=REDACTED");
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !text.contains("s3cret"),
        "a secret reached the log:\n{text}"
    );

    let metrics = admin_metrics(admin).await;
    for line in [
        "gantry_requests_total{route=\"up\",method=\"GET\",status=\"200\"} 3",
        "gantry_requests_total{route=\"up\",method=\"POST\",status=\"200\"} 1",
        "gantry_requests_total{route=\"-\",method=\"GET\",status=\"404\"} 1",
        "gantry_request_duration_seconds_count{route=\"up\"} 4",
        "gantry_upstream_duration_seconds_count{cluster=\"c\"} 6",
        "gantry_rate_limited_total{route=\"up\"} 0",
        "gantry_rate_limited_total{route=\"limited\"} 1",
        "gantry_requests_total{route=\"limited\",method=\"GET\",status=\"429\"} 1",
        "gantry_cache_total{route=\"cached\",status=\"miss\"} 1",
        "gantry_cache_total{route=\"cached\",status=\"hit\"} 1",
        "gantry_access_log_dropped_total 0",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "gantry_upstream_health{{cluster=\"c\",backend=\"{}\"}} 1",
        up.addr
    )));
    assert!(metrics.contains("# TYPE gantry_connections_active gauge\ngantry_connections_active "));

    // logrotate: the file is moved, SIGUSR1 reopens it, new records go to a new file.
    std::fs::rename(&log_path, logs.path().join("access.log.1")).unwrap();
    g.signal(libc::SIGUSR1);
    eventually("the log file is reopened", || async {
        log_path.exists().then_some(())
    })
    .await;
    assert_eq!(g.get("/up", &[]).await.status(), 200);
    let fresh = records(&log_path, 1);
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["path"], "/up");
    let rotated = std::fs::read_to_string(logs.path().join("access.log.1")).unwrap();
    assert_eq!(rotated.lines().count(), 9);
}
