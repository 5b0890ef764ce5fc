//! The downstream connection loop: Gantry's own `ServerApp` in front of Pingora's HTTP proxy.
//!
//! Pingora has no hook before it reads a request head, so this loop does the reading:
//! - admission (`max_connections`, `max_connections_per_ip`) before a byte is read;
//! - on a plain listener, the h2c preface is told apart from an HTTP/1 head as bytes arrive
//!   (an HTTP/1 request shorter than the preface is never held back);
//! - each HTTP/1 head is read by [`head::read`] within `header_timeout` and
//!   `max_request_header_size`, checked, and handed to Pingora as a pipelined prefix; the idle
//!   wait between keep-alive requests is bounded by `keepalive_timeout` and ends at shutdown;
//! - HTTP/2 connections get the same deadline for their preface and first request ([`h2`]).
//!
//! Refusals at this level (408, 400, 431, 501) are problem+json with a fresh request id,
//! written straight to the socket, and counted in `gantry_request_heads_refused_total`.

mod admission;
mod h2;
pub mod head;

pub use admission::{default_max_connections, raise_fd_limit, Admission};

use crate::metrics::{self, ConnectionGuard};
use crate::proxy::{Problem, ProblemKind};
use crate::reload::Live;
use async_trait::async_trait;
use bytes::BytesMut;
use head::{Limits, Read, Refusal};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How long a refused connection is drained after its answer, so the client reads the answer
/// instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained from a refused connection.
const LINGER_BYTES: usize = 256 * 1024;

/// Serves downstream connections with `app` (Pingora's HTTP proxy) under the running
/// configuration's connection settings.
pub struct EdgeConnections<A> {
    app: Arc<A>,
    live: Arc<Live>,
    admission: Arc<Admission>,
    /// `max_connections` when the file does not set it.
    default_max_connections: usize,
}

impl<A> EdgeConnections<A> {
    /// Connections of `app`, configured by `live`; `default_max_connections` applies when the
    /// configuration names no limit.
    pub fn new(app: Arc<A>, live: Arc<Live>, default_max_connections: usize) -> Self {
        EdgeConnections {
            app,
            live,
            admission: Arc::new(Admission::default()),
            default_max_connections,
        }
    }
}

/// The connection settings one connection reads at accept.
#[derive(Clone, Copy)]
struct Settings {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_request_header_size: usize,
    h2c: bool,
}

#[async_trait]
impl<A> ServerApp for EdgeConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let config = self.live.current();
        let server = &config.server;
        let peer = stream.get_socket_digest().and_then(|d| {
            d.peer_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_canonical())
        });
        let max = server
            .max_connections
            .unwrap_or(self.default_max_connections);
        let _permit = match self
            .admission
            .admit(peer, max, server.max_connections_per_ip)
        {
            Ok(permit) => permit,
            Err(refused) => {
                metrics::connection_refused(refused.label());
                return None;
            }
        };
        let _open = ConnectionGuard::open();
        let settings = Settings {
            header_timeout: server.header_timeout,
            keepalive_timeout: server.keepalive_timeout,
            max_request_header_size: server.max_request_header_size,
            h2c: self.app.server_options().is_some_and(|o| o.h2c),
        };
        drop(config);
        let head_by = accepted_at(&stream) + settings.header_timeout;
        let tls = stream.get_ssl_digest().is_some();
        // HTTP/2: negotiated by ALPN on TLS, or announced by the h2c preface on plain text.
        let h2_stream = if tls && matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            let mut buf = BytesMut::new();
            let limits = Limits {
                max_size: settings.max_request_header_size,
                first_byte_by: head_by,
                header_timeout: settings.header_timeout,
                head_by: Some(head_by),
                h2c: settings.h2c && !tls,
            };
            let first = head::read(&mut stream, &mut buf, limits).await;
            if first != Read::H2Preface || !limits.h2c {
                self.serve_http1(stream, buf, first, settings, shutdown)
                    .await;
                return None;
            }
            replay(stream, &buf)?
        };
        let bounds = h2::Bounds {
            first_request_by: head_by,
            idle: settings.keepalive_timeout,
            max_header_list_size: settings.max_request_header_size,
        };
        // Boxed, so that the HTTP/2 state does not enlarge the future of every HTTP/1
        // connection.
        Box::pin(h2::serve(&self.app, h2_stream, shutdown, bounds)).await;
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await
    }
}

