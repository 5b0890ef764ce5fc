//! JSON body edits fail closed: a request body that cannot be edited is refused, a response
//! that cannot be is a 502 (or aborted once its header is out), and response edits survive
//! compression and apply to `aggregate` routes. Raw bytes wherever encodings matter.

use crate::common::{Gantry, Upstream};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A response read off the wire.
struct Raw {
    status: u16,
    head: String,
    /// The body as sent (chunked framing left in place).
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body without chunked framing; `None` when the chunked body never ended.
    fn decoded(&self) -> Option<Vec<u8>> {
        if self.header("transfer-encoding") != Some("chunked") {
            return Some(self.body.clone());
        }
        let (mut rest, mut out) = (&self.body[..], Vec::new());
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&rest[..line_end]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Some(out);
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }

    fn json(&self) -> Value {
        let body = self.decoded().expect("a complete body");
        let body = match self.header("content-encoding") {
            Some("gzip") => {
                let mut text = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut text)
                    .expect("gzip");
                text
            }
            None => body,
            Some(other) => panic!("unexpected encoding {other}"),
        };
        serde_json::from_slice(&body).expect("a JSON body")
    }

    /// Checks a problem+json answer.
    fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["type"], format!("urn:gantry:problem:{slug}"), "{body}");
        assert_eq!(
            body["request_id"].as_str(),
            self.header("x-request-id"),
            "{body}"
        );
    }
}

