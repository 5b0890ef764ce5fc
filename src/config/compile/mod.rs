//! Compiles the file model into the runtime model, reporting every semantic problem.
//!
//! Name references become `Arc`s, backend names are resolved, regexes, header names and direct
//! responses are built here once, so nothing is parsed on the request path.

use super::document::Document;
use super::error::{did_you_mean, KeyPath};
use super::model::{
    self, AdminSection, AggregateSection, BalancerKind, CacheSection, ClusterSection,
    HealthCheckKind, HealthCheckSection, HumanSize, LogSection, MirrorSection, ProtocolKind,
    RespondSection, RouteSection, ServerSection, SplitEntry, TlsSection,
};
use super::plugins::Plugins;
use super::{
    AdminSettings, CacheSettings, LogSettings, ServerSettings, StrippedHeaders, TlsListener,
};
use crate::access_log::{Format, Sink};
use crate::aggregate::{Aggregate, Call};
use crate::client_auth::{ClientAuthMode, ClientVerification};
use crate::mirror::Mirror;
use crate::router::{DirectResponse, HostPattern, PathPattern, Route, RouteAction, RouteSpec};
use crate::tls::ClientCertificateError;
use crate::upstream::{
    BackendAddr, Balancing, Cluster, HashOn, HealthCheckSpec, Protocol, Resilience, Timeouts,
    TrafficSplit, Transport,
};
use gantry_plugins::gateway::{Template, TemplateScope, CACHE_PLUGIN};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use pingora::http::RequestHeader;
use pingora::protocols::http::compression::Algorithm;
use pingora::utils::tls::CertKey;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use toml::de::DeValue;
use toml::Spanned;

mod backends;
mod resilience;
mod tracing;

/// Headers about a message's own framing or connection, never copied to another request.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// The largest backend weight: the balancers expand weights into lists and hash rings.
const MAX_WEIGHT: usize = 1000;

/// The smallest `cache.max_size`: 1 MiB.
const MIN_CACHE_SIZE: usize = 1 << 20;

/// The largest `routes.*.mirror.max_body`: each mirrored request holds its body until sent.
const MAX_MIRROR_BODY: u64 = 16 << 20;

/// The shortest admin token.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The smallest `server.max_request_header_size`: below it even an ordinary request head (or
/// the 24-byte HTTP/2 preface) could not be read.
const MIN_REQUEST_HEADER_SIZE: usize = 1024;

/// Addresses that another kind of listener has, for [`Compiler::listen_addr`].
struct InUse<'u> {
    addrs: &'u [SocketAddr],
    /// Who has them, after "is also".
    by: &'static str,
    /// The fix.
    hint: &'static str,
}

/// Compiles sections that deserialized cleanly; problems are reported to the document.
pub struct Compiler<'d, 'a> {
    doc: &'d mut Document<'a>,
    /// The span of the entry being compiled, for problems that have no narrower position.
    entry: Option<Range<usize>>,
    /// Where clusters' host names are looked up (`server.resolvers`).
    nameservers: crate::upstream::dns::Nameservers,
}

/// Where a value is in the source, for [`Compiler::report`]; `None` for a value that is not
/// in the file (a default), so its problem points at the entry.
fn span_of<T>(value: &Spanned<T>) -> Option<Range<usize>> {
    let span = value.span();
    (span.end > 0).then_some(span)
}

impl<'d, 'a> Compiler<'d, 'a> {
    /// A compiler reporting into `doc`.
    pub fn new(doc: &'d mut Document<'a>) -> Self {
        Compiler {
            doc,
            entry: None,
            nameservers: Default::default(),
        }
    }

