//! Every problem+json error the core can produce, through the real gateway.

use crate::common::{assert_problem, client, Gantry, Upstream};
use std::io::{Read, Write};

#[tokio::test]
async fn upstream_timeout_is_a_504_problem() {
    let up = Upstream::start("slow").await;
    let g = Gantry::start(&format!(
        "[clusters.slow]\nbackends = [\"{}\"]\nread_timeout = \"200ms\"\n\
         [routes.all]\npaths = [\"/\"]\ncluster = \"slow\"\n",
        up.addr
    ));
    let started = std::time::Instant::now();
    let resp = client()
        .get(g.url("/slow/3000"))
        .send()
        .await
        .expect("request");
    let body = assert_problem(resp, 504, "upstream-timeout").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(!body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("127.0.0.1"));
}

#[tokio::test]
async fn ambiguous_paths_and_hosts_are_400_problems() {
    let g = Gantry::start("[routes.all]\npaths = [\"/\"]\nrespond = { body = \"ok\" }\n");
    let long_host = "a.".repeat(3000);
    let requests = [
        ("/public/../admin", "localhost"),
        ("/public/..;/admin", "localhost"),
        ("/public/..%2fadmin", "localhost"),
        ("//admin", "localhost"),
        ("/%61dmin", "localhost"),
        ("/ok", long_host.as_str()),
        ("/ok", "bad host!"),
    ];
    for (path, host) in requests {
        // Raw HTTP: clients would normalise these paths before sending.
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", g.port)).expect("connect");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read until close");
        assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
        assert!(raw.contains("application/problem+json"), "{path}");
        assert!(
            raw.contains("urn:gantry:problem:malformed-request"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn huge_headers_are_rejected_without_reaching_routes() {
    let g = Gantry::start("[routes.all]\npaths = [\"/\"]\nrespond = { body = \"ok\" }\n");
    // Over server.max_request_header_size (64 KiB by default): a 431 problem.
    let resp = client()
        .get(g.url("/"))
        .header("x-big", "a".repeat(100 * 1024))
        .send()
        .await
        .expect("request");
    assert_problem(resp, 431, "header-too-large").await;
    // Over Pingora's own 1 MiB read limit the connection is refused before any hook runs.
    let resp = client()
        .get(g.url("/"))
        .header("x-big", "a".repeat(1100 * 1024))
        .send()
        .await;
    if let Ok(r) = resp {
        assert!(r.status().is_client_error(), "status {}", r.status());
    }
    // The gateway is still serving.
    let ok = client().get(g.url("/")).send().await.expect("request");
    assert_eq!(ok.status(), 200);
}
