//! Request mirroring (shadowing): a sampled share of a route's requests copied, as they are
//! sent upstream, to another cluster, fire and forget.
//!
//! The copy is the request header as the route's upstream request filter left it (rewritten
//! path, plugin headers, forwarding headers) and the body as it went upstream, buffered up to
//! the route's `max_body` (a larger body is not mirrored at all). Once the body has ended, a
//! task of its own sends the copy to a backend of the mirror cluster, chosen by its balancer;
//! the primary request never waits for it. A mirror is tried once (no retries), within a
//! deadline (the sum of the mirror cluster's connect, write and read timeouts); its answer is
//! read and dropped, and its failures only counted (and fed to the mirror cluster's outlier
//! detection like any other request's). At most [`MAX_IN_FLIGHT`] mirrored requests are being
//! copied or in flight, holding at most [`MAX_BUFFERED_BYTES`] of bodies, over every route;
//! beyond either a mirror is dropped. Each outcome is counted in
//! `gantry_mirror_requests_total`.

use crate::metrics::{MirrorMetrics, MirrorOutcome};
use crate::upstream::exchange::exchange;
use crate::upstream::hash_key::ip_key;
use crate::upstream::{Cluster, InFlight};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The most mirrored requests being copied or in flight at once, over every route: beyond it
/// a mirror is dropped (`dropped_queue_full`).
const MAX_IN_FLIGHT: usize = 256;

/// What [`MAX_IN_FLIGHT`] bounds.
static IN_FLIGHT: LazyLock<Arc<AtomicUsize>> = LazyLock::new(Arc::default);

/// The most bytes of mirror bodies held at once (copies being buffered or in flight), over
/// every route: a copy that would pass it is dropped (`dropped_queue_full`).
const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// What [`MAX_BUFFERED_BYTES`] bounds.
static BUFFERED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The bytes of [`BUFFERED_BYTES`] one copy holds, given back when it is dropped.
#[derive(Debug, Default)]
struct HeldBytes(usize);

