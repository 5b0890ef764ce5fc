//! What plugins know about a request: the [`RequestView`] the request phase reads, the
//! [`ClientFacts`] of its connection, and the [`PluginState`] every phase shares.
//!
//! None of it refers to Pingora's `Session`, so a chain can run on a request that never
//! arrived on a connection (the operator tools evaluate chains offline).

use crate::client_cert::ClientCertificate;
use crate::slots::Slots;
use crate::support::cache_status::CacheStatus;
use crate::support::consumer::Consumer;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::protocols::tls::SslDigest;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

/// The route name of a request no route matched (yet): one shared empty name, so that a new
/// state allocates nothing.
static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// The claims of a verified JWT.
pub type Claims = Map<String, Value>;

/// How the client reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// Plain HTTP (or h2c).
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Facts of the client's connection.
#[derive(Debug, Clone, Default)]
pub struct ClientFacts {
    /// The client address, after `server.trusted_proxies`.
    pub ip: Option<IpAddr>,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The TLS session, on a TLS listener.
    pub tls: Option<Arc<SslDigest>>,
    /// The client certificate verified in the TLS handshake, on a listener with `client_ca`.
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// The client certificate a TLS client presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate<'a> {
    /// The SHA-256 digest of the certificate.
    pub digest: &'a [u8],
    /// The subject's organization, when it names one.
    pub organization: Option<&'a str>,
    /// The certificate's serial number.
    pub serial_number: Option<&'a str>,
}

impl ClientFacts {
    /// The certificate the client presented, when there is one.
    pub fn peer_certificate(&self) -> Option<PeerCertificate<'_>> {
        let tls = self.tls.as_deref()?;
        (!tls.cert_digest.is_empty()).then(|| PeerCertificate {
            digest: &tls.cert_digest,
            organization: tls.organization.as_deref(),
            serial_number: tls.serial_number.as_deref(),
        })
    }
}

/// What the gateway knows about a request that plugins may read and update. It lives as long
/// as the request: whatever it holds (like a concurrency slot) is released when the request ends.
pub struct PluginState {
    /// The matched route's name.
    pub route: Arc<str>,
    /// The request id, echoed on the response and sent upstream.
    pub request_id: HeaderValue,
    /// The client's connection.
    pub client: ClientFacts,
    /// The consumer an authentication plugin resolved the request to.
    pub consumer: Option<Arc<Consumer>>,
    /// The claims of the request's verified JWT.
    pub jwt_claims: Option<Arc<Claims>>,
    /// A rate limit counted this request (and let it through), for the access log.
    pub rate_limit_counted: bool,
    /// Request body bytes received so far, in this attempt.
    pub request_body_bytes: u64,
    /// The response being filtered carries upstream content (a proxied response, or an
    /// `aggregate` route's merged body), not a response the gateway wrote itself.
    pub response_from_upstream: bool,
    /// What the cache did for this request, on a route with the `cache` plugin.
    pub cache_status: Option<CacheStatus>,
    /// Values private to single plugin instances.
    pub slots: Slots,
    /// Decisions kept for the request's trace, while it is sampled.
    pub trace: crate::trace_events::TraceEvents,
    /// The `traceparent` for the calls a plugin makes for this request (an auth service, an
    /// introspection endpoint), when `[tracing]` is configured: this trace, a span of its own.
    pub outbound_traceparent: Option<HeaderValue>,
}

impl Default for PluginState {
    fn default() -> Self {
        PluginState {
            route: Arc::clone(&NO_ROUTE),
            request_id: HeaderValue::from_static(""),
            client: ClientFacts::default(),
            consumer: None,
            jwt_claims: None,
            rate_limit_counted: false,
            request_body_bytes: 0,
            response_from_upstream: false,
            cache_status: None,
            slots: Slots::default(),
            trace: Default::default(),
            outbound_traceparent: None,
        }
    }
}

/// The request as the request phase sees it: the header (after the gateway's checks: an
/// origin-form target and one `Host`), whether a body follows, and the request's state so far
/// (connection facts, consumer, claims).
pub struct RequestView<'a> {
    /// The request header.
    pub header: &'a RequestHeader,
    /// A body follows the header.
    pub has_body: bool,
    /// The request's state, which plugins update.
    pub state: &'a mut PluginState,
}

impl RequestView<'_> {
    /// The client address, after `server.trusted_proxies`.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.state.client.ip
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> Scheme {
        self.state.client.scheme
    }

    /// The `Host` the request is for, as sent (the gateway has settled it to one value).
    pub fn host(&self) -> Option<&str> {
        match self.header.headers.get(http::header::HOST) {
            Some(host) => host.to_str().ok(),
            None => self.header.uri.host(),
        }
    }

    /// The client certificate, on a TLS connection that presented one.
    pub fn peer_certificate(&self) -> Option<PeerCertificate<'_>> {
        self.state.client.peer_certificate()
    }

    /// The client certificate verified in the TLS handshake (on a listener with `client_ca`).
    pub fn client_certificate(&self) -> Option<&ClientCertificate> {
        self.state.client.certificate.as_deref()
    }

    /// The consumer authentication resolved so far.
    pub fn consumer(&self) -> Option<&Consumer> {
        self.state.consumer.as_deref()
    }

    /// The verified JWT claims so far.
    pub fn claims(&self) -> Option<&Claims> {
        self.state.jwt_claims.as_deref()
    }
}
