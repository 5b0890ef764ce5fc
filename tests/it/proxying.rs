//! Proxying: what reaches the upstream and what comes back.

use crate::common::{assert_problem, check_config, client, eventually, Gantry, Upstream};
use serde_json::Value;
use std::time::Duration;

fn cluster(name: &str, backends: &[&Upstream]) -> String {
    let list: Vec<String> = backends.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!("[clusters.{name}]\nbackends = [{}]\n", list.join(", "))
}

#[tokio::test]
async fn requests_pass_through_with_prefix_stripped() {
    let up = Upstream::start("users").await;
    let g = Gantry::start(&format!(
        "{}\n[routes.users]\npaths = [\"/users\"]\nstrip_prefix = true\ncluster = \"users\"\n\
         [routes.raw]\npaths = [\"/raw\"]\ncluster = \"users\"\n",
        cluster("users", &[&up])
    ));
    let c = client();
    let echo: Value = c
        .post(g.url("/users/7/orders?limit=5&sort=desc"))
        .header("x-custom", "kept")
        .body("payload bytes")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/7/orders?limit=5&sort=desc");
    assert_eq!(echo["body"], "payload bytes");
    assert_eq!(echo["headers"]["x-custom"], "kept");

    for (path, upstream_uri) in [("/users", "/"), ("/raw/a?b=c", "/raw/a?b=c")] {
        let echo: Value = c
            .get(g.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        assert_eq!(echo["uri"], upstream_uri);
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn forwarding_headers_are_only_believed_from_trusted_proxies() {
    let up = Upstream::start("u").await;
    let body = format!(
        "{}\n[routes.all]\npaths = [\"/\"]\ncluster = \"u\"\n",
        cluster("u", &[&up])
    );
    let c = client();

    // An untrusted client cannot spoof X-Forwarded-For or pick its request id.
    let g = Gantry::start(&body);
    let resp = c
        .get(g.url("/x"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "client-chosen")
        .send()
        .await
        .expect("request");
    let echoed_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let echo: Value = resp.json().await.expect("json");
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["host"], "shop.example.com");
    assert_ne!(echoed_id, "client-chosen");
    assert_eq!(echoed_id.len(), 36);
    assert_eq!(h["x-request-id"], echoed_id.as_str());
    drop(g);

    // A trusted proxy's chain is extended and its request id kept.
    let g = Gantry::start_with("trusted_proxies = [\"127.0.0.1\"]", &body);
    let resp = c
        .get(g.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "edge-42")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["x-request-id"], "edge-42");
    let echo: Value = resp.json().await.expect("json");
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-request-id"], "edge-42");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let up = Upstream::start("slow").await;
    let mut g = Gantry::start(&format!(
        "{}\n[routes.all]\npaths = [\"/\"]\ncluster = \"slow\"\n",
        cluster("slow", &[&up])
    ));
    let url = g.url("/slow/400");
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    eventually("the request reached the upstream", || async {
        (up.hits() == 1).then_some(())
    })
    .await;
    g.signal(libc::SIGTERM);
    let resp = in_flight
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    // grace_period = "1s" in the test config, plus the 1 s runtime shutdown timeout: it exits
    // (5x that is allowed, for a loaded machine) instead of waiting for idle clients.
    g.wait_exit(Duration::from_secs(10))
        .expect("gantry exits after SIGTERM");
}

#[tokio::test]
async fn graceful_upgrade_hands_the_listener_to_a_new_process() {
    let mut old = Gantry::start("[routes.all]\npaths = [\"/\"]\nrespond = { body = \"up\" }\n");
    // Returns once the new process waits on the upgrade socket for the listening sockets.
    let new = old.spawn_upgrade();
    old.signal(libc::SIGQUIT);
    // A new connection per request: the guarantee is that no connection is refused. (An idle
    // keep-alive connection to the old process is closed when it drains, as in any HTTP/1.1
    // server shutdown.)
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut served = 0;
    // Requests keep being answered while the old process hands over and drains.
    while old.wait_exit(Duration::from_millis(50)).is_none() {
        let resp = c
            .get(old.url("/"))
            .send()
            .await
            .expect("no request is refused");
        assert_eq!(resp.status(), 200);
        served += 1;
        assert!(
            served < 2000,
            "old process did not exit; log:\n{}",
            old.log()
        );
    }
    let resp = c
        .get(new.url("/"))
        .send()
        .await
        .expect("served by the new process");
    assert_eq!(
        resp.text().await.expect("body"),
        "up",
        "new log:\n{}",
        new.log()
    );
}

#[tokio::test]
async fn h2c_clients_are_served_and_proxied_to_http1_upstreams() {
    let up = Upstream::start("h1").await;
    let g = Gantry::start(&format!(
        "{}\n[routes.api]\npaths = [\"/api\"]\ncluster = \"h1\"\n\
         [routes.hello]\npaths = [\"=/hello\"]\nrespond = {{ body = \"hi\" }}\n",
        cluster("h1", &[&up])
    ));
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    let resp = h2.get(g.url("/hello")).send().await.expect("h2c request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.expect("body"), "hi");
    let resp = h2
        .post(g.url("/api/x?q=1"))
        .body("over h2")
        .send()
        .await
        .expect("h2c request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(echo["uri"], "/api/x?q=1");
    assert_eq!(echo["body"], "over h2");
    assert!(echo["headers"]["x-forwarded-host"]
        .as_str()
        .is_some_and(|h| h.starts_with("127.0.0.1:")));
}

#[tokio::test]
async fn backend_host_names_are_resolved_at_load() {
    let up = Upstream::start("named").await;
    let g = Gantry::start(&format!(
        "[clusters.named]\nbackends = [\"localhost:{}\"]\n[routes.all]\npaths = [\"/\"]\ncluster = \"named\"\n",
        up.addr.port()
    ));
    // `localhost` may also resolve to ::1, where nothing listens: those attempts are retried.
    for _ in 0..10 {
        let echo: Value = client()
            .get(g.url("/"))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        assert_eq!(echo["upstream"], "named");
    }
    assert_eq!(up.hits(), 10);
}

#[tokio::test]
async fn clusters_speak_h2c_h2_over_tls_and_verify_certificates_by_default() {
    use crate::common::protocol_upstream::ProtocolUpstream;
    let h2c = ProtocolUpstream::h2c().await;
    let tls = ProtocolUpstream::tls().await;
    let g = Gantry::start(&format!(
        r#"
[clusters.h2c]
backends = ["{h2c}"]
protocol = "h2c"
[clusters.h2]
backends = ["{tls}"]
protocol = "h2"
tls = true
sni = "localhost"
verify = false
[clusters.h1tls]
backends = ["{tls}"]
tls = true
sni = "localhost"
verify = false
[clusters.verified]
backends = ["{tls}"]
tls = true
sni = "localhost"
[routes.h2c]
paths = ["/h2c"]
cluster = "h2c"
[routes.h2]
paths = ["/h2"]
cluster = "h2"
[routes.h1tls]
paths = ["/h1tls"]
cluster = "h1tls"
[routes.verified]
paths = ["/verified"]
cluster = "verified"
"#,
        h2c = h2c.addr,
        tls = tls.addr
    ));
    // HTTP/1.1 clients reach HTTP/2 upstreams, cleartext and over TLS.
    for (path, version, over_tls) in [
        ("/h2c", "HTTP/2.0", false),
        ("/h2", "HTTP/2.0", true),
        ("/h1tls", "HTTP/1.1", true),
    ] {
        let resp = g.get(path, &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["version"], version, "{path}");
        assert_eq!(body["tls"], over_tls, "{path}");
        assert_eq!(body["path"], path);
    }
    // Certificates are verified unless `verify = false`: a self-signed one is refused.
    assert_problem(g.get("/verified", &[]).await, 502, "upstream-unavailable").await;

    for (config, complaint) in [
        ("protocol = \"h2\"", "needs tls = true"),
        (
            "protocol = \"h2c\"\ntls = true\nsni = \"x\"",
            "cannot use tls",
        ),
        ("verify = false", "only apply with tls"),
        ("tls = true", "set sni"),
    ] {
        let (ok, text) = check_config(&format!(
            "[clusters.c]\nbackends = [\"127.0.0.1:1\"]\n{config}\n"
        ));
        assert!(!ok && text.contains(complaint), "{config}: {text}");
    }
}

#[tokio::test]
async fn grpc_passes_through_with_trailers_and_grpc_web_is_bridged() {
    use crate::common::protocol_upstream::{grpc_frame, ProtocolUpstream};
    use http_body_util::{BodyExt, Full};
    let grpc = ProtocolUpstream::grpc().await;
    let g = Gantry::start(&format!(
        "[clusters.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
         [routes.grpc]\npaths = [\"/echo.Echo/\"]\ncluster = \"grpc\"\ngrpc_web = true\n\
         [routes.grpc.plugins.cors]\nallow_origins = [\"https://app.example\"]\n",
        grpc.addr
    ));

    // A gRPC client over h2c: the reply and its trailers come through.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", g.port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://127.0.0.1:{}/echo.Echo/Reverse", g.port))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(grpc_frame(b"gantry"))))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc+proto");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "reversed");
    assert_eq!(&collected.to_bytes()[..], &grpc_frame(b"yrtnag")[..]);

    // A gRPC-Web client over HTTP/1.1: bridged, trailers in the body.
    let resp = client()
        .post(g.url("/echo.Echo/Reverse"))
        .header("content-type", "application/grpc-web+proto")
        .body(grpc_frame(b"web"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc-web+proto");
    let body = resp.bytes().await.expect("body");
    let data = grpc_frame(b"bew");
    assert_eq!(
        &body[..data.len()],
        &data[..],
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Then a trailers frame: flag 0x80, length, "grpc-status:0\r\n...".
    let trailer = &body[data.len()..];
    assert_eq!(trailer[0], 0x80);
    let text = String::from_utf8_lossy(&trailer[5..]).to_lowercase();
    assert!(text.contains("grpc-status:0"), "{text}");

    // The base64 text variant is refused plainly, with the route's CORS headers (a browser
    // can read why), as every other gateway error.
    let resp = client()
        .post(g.url("/echo.Echo/Reverse"))
        .header("content-type", "application/grpc-web-text")
        .header("origin", "https://app.example")
        .body("AAAAAAN3ZWI=")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );
    assert_problem(resp, 415, "unsupported-media-type").await;
}
