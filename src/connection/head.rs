//! Reading one HTTP/1 request head off a connection, before Pingora sees it: within a
//! deadline, never more than `max_request_header_size` bytes, and checked for the framing
//! ambiguities that let requests be smuggled past a backend.
//!
//! Pingora reads heads itself with no deadline, buffers up to 1 MiB before its own size check,
//! and answers a head it cannot parse with an empty 400. Gantry reads the head here instead and
//! hands the bytes on (`ServerSession::set_pipelined_prefix`), so every refusal is a
//! problem+json with a request id, and a slow or oversized head costs a bounded buffer.

use bytes::BytesMut;
use http::header;
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most header fields in one head (Pingora's own limit).
const MAX_HEADERS: usize = 256;

/// First allocation for a head, made when its first bytes arrive; it grows up to the
/// configured limit.
const INITIAL_CAPACITY: usize = 4096;

/// The first read of a head, into a buffer on the stack of one poll (most request heads fit).
const FIRST_READ: usize = 4096;

/// Why a head is refused; each maps to one problem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the bytes are not a well-formed, unambiguous HTTP/1 request head.
    Malformed(&'static str),
    /// 431: the head is larger than allowed, or has too many fields.
    TooLarge(&'static str),
    /// 501: a transfer coding other than `chunked`.
    UnsupportedTransferCoding,
    /// 408: the head was not complete within `header_timeout`.
    TimedOut,
}

/// What reading produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A complete head: the first `len` bytes of the buffer, followed by `body`.
    Head { len: usize, body: Body },
    /// The HTTP/2 preface (h2c prior knowledge).
    H2Preface,
    /// The peer closed, or went silent, before sending a byte: close without an answer.
    Gone,
    /// Answer with this refusal, then close.
    Refused(Refusal),
}

/// The body that follows a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None: the bytes after the head are the next request.
    None,
    /// This many bytes (Content-Length).
    Length(u64),
    /// Chunked, or unknown framing Pingora decides: every byte after the head goes with it.
    Rest,
}

impl Body {
    /// How many of the `available` bytes after a head belong to its request.
    pub fn bytes_of(self, available: usize) -> usize {
        match self {
            Body::None => 0,
            Body::Length(n) => usize::try_from(n).map_or(available, |n| n.min(available)),
            Body::Rest => available,
        }
    }
}

/// The limits of one read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes the head may take.
    pub max_size: usize,
    /// The first byte must arrive by then (the header deadline on a new connection, the idle
    /// keep-alive deadline on a reused one).
    pub first_byte_by: Instant,
    /// How long the head may take from its first byte, bounded by `head_by` when set.
    pub header_timeout: std::time::Duration,
    /// An absolute deadline for the whole head (a new connection counts from accept).
    pub head_by: Option<Instant>,
    /// Recognise the h2c preface.
    pub h2c: bool,
}

/// Reads until `buf` holds a complete head (bytes already in `buf`, left by the previous
/// request, count first).
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
) -> Read {
    let mut scanned: usize = 0;
    let mut head_deadline = None;
    loop {
        scanned = scanned.saturating_sub(skip_leading_empty_lines(buf));
        // The head starts with its first byte after any empty lines (a stray CRLF after a
        // body leaves the connection idle, not a head in progress).
        if head_deadline.is_none() && !buf.is_empty() {
            head_deadline = Some(head_deadline_from_now(&limits));
        }
        if limits.h2c && !buf.is_empty() && H2_PREFACE.starts_with(&buf[..buf.len().min(24)]) {
            if buf.len() >= H2_PREFACE.len() {
                return Read::H2Preface;
            }
        } else if !buf.is_empty() {
            match scan(buf, scanned) {
                Ok(Some(len)) => return inspect(&buf[..len]),
                Ok(None) => scanned = buf.len(),
                Err(refusal) => return Read::Refused(refusal),
            }
        }
        if buf.len() >= limits.max_size {
            return Read::Refused(Refusal::TooLarge(
                "the request line and headers exceed server.max_request_header_size",
            ));
        }
        let deadline = head_deadline.unwrap_or(limits.first_byte_by);
        let room = limits.max_size - buf.len();
        let read = if buf.is_empty() {
            // Nothing of a head yet: a new or idle connection waits here, perhaps for a long
            // time, so it waits holding no buffer at all (see `first_read`).
            let first = first_read(
                stream,
                buf,
                FIRST_READ.min(room),
                INITIAL_CAPACITY.min(room),
            );
            tokio::time::timeout_at(deadline, first).await
        } else {
            if buf.capacity() == buf.len() {
                buf.reserve(INITIAL_CAPACITY.min(room));
            }
            let mut limited = (&mut *stream).take(room as u64);
            tokio::time::timeout_at(deadline, limited.read_buf(buf)).await
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Read::Gone,
            Ok(Ok(_)) => {}
            Err(_) if head_deadline.is_none() => return Read::Gone,
            Err(_) => return Read::Refused(Refusal::TimedOut),
        }
    }
}