impl<A> EdgeConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Serves HTTP/1 requests on `stream`, starting with `read` (what the first read found,
    /// its bytes in `buf`), until the connection closes.
    async fn serve_http1(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        mut read: Read,
        settings: Settings,
        shutdown: &ShutdownWatch,
    ) {
        let mut persistent: Option<HttpPersistentSettings> = None;
        // One wait for shutdown for the whole connection, registered once, instead of a new
        // registration on every keep-alive wait.
        let mut watch = shutdown.clone();
        let shutting_down = watch.changed();
        tokio::pin!(shutting_down);
        loop {
            let (len, body) = match read {
                Read::Head { len, body } => (len, body),
                Read::Gone => return,
                Read::H2Preface => {
                    // With h2c off, or after an HTTP/1 request: not an HTTP/1 request.
                    return refuse(
                        stream,
                        Refusal::Malformed("HTTP/2 prior knowledge is not enabled here"),
                    )
                    .await;
                }
                Read::Refused(refusal) => return refuse(stream, refusal).await,
            };
            // The bytes after the request (a pipelined next one) stay here for the next read;
            // a chunked body takes them all (Pingora then refuses to reuse the connection if
            // it read past the body).
            let request_len = len + body.bytes_of(buf.len() - len);
            let prefix = buf.split_to(request_len);
            if buf.is_empty() {
                // Let go of the head's allocation (the prefix keeps it while Pingora needs it):
                // the wait for the next request starts without one.
                buf = BytesMut::new();
            }
            let session = self.session(
                stream,
                prefix,
                persistent.take(),
                settings,
                *shutdown.borrow(),
            );
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, p) = reused.consume();
            stream = next;
            persistent = p;
            let limits = Limits {
                max_size: settings.max_request_header_size,
                first_byte_by: Instant::now() + settings.keepalive_timeout,
                header_timeout: settings.header_timeout,
                head_by: None,
                h2c: false,
            };
            read = tokio::select! {
                biased;
                _ = &mut shutting_down => return,
                read = head::read(&mut stream, &mut buf, limits) => read,
            };
        }
    }
    /// The Pingora session for one HTTP/1 request whose bytes so far are `prefix`: the
    /// keep-alive settings carried over from the connection's previous request, or fresh ones.
    /// A function of its own, not inline in [`Self::serve_http1`], so the (large) session
    /// is not part of the future every parked connection holds.
    fn session(
        &self,
        stream: Stream,
        prefix: BytesMut,
        persistent: Option<HttpPersistentSettings>,
        settings: Settings,
        shutting_down: bool,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match persistent {
            Some(p) => p.apply_to_session(&mut session),
            None => {
                session.set_keepalive(Some(settings.keepalive_timeout.as_secs().max(1)));
                session.set_keepalive_reuses_remaining(
                    self.app
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        if shutting_down {
            session.set_keepalive(None);
        }
        session.set_pipelined_prefix(prefix);
        session
    }
}

/// When the connection was accepted: the socket's establishment time, else now.
fn accepted_at(stream: &Stream) -> Instant {
    let now = Instant::now();
    let established = stream
        .get_timing_digest()
        .into_iter()
        .flatten()
        .next()
        .map(|t| t.established_ts);
    established
        .and_then(|ts| SystemTime::now().duration_since(ts).ok())
        .and_then(|elapsed| now.checked_sub(elapsed))
        .unwrap_or(now)
}

/// The plain stream with `bytes` put back in front, for the HTTP/2 handshake to read.
fn replay(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    if !stream.as_any().is::<L4Stream>() {
        log::debug!("h2c on a stream that cannot replay its preface");
        return None;
    }
    let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    l4.rewind(bytes);
    Some(l4)
}

/// Answers `refusal` with a problem+json and closes the connection.
async fn refuse(mut stream: Stream, refusal: Refusal) {
    let (kind, detail) = match refusal {
        Refusal::Malformed(why) => (ProblemKind::MalformedRequest, why),
        Refusal::TooLarge(why) => (ProblemKind::HeaderTooLarge, why),
        Refusal::UnsupportedTransferCoding => (
            ProblemKind::UnsupportedTransferCoding,
            "the only transfer coding accepted is a single `chunked`",
        ),
        Refusal::TimedOut => (
            ProblemKind::RequestTimeout,
            "the request head was not complete within server.header_timeout",
        ),
    };
    metrics::head_refused(kind.slug());
    let id = crate::proxy::new_request_id();
    let response = Problem::new(kind, detail).raw(id.to_str().unwrap_or_default());
    let answered = async {
        stream.write_all(&response).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    };
    if tokio::time::timeout(LINGER, answered).await.is_err() {
        return;
    }
    // Lingering close: read what the client still sends, so closing does not reset the
    // connection before it has read the answer.
    let drain = async {
        // On the heap: a refusal is rare, and an array here would enlarge the future of every
        // connection.
        let mut sink = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
