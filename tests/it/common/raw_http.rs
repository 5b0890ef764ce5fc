//! A raw HTTP/1 client for conformance tests: exact bytes out, one response parsed at a time
//! (Content-Length, chunked, or to the close), and whether the gateway closed the connection.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read waits before the test fails as hung (a guard, not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(30);

/// One parsed response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a problem+json response of `status` and `slug` carrying the request id.
    pub fn assert_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["type"], format!("urn:gantry:problem:{slug}"));
        assert_eq!(body["status"], status);
        let id = self.header("x-request-id").expect("x-request-id");
        assert_eq!(body["request_id"], id);
        body
    }
}

/// A connection to the gateway.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read past the last response.
    pending: Vec<u8>,
}

impl RawConn {
    /// Connects to loopback `port`.
    pub async fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        RawConn::from_stream(stream)
    }

    /// A connection already made.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            pending: Vec::new(),
        }
    }

    /// Sends `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads more bytes; `false` at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(HANG_GUARD, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no bytes and no close for {HANG_GUARD:?}"),
        }
    }

    /// The next response, or `None` when the gateway closed the connection without one.
    /// `head_request` says the request was a HEAD (no body follows).
    pub async fn response_to(&mut self, head_request: bool) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.pending, b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                assert!(
                    self.pending.is_empty(),
                    "closed inside a response head: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        self.pending.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(response);
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            self.take(len, &mut response.body).await;
        } else if response
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            self.chunked(&mut response.body).await;
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.pending);
        }
        Some(response)
    }

    /// The next response to a request that was not a HEAD.
    pub async fn response(&mut self) -> Option<RawResponse> {
        self.response_to(false).await
    }

    /// Moves `len` bytes into `out`.
    async fn take(&mut self, len: usize, out: &mut Vec<u8>) {
        while self.pending.len() < len {
            assert!(self.fill().await, "closed inside a body");
        }
        out.extend(self.pending.drain(..len));
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.pending, b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending[..i]).into_owned();
                self.pending.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "closed inside a chunked body");
        }
    }

    async fn chunked(&mut self, out: &mut Vec<u8>) {
        loop {
            let size_line = self.line().await;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            if size == 0 {
                // Trailers, then the blank line.
                while !self.line().await.is_empty() {}
                return;
            }
            self.take(size, out).await;
            assert!(self.line().await.is_empty(), "chunk not followed by CRLF");
        }
    }

    /// Whether the gateway has closed the connection: waits for the end of the stream, or for
    /// bytes (which means open, and are kept). For a close that is expected: an idle open
    /// connection fails the test after the hang guard (prove "open" with a second request).
    pub async fn closed(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        !self.fill().await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