/// Reads the first bytes of a head (at most `want`) into `buf`, reserving `capacity` for the
/// rest. The bytes are read into a buffer on the stack of a single poll and copied out only
/// when they have arrived, so the future waiting for them (a silent or idle connection's whole
/// state) holds no buffer: a read that is not ready leaves the buffer untouched
/// (`AsyncRead::poll_read`'s contract), and nothing is lost between polls.
fn first_read<'a, S: AsyncRead + Unpin>(
    stream: &'a mut S,
    buf: &'a mut BytesMut,
    want: usize,
    capacity: usize,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        // Uninitialised: zeroing 4 KiB on every poll cost about 12,000 instructions per request.
        let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut first[..want]);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        buf.reserve(capacity.max(n));
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(n))
    })
}

/// The head deadline once its first byte is in.
fn head_deadline_from_now(limits: &Limits) -> Instant {
    let from_first_byte = Instant::now() + limits.header_timeout;
    limits
        .head_by
        .map_or(from_first_byte, |by| by.min(from_first_byte))
}

/// RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before the request line.
/// Returns how many bytes were dropped.
fn skip_leading_empty_lines(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while buf[n..].starts_with(b"\r\n") {
        n += 2;
    }
    if n > 0 {
        let _ = buf.split_to(n);
    }
    n
}

/// Looks at the bytes from `from` on: the head's length once its blank line has arrived.
/// Every line must end in CRLF: a bare LF is read differently by different servers.
fn scan(buf: &[u8], from: usize) -> Result<Option<usize>, Refusal> {
    for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| i + from) {
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(Refusal::Malformed(
                "a line ends in a bare LF instead of CRLF",
            ));
        }
        if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

/// Parses a complete head and refuses what a backend could read differently.
fn inspect(head: &[u8]) -> Read {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // The preface's first lines, read where h2c is off (or on a reused connection).
        Err(httparse::Error::Version) if H2_PREFACE.starts_with(head) => return Read::H2Preface,
        // A space, control byte or quote in the target, or no HTTP/1.x version: refused, as
        // nginx does (Pingora would escape the target and read on, unchecked here).
        Err(httparse::Error::Token | httparse::Error::Version) => {
            return Read::Refused(Refusal::Malformed(
                "the request line must be a method, a target without spaces or control \
                 characters, and HTTP/1.0 or HTTP/1.1",
            ))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Read::Refused(Refusal::TooLarge("the request has too many header fields"))
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            return Read::Refused(Refusal::Malformed(
                "the request head is malformed (header names and values must be valid, \
                 with no line folding)",
            ))
        }
    }
    match framing(&req) {
        Ok(body) => Read::Head {
            len: head.len(),
            body,
        },
        Err(refusal) => Read::Refused(refusal),
    }
}

