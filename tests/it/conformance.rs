//! Conformance at the edge: raw request bytes a hostile client could send, each with the exact
//! status and whether the connection is closed afterwards; connection deadlines and limits.

use crate::common::raw_http::{RawConn, RawResponse};
use crate::common::{
    admin_metrics, eventually, free_port, wait_for_metric, wait_for_port, Gantry, Upstream,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A request that must never be answered after a refusal on the same connection.
const NEXT: &[u8] = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n";

/// The timing tests' deadline and its lower bound (a little under, for clock granularity).
const DEADLINE: &str = "1s";
const AT_LEAST: Duration = Duration::from_millis(900);

fn echo_routes(up: &Upstream) -> String {
    format!(
        "[clusters.echo]\nbackends = [\"{}\"]\n[routes.all]\npaths = [\"/\"]\ncluster = \"echo\"\n",
        up.addr
    )
}

/// The gateway with `server_extra` and an admin listener (for its metrics), and the admin port.
fn with_admin(server_extra: &str, up: &Upstream) -> (Gantry, u16) {
    let admin = free_port();
    let g = Gantry::start_with(
        &format!("{server_extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\""),
        &echo_routes(up),
    );
    wait_for_port(admin);
    (g, admin)
}

/// Sends `bytes` and then a second request; returns the first response and whether the
/// gateway closed the connection after it.
async fn exchange(port: u16, bytes: &[u8]) -> (RawResponse, bool) {
    let mut c = RawConn::connect(port).await;
    c.send(&[bytes, NEXT].concat()).await;
    let first = c.response().await.expect("an answer");
    (first, c.closed().await)
}

#[tokio::test]
async fn desync_and_malformed_heads_get_their_status_and_close() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&echo_routes(&up));
    let long_line = [
        b"GET /".as_slice(),
        &vec![b'a'; 70_000],
        b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    .concat();
    let many_headers = [
        b"GET / HTTP/1.1\r\nHost: a\r\n".as_slice(),
        &b"X-A: b\r\n".repeat(300),
        b"\r\n",
    ]
    .concat();
    let cases: &[(&str, &[u8], u16, &str)] = &[
        ("CL+TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request"),
        ("TE+CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400, "malformed-request"),
        ("conflicting CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400, "malformed-request"),
        ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 3\r\n\r\nabc", 400, "malformed-request"),
        ("CL sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab", 400, "malformed-request"),
        ("TE gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 501, "unsupported-transfer-coding"),
        ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "unsupported-transfer-coding"),
        ("TE chunked, gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501, "unsupported-transfer-coding"),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501, "unsupported-transfer-coding"),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501, "unsupported-transfer-coding"),
        ("TE twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "unsupported-transfer-coding"),
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, "malformed-request"),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n", 400, "malformed-request"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400, "malformed-request"),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nab\r\n0\r\n\r\n", 400, "malformed-request"),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400, "malformed-request"),
        ("CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400, "malformed-request"),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400, "malformed-request"),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400, "malformed-request"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "malformed-request"),
        ("space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed-request"),
        ("control byte in the target, CL+TE behind it", b"POST /\x01 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request"),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400, "malformed-request"),
        ("unknown scheme", b"GET x:/admin/secret HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed-request"),
        ("opaque scheme with an authority", b"GET foo:bar://evil/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed-request"),
        ("authority-form", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 400, "malformed-request"),
        ("asterisk with GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed-request"),
        ("oversized request line", &long_line, 431, "header-too-large"),
        ("too many headers", &many_headers, 431, "header-too-large"),
    ];
    for (name, bytes, status, slug) in cases {
        let (response, closed) = exchange(g.port, bytes).await;
        assert_eq!(response.status, *status, "{name}: {response:?}");
        response.assert_problem(*status, slug);
        assert_eq!(response.header("connection"), Some("close"), "{name}");
        assert!(closed, "{name}: the connection stayed open");
    }
    // Only the two bad-chunk requests reached the upstream: their heads are sound, so they
    // were forwarded, and the body was cut at the bad chunk.
    assert_eq!(up.hits(), 2, "a refused head reached the upstream");
}

#[tokio::test]
async fn well_formed_framing_keeps_the_connection() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&echo_routes(&up));
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "identical CLs",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            "ab",
        ),
        (
            "chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            "ab",
        ),
        ("leading CRLF", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ""),
    ];
    for (name, bytes, body) in cases {
        let mut c = RawConn::connect(g.port).await;
        c.send(bytes).await;
        let first = c.response().await.expect("first answer");
        assert_eq!(first.status, 200, "{name}: {first:?}");
        assert_eq!(first.json()["body"], *body, "{name}");
        c.send(NEXT).await;
        let second = c.response().await.expect("second answer");
        assert_eq!(second.json()["uri"], "/second", "{name}");
    }
}

