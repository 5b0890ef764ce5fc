//! Conformance at the edge: raw request bytes a hostile client could send, each with the exact
//! status and whether the connection is closed afterwards.

use crate::common::raw_http::RawConn;
use crate::common::{Gantry, Upstream};

#[tokio::test]
async fn probe() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&format!(
        "[clusters.echo]\nbackends = [\"{}\"]\n[routes.all]\npaths = [\"/\"]\ncluster = \"echo\"\n",
        up.addr
    ));
    let cases: &[(&str, &[u8])] = &[
        ("cl+te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("te+cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("dup cl same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"),
        ("dup cl conflict", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
        ("cl list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 3\r\n\r\nabc"),
        ("te gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        ("te gzip,chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("te chunked,gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("te identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
        ("te xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("te dup", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        ("bare lf", b"GET / HTTP/1.1\nHost: a\n\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
        ("nul in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n"),
        ("cr in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
        ("no host", b"GET / HTTP/1.1\r\n\r\n"),
        ("http10", b"GET / HTTP/1.0\r\n\r\n"),
        ("absolute", b"GET http://x.example/p HTTP/1.1\r\nHost: y\r\n\r\n"),
        ("long line", &[b"GET /".as_slice(), &vec![b'a'; 70000], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat()),
    ];
    for (name, bytes) in cases {
        let mut c = RawConn::connect(g.port).await;
        c.send(bytes).await;
        c.send(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let first = c.response().await;
        let second = match &first {
            Some(_) => c.response().await.map(|r| r.status),
            None => None,
        };
        eprintln!(
            "PROBE {name}: {:?} conn={:?} second={second:?}",
            first.as_ref().map(|r| (
                r.status,
                String::from_utf8_lossy(&r.body)
                    .chars()
                    .take(150)
                    .collect::<String>()
            )),
            first
                .as_ref()
                .and_then(|r| r.header("connection").map(str::to_string))
        );
    }
}
