//! The admin listener: `/metrics` and `/health` on their own port, problems for the rest.

use crate::common::{assert_problem, client, free_port, Gantry};

#[tokio::test]
async fn the_admin_listener_serves_metrics_and_health_apart_from_the_proxy() {
    let admin = free_port();
    let g = Gantry::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n"
    ));
    // The admin service binds on its own; wait for it like the harness waits for the proxy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "admin listener not up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    // The proxy listener does not serve admin paths.
    assert_eq!(g.get("/metrics", &[]).await.status(), 404);
}