#[tokio::test]
async fn keep_alive_stays_off_where_http_says_so() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&echo_routes(&up));
    // Shorter than the h2c preface: answered at once, then closed (HTTP/1.0 default).
    let (response, closed) = exchange(g.port, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.status, 200);
    assert!(closed, "HTTP/1.0 without keep-alive stayed open");
    let (response, closed) = exchange(
        g.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(closed, "Connection: close stayed open");
    assert_eq!(up.hits(), 2, "the request after the close was served");
}

#[tokio::test]
async fn the_absolute_form_authority_is_the_host_for_routing_and_upstream() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&format!(
        r#"
[consumers.ops]
keys = ["ops-key-0123456789"]
[clusters.echo]
backends = ["{}"]
[routes.admin]
hosts = ["admin.local"]
paths = ["/pub"]
cluster = "echo"
[routes.admin.plugins.key-auth]
[routes.public]
paths = ["/pub"]
cluster = "echo"
"#,
        up.addr
    ));
    // The bypass of the report: no Host at all is a 400 in HTTP/1.1.
    let (r, closed) = exchange(g.port, b"GET http://admin.local/pub HTTP/1.1\r\n\r\n").await;
    r.assert_problem(400, "malformed-request");
    assert!(closed);
    // The authority routes: the admin route's key-auth answers.
    for request in [
        b"GET http://admin.local/pub HTTP/1.1\r\nHost: admin.local\r\n\r\n".as_slice(),
        b"GET http://admin.local/pub HTTP/1.0\r\n\r\n",
        b"GET http://ADMIN.local/pub HTTP/1.0\r\n\r\n",
    ] {
        let mut c = RawConn::connect(g.port).await;
        c.send(request).await;
        let r = c.response().await.expect("answer");
        r.assert_problem(401, "missing-credentials");
    }
    // A Host that disagrees, user information and a malformed authority are refused.
    for request in [
        b"GET http://admin.local/pub HTTP/1.1\r\nHost: public.example\r\n\r\n".as_slice(),
        b"GET http://u@admin.local/pub HTTP/1.1\r\nHost: admin.local\r\n\r\n",
        b"GET http://u@admin.local/pub HTTP/1.0\r\n\r\n",
    ] {
        let (r, closed) = exchange(g.port, request).await;
        r.assert_problem(400, "malformed-request");
        assert!(closed);
    }
    assert_eq!(up.hits(), 0);
    // With the key: the upstream gets origin-form and the authority as Host.
    let mut c = RawConn::connect(g.port).await;
    c.send(b"GET http://admin.local/pub?x=1 HTTP/1.1\r\nHost: admin.local\r\nX-Api-Key: ops-key-0123456789\r\n\r\n").await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    let echo = r.json();
    assert_eq!(echo["uri"], "/pub?x=1");
    assert_eq!(echo["headers"]["host"], "admin.local");
}