/// Splits what was read into head and body.
fn parse(raw: Vec<u8>) -> Raw {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Raw {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends `request` (which asks for `Connection: close`) and reads the answer to its end.
async fn exchange(port: u16, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut raw = Vec::new();
    // A reset after the answer still leaves what was read.
    let _ = stream.read_to_end(&mut raw).await;
    parse(raw)
}

/// A `POST /in` with `headers` (each ending in CRLF) and `body`, framed by Content-Length.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /in HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn request_bodies_that_cannot_be_edited_are_refused() {
    let up = Upstream::start("in").await;
    let g = Gantry::start(&format!(
        r#"
[clusters.in]
backends = ["{}"]
[routes.in]
paths = ["/in"]
cluster = "in"
[routes.in.plugins.request-transform]
json_body = {{ remove = ["/password"], max_size = "64", max_depth = 3 }}
"#,
        up.addr
    ));
    let json = "Content-Type: application/json\r\n";
    let secret = br#"{"user":"al","password":"p"}"#;

    // Decided from the header: the upstream never sees these.
    let identity = format!("{json}Content-Encoding: identity\r\n");
    exchange(g.port, &post(&identity, secret))
        .await
        .assert_problem(415, "unsupported-media-type");
    let gzipped = format!("{json}Content-Encoding: gzip\r\n");
    exchange(g.port, &post(&gzipped, &gzip(secret)))
        .await
        .assert_problem(415, "unsupported-media-type");
    exchange(g.port, &post("Content-Type: text/plain\r\n", b"password=p"))
        .await
        .assert_problem(415, "unsupported-media-type");
    exchange(g.port, &post("", secret))
        .await
        .assert_problem(415, "unsupported-media-type");
    let big = format!(r#"{{"password":"p","pad":"{}"}}"#, "x".repeat(64));
    exchange(g.port, &post(json, big.as_bytes()))
        .await
        .assert_problem(413, "body-too-large");
    assert_eq!(up.hits(), 0, "refused before going upstream");

    // Decided from the body.
    let chunked = format!(
        "POST /in HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{json}Transfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    exchange(g.port, chunked.as_bytes())
        .await
        .assert_problem(413, "body-too-large");
    exchange(g.port, &post(json, br#"{"password":"p","a":[[{"b":1}]]}"#))
        .await
        .assert_problem(400, "json-too-deep");
    exchange(g.port, &post(json, br#"{"password":"p""#))
        .await
        .assert_problem(400, "invalid-json");

    // An editable body is edited; a request without a body has nothing to edit.
    let edited = exchange(g.port, &post(json, secret)).await;
    assert_eq!(edited.status, 200, "{}", edited.head);
    let sent: Value = serde_json::from_str(edited.json()["body"].as_str().expect("echoed body"))
        .expect("JSON sent upstream");
    assert_eq!(sent, serde_json::json!({"user": "al"}));
    let get = exchange(
        g.port,
        b"GET /in HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(get.status, 200, "{}", get.head);
}

#[tokio::test]
async fn response_edits_ask_for_identity_and_survive_compression() {
    let up = Upstream::start("out").await;
    let g = Gantry::start(&format!(
        r#"
[clusters.out]
backends = ["{addr}"]
[routes.zipped]
paths = ["/zipped"]
cluster = "out"
compress = ["gzip"]
[routes.zipped.plugins.response-transform]
json_body = {{ remove = ["/headers/x-ssn"] }}
[routes.plain]
paths = ["/plain"]
cluster = "out"
[routes.plain.plugins.response-transform]
json_body = {{ remove = ["/headers/x-ssn"] }}
"#,
        addr = up.addr
    ));
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAccept-Encoding: gzip\r\n\
             X-Ssn: 078-05-1120\r\n\r\n"
        )
    };

    // The route compresses: the client gets gzip, of the edited body.
    let zipped = exchange(g.port, request("/zipped").as_bytes()).await;
    assert_eq!(zipped.status, 200, "{}", zipped.head);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let echo = zipped.json();
    assert!(echo["headers"].get("x-ssn").is_none(), "{echo}");
    assert_eq!(echo["headers"]["accept-encoding"], "identity");

    // It does not: the client gets the edited body as is.
    let plain = exchange(g.port, request("/plain").as_bytes()).await;
    assert_eq!(plain.status, 200, "{}", plain.head);
    assert_eq!(plain.header("content-encoding"), None);
    let echo = plain.json();
    assert!(echo["headers"].get("x-ssn").is_none(), "{echo}");
    assert_eq!(echo["headers"]["accept-encoding"], "identity");
}

/// An upstream that answers `GET /PATH` with a fixed response per path, whatever it was
/// asked for; `/late` sends its header, waits for `go`, then a body over any `max_size`.
async fn stubborn_upstream(go: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let path = String::from_utf8_lossy(&head)
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let respond = |headers: &str, body: &[u8]| {
                    let mut out = format!(
                        "HTTP/1.1 200 OK\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let json = "Content-Type: application/json\r\n";
                let secret = br#"{"ssn":"078-05-1120"}"#;
                let response = match path.as_str() {
                    "/gzip" => respond(&format!("{json}Content-Encoding: gzip\r\n"), &gzip(secret)),
                    "/html" => respond("Content-Type: text/html\r\n", b"<p>078-05-1120</p>"),
                    "/big" => respond(
                        json,
                        format!(r#"{{"ssn":"{}"}}"#, "9".repeat(100)).as_bytes(),
                    ),
                    "/late" => {
                        let header = format!(
                            "HTTP/1.1 200 OK\r\nConnection: close\r\n{json}Transfer-Encoding: chunked\r\n\r\n"
                        );
                        if stream.write_all(header.as_bytes()).await.is_err() {
                            return;
                        }
                        go.notified().await;
                        let body = format!(r#"{{"ssn":"{}"}}"#, "9".repeat(100));
                        format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes()
                    }
                    _ => respond(json, secret),
                };
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn responses_that_cannot_be_edited_are_never_passed_unedited() {
    let go = Arc::new(Notify::new());
    let addr = stubborn_upstream(go.clone()).await;
    let g = Gantry::start(&format!(
        r#"
[clusters.stubborn]
backends = ["{addr}"]
[routes.stubborn]
paths = ["/"]
cluster = "stubborn"
[routes.stubborn.plugins.response-transform]
json_body = {{ remove = ["/ssn"], max_size = "64" }}
"#
    ));
    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAccept-Encoding: gzip\r\n\r\n"
        )
    };
    let edited = exchange(g.port, get("/ok").as_bytes()).await;
    assert_eq!(edited.status, 200, "{}", edited.head);
    assert_eq!(edited.json(), serde_json::json!({}));

    // The header tells: a 502 problem instead.
    for path in ["/gzip", "/html", "/big"] {
        let refused = exchange(g.port, get(path).as_bytes()).await;
        refused.assert_problem(502, "response-not-editable");
        assert!(
            !String::from_utf8_lossy(&refused.body).contains("078-05-1120"),
            "{path}"
        );
    }

    // The body grows too large after the header went out: the response is cut short.
    let mut stream = TcpStream::connect(("127.0.0.1", g.port))
        .await
        .expect("connect");
    stream
        .write_all(get("/late").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf).await.expect("read the header") {
            0 => panic!(
                "closed before the header: {:?}",
                String::from_utf8_lossy(&raw)
            ),
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
    go.notify_one();
    let _ = stream.read_to_end(&mut raw).await;
    let late = parse(raw);
    assert_eq!(late.status, 200, "{}", late.head);
    assert_eq!(late.decoded(), None, "the chunked body never ends");
    assert!(!String::from_utf8_lossy(&late.body).contains("999"));
}

#[tokio::test]
async fn response_edits_apply_to_aggregated_bodies() {
    let users = Upstream::start("users").await;
    let g = Gantry::start(&format!(
        r#"
[clusters.users]
backends = ["{users}"]
[routes.profile]
paths = ["/profile"]
[routes.profile.aggregate.calls.me]
cluster = "users"
path = "/users/me"
[routes.profile.plugins.response-transform]
json_body = {{ remove = ["/me/uri", "/me/headers"], set = {{ "/source" = "gantry" }} }}
"#,
        users = users.addr
    ));
    let resp = exchange(
        g.port,
        b"GET /profile HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    let length: usize = resp
        .header("content-length")
        .expect("the edited length")
        .parse()
        .expect("a number");
    assert_eq!(length, resp.body.len());
    let merged = resp.json();
    assert_eq!(merged["source"], "gantry");
    assert_eq!(merged["me"]["upstream"], "users");
    assert!(merged["me"].get("uri").is_none() && merged["me"].get("headers").is_none());
}