impl HeldBytes {
    /// Holds `n` more bytes; false (holding nothing more) when that would pass the bound.
    fn grow(&mut self, n: usize) -> bool {
        let before = BUFFERED_BYTES.fetch_add(n, Ordering::Relaxed);
        if before + n > MAX_BUFFERED_BYTES {
            BUFFERED_BYTES.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        self.0 += n;
        true
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        BUFFERED_BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// The suffix added to the host of a mirrored request (before its port), as Envoy does, so the
/// mirror's backend can tell shadow traffic apart.
const HOST_SUFFIX: &str = "-shadow";

/// Headers of the request's own framing or connection, set afresh for the copy.
const FRAMING_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::UPGRADE,
    header::EXPECT,
];

/// A compiled `routes.R.mirror`.
#[derive(Debug)]
pub struct Mirror {
    /// Where the copies go.
    cluster: Arc<Cluster>,
    /// The share of the route's requests mirrored, 0 to 100.
    percent: u32,
    /// The largest body copied; a request with a larger one is not mirrored.
    max_body: usize,
    /// The route's counters for this mirror.
    metrics: Arc<MirrorMetrics>,
}

impl Mirror {
    /// Mirrors `percent` of route `route`'s requests with bodies up to `max_body` bytes to
    /// `cluster`.
    pub fn new(route: &str, cluster: Arc<Cluster>, percent: u32, max_body: usize) -> Mirror {
        Mirror {
            metrics: crate::metrics::mirror(route, &cluster.name),
            cluster,
            percent,
            max_body,
        }
    }

    /// Whether this request is one of the mirrored share.
    fn sampled(&self) -> bool {
        self.percent >= 100 || fastrand::u32(..100) < self.percent
    }
}

/// One request's mirroring, across its upstream attempts.
#[derive(Debug, Default)]
pub enum Mirroring {
    /// No request header went upstream yet.
    #[default]
    Undecided,
    /// Chosen for mirroring: the current attempt is being copied.
    Copying(Box<RequestCopy>),
    /// Nothing (more) to do: not chosen, already sent, or dropped.
    Finished,
}

/// The copy of a request under way upstream.
#[derive(Debug)]
pub struct RequestCopy {
    mirror: Arc<Mirror>,
    header: RequestHeader,
    body: BytesMut,
    /// The client's address, for a mirror cluster hashing on it.
    client_ip: Option<IpAddr>,
    /// Its place among [`MAX_IN_FLIGHT`], from the first header to the end of the send.
    _place: InFlight,
    /// Its share of [`MAX_BUFFERED_BYTES`].
    held: HeldBytes,
}

impl Mirroring {
    /// A request header goes upstream with `header` (on each attempt). The first decides
    /// whether the request is mirrored; a retry restarts the copy, body included.
    pub fn header_sent(
        &mut self,
        mirror: &Arc<Mirror>,
        header: &RequestHeader,
        client_ip: Option<IpAddr>,
        trace: Option<&crate::trace::RequestTrace>,
    ) {
        match self {
            Mirroring::Finished => {}
            Mirroring::Copying(copy) => {
                copy.header = header.clone();
                copy.body.clear();
                copy.held = HeldBytes::default();
                copy.own_trace_span(trace);
            }
            Mirroring::Undecided if !mirror.sampled() => *self = Mirroring::Finished,
            Mirroring::Undecided => {
                let place = InFlight::enter(&IN_FLIGHT);
                if place.count() > MAX_IN_FLIGHT {
                    mirror.metrics.record(MirrorOutcome::DroppedQueueFull);
                    *self = Mirroring::Finished;
                    return;
                }
                let mut copy = Box::new(RequestCopy {
                    mirror: Arc::clone(mirror),
                    header: header.clone(),
                    body: BytesMut::new(),
                    client_ip,
                    _place: place,
                    held: HeldBytes::default(),
                });
                copy.own_trace_span(trace);
                *self = Mirroring::Copying(copy);
            }
        }
    }

    /// A chunk of the body goes upstream, `end` with the last one: copied while within
    /// `max_body` (the request is dropped, and counted, once over), and sent at the end.
    pub fn body_sent(&mut self, chunk: Option<&Bytes>, end: bool, connector: &Arc<Connector>) {
        let Mirroring::Copying(copy) = self else {
            return;
        };
        if let Some(chunk) = chunk {
            if copy.body.len() + chunk.len() > copy.mirror.max_body {
                copy.mirror
                    .metrics
                    .record(MirrorOutcome::DroppedBodyTooLarge);
                *self = Mirroring::Finished;
                return;
            }
            if !copy.held.grow(chunk.len()) {
                copy.mirror.metrics.record(MirrorOutcome::DroppedQueueFull);
                *self = Mirroring::Finished;
                return;
            }
            copy.body.extend_from_slice(chunk);
        }
        if end {
            if let Mirroring::Copying(copy) = std::mem::replace(self, Mirroring::Finished) {
                copy.dispatch(connector);
            }
        }
    }
}

impl RequestCopy {
    /// The copy carries the request's trace with the server span as its parent (the primary's
    /// parent is its attempt's client span).
    fn own_trace_span(&mut self, trace: Option<&crate::trace::RequestTrace>) {
        if let Some(trace) = trace {
            // The header was valid when it was sent upstream; this only replaces a value.
            let _ = trace.propagate(&mut self.header, trace.child_traceparent());
        }
    }

    /// Sends the copy from a task of its own when a place in the mirror cluster's breaker is
    /// free; dropped and counted otherwise. The copy keeps its place among
    /// [`MAX_IN_FLIGHT`] and its bytes until the send is over.
    fn dispatch(self: Box<Self>, connector: &Arc<Connector>) {
        let metrics = Arc::clone(&self.mirror.metrics);
        let cluster = &self.mirror.cluster;
        let Some(cluster_place) = cluster.admit() else {
            cluster.metrics.record_overloaded();
            metrics.record(MirrorOutcome::DroppedOverloaded);
            return;
        };
        let connector = Arc::clone(connector);
        tokio::spawn(async move {
            let outcome = self.send(&connector).await;
            metrics.record(outcome);
            drop(cluster_place);
        });
    }

    /// One try on a backend of the mirror cluster, within the deadline; the answer dropped.
    async fn send(self, connector: &Connector) -> MirrorOutcome {
        let cluster = &self.mirror.cluster;
        let Some((addr, peer)) = choose_backend(cluster, &self.header, self.client_ip) else {
            return MirrorOutcome::Failed;
        };
        let _backend_place = cluster.state(&addr).map(|s| InFlight::enter(&s.in_flight));
        let Some(req) = shadow_request(self.header, self.body.len()) else {
            return MirrorOutcome::Failed;
        };
        let started = Instant::now();
        let sent = exchange(connector, &peer, req, Some(self.body.freeze()), |_| true);
        match tokio::time::timeout(deadline(&peer), sent).await {
            Ok(Ok(resp)) => {
                let status = resp.status.as_u16();
                cluster.record_latency(addr, started.elapsed());
                cluster.judge_status(addr, status);
                if status < 500 {
                    MirrorOutcome::Sent
                } else {
                    MirrorOutcome::Failed
                }
            }
            Ok(Err(_)) | Err(_) => {
                cluster.record_failed_attempt(addr, started.elapsed());
                MirrorOutcome::Failed
            }
        }
    }
}

/// The mirror cluster's backend for a copy of `header`, by its balancer (a consistent hash
/// keyed on the request as sent upstream).
fn choose_backend(
    cluster: &Cluster,
    header: &RequestHeader,
    client_ip: Option<IpAddr>,
) -> Option<(SocketAddr, HttpPeer)> {
    let mut ip_buf = [0u8; 16];
    let client = ip_key(client_ip, &mut ip_buf);
    let key = match cluster.hash_on() {
        Some(hash_on) => hash_on.key(header, client),
        None => &[],
    };
    let picked = cluster.select(key, &[])?;
    Some((picked.addr, picked.peer))
}

/// The whole exchange's limit: the peer's connect, write and read timeouts together.
fn deadline(peer: &HttpPeer) -> Duration {
    let options = &peer.options;
    [
        options.total_connection_timeout,
        options.write_timeout,
        options.read_timeout,
    ]
    .into_iter()
    .flatten()
    .sum()
}

/// The copy of `sent` (with a body of `body_len` bytes) sent to the mirror: origin-form target,
/// the host with [`HOST_SUFFIX`], its own framing. `None` when the host does not take the
/// suffix.
fn shadow_request(mut sent: RequestHeader, body_len: usize) -> Option<RequestHeader> {
    let had_body = sent.headers.contains_key(header::CONTENT_LENGTH)
        || sent.headers.contains_key(header::TRANSFER_ENCODING);
    let host = match sent.headers.get(header::HOST) {
        Some(host) => host.to_str().ok()?.to_string(),
        None => sent.uri.authority()?.as_str().to_string(),
    };
    for name in &FRAMING_HEADERS {
        sent.remove_header(name);
    }
    let shadow_host = HeaderValue::from_str(&shadow_host(&host)).ok()?;
    sent.insert_header(header::HOST, shadow_host).ok()?;
    if had_body || body_len > 0 {
        sent.insert_header(header::CONTENT_LENGTH, body_len).ok()?;
    }
    let target = sent.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = target.parse().ok()?;
    sent.set_uri(target);
    Some(sent)
}

/// `api.example.com:8080` becomes `api.example.com-shadow:8080`, `[::1]:80` becomes
/// `[::1]-shadow:80`.
fn shadow_host(host: &str) -> String {
    let port_at = match host.rfind(':') {
        Some(at)
            if !host[at..].contains(']') && host[at + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            at
        }
        _ => host.len(),
    };
    format!("{}{HOST_SUFFIX}{}", &host[..port_at], &host[port_at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_are_bounded_and_given_back() {
        let mut a = HeldBytes::default();
        assert!(a.grow(MAX_BUFFERED_BYTES - 10));
        let mut b = HeldBytes::default();
        assert!(!b.grow(11), "past the bound");
        assert!(b.grow(10));
        drop(a);
        assert!(b.grow(MAX_BUFFERED_BYTES - 10), "a's bytes came back");
        drop(b);
        assert_eq!(BUFFERED_BYTES.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_suffix_goes_before_the_port() {
        assert_eq!(shadow_host("api.example.com"), "api.example.com-shadow");
        assert_eq!(
            shadow_host("api.example.com:8080"),
            "api.example.com-shadow:8080"
        );
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn the_copy_has_its_own_framing_and_an_origin_form_target() {
        let mut sent =
            RequestHeader::build("POST", b"http://api.example.com/v2/users?x=1", None).unwrap();
        sent.insert_header(header::HOST, "api.example.com").unwrap();
        sent.insert_header(header::TRANSFER_ENCODING, "chunked")
            .unwrap();
        sent.insert_header("x-plugin", "1").unwrap();
        let copy = shadow_request(sent, 5).unwrap();
        assert_eq!(copy.uri, "/v2/users?x=1");
        assert_eq!(copy.headers["host"], "api.example.com-shadow");
        assert_eq!(copy.headers["content-length"], "5");
        assert_eq!(copy.headers["x-plugin"], "1");
        assert!(!copy.headers.contains_key(header::TRANSFER_ENCODING));

        let mut get = RequestHeader::build("GET", b"/", None).unwrap();
        get.insert_header(header::HOST, "h:81").unwrap();
        let copy = shadow_request(get, 0).unwrap();
        assert!(!copy.headers.contains_key(header::CONTENT_LENGTH));
    }
}
