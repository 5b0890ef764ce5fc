//! The admin listener: `/metrics` and `/health` on their own port, problems for the rest.

use crate::common::{assert_problem, client, free_port, wait_for_port, Gantry};

const TOKEN: &str = "admin-token-0123456789";

#[tokio::test]
async fn the_admin_listener_serves_metrics_and_health_apart_from_the_proxy() {
    let admin = free_port();
    let g = Gantry::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
         [redis]\nurl = \"redis://127.0.0.1:1\"\n"
    ));
    // The admin service binds on its own; wait for it like the harness waits for the proxy.
    wait_for_port(admin);
    let url = |path: &str| format!("http://127.0.0.1:{admin}{path}");
    let health = client().get(url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("body"), r#"{"status":"ok"}"#);

    let metrics = client().get(url("/metrics")).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text().await.expect("body");
    assert!(
        text.contains("# TYPE gantry_redis_errors_total counter"),
        "{text}"
    );

    let missing = client().get(url("/nope")).send().await.expect("answered");
    assert_problem(missing, 404, "not-found").await;
    let post = client()
        .post(url("/metrics"))
        .send()
        .await
        .expect("answered");
    assert_problem(post, 405, "method-not-allowed").await;
    // /status needs the bearer token.
    let status = |token: Option<&str>| {
        let mut req = client().get(url("/status"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    for token in [None, Some("wrong-token-0123456789")] {
        let resp = status(token).await.expect("answered");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"gantry-admin\""
        );
        assert_problem(resp, 401, "invalid-credentials").await;
    }
    let body: serde_json::Value = status(Some(TOKEN))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["config"]["generation"], 1);
    let sha = body["config"]["sha256"].as_str().unwrap_or_default();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{body}"
    );

    // The proxy listener does not serve admin paths.
    assert_eq!(g.get("/metrics", &[]).await.status(), 404);
}

#[tokio::test]
async fn without_a_token_the_protected_admin_endpoints_are_refused() {
    let admin = free_port();
    let _g = Gantry::start(&format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    wait_for_port(admin);
    let resp = client()
        .get(format!("http://127.0.0.1:{admin}/status"))
        .bearer_auth("anything-at-all-0123")
        .send()
        .await
        .expect("answered");
    assert_problem(resp, 403, "admin-token-required").await;
}