/// Checks Host, the target's authority, Content-Length and Transfer-Encoding, and says which
/// body follows.
fn framing(req: &httparse::Request<'_, '_>) -> Result<Body, Refusal> {
    if req.method == Some("CONNECT") {
        // Pingora would answer with a bare 405; a gateway is not a forward proxy.
        return Err(Refusal::Malformed(
            "CONNECT is not served: this is a gateway, not a forward proxy",
        ));
    }
    let mut host = None;
    let mut length: Option<&[u8]> = None;
    let mut chunked = false;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case(header::HOST.as_str()) {
            if host.replace(field.value).is_some() {
                return Err(Refusal::Malformed(
                    "the request has more than one Host header",
                ));
            }
        } else if name.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str()) {
            let value = trim(field.value);
            let valid =
                !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit);
            if !valid || length.is_some_and(|l| l != value) {
                return Err(Refusal::Malformed(
                    "Content-Length must be one decimal number (copies must agree)",
                ));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(header::TRANSFER_ENCODING.as_str()) {
            if chunked || !trim(field.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::UnsupportedTransferCoding);
            }
            chunked = true;
        }
    }
    if chunked && length.is_some() {
        return Err(Refusal::Malformed(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && req.version == Some(0) {
        return Err(Refusal::Malformed(
            "an HTTP/1.0 request cannot use Transfer-Encoding",
        ));
    }
    match raw_target_authority(req.path.unwrap_or_default().as_bytes()) {
        RawTargetAuthority::None => {}
        RawTargetAuthority::AmbiguousAuthority => {
            return Err(Refusal::Malformed(
                "the request target's authority is ambiguous",
            ))
        }
        RawTargetAuthority::Absolute { authority, .. } => {
            if authority.contains(&b'@') {
                return Err(Refusal::Malformed(
                    "the request target must not carry user information",
                ));
            }
            if host.is_some_and(|h| h != authority) {
                return Err(Refusal::Malformed(
                    "the Host header differs from the request target's authority",
                ));
            }
        }
    }
    if chunked {
        return Ok(Body::Rest);
    }
    let length = length.map_or(0, |digits| {
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
    });
    Ok(if length == 0 {
        Body::None
    } else {
        Body::Length(length)
    })
}

/// `value` without surrounding spaces and tabs.
fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn limits(h2c: bool) -> Limits {
        let now = Instant::now();
        Limits {
            max_size: 1024,
            first_byte_by: now + TIMEOUT,
            header_timeout: TIMEOUT,
            head_by: Some(now + TIMEOUT),
            h2c,
        }
    }

    /// Reads a head from a client that has sent `sent` and keeps the connection open.
    async fn read_after(sent: &[u8], limits: Limits) -> (Read, DuplexStream) {
        let (mut client, mut server) = duplex(64 * 1024);
        client.write_all(sent).await.unwrap();
        let mut buf = BytesMut::new();
        (read(&mut server, &mut buf, limits).await, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_http1_request_is_not_held_for_the_h2c_preface() {
        let started = Instant::now();
        let (got, _client) = read_after(b"GET / HTTP/1.0\r\n\r\n", limits(true)).await;
        assert_eq!(
            got,
            Read::Head {
                len: 18,
                body: Body::None
            }
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        let (got, _client) = read_after(H2_PREFACE, limits(true)).await;
        assert_eq!(got, Read::H2Preface);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_head_times_out_at_the_deadline() {
        let started = Instant::now();
        let (got, _client) = read_after(b"GET / HTTP/1.1\r\nHost: a\r\n", limits(false)).await;
        assert_eq!(got, Read::Refused(Refusal::TimedOut));
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_gone_at_the_deadline() {
        let started = Instant::now();
        let (got, _client) = read_after(b"", limits(false)).await;
        assert_eq!(got, Read::Gone);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_reused_connection_the_head_deadline_starts_at_its_first_byte() {
        let (mut client, mut server) = duplex(1024);
        let idle = Duration::from_secs(60);
        let limits = Limits {
            first_byte_by: Instant::now() + idle,
            head_by: None,
            ..limits(false)
        };
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            read(&mut server, &mut buf, limits).await
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        let first_byte = Instant::now();
        client.write_all(b"GET").await.unwrap();
        assert_eq!(reader.await.unwrap(), Read::Refused(Refusal::TimedOut));
        assert_eq!(first_byte.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stray_empty_line_on_a_reused_connection_keeps_it_idle() {
        let idle = Duration::from_secs(60);
        let limits = Limits {
            first_byte_by: Instant::now() + idle,
            head_by: None,
            ..limits(false)
        };
        let started = Instant::now();
        let (got, _client) = read_after(b"\r\n", limits).await;
        assert_eq!(got, Read::Gone, "no 408 for an empty line");
        assert_eq!(started.elapsed(), idle);
    }

    #[tokio::test]
    async fn request_lines_httparse_refuses_are_refused_here() {
        for line in [
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        ] {
            let (got, _client) = read_after(line, limits(false)).await;
            assert!(
                matches!(got, Read::Refused(Refusal::Malformed(_))),
                "{got:?}"
            );
        }
        let (got, _client) = read_after(H2_PREFACE, limits(false)).await;
        assert_eq!(
            got,
            Read::H2Preface,
            "recognised, to be refused, with h2c off"
        );
    }

    #[tokio::test]
    async fn a_head_larger_than_the_limit_is_refused_without_its_end() {
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 2000]].concat();
        let (got, _client) = read_after(&big, limits(false)).await;
        assert!(
            matches!(got, Read::Refused(Refusal::TooLarge(_))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn framing_decides_how_many_bytes_belong_to_the_request() {
        let cases: &[(&[u8], Read)] = &[
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                Read::Head {
                    len: 47,
                    body: Body::Length(5),
                },
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Read::Head {
                    len: 56,
                    body: Body::Rest,
                },
            ),
            (
                b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                Read::Head {
                    len: 27,
                    body: Body::None,
                },
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
                Read::Refused(Refusal::Malformed(
                    "a line ends in a bare LF instead of CRLF",
                )),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                Read::Refused(Refusal::UnsupportedTransferCoding),
            ),
        ];
        for (bytes, want) in cases {
            let (got, _client) = read_after(bytes, limits(false)).await;
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(bytes));
        }
    }
}