#[tokio::test]
async fn headers_backends_trust_are_stripped_from_untrusted_peers() {
    let up = Upstream::start("echo").await;
    let forged: String = [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "X-Forwarded-Prefix: /admin",
        "X-Forwarded-Port: 1",
        "X-Forwarded-Scheme: https",
        "X-Forwarded-Ssl: on",
        "X-Forwarded-Server: evil",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-Host: evil",
        "X_Original_URL: /admin",
        "X_Forwarded_Prefix: /admin",
        "Forwarded: for=10.9.9.9",
        "X-Real-IP: 10.9.9.9",
        "X_Real_IP: 10.9.9.9",
        "X_Forwarded_For: 10.9.9.9",
        "X_Forwarded_Host: evil",
        "X-Consumer-Name: admin",
        "X_Consumer_Groups: admins",
        "X-Custom: kept",
    ]
    .map(|h| format!("{h}\r\n"))
    .concat();
    let request = format!("GET / HTTP/1.1\r\nHost: a\r\n{forged}\r\n");
    let seen = |port: u16| {
        let request = request.clone();
        async move {
            let mut c = RawConn::connect(port).await;
            c.send(request.as_bytes()).await;
            let r = c.response().await.expect("answer");
            assert_eq!(r.status, 200);
            r.json()["headers"].clone()
        }
    };
    let default = Gantry::start(&echo_routes(&up));
    let headers = seen(default.port).await;
    for name in gantry::config::model::DEFAULT_STRIPPED {
        assert_eq!(headers.get(name), None, "{name} reached the upstream");
    }
    // What the strip list names, the forwarding headers Gantry sets itself and the consumer
    // headers go in the same pass, `_` spellings included.
    for alias in [
        "x_original_url",
        "x_forwarded_prefix",
        "forwarded",
        "x-real-ip",
        "x_real_ip",
        "x_forwarded_for",
        "x_forwarded_host",
        "x-consumer-name",
        "x_consumer_groups",
    ] {
        assert_eq!(headers.get(alias), None, "{alias} reached the upstream");
    }
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-custom"], "kept");

    let custom = Gantry::start_with(
        "strip_untrusted_headers = [\"X-Custom\"]",
        &echo_routes(&up),
    );
    let headers = seen(custom.port).await;
    assert_eq!(headers.get("x-custom"), None);
    assert_eq!(headers["x-http-method-override"], "DELETE");
    assert_eq!(
        headers.get("x-real-ip"),
        None,
        "a custom list keeps the gateway's own"
    );

    let trusted = Gantry::start_with("trusted_proxies = [\"127.0.0.1/32\"]", &echo_routes(&up));
    let headers = seen(trusted.port).await;
    assert_eq!(headers["x-forwarded-prefix"], "/admin");
    assert_eq!(headers["x-real-ip"], "10.9.9.9");
    assert_eq!(
        headers.get("x-consumer-name"),
        None,
        "only Gantry names a consumer"
    );
    assert_eq!(headers.get("x_consumer_groups"), None);
}

#[tokio::test]
async fn a_rewritten_path_is_checked_like_a_clients() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&format!(
        r#"
[clusters.echo]
backends = ["{}"]
[routes.files]
paths = ["/p/"]
cluster = "echo"
[routes.files.plugins.request-transform]
rewrite = {{ pattern = "^/p/([a-z]*)$", replacement = "/v1/$1/x" }}
"#,
        up.addr
    ));
    let mut c = RawConn::connect(g.port).await;
    c.send(b"GET /p/ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.json()["uri"], "/v1/ok/x");
    c.send(b"GET /p/ HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let r = c.response().await.expect("answer");
    let problem = r.assert_problem(400, "malformed-request");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("rewrite"),
        "{problem}"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_head_is_capped_while_it_is_read() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&echo_routes(&up));
    // 100 KB of an unfinished header line: answered without waiting for the end.
    let mut c = RawConn::connect(g.port).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ").await;
    c.send(&vec![b'a'; 100_000]).await;
    let r = c.response().await.expect("answer");
    r.assert_problem(431, "header-too-large");
    assert!(c.closed().await);
}