    /// The document problems are reported to.
    pub fn doc(&mut self) -> &mut Document<'a> {
        self.doc
    }

    /// Sets the entry that following problems without a narrower position point at.
    pub fn at_entry(&mut self, span: Range<usize>) {
        self.entry = Some(span);
    }

    /// Records a problem for `key` at `span` (a byte range of the source); `None`: the entry
    /// being compiled, for problems that have no narrower position.
    pub fn report(
        &mut self,
        span: Option<Range<usize>>,
        key: &KeyPath,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let span = span.or_else(|| self.entry.clone());
        self.doc.report(span, key, message, hint);
    }

    /// A listener's `IP:port` (`hint` says how to write one), which must not be `in_use`.
    fn listen_addr(
        &mut self,
        listen: &Spanned<String>,
        key: &KeyPath,
        hint: &str,
        in_use: Option<InUse>,
    ) -> Option<SocketAddr> {
        let text = listen.get_ref();
        let Ok(addr) = text.parse::<SocketAddr>() else {
            let msg = format!("`{text}` is not an IP:port address");
            self.report(span_of(listen), key, msg, Some(hint.into()));
            return None;
        };
        match in_use {
            Some(other) if other.addrs.contains(&addr) => {
                let msg = format!("`{addr}` is also {}", other.by);
                self.report(span_of(listen), key, msg, Some(other.hint.into()));
                None
            }
            _ => Some(addr),
        }
    }

    /// `[[server.tls]]` number `i`.
    fn tls_listener(
        &mut self,
        i: usize,
        t: TlsSection,
        plain: &[SocketAddr],
    ) -> Option<TlsListener> {
        let key = KeyPath::root("server").child("tls").index(i);
        let addr = self.listen_addr(
            &t.listen,
            &key.child("listen"),
            "write it like \"0.0.0.0:8443\"",
            Some(InUse {
                addrs: plain,
                by: "a plain listener in server.listen",
                hint: "give the TLS listener its own port",
            }),
        );
        if t.certificates.is_empty() {
            let hint = "add certificates = [{ cert = \"conf/certs/site.pem\", key = \"conf/certs/site.key\" }]";
            self.report(
                span_of(&t.listen),
                &key.child("certificates"),
                "a TLS listener needs at least one certificate",
                Some(hint.into()),
            );
        }
        let mut loaded = Vec::new();
        for (j, c) in t.certificates.iter().enumerate() {
            match crate::tls::load_certificate(&c.get_ref().cert, &c.get_ref().key) {
                Ok(cert) => loaded.push(cert),
                Err(e) => self.report(span_of(c), &key.child("certificates").index(j), e, None),
            }
        }
        let client_verification = self.client_verification(&key, t.client_ca, t.client_auth);
        let certificates = crate::tls::CertStore::new(loaded)?;
        Some(TlsListener {
            addr: addr?,
            certificates: Arc::new(certificates),
            http2: t.http2,
            client_verification: Arc::new(client_verification?),
        })
    }

    /// `client_ca` and `client_auth` of the TLS listener at `key`; `None` when they have
    /// errors.
    fn client_verification(
        &mut self,
        key: &KeyPath,
        client_ca: Option<Spanned<String>>,
        client_auth: Option<Spanned<ClientAuthMode>>,
    ) -> Option<ClientVerification> {
        let Some(ca) = client_ca else {
            if let Some(mode) = client_auth {
                self.report(
                    span_of(&mode),
                    &key.child("client_auth"),
                    "client_auth only applies with client_ca",
                    Some(
                        "add client_ca = \"conf/certs/clients-ca.pem\" or remove client_auth"
                            .into(),
                    ),
                );
                return None;
            }
            return Some(ClientVerification::none());
        };
        let mode = client_auth.map_or(ClientAuthMode::default(), Spanned::into_inner);
        match ClientVerification::load(ca.get_ref(), mode) {
            Ok(verification) => Some(verification),
            Err(e) => {
                self.report(span_of(&ca), &key.child("client_ca"), e, None);
                None
            }
        }
    }

    /// `[admin]`.
    pub fn admin(&mut self, a: AdminSection, proxy: &[SocketAddr]) -> Option<AdminSettings> {
        let key = KeyPath::root("admin");
        if let Some(token) = &a.token {
            if token.get_ref().len() < MIN_ADMIN_TOKEN_LEN {
                self.doc.report_redacted(
                    span_of(token),
                    &key.child("token"),
                    format!("the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
                );
            }
        }
        let token = a.token.map(Spanned::into_inner);
        let addr = self.listen_addr(
            &a.listen,
            &key.child("listen"),
            "write it like \"127.0.0.1:9901\" (keep it off public interfaces)",
            Some(InUse {
                addrs: proxy,
                by: "a proxy listener (server.listen or server.tls)",
                hint: "give the admin listener its own port",
            }),
        );
        Some(AdminSettings { addr: addr?, token })
    }

    /// `[log]`: where the access log goes and how it looks.
    pub fn log(&mut self, l: Option<LogSection>) -> LogSettings {
        let key = KeyPath::root("log");
        let mut settings = LogSettings::default();
        let Some(l) = l else {
            return settings;
        };
        if let Some(access) = &l.access {
            settings.access = match access.get_ref().as_str() {
                "stdout" => Sink::Stdout,
                "off" => Sink::Off,
                "" => {
                    self.report(
                        span_of(access),
                        &key.child("access"),
                        "the access log needs a destination",
                        Some("write \"stdout\", \"off\" or a file path".into()),
                    );
                    Sink::Off
                }
                path => {
                    let path = std::path::PathBuf::from(path);
                    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                    if dir.is_some_and(|d| !d.is_dir()) {
                        self.report(
                            span_of(access),
                            &key.child("access"),
                            format!("the directory of `{}` does not exist", path.display()),
                            Some("create it, or log to \"stdout\"".into()),
                        );
                    }
                    Sink::File(path)
                }
            };
        }
        if let Some(format) = &l.format {
            settings.format = match format.get_ref().as_str() {
                "json" => Format::Json,
                "combined" => Format::Combined,
                other => {
                    self.report(
                        span_of(format),
                        &key.child("format"),
                        format!("unknown format `{other}`"),
                        Some("use \"json\" or \"combined\"".into()),
                    );
                    Format::Json
                }
            };
        }
        settings
    }

    /// `[cache]`: the storage bounds (defaults when the section is absent).
    pub fn cache(&mut self, c: Option<CacheSection>) -> CacheSettings {
        let key = KeyPath::root("cache");
        let defaults = CacheSettings::default();
        let Some(c) = c else {
            return defaults;
        };
        let size = |s: &Option<Spanned<HumanSize>>, default: usize| {
            s.as_ref().map_or(default, |s| {
                usize::try_from(s.get_ref().0).unwrap_or(usize::MAX)
            })
        };
        let max_size = size(&c.max_size, defaults.max_size);
        // The default object bound never exceeds a smaller max_size.
        let max_object_size = size(&c.max_object_size, defaults.max_object_size.min(max_size));
        if let Some(s) = &c.max_size {
            if max_size < MIN_CACHE_SIZE {
                self.report(
                    span_of(s),
                    &key.child("max_size"),
                    format!("{max_size} bytes is too small for a cache"),
                    Some("give it at least \"1MiB\"".into()),
                );
            }
        }
        if let Some(s) = &c.max_object_size {
            if max_object_size == 0 || max_object_size > max_size {
                self.report(
                    span_of(s),
                    &key.child("max_object_size"),
                    format!("must be between 1 byte and max_size ({max_size} bytes)"),
                    Some("larger responses are streamed without being stored".into()),
                );
            }
        }
        CacheSettings {
            max_size,
            max_object_size,
        }
    }

    /// `[server]`.
    pub fn server(&mut self, s: ServerSection) -> ServerSettings {
        let key = KeyPath::root("server");
        self.nameservers = self.resolvers(&key, &s.resolvers);
        if s.listen.is_empty() {
            self.report(
                None,
                &key.child("listen"),
                "no listener configured",
                Some(format!("add listen = [\"{}\"]", model::DEFAULT_LISTEN)),
            );
        }
        let listen: Vec<SocketAddr> = s
            .listen
            .iter()
            .enumerate()
            .filter_map(|(i, addr)| {
                let hint = "write it like \"127.0.0.1:8080\" or \"[::]:8080\"";
                self.listen_addr(addr, &key.child("listen").index(i), hint, None)
            })
            .collect();
        let trusted = self.trusted_proxies(&key, &s.trusted_proxies);
        let threads = match s.threads {
            Some(0) => {
                self.report(
                    None,
                    &key.child("threads"),
                    "threads must be at least 1",
                    None,
                );
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let tls = self.tls_listeners(&key, s.tls, &listen);
        let stripped_headers =
            StrippedHeaders::new(self.stripped_headers(s.strip_untrusted_headers));
        let header_timeout = s
            .header_timeout
            .map_or(model::DEFAULT_HEADER_TIMEOUT, |d| d.0);
        if header_timeout.is_zero() {
            self.report(
                None,
                &key.child("header_timeout"),
                "header_timeout must be longer than zero",
                Some("write a duration like \"10s\"".into()),
            );
        }
        for (field, value) in [
            ("max_connections", s.max_connections),
            ("max_connections_per_ip", s.max_connections_per_ip),
        ] {
            if value == Some(0) {
                let msg = "the limit must be at least 1";
                self.report(None, &key.child(field), msg, None);
            }
        }
        let max_request_header_size = s
            .max_request_header_size
            .map_or(model::DEFAULT_MAX_REQUEST_HEADER_SIZE, |b| {
                usize::try_from(b.0).unwrap_or(usize::MAX)
            });
        if max_request_header_size < MIN_REQUEST_HEADER_SIZE {
            self.report(
                None,
                &key.child("max_request_header_size"),
                "max_request_header_size must be at least 1 KiB (a browser's request head \
                 is rarely under 500 bytes)",
                Some("write a size like \"64KiB\"".into()),
            );
        }
        ServerSettings {
            tls,
            stripped_headers,
            listen,
            threads,
            trusted_proxies: trusted,
            h2c: s.h2c,
            work_stealing: s.work_stealing,
            grace_period: s.grace_period.map_or(model::DEFAULT_GRACE_PERIOD, |d| d.0),
            keepalive_timeout: s
                .keepalive_timeout
                .map_or(model::DEFAULT_KEEPALIVE_TIMEOUT, |d| d.0),
            header_timeout,
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            max_request_header_size,
            upstream_keepalive_pool_size: s
                .upstream_keepalive_pool_size
                .unwrap_or(model::DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE),
            runtime_dir: (s.pid_file.is_none() || s.upgrade_sock.is_none())
                .then(crate::runtime_dir::default_dir),
            pid_file: s
                .pid_file
                .unwrap_or_else(|| in_runtime_dir(model::DEFAULT_PID_FILE)),
            upgrade_sock: s
                .upgrade_sock
                .unwrap_or_else(|| in_runtime_dir(model::DEFAULT_UPGRADE_SOCK)),
            error_log: s.error_log,
        }
    }

    /// `server.trusted_proxies`: addresses and CIDR blocks.
    fn trusted_proxies(&mut self, key: &KeyPath, list: &[Spanned<String>]) -> Vec<IpNet> {
        let mut trusted = Vec::new();
        for (i, net) in list.iter().enumerate() {
            let text = net.get_ref();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(n) => trusted.push(n),
                Err(_) => self.report(
                    span_of(net),
                    &key.child("trusted_proxies").index(i),
                    format!("`{text}` is not an IP address or CIDR block"),
                    Some("write it like \"10.0.0.0/8\" or \"192.168.1.10\"".into()),
                ),
            }
        }
        trusted
    }

    /// `[[server.tls]]`: each listener, on an address of its own.
    fn tls_listeners(
        &mut self,
        key: &KeyPath,
        sections: Vec<TlsSection>,
        listen: &[SocketAddr],
    ) -> Vec<TlsListener> {
        let tls = sections
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| self.tls_listener(i, t, listen))
            .collect::<Vec<TlsListener>>();
        for (i, t) in tls.iter().enumerate() {
            if tls[..i].iter().any(|other| other.addr == t.addr) {
                self.report(
                    None,
                    &key.child("tls").index(i).child("listen"),
                    format!("`{}` is already another TLS listener", t.addr),
                    Some("give each [[server.tls]] its own address".into()),
                );
            }
        }
        tls
    }

    /// `server.strip_untrusted_headers`: header names, the default list when absent.
    fn stripped_headers(&mut self, names: Option<Vec<Spanned<String>>>) -> Vec<http::HeaderName> {
        let Some(names) = names else {
            return model::DEFAULT_STRIPPED
                .iter()
                .map(|n| http::HeaderName::from_static(n))
                .collect();
        };
        let key = KeyPath::root("server").child("strip_untrusted_headers");
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match http::HeaderName::from_bytes(name.get_ref().as_bytes()) {
                Ok(n) => out.push(n),
                Err(_) => self.report(
                    span_of(name),
                    &key.index(i),
                    format!("`{}` is not a header name", name.get_ref()),
                    Some("write a name like \"x-http-method-override\"".into()),
                ),
            }
        }
        out
    }

    /// `[clusters.NAME]`; `None` when it has errors.
    pub fn cluster(&mut self, name: &str, c: ClusterSection) -> Option<Cluster> {
        let before = self.error_count();
        let key = KeyPath::root("clusters").child(name);
        if c.backends.is_empty() {
            self.report(
                None,
                &key.child("backends"),
                "a cluster needs at least one backend",
                Some("add backends = [\"127.0.0.1:9000\"]".into()),
            );
        }
        let (backends, dns) = self.backends(&key, &c.backends, c.dns_refresh);
        let balancing = match (c.balancer, &c.hash_on) {
            (BalancerKind::ConsistentHash, None) => Balancing::ConsistentHash(HashOn::ClientIp),
            (BalancerKind::ConsistentHash, Some(h)) => match HashOn::parse(h.get_ref()) {
                Ok(k) => Balancing::ConsistentHash(k),
                Err(e) => {
                    self.report(span_of(h), &key.child("hash_on"), e, None);
                    Balancing::RoundRobin
                }
            },
            (_, Some(h)) => {
                self.report(
                    span_of(h),
                    &key.child("hash_on"),
                    "hash_on only applies to balancer = \"consistent_hash\"",
                    Some("remove hash_on or set balancer = \"consistent_hash\"".into()),
                );
                Balancing::RoundRobin
            }
            (BalancerKind::RoundRobin, None) => Balancing::RoundRobin,
            (BalancerKind::LeastRequest, None) => Balancing::LeastRequest,
            (BalancerKind::PeakEwma, None) => Balancing::PeakEwma,
        };
        let timeouts = Timeouts {
            connect: self.positive(
                c.connect_timeout.map(|d| d.0),
                model::DEFAULT_CONNECT_TIMEOUT,
                &key,
                "connect_timeout",
            ),
            read: self.positive(
                c.read_timeout.map(|d| d.0),
                model::DEFAULT_READ_TIMEOUT,
                &key,
                "read_timeout",
            ),
            write: self.positive(
                c.write_timeout.map(|d| d.0),
                model::DEFAULT_WRITE_TIMEOUT,
                &key,
                "write_timeout",
            ),
            idle: c.idle_timeout.map_or(model::DEFAULT_IDLE_TIMEOUT, |d| d.0),
        };
        if c.max_requests == Some(0) {
            let msg = "max_requests must be at least 1";
            self.report(None, &key.child("max_requests"), msg, None);
        }
        let resilience = Resilience {
            retry: self.retry_policy(&key, c.retries, c.retry),
            outlier: c.outlier.map(|o| self.outlier_policy(&key, o)),
            max_requests: c.max_requests,
        };
        let health = c.health_check.and_then(|h| self.health_check(&key, h));
        let mut transport = self.transport(&key, &c.protocol, c.tls, c.sni, c.verify, &backends);
        transport.client_cert_key =
            self.client_certificate(&key, c.tls, c.client_cert, c.client_key);
        (self.error_count() == before).then(|| {
            Cluster::new(
                name, &backends, balancing, timeouts, &transport, resilience, health, dns,
            )
        })
    }

    /// `protocol`, `tls`, `sni` and `verify` of a cluster.
    fn transport(
        &mut self,
        key: &KeyPath,
        protocol: &ProtocolKind,
        tls: bool,
        sni: Option<String>,
        verify: Option<bool>,
        backends: &[BackendAddr],
    ) -> Transport {
        let protocol = match (protocol, tls) {
            (ProtocolKind::Http1, _) => Protocol::Http1,
            (ProtocolKind::H2, true) => Protocol::H2,
            (ProtocolKind::H2c, false) => Protocol::H2c,
            (ProtocolKind::H2, false) => {
                self.report(
                    None,
                    &key.child("protocol"),
                    "protocol = \"h2\" is HTTP/2 over TLS and needs tls = true",
                    Some("set tls = true, or use protocol = \"h2c\" for cleartext HTTP/2".into()),
                );
                Protocol::H2
            }
            (ProtocolKind::H2c, true) => {
                self.report(
                    None,
                    &key.child("protocol"),
                    "protocol = \"h2c\" is cleartext HTTP/2 and cannot use tls = true",
                    Some("use protocol = \"h2\" with tls = true".into()),
                );
                Protocol::H2c
            }
        };
        if !tls && (sni.is_some() || verify.is_some()) {
            self.report(
                None,
                &key.child("tls"),
                "`sni` and `verify` only apply with tls = true",
                Some("set tls = true or remove them".into()),
            );
        }
        let verify = verify.unwrap_or(true);
        if tls && verify && sni.is_none() && backends.iter().any(|b| b.host.is_empty()) {
            self.report(
                None,
                &key.child("sni"),
                "verifying TLS needs a server name, and a backend is an IP address",
                Some("set sni = \"backend.example.com\" (the name in its certificate)".into()),
            );
        }
        Transport {
            protocol,
            tls,
            sni,
            verify,
            client_cert_key: None,
        }
    }

    /// `client_cert` and `client_key` of a cluster: both or neither, and only with `tls`.
    fn client_certificate(
        &mut self,
        key: &KeyPath,
        tls: bool,
        cert: Option<Spanned<String>>,
        private_key: Option<Spanned<String>>,
    ) -> Option<Arc<CertKey>> {
        let (cert, private_key) = match (cert, private_key) {
            (None, None) => return None,
            (Some(cert), Some(private_key)) => (cert, private_key),
            (Some(cert), None) => {
                let hint = "add client_key = \"conf/certs/gantry-client.key\"";
                let msg = "client_cert needs client_key, the certificate's private key";
                self.report(
                    span_of(&cert),
                    &key.child("client_key"),
                    msg,
                    Some(hint.into()),
                );
                return None;
            }
            (None, Some(private_key)) => {
                let hint = "add client_cert = \"conf/certs/gantry-client.pem\"";
                let msg = "client_key needs client_cert, the certificate it belongs to";
                self.report(
                    span_of(&private_key),
                    &key.child("client_cert"),
                    msg,
                    Some(hint.into()),
                );
                return None;
            }
        };
        if !tls {
            self.report(
                span_of(&cert),
                &key.child("client_cert"),
                "client_cert and client_key only apply with tls = true",
                Some("set tls = true or remove them".into()),
            );
            return None;
        }
        match crate::tls::load_client_certificate(cert.get_ref(), private_key.get_ref()) {
            Ok(cert_key) => Some(Arc::new(cert_key)),
            Err(ClientCertificateError::Certificate(e)) => {
                self.report(span_of(&cert), &key.child("client_cert"), e, None);
                None
            }
            Err(ClientCertificateError::Key(e)) => {
                let span = span_of(&private_key);
                self.report(span, &key.child("client_key"), e, None);
                None
            }
        }
    }

    fn health_check(
        &mut self,
        cluster_key: &KeyPath,
        h: HealthCheckSection,
    ) -> Option<HealthCheckSpec> {
        let key = cluster_key.child("health_check");
        let interval = self.positive(
            h.interval.map(|d| d.0),
            model::DEFAULT_HEALTH_CHECK_INTERVAL,
            &key,
            "interval",
        );
        let timeout = self.positive(
            h.timeout.map(|d| d.0),
            model::DEFAULT_HEALTH_CHECK_TIMEOUT,
            &key,
            "timeout",
        );
        let healthy_threshold = h
            .healthy_threshold
            .unwrap_or(model::DEFAULT_HEALTHY_THRESHOLD);
        let unhealthy_threshold = h
            .unhealthy_threshold
            .unwrap_or(model::DEFAULT_UNHEALTHY_THRESHOLD);
        for (n, field) in [
            (healthy_threshold, "healthy_threshold"),
            (unhealthy_threshold, "unhealthy_threshold"),
        ] {
            if n == 0 {
                self.report(
                    None,
                    &key.child(field),
                    format!("{field} must be at least 1"),
                    None,
                );
            }
        }
        let expected_statuses = h
            .expected_statuses
            .unwrap_or_else(|| model::DEFAULT_EXPECTED_STATUSES.to_vec());
        if expected_statuses.is_empty()
            || expected_statuses.iter().any(|s| !(100..=599).contains(s))
        {
            self.report(
                None,
                &key.child("expected_statuses"),
                "expected_statuses must list status codes between 100 and 599",
                None,
            );
        }
        let http_request = match h.kind {
            HealthCheckKind::Tcp => {
                for (field, set) in [("path", h.path.is_some()), ("host", h.host.is_some())] {
                    if set {
                        self.report(
                            None,
                            &key.child(field),
                            format!("`{field}` only applies to type = \"http\" checks"),
                            None,
                        );
                    }
                }
                None
            }
            HealthCheckKind::Http => {
                let path = h
                    .path
                    .as_ref()
                    .map_or(model::DEFAULT_HEALTH_CHECK_PATH, |p| p.get_ref().as_str());
                let host = h
                    .host
                    .as_ref()
                    .map_or(model::DEFAULT_HEALTH_CHECK_HOST, |p| p.get_ref().as_str());
                let req = RequestHeader::build("GET", path.as_bytes(), None).and_then(|mut r| {
                    r.insert_header(http::header::HOST, host)?;
                    Ok(r)
                });
                match (path.starts_with('/'), req) {
                    (true, Ok(r)) => Some(r),
                    _ => {
                        self.report(
                            None,
                            &key.child("path"),
                            format!("invalid health check path `{path}` or host `{host}`"),
                            Some("the path must start with `/`".into()),
                        );
                        None
                    }
                }
            }
        };
        Some(HealthCheckSpec {
            http_request,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            expected_statuses,
        })
    }

    /// `[routes.NAME]` with its plugins (`plugin_section`, its `[routes.NAME.plugins.*]`, built
    /// after the paths are compiled); `None` when it has errors.
    pub fn route(
        &mut self,
        name: &str,
        mut r: RouteSection,
        clusters: &BTreeMap<String, Option<Arc<Cluster>>>,
        plugins: &Plugins,
        plugin_section: Option<Spanned<DeValue<'a>>>,
        tracing_on: bool,
    ) -> Option<RouteSpec> {
        let before = self.error_count();
        let key = KeyPath::root("routes").child(name);
        let hosts = self.parse_list(&r.hosts, &key.child("hosts"), HostPattern::parse);
        if r.paths.is_empty() {
            self.report(
                None,
                &key.child("paths"),
                "a route needs at least one path",
                Some("add paths = [\"/\"] to match everything".into()),
            );
        }
        let paths = self.parse_list(&r.paths, &key.child("paths"), PathPattern::parse);
        // `$path.NAME` in the route's templates: its regex paths, compiled once, above.
        let templates = TemplateScope {
            path_regexes: paths
                .iter()
                .filter_map(|p| match p {
                    PathPattern::Regex(re) => Some(re.clone()),
                    _ => None,
                })
                .collect(),
        };
        let plugins_start = self.error_count();
        let plugins = plugins.route(self.doc, name, plugin_section, templates.clone());
        // The plugins' problems fail the load, but the route's own checks go on.
        let before = before + (self.error_count() - plugins_start);
        if r.strip_prefix && paths.iter().any(|p| matches!(p, PathPattern::Regex(_))) {
            self.report(
                None,
                &key.child("strip_prefix"),
                "strip_prefix needs prefix or exact paths; a regex has no prefix to strip",
                None,
            );
        }
        let methods = self.parse_list(&r.methods, &key.child("methods"), parse_method);
        let headers = self.headers(&r.headers, &key.child("headers"));
        let timeout = r.timeout.map(|d| self.wait(d.0, &key, "timeout"));
        if timeout.is_some() && r.respond.is_some() {
            self.report(
                None,
                &key.child("timeout"),
                "timeout bounds the wait for an upstream: it applies to routes with `cluster` or `aggregate`",
                Some("remove timeout from this route".into()),
            );
        }
        let action = self.route_action(&key, &mut r, clusters, &templates, timeout);
        let mirror = r.mirror.as_ref().and_then(|m| {
            let proxied = action
                .as_ref()
                .is_none_or(|a| matches!(a, RouteAction::Proxy(_) | RouteAction::Split(_)));
            self.mirror(name, &key.child("mirror"), m, proxied, clusters)
        });
        let compress = self.compress(&key, &r.compress);
        let trace_ratio = r
            .tracing
            .as_ref()
            .and_then(|t| self.route_tracing(&key, t, tracing_on));
        if self.error_count() != before {
            return None;
        }
        let action = action?;
        if plugins.own_cache && !matches!(action, RouteAction::Proxy(_) | RouteAction::Split(_)) {
            self.report(
                None,
                &key.child("plugins").child(CACHE_PLUGIN),
                "the cache stores upstream responses: it applies to routes with `cluster`",
                Some("remove the plugin from this route".into()),
            );
        }
        let route = Route {
            name: name.into(),
            methods,
            headers,
            priority: r.priority,
            strip_prefix: r.strip_prefix,
            grpc_web: r.grpc_web,
            plugins: plugins.chain,
            action,
            metrics: crate::metrics::route(name),
            compress,
            timeout,
            mirror,
            trace_ratio,
            server_timing: r.server_timing,
        };
        Some(RouteSpec {
            route: Arc::new(route),
            hosts,
            paths,
        })
    }

    /// A route's one action (`cluster`, `respond` or `aggregate`) and the checks that depend on
    /// it; `None` when it has errors.
    fn route_action(
        &mut self,
        key: &KeyPath,
        r: &mut RouteSection,
        clusters: &BTreeMap<String, Option<Arc<Cluster>>>,
        templates: &TemplateScope,
        route_timeout: Option<Duration>,
    ) -> Option<RouteAction> {
        let actions = [
            r.cluster.is_some(),
            r.clusters.is_some(),
            r.respond.is_some(),
            r.aggregate.is_some(),
        ];
        if let (Some(k), None) = (&r.split_key, &r.clusters) {
            let msg = "split_key applies to a traffic split: it needs `clusters`";
            self.report(span_of(k), &key.child("split_key"), msg, None);
        }
        let action = match actions.iter().filter(|set| **set).count() {
            0 => {
                self.report(
                    None,
                    key,
                    "a route needs `cluster` (to proxy), `clusters` (to split traffic), \
                     `respond` (to answer directly) or `aggregate` (to compose several calls)",
                    Some("add cluster = \"NAME\"".into()),
                );
                None
            }
            1 => {
                if let Some(c) = &r.cluster {
                    self.cluster_ref(c, &key.child("cluster"), clusters)?
                        .map(RouteAction::Proxy)
                } else if let Some(list) = &r.clusters {
                    self.split(key, list, r.split_key.as_ref(), clusters)?
                        .map(|s| RouteAction::Split(Arc::new(s)))
                } else if let Some(resp) = r.respond.take() {
                    self.respond(key, resp).map(RouteAction::Respond)
                } else {
                    let aggregate = r.aggregate.take()?;
                    self.aggregate(key, aggregate, clusters, templates, route_timeout)?
                        .map(|a| RouteAction::Aggregate(Arc::new(a)))
                }
            }
            _ => {
                self.report(
                    None,
                    key,
                    "a route has one of `cluster`, `clusters`, `respond` and `aggregate`, not several",
                    None,
                );
                None
            }
        };
        let http2_cluster = match &action {
            Some(RouteAction::Proxy(c)) => c.protocol != Protocol::Http1,
            Some(RouteAction::Split(s)) => s.clusters().all(|(c, _)| c.protocol != Protocol::Http1),
            _ => false,
        };
        if r.grpc_web && !http2_cluster {
            self.report(
                None,
                &key.child("grpc_web"),
                "grpc_web bridges to a gRPC upstream: it needs `cluster` with protocol = \"h2c\" or \"h2\"",
                None,
            );
        }
        action
    }

    /// A route's `compress` list.
    fn compress(&mut self, key: &KeyPath, names: &[Spanned<String>]) -> Vec<Algorithm> {
        let mut algorithms = Vec::new();
        for name in names {
            let algorithm = match name.get_ref().as_str() {
                "br" => Algorithm::Brotli,
                "gzip" => Algorithm::Gzip,
                "zstd" => Algorithm::Zstd,
                other => {
                    self.report(
                        span_of(name),
                        &key.child("compress"),
                        format!("unknown compression `{other}`"),
                        Some("use \"br\", \"gzip\" or \"zstd\"".into()),
                    );
                    continue;
                }
            };
            if !algorithms.contains(&algorithm) {
                algorithms.push(algorithm);
            }
        }
        algorithms
    }

    /// `clusters = [{ name, weight }, …]` and `split_key` of a route; `Some(None)` when a
    /// cluster it names failed to compile.
    fn split(
        &mut self,
        route_key: &KeyPath,
        list: &[Spanned<SplitEntry>],
        split_key: Option<&Spanned<String>>,
        clusters: &BTreeMap<String, Option<Arc<Cluster>>>,
    ) -> Option<Option<TrafficSplit>> {
        let key = route_key.child("clusters");
        let before = self.error_count();
        let mut entries = Vec::new();
        let mut broken = false;
        for (i, entry) in list.iter().enumerate() {
            let e = entry.get_ref();
            let weight = e.weight.unwrap_or(model::DEFAULT_SPLIT_WEIGHT);
            if weight > MAX_WEIGHT as u32 {
                let msg = format!("weight must be between 0 and {MAX_WEIGHT}");
                self.report(span_of(entry), &key.index(i), msg, None);
            }
            if list[..i]
                .iter()
                .any(|o| o.get_ref().name.get_ref() == e.name.get_ref())
            {
                let msg = format!("cluster `{}` is listed twice", e.name.get_ref());
                self.report(span_of(&e.name), &key.index(i), msg, None);
            }
            match self.cluster_ref(&e.name, &key.index(i).child("name"), clusters) {
                Some(Some(cluster)) => entries.push((cluster, weight)),
                Some(None) => broken = true,
                None => {}
            }
        }
        let hash_on = split_key.and_then(|k| match HashOn::parse(k.get_ref()) {
            Ok(h) => Some(h),
            Err(e) => {
                self.report(span_of(k), &route_key.child("split_key"), e, None);
                None
            }
        });
        if list.len() < 2 {
            let hint = Some("use cluster = \"NAME\" for a single cluster".into());
            self.report(
                None,
                &key,
                "a traffic split needs at least two clusters",
                hint,
            );
        }
        if broken {
            return Some(None);
        }
        if self.error_count() != before {
            return None;
        }
        match TrafficSplit::new(entries, hash_on) {
            Some(split) => Some(Some(split)),
            None => {
                let msg = "every weight is 0: the split has nowhere to send requests";
                self.report(None, &key, msg, None);
                None
            }
        }
    }

    /// Route `route`'s `mirror` (`proxied`: the route proxies, or its action failed to
    /// compile); `None` when it has errors or its cluster failed to compile.
    fn mirror(
        &mut self,
        route: &str,
        key: &KeyPath,
        m: &Spanned<MirrorSection>,
        proxied: bool,
        clusters: &BTreeMap<String, Option<Arc<Cluster>>>,
    ) -> Option<Arc<Mirror>> {
        let before = self.error_count();
        let section = m.get_ref();
        if !proxied {
            self.report(
                span_of(m),
                key,
                "mirror copies proxied requests: it applies to routes with `cluster` or `clusters`",
                Some("remove mirror from this route".into()),
            );
        }
        let percent = section
            .percent
            .as_ref()
            .map_or(model::DEFAULT_MIRROR_PERCENT, |p| *p.get_ref());
        if percent > 100 {
            let p = section.percent.as_ref().and_then(span_of);
            let msg = format!("percent must be between 0 and 100, not {percent}");
            self.report(p, &key.child("percent"), msg, None);
        }
        let max_body = section
            .max_body
            .as_ref()
            .map_or(model::DEFAULT_MIRROR_MAX_BODY, |s| s.get_ref().0);
        if max_body > MAX_MIRROR_BODY {
            let span = section.max_body.as_ref().and_then(span_of);
            self.report(
                span,
                &key.child("max_body"),
                format!("{max_body} bytes is over the largest mirrored body"),
                Some("give it at most \"16MiB\"; larger bodies are not mirrored".into()),
            );
        }
        let cluster = self.cluster_ref(&section.cluster, &key.child("cluster"), clusters)??;
        if self.error_count() != before {
            return None;
        }
        // Within MAX_MIRROR_BODY, so it fits.
        let max_body = usize::try_from(max_body).unwrap_or(usize::MAX);
        Some(Arc::new(Mirror::new(route, cluster, percent, max_body)))
    }

    /// A reference to a cluster: `Some(None)` when it failed to compile (already reported),
    /// `None` when it is not defined (reported here).
    fn cluster_ref(
        &mut self,
        name: &Spanned<String>,
        key: &KeyPath,
        clusters: &BTreeMap<String, Option<Arc<Cluster>>>,
    ) -> Option<Option<Arc<Cluster>>> {
        if let Some(cluster) = clusters.get(name.get_ref()) {
            return Some(cluster.clone());
        }
        let hint =
            did_you_mean(name.get_ref(), clusters.keys().map(String::as_str)).or_else(|| {
                let missing = KeyPath::root("clusters").child(name.get_ref());
                Some(format!("define [{missing}] or fix the name"))
            });
        self.report(
            span_of(name),
            key,
            format!("cluster `{}` is not defined", name.get_ref()),
            hint,
        );
        None
    }

    /// `[routes.R.aggregate]`; `Some(None)` when a cluster it names failed to compile.
    fn aggregate(
        &mut self,
        route_key: &KeyPath,
        section: Spanned<AggregateSection>,
        clusters: &BTreeMap<String, Option<Arc<Cluster>>>,
        scope: &TemplateScope,
        route_timeout: Option<Duration>,
    ) -> Option<Option<Aggregate>> {
        let key = route_key.child("aggregate");
        let span = section.span();
        let section = section.into_inner();
        let timeout = section
            .timeout
            .map_or(model::DEFAULT_AGGREGATE_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            let msg = "timeout must be greater than zero";
            self.report(Some(span.clone()), &key.child("timeout"), msg, None);
        }
        // The route's deadline caps the whole fan-out; each call keeps its own limit within it.
        let timeout = route_timeout.map_or(timeout, |cap| timeout.min(cap));
        if section.calls.is_empty() {
            self.report(
                Some(span),
                &key.child("calls"),
                "an aggregate needs at least one call",
                Some(format!(
                    "add [{}] with cluster and path",
                    key.child("calls").child("NAME")
                )),
            );
            return None;
        }
        let mut calls = Vec::new();
        let mut broken_cluster = false;
        for (name, call) in section.calls {
            let call_key = key.child("calls").child(&name);
            let at = Some(call.cluster.span());
            if name == "errors" {
                self.report(
                    at,
                    &call_key,
                    "`errors` is the member that lists failed calls; name the call otherwise",
                    None,
                );
                continue;
            }
            let cluster_key = call_key.child("cluster");
            let cluster = match self.cluster_ref(&call.cluster, &cluster_key, clusters) {
                Some(Some(cluster)) => Some(cluster),
                Some(None) => {
                    broken_cluster = true;
                    None
                }
                None => None,
            };
            let path_key = call_key.child("path");
            let path = match Template::parse(&call.path, scope) {
                Ok(_) if !call.path.starts_with('/') => {
                    let hint = Some("write it like \"/users/$path.user\"".into());
                    self.report(at.clone(), &path_key, "path must start with `/`", hint);
                    None
                }
                Ok(path) => Some(path),
                Err(e) => {
                    self.report(at.clone(), &path_key, e, None);
                    None
                }
            };
            let mut forward_headers = Vec::new();
            for h in &call.forward_headers {
                match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(name) if FRAMING_HEADERS.contains(&name.as_str()) => self.report(
                        at.clone(),
                        &call_key.child("forward_headers"),
                        format!("`{h}` describes the client's own connection or body and cannot be forwarded"),
                        None,
                    ),
                    Ok(name) => forward_headers.push(name),
                    Err(_) => self.report(
                        at.clone(),
                        &call_key.child("forward_headers"),
                        format!("`{h}` is not a valid header name"),
                        None,
                    ),
                }
            }
            let call_timeout = call.timeout.map(|d| d.0);
            if call_timeout.is_some_and(|t| t.is_zero()) {
                self.report(
                    at,
                    &call_key.child("timeout"),
                    "timeout must be greater than zero",
                    None,
                );
            }
            if let (Some(cluster), Some(path)) = (cluster, path) {
                calls.push(Call {
                    name,
                    cluster,
                    path,
                    required: call.required,
                    timeout: call_timeout,
                    forward_headers,
                });
            }
        }
        if broken_cluster {
            return Some(None);
        }
        Some(Some(Aggregate { timeout, calls }))
    }

    fn respond(
        &mut self,
        route_key: &KeyPath,
        resp: Spanned<RespondSection>,
    ) -> Option<DirectResponse> {
        let key = route_key.child("respond");
        let span = resp.span();
        let resp = resp.into_inner();
        let status = StatusCode::from_u16(resp.status)
            .ok()
            .filter(|_| (200..=599).contains(&resp.status));
        if status.is_none() {
            self.report(
                Some(span.clone()),
                &key.child("status"),
                format!("status {} is not between 200 and 599", resp.status),
                None,
            );
        }
        let mut headers = self.headers(&resp.headers, &key.child("headers"));
        let has_type = headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE);
        match (&resp.content_type, has_type) {
            (Some(_), true) => self.report(
                Some(span.clone()),
                &key.child("content_type"),
                "Content-Type is set both by `content_type` and in `headers`",
                Some("keep one of them".into()),
            ),
            (_, true) => {}
            (ct, false) => {
                let ct = ct.as_deref().unwrap_or(model::DEFAULT_CONTENT_TYPE);
                match HeaderValue::from_str(ct) {
                    Ok(v) => headers.push((http::header::CONTENT_TYPE, v)),
                    Err(_) => self.report(
                        Some(span.clone()),
                        &key.child("content_type"),
                        format!("`{ct}` is not a valid header value"),
                        None,
                    ),
                }
            }
        }
        let status = status?;
        Some(DirectResponse {
            status,
            headers,
            body: bytes::Bytes::from(resp.body),
        })
    }

    fn headers(
        &mut self,
        map: &BTreeMap<String, Spanned<String>>,
        key: &KeyPath,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (name, value) in map {
            let hname = HeaderName::from_bytes(name.as_bytes());
            let hvalue = HeaderValue::from_str(value.get_ref());
            match (hname, hvalue) {
                (Ok(n), Ok(v)) => out.push((n, v)),
                (Err(_), _) => self.report(
                    span_of(value),
                    &key.child(name),
                    format!("`{name}` is not a valid header name"),
                    None,
                ),
                (_, Err(_)) => self.report(
                    span_of(value),
                    &key.child(name),
                    "not a valid header value (control characters are not allowed)",
                    None,
                ),
            }
        }
        out
    }

    fn parse_list<T, E: std::fmt::Display>(
        &mut self,
        items: &[Spanned<String>],
        key: &KeyPath,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match parse(item.get_ref()) {
                Ok(v) => out.push(v),
                Err(e) => self.report(span_of(item), &key.index(i), e.to_string(), None),
            }
        }
        out
    }

    fn positive(
        &mut self,
        value: Option<Duration>,
        default: Duration,
        key: &KeyPath,
        field: &str,
    ) -> Duration {
        match value {
            Some(d) if d.is_zero() => {
                self.report(
                    None,
                    &key.child(field),
                    format!("{field} must be greater than zero"),
                    None,
                );
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    fn error_count(&self) -> usize {
        self.doc.error_count()
    }
}

/// `name` in the default runtime directory ([`crate::runtime_dir`]).
fn in_runtime_dir(name: &str) -> String {
    crate::runtime_dir::default_dir()
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// One of a route's `methods`: upper case, as HTTP methods are case-sensitive.
fn parse_method(m: &str) -> Result<Method, String> {
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "method `{m}` must be upper case (`{}`)",
            m.to_ascii_uppercase()
        ));
    }
    Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method `{m}`"))
}
