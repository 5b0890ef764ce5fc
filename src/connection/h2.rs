//! HTTP/2 connections (h2c prior knowledge and TLS with ALPN `h2`), with deadlines Pingora's own
//! accept loop does not have: the handshake and the first request must arrive by the header
//! deadline, and a connection with no stream in flight closes after `keepalive_timeout`.
//!
//! Streams are accepted with Pingora's `HttpSession::from_h2_conn` and served by the proxy's
//! `process_new_http`, each in its own task. Malformed streams are counted per connection (as
//! Pingora's loop does) and the connection closes after 32. At shutdown the connection sends
//! GOAWAY and drains.

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{default_h2_options, handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Malformed streams one connection may open before it is closed (Pingora's budget).
const MAX_MALFORMED_STREAMS: usize = 32;

/// Streams in flight on one connection.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a stream's task while it is served.
struct StreamGuard(Arc<Active>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit: a waiter that registers after this still wakes.
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    /// Returns once no stream is in flight and the connection then stays idle: until `first`
    /// before any stream was accepted, for `idle` afterwards.
    async fn idle_out(&self, first: Option<Instant>, idle: Duration) {
        while self.count.load(Ordering::Acquire) != 0 {
            self.idle.notified().await;
        }
        match first {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => tokio::time::sleep(idle).await,
        }
    }
}

/// How one HTTP/2 connection is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The handshake and the first request must arrive by then.
    pub first_request_by: Instant,
    /// The connection closes when no stream is in flight for this long.
    pub idle: Duration,
    /// The largest decoded header list a stream may send (`max_request_header_size`).
    pub max_header_list_size: usize,
}

/// Serves one HTTP/2 connection with `app` within `bounds`.
pub async fn serve<A>(app: &Arc<A>, stream: Stream, shutdown: &ShutdownWatch, bounds: Bounds)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut options = app.h2_options().unwrap_or_else(default_h2_options);
    options.max_header_list_size(u32::try_from(bounds.max_header_list_size).unwrap_or(u32::MAX));
    let mut conn =
        match tokio::time::timeout_at(bounds.first_request_by, handshake(stream, Some(options)))
            .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                log::debug!("HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                log::debug!("HTTP/2 handshake not done by the header deadline");
                return;
            }
        };
    let active = Arc::new(Active::default());
    let mut watch = shutdown.clone();
    let mut shutting_down = *watch.borrow();
    if shutting_down {
        conn.graceful_shutdown();
    }
    let mut first = Some(bounds.first_request_by);
    let mut malformed = 0;
    loop {
        let accepted = if shutting_down {
            HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)).await
        } else {
            tokio::select! {
                biased;
                _ = watch.changed() => {
                    conn.graceful_shutdown();
                    shutting_down = true;
                    continue;
                }
                accepted = HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)) => accepted,
                _ = active.idle_out(first, bounds.idle) => return,
            }
        };
        match accepted {
            Err(e) => {
                log::debug!("HTTP/2 connection error: {e}");
                return;
            }
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MAX_MALFORMED_STREAMS {
                    return;
                }
            }
            Ok(Some(H2Accept::Session(session))) => {
                first = None;
                let guard = active.start();
                let app = Arc::clone(app);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    app.process_new_http(ServerSession::new_http2(session), &shutdown)
                        .await;
                });
            }
        }
    }
}