#[tokio::test]
async fn slow_heads_get_408_and_silent_connections_close() {
    let up = Upstream::start("echo").await;
    let (g, admin) = with_admin(
        &format!("header_timeout = \"{DEADLINE}\"\nkeepalive_timeout = \"30s\""),
        &up,
    );

    // An unfinished head.
    let started = Instant::now();
    let mut c = RawConn::connect(g.port).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n").await;
    let r = c.response().await.expect("answer");
    r.assert_problem(408, "request-timeout");
    assert!(started.elapsed() >= AT_LEAST);
    assert!(c.closed().await);

    // A head dripped one byte every 50 ms (the slowloris pace, not a wait): the deadline counts
    // from accept, not from the last byte.
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", g.port))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let drip = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ".iter().cycle() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = read.read_to_end(&mut answer).await;
    drip.abort();
    assert!(started.elapsed() >= AT_LEAST);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

    // A connection that sends nothing is closed without an answer.
    let started = Instant::now();
    let mut c = RawConn::connect(g.port).await;
    assert!(c.response().await.is_none());
    assert!(started.elapsed() >= AT_LEAST);

    // On a kept-alive connection the deadline starts at the next head's first byte.
    let mut c = RawConn::connect(g.port).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(c.response().await.expect("answer").status, 200);
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n").await;
    let r = c.response().await.expect("answer");
    r.assert_problem(408, "request-timeout");
    assert!(started.elapsed() >= AT_LEAST);

    let metrics = admin_metrics(admin).await;
    assert!(
        metrics.contains("gantry_request_heads_refused_total{reason=\"request-timeout\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_keepalive_timeout() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start_with(
        &format!("keepalive_timeout = \"{DEADLINE}\""),
        &echo_routes(&up),
    );
    let mut c = RawConn::connect(g.port).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(c.response().await.expect("answer").status, 200);
    let started = Instant::now();
    assert!(c.closed().await);
    assert!(started.elapsed() >= AT_LEAST);
}

#[tokio::test]
async fn connection_limits_close_new_connections_and_count_them() {
    let up = Upstream::start("echo").await;
    let (g, admin) = with_admin("max_connections = 2\nmax_connections_per_ip = 1", &up);
    let served = |mut c: RawConn| async move {
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        c.response().await.map(|r| r.status).map(|s| (s, c))
    };
    // One connection from 127.0.0.1, held open.
    let (status, _first) = served(RawConn::connect(g.port).await)
        .await
        .expect("served");
    assert_eq!(status, 200);
    // A second one from the same address is closed at once.
    assert!(served(RawConn::connect(g.port).await).await.is_none());
    // Another address is admitted up to max_connections.
    let (status, _second) = served(connect_from([127, 0, 0, 2], g.port).await)
        .await
        .expect("served");
    assert_eq!(status, 200);
    assert!(served(connect_from([127, 0, 0, 3], g.port).await)
        .await
        .is_none());
    let metrics = admin_metrics(admin).await;
    for line in [
        "gantry_connections_refused_total{reason=\"max_connections_per_ip\"} 1",
        "gantry_connections_refused_total{reason=\"max_connections\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// A connection to loopback `port` from the local address `ip`.
async fn connect_from(ip: [u8; 4], port: u16) -> RawConn {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind((ip, 0).into())
        .expect("bind a loopback address");
    let stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    RawConn::from_stream(stream)
}

/// HTTP/2 cleartext with prior knowledge, frame by frame.
mod raw_h2 {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const GOAWAY: u8 = 0x7;

    /// A header field as sent: a name and any bytes as its value.
    pub type Field<'a> = (&'a str, &'a [u8]);

    /// One frame.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// A HEADERS frame (END_STREAM, END_HEADERS) on stream 1 with `fields` as HPACK literals
    /// without indexing: any bytes at all, as a hostile client may send them.
    pub fn request(fields: &[Field<'_>]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend(name.as_bytes());
            block.push(value.len() as u8);
            block.extend(*value);
        }
        frame(HEADERS, 0x5, 1, &block)
    }

    /// The frames the server sends until it closes the connection, as (type, flags, stream,
    /// payload).
    pub async fn frames_until_close(stream: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes));
        let _ = read.await.expect("the server closed the connection");
        let mut frames = Vec::new();
        let mut rest = bytes.as_slice();
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            let end = (9 + len).min(rest.len());
            frames.push((rest[3], rest[4], stream, rest[9..end].to_vec()));
            rest = &rest[end..];
        }
        frames
    }

    /// Opens a connection and sends the preface and an empty SETTINGS frame.
    pub async fn open(port: u16) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.write_all(PREFACE).await.expect("preface");
        stream
            .write_all(&frame(0x4, 0, 0, &[]))
            .await
            .expect("settings");
        stream
    }
}

#[tokio::test]
async fn h2c_connections_get_the_head_deadline_and_idle_close() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start_with(
        &format!("header_timeout = \"{DEADLINE}\"\nkeepalive_timeout = \"{DEADLINE}\""),
        &echo_routes(&up),
    );
    // The preface alone, then nothing.
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", g.port))
        .await
        .expect("connect");
    stream.write_all(raw_h2::PREFACE).await.expect("preface");
    raw_h2::frames_until_close(&mut stream).await;
    assert!(started.elapsed() >= AT_LEAST);
    // Preface and settings, never a request.
    let started = Instant::now();
    let mut stream = raw_h2::open(g.port).await;
    raw_h2::frames_until_close(&mut stream).await;
    assert!(started.elapsed() >= AT_LEAST);
    // One request, then idle: closed after keepalive_timeout.
    let mut stream = raw_h2::open(g.port).await;
    stream
        .write_all(&raw_h2::request(&[
            (":method", b"GET"),
            (":scheme", b"http"),
            (":path", b"/"),
            (":authority", b"a"),
        ]))
        .await
        .expect("request");
    let started = Instant::now();
    let frames = raw_h2::frames_until_close(&mut stream).await;
    assert!(started.elapsed() >= AT_LEAST);
    assert!(
        frames.iter().any(|f| f.0 == raw_h2::HEADERS && f.2 == 1),
        "{frames:?}"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn h2_authority_conflicts_and_cr_lf_in_values_are_refused() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start_with("keepalive_timeout = \"1s\"", &echo_routes(&up));
    let base: [raw_h2::Field; 3] = [(":method", b"GET"), (":scheme", b"http"), (":path", b"/")];
    let cases: [(&str, Vec<raw_h2::Field>); 3] = [
        (
            ":authority vs Host",
            [
                base.as_slice(),
                &[(":authority", b"a.example"), ("host", b"b.example")],
            ]
            .concat(),
        ),
        (
            "CR LF in a value",
            [
                base.as_slice(),
                &[(":authority", b"a"), ("x-a", b"b\r\nx-injected: 1")],
            ]
            .concat(),
        ),
        (
            "NUL in a value",
            [base.as_slice(), &[(":authority", b"a"), ("x-a", b"b\0c")]].concat(),
        ),
    ];
    for (name, fields) in cases {
        let mut stream = raw_h2::open(g.port).await;
        stream
            .write_all(&raw_h2::request(&fields))
            .await
            .expect("request");
        let frames = raw_h2::frames_until_close(&mut stream).await;
        // Refused: a 400 (`:status 400` is static-table entry 12), a stream reset or GOAWAY.
        let refused = frames.iter().any(|(kind, _, stream, payload)| {
            (*kind == raw_h2::HEADERS && *stream == 1 && payload.first() == Some(&0x8c))
                || (*kind == raw_h2::RST_STREAM && *stream == 1)
                || *kind == raw_h2::GOAWAY && payload.get(7).is_some_and(|code| *code != 0)
        });
        let ok = frames.iter().any(|(kind, _, stream, payload)| {
            *kind == raw_h2::HEADERS && *stream == 1 && payload.first() == Some(&0x88)
        });
        assert!(refused && !ok, "{name}: {frames:?}");
    }
    assert_eq!(up.hits(), 0, "a refused h2 request reached the upstream");
}

#[tokio::test]
async fn h2_header_lists_are_bounded_by_max_request_header_size() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start_with(
        "max_request_header_size = \"2KiB\"\nkeepalive_timeout = \"1s\"\nheader_timeout = \"1s\"",
        &echo_routes(&up),
    );
    let value = [b'v'; 100];
    let names: Vec<String> = (0..30).map(|i| format!("x-f{i:02}")).collect();
    let answered_ok = |fields: usize| {
        let mut request: Vec<raw_h2::Field> = vec![
            (":method", b"GET"),
            (":scheme", b"http"),
            (":path", b"/"),
            (":authority", b"a"),
        ];
        request.extend(
            names[..fields]
                .iter()
                .map(|n| (n.as_str(), value.as_slice())),
        );
        let bytes = raw_h2::request(&request);
        async move {
            let mut stream = raw_h2::open(g.port).await;
            stream.write_all(&bytes).await.expect("request");
            let frames = raw_h2::frames_until_close(&mut stream).await;
            frames.iter().any(|(kind, _, stream, payload)| {
                *kind == raw_h2::HEADERS && *stream == 1 && payload.first() == Some(&0x88)
            })
        }
    };
    // About 1.4 KiB of fields (HPACK counts 32 bytes more per field) is served; 4 KiB is not.
    assert!(answered_ok(10).await, "a head under the limit is served");
    assert!(!answered_ok(30).await, "a head over the limit is refused");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_is_logged_as_499_without_an_error_line() {
    let up = Upstream::start("echo").await;
    let (g, admin) = with_admin("", &up);
    let mut c = RawConn::connect(g.port).await;
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await;
    drop(c);
    let line = "gantry_requests_total{route=\"all\",method=\"POST\",status=\"499\"} 1";
    wait_for_metric(admin, line).await;
    let log = g.log();
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn h2_streams_cut_by_the_client_leave_no_error_line() {
    let up = Upstream::start("echo").await;
    let (g, admin) = with_admin("", &up);
    let mut stream = raw_h2::open(g.port).await;
    for id in [1u32, 3, 5] {
        let mut frame = raw_h2::request(&[
            (":method", b"GET"),
            (":scheme", b"http"),
            (":path", b"/slow/2000"),
            (":authority", b"a"),
        ]);
        frame[5..9].copy_from_slice(&id.to_be_bytes());
        stream.write_all(&frame).await.expect("request");
    }
    // Every stream has reached the upstream (a reset sent earlier could beat its forwarding).
    eventually("every stream forwarded", || async {
        (up.hits() >= 3).then_some(())
    })
    .await;
    // Reset one stream, then drop the connection with the others in flight (as h2load does
    // when its run ends).
    stream
        .write_all(&raw_h2::frame(
            raw_h2::RST_STREAM,
            0,
            1,
            &8u32.to_be_bytes(),
        ))
        .await
        .expect("reset");
    drop(stream);
    // The upstream answers after 2 s; the gateway then finds the client gone.
    let mut probe = RawConn::connect(g.port).await;
    probe
        .send(b"GET /slow/2500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert_eq!(probe.response().await.expect("answer").status, 200);
    let log = g.log();
    assert!(!log.contains("ERROR"), "{log}");
    let metrics = admin_metrics(admin).await;
    let line = "gantry_requests_total{route=\"all\",method=\"GET\",status=\"499\"} 3";
    assert!(metrics.contains(line), "{line} missing:\n{metrics}");
}
