//! Configuration: the TOML file model, its validation, and the compiled runtime model.
//!
//! [`load`] reads a file and returns either a ready-to-serve [`Config`] or every problem in the
//! file at once ([`ConfigErrors`]), each with file, line, column, key path and a fix.

mod compile;
mod document;
mod error;
pub mod model;
mod plugins;
mod redis;

pub use error::{ConfigError, ConfigErrors};

use error::KeyPath;

use crate::router::Router;
use crate::upstream::call::PluginClusters;
use crate::upstream::Cluster;
use compile::Compiler;
use document::Document;
use gantry_plugins::registry::BuildContext;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The top-level sections a file may have.
const SECTIONS: &[&str] = &[
    "server",
    "clusters",
    "routes",
    "plugins",
    "consumers",
    "redis",
    "admin",
    "cache",
    "log",
    "tracing",
];

/// The client headers removed from a request before anything reads it, in one pass over its
/// names (with their `_` spellings): from an untrusted peer `server.strip_untrusted_headers`,
/// the forwarding headers Gantry sets and the consumer and client certificate headers; from a
/// trusted peer only the consumer and client certificate headers (its forwarding headers are
/// believed).
#[derive(Debug, Clone)]
pub struct StrippedHeaders {
    untrusted: Vec<http::HeaderName>,
    trusted: Vec<http::HeaderName>,
}

impl StrippedHeaders {
    /// The lists for `configured` (`server.strip_untrusted_headers`).
    pub fn new(configured: Vec<http::HeaderName>) -> Self {
        let names = |list: &[&'static str]| {
            list.iter()
                .map(|n| http::HeaderName::from_static(n))
                .collect::<Vec<_>>()
        };
        let mut trusted = names(model::CONSUMER_HEADERS);
        trusted.extend(names(&gantry_plugins::gateway::CLIENT_CERTIFICATE_HEADERS));
        let mut untrusted = configured;
        for name in names(model::FORWARDING_HEADERS)
            .into_iter()
            .chain(trusted.clone())
        {
            if !untrusted.contains(&name) {
                untrusted.push(name);
            }
        }
        StrippedHeaders { untrusted, trusted }
    }

    /// The names to remove from a request of a peer that is `trusted` or not.
    pub fn for_peer(&self, trusted: bool) -> &[http::HeaderName] {
        if trusted {
            &self.trusted
        } else {
            &self.untrusted
        }
    }
}

/// Compiled `[server]` settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Plain-text listeners.
    pub listen: Vec<SocketAddr>,
    /// Worker threads.
    pub threads: usize,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Accept h2c prior knowledge.
    pub h2c: bool,
    /// Tokio work stealing between worker threads.
    pub work_stealing: bool,
    /// Drain time on SIGTERM.
    pub grace_period: Duration,
    /// Deadline for a request head.
    pub header_timeout: Duration,
    /// Most client connections (`None`: derived from the file-descriptor limit at start).
    pub max_connections: Option<usize>,
    /// Most client connections per IP address.
    pub max_connections_per_ip: Option<usize>,
    /// Idle client keep-alive.
    pub keepalive_timeout: Duration,
    /// Largest accepted request line plus headers, in bytes.
    pub max_request_header_size: usize,
    /// Idle upstream connections per thread.
    pub upstream_keepalive_pool_size: usize,
    /// Client headers removed before anything reads the request.
    pub stripped_headers: StrippedHeaders,
    /// The default directory of the pid file and upgrade socket, when either is defaulted:
    /// created (0700) at start.
    pub runtime_dir: Option<std::path::PathBuf>,
    /// Pid file for `--daemon`.
    pub pid_file: String,
    /// Upgrade socket for `--upgrade`.
    pub upgrade_sock: String,
    /// Log file for `--daemon`.
    pub error_log: Option<String>,
    /// TLS listeners.
    pub tls: Vec<TlsListener>,
}

/// A compiled `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Where access records go.
    pub access: crate::access_log::Sink,
    /// How they look.
    pub format: crate::access_log::Format,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            access: crate::access_log::Sink::Stdout,
            format: crate::access_log::Format::Json,
        }
    }
}

/// A compiled `[cache]`: the bounds of the node's response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most bytes stored at once.
    pub max_size: usize,
    /// Largest response stored.
    pub max_object_size: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_size: model::DEFAULT_CACHE_MAX_SIZE,
            max_object_size: model::DEFAULT_CACHE_MAX_OBJECT_SIZE,
        }
    }
}

/// A compiled `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bearer token of the protected endpoints.
    pub token: Option<String>,
}

/// A compiled `[[server.tls]]`.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificates, chosen by SNI.
    pub certificates: Arc<crate::tls::CertStore>,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
    /// How client certificates are verified (`client_ca`, `client_auth`).
    pub client_verification: Arc<crate::client_auth::ClientVerification>,
}

impl ServerSettings {
    /// True when `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// A validated, compiled configuration: what the proxy serves from.
pub struct Config {
    /// Process settings.
    pub server: ServerSettings,
    /// The route index.
    pub router: Router,
    /// Every cluster, by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// The admin listener, when `[admin]` is configured.
    pub admin: Option<AdminSettings>,
    /// SHA-256 of the configuration text, hex.
    pub source_sha256: String,
    /// The configuration text (for `GET /config`, with secrets redacted there).
    pub source: String,
    /// Some route bridges gRPC-Web (the bridge module is loaded only then).
    pub grpc_web: bool,
    /// The response cache's bounds.
    pub cache: CacheSettings,
    /// Some route has the `cache` plugin (the storage is created only then).
    pub caching: bool,
    /// The access log.
    pub log: LogSettings,
    /// Some route compresses responses (the compression module is loaded only then).
    pub compression: bool,
    /// `[tracing]`, when traces are exported.
    pub tracing: Option<Arc<crate::trace::TracingSettings>>,
}

impl Config {
    /// Every cluster, for the service that runs their background tasks.
    pub fn cluster_list(&self) -> Vec<Arc<Cluster>> {
        self.clusters.values().cloned().collect()
    }
}

/// Reads and compiles the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_replacing(path, None)
}

/// Reads and compiles the file at `path` to replace `previous`: clusters defined exactly as
/// before are kept, with their backends' health.
pub fn load_replacing(path: &Path, previous: Option<&Config>) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => compile_source(&file, &src, previous),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
            hint: Some("pass the file with -c PATH".into()),
            source_line: None,
        }])),
    }
}

/// Compiles configuration text; `file` names it in errors.
pub fn load_str(file: &str, src: &str) -> Result<Config, ConfigErrors> {
    compile_source(file, src, None)
}

fn compile_source(
    file: &str,
    src: &str,
    previous: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    let mut doc = Document::parse(file, src)?;
    let server = doc.take("server");
    let clusters = doc.take("clusters");
    let routes = doc.take("routes");
    let global_plugins = doc.take("plugins");
    let consumers = doc.take("consumers");
    let redis = doc.take("redis");
    let admin = doc.take("admin");
    let cache = doc.take("cache");
    let log = doc.take("log");
    let tracing = doc.take("tracing");
    doc.reject_remaining(SECTIONS);

    let server = match server {
        Some(v) => {
            let span = v.span();
            doc.deserialize::<model::ServerSection>(&KeyPath::root("server"), v)
                .map(|s| (span, s))
        }
        None => Some((0..0, model::ServerSection::default())),
    };
    let admin =
        admin.and_then(|v| doc.deserialize::<model::AdminSection>(&KeyPath::root("admin"), v));
    let cache =
        cache.and_then(|v| doc.deserialize::<model::CacheSection>(&KeyPath::root("cache"), v));
    let log = log.and_then(|v| doc.deserialize::<model::LogSection>(&KeyPath::root("log"), v));
    let tracing_on = tracing.is_some();
    let tracing = tracing.and_then(|v| {
        let span = v.span();
        doc.deserialize::<model::TracingSection>(&KeyPath::root("tracing"), v)
            .map(|t| (span, t))
    });
    let cluster_sections = doc.deserialize_entries::<model::ClusterSection>("clusters", clusters);
    let consumers = plugins::consumers(&mut doc, consumers);
    let redis = redis::store(&mut doc, redis);

    let mut compiler = Compiler::new(&mut doc);
    let server = server.map(|(span, s)| {
        compiler.at_entry(span);
        compiler.server(s)
    });
    // A cluster that failed to compile stays as a name (with `None`), so routes naming it do
    // not get a second, misleading "not defined" error.
    let mut clusters: BTreeMap<String, Option<Arc<Cluster>>> = BTreeMap::new();
    for (name, span, section) in cluster_sections {
        compiler.at_entry(span);
        let cluster = section.and_then(|s| compiler.cluster(&name, s)).map(|new| {
            match previous.and_then(|p| p.clusters.get(&name)) {
                Some(old) if old.same_definition(&new) => Arc::clone(old),
                _ => Arc::new(new),
            }
        });
        clusters.insert(name, cluster);
    }
    // Plugins are built after the clusters, which they may call (`forward-auth`).
    let build_ctx = BuildContext {
        consumers,
        redis,
        clusters: Arc::new(PluginClusters {
            clusters: clusters.clone(),
        }),
    };
    // Global plugins first: they claim their state slots before any route's plugins.
    let sections = compiler.doc();
    let plugins = plugins::global(sections, global_plugins, build_ctx);
    let routes_key = KeyPath::root("routes");
    let route_entries = routes
        .map(|v| sections.entries(&routes_key, v))
        .unwrap_or_default();
    let route_sections: Vec<_> = route_entries
        .into_iter()
        .filter_map(|mut e| {
            let span = e.value.span();
            let plugin_section = Document::take_child(&mut e.value, "plugins");
            let key = routes_key.child(&e.name);
            match sections.try_deserialize::<model::RouteSection>(&key, e.value) {
                Ok(section) => Some((e.name, span, section, plugin_section)),
                Err(rest) => {
                    // Not compiled (a required key is missing), but its plugins are checked.
                    if plugin_section.is_some() {
                        let templates = plugins::unparsed_route_templates(rest);
                        plugins.route(sections, &e.name, plugin_section, templates);
                    }
                    None
                }
            }
        })
        .collect();
    let tracing = tracing.and_then(|(span, t)| {
        compiler.at_entry(span);
        compiler.tracing(t)
    });
    let mut specs = Vec::new();
    for (name, span, section, plugin_section) in route_sections {
        compiler.at_entry(span);
        let route = compiler.route(
            &name,
            section,
            &clusters,
            &plugins,
            plugin_section,
            tracing_on,
        );
        specs.extend(route);
    }
    let proxy_listeners: Vec<SocketAddr> = server
        .iter()
        .flat_map(|s| s.listen.iter().copied().chain(s.tls.iter().map(|t| t.addr)))
        .collect();
    let admin = admin.and_then(|a| compiler.admin(a, &proxy_listeners));
    let grpc_web = specs.iter().any(|s| s.route.grpc_web);
    let caching = specs.iter().any(|s| s.route.plugins.cache.is_some());
    let compression = specs.iter().any(|s| !s.route.compress.is_empty());
    let cache = compiler.cache(cache);
    let log = compiler.log(log);
    match server {
        Some(server) if doc.error_count() == 0 => Ok(Config {
            admin,
            source_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(src.as_bytes())),
            source: src.to_string(),
            grpc_web,
            cache,
            caching,
            log,
            compression,
            tracing,
            server,
            router: Router::new(specs),
            clusters: clusters
                .into_iter()
                .filter_map(|(k, v)| v.map(|c| (k, c)))
                .collect(),
        }),
        _ => Err(doc.into_errors()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(toml: &str) -> Vec<String> {
        match load_str("t.toml", toml) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{} {}", e.key, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = load_str("t.toml", "").expect("empty config is valid");
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.server.grace_period, Duration::from_secs(5));
        assert_eq!(c.server.max_request_header_size, 65536);
        assert!(c.router.is_empty());
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let e = errors(
            r#"
[clusters.c]
hash_on = "path"
backends = ["127.0.0.1:1", "127.0.0.1:1", "nohost"]
read_timeout = "0s"
[clusters.c.health_check]
type = "tcp"
path = "/x"
healthy_threshold = 0
[routes.r]
paths = ["~^/x$"]
strip_prefix = true
cluster = "c"
respond = { body = "x" }
[routes.s]
paths = ["/"]
headers = { "bad header" = "v" }
respond = { status = 99 }
"#,
        );
        let want = [
            "clusters.c.hash_on hash_on only applies",
            "clusters.c.backends[1] backend `127.0.0.1:1` is listed twice",
            "clusters.c.backends[2] backend `nohost` has no port",
            "clusters.c.read_timeout read_timeout must be greater than zero",
            "clusters.c.health_check.path `path` only applies",
            "clusters.c.health_check.healthy_threshold healthy_threshold must be at least 1",
            "routes.r.strip_prefix strip_prefix needs prefix",
            "routes.r a route has one of `cluster`, `clusters`, `respond` and `aggregate`",
            "routes.s.headers.bad header `bad header` is not a valid header name",
            "routes.s.respond.status status 99",
        ];
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing `{w}` in {e:#?}"
            );
        }
    }

    #[test]
    fn errors_inside_spanned_values_keep_checking_the_entry() {
        let e = errors(
            "[clusters.c]\nbackends = [{ addr = \"127.0.0.1:1\", wieght = 2 }]\n\
             [routes.r]\npaths = [1]\nrespond = { bdy = \"x\" }\nclsuter = \"c\"\n",
        );
        for w in [
            "clusters.c.backends[0].wieght unknown key",
            "routes.r.paths[0] invalid type",
            "routes.r.respond.bdy unknown key",
            "routes.r.clsuter unknown key",
        ] {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing `{w}` in {e:#?}"
            );
        }
        assert!(e.iter().all(|x| !x.contains("$__serde")), "{e:#?}");
    }

    #[test]
    fn cache_settings_and_plugin_are_checked() {
        let route = "[clusters.c]\nbackends = [\"127.0.0.1:1\"]\n\
                     [routes.r]\npaths = [\"/\"]\ncluster = \"c\"\n[routes.r.plugins.cache]\n";
        let c = load_str("t.toml", route).expect("defaults are valid");
        assert!(c.caching);
        assert_eq!(c.cache, CacheSettings::default());
        let e = errors(&format!(
            "[cache]\nmax_size = \"10KiB\"\nmax_object_size = \"1GiB\"\n{route}"
        ));
        assert!(e.iter().any(|x| x.starts_with("cache.max_size")), "{e:#?}");
        assert!(
            e.iter().any(|x| x.starts_with("cache.max_object_size")),
            "{e:#?}"
        );
        let e = errors(&format!("{route}statuses = [206]\nkey_query = \"some\"\n"));
        assert!(
            e.iter().any(|x| x.contains("unknown key_query `some`")),
            "{e:#?}"
        );
        let e = errors(&format!("{route}statuses = [206]\n"));
        assert!(e.iter().any(|x| x.contains("206")), "{e:#?}");
        let e = errors(
            "[routes.d]\npaths = [\"/\"]\nrespond = { status = 200 }\n[routes.d.plugins.cache]\n",
        );
        assert!(
            e.iter()
                .any(|x| x.starts_with("routes.d.plugins.cache the cache stores")),
            "{e:#?}"
        );
    }

    #[test]
    fn redis_settings_are_checked_without_quoting_passwords() {
        let limited = "[routes.r]\npaths = [\"/\"]\nrespond = { body = \"x\" }\n\
                       [routes.r.plugins.rate-limit]\nlimits = [{ requests = 1, per = \"1s\" }]\n\
                       policy = \"redis\"\n";
        let e = errors(limited);
        assert!(
            e.iter().any(|x| x.starts_with(
                "routes.r.plugins.rate-limit policy = \"redis\": this needs a [redis] section"
            )),
            "{e:#?}"
        );
        let bad = format!(
            "[redis]\nurl = \"htp://:s3cret@127.0.0.1\"\ntimeout = \"10s\"\npool_size = 0\n{limited}"
        );
        let loaded = load_str("t.toml", &bad).err().expect("errors");
        let keys: Vec<&str> = loaded.0.iter().map(|e| e.key.as_str()).collect();
        for key in ["redis.url", "redis.timeout", "redis.pool_size"] {
            assert!(keys.contains(&key), "{key} missing in {keys:?}");
        }
        assert!(!loaded.to_string().contains("s3cret"), "{loaded}");
        assert!(
            loaded
                .to_string()
                .contains("the [redis] section, which has errors"),
            "{loaded}"
        );
        // A misspelt key would otherwise quote its line, password and all.
        let typo = load_str("t.toml", "[redis]\nuri = \"redis://:s3cret@h:1\"\n").err();
        let typo = typo.expect("errors").to_string();
        assert!(
            typo.contains("redis.uri") && !typo.contains("s3cret"),
            "{typo}"
        );
        let e = errors("[redis]\nurl = \"redis://h:1\"\nkey_prefix = \"a{b}\"\n");
        assert!(
            e.iter().any(|x| x.starts_with("redis.key_prefix")),
            "{e:#?}"
        );
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:9000\"]\n[admin]\nlisten = \"127.0.0.1:9000\"\n",
        );
        assert!(e.iter().any(|x| x.starts_with("admin.listen")), "{e:#?}");
        let e = errors("[redis]\nurls = [\"redis://a:1\", \"redis://b:1\"]\n");
        assert!(
            e.iter().any(|x| x.starts_with("redis.urls several")),
            "{e:#?}"
        );
        let e = errors("[redis]\ntimeout = \"20ms\"\n");
        assert!(
            e.iter().any(|x| x.starts_with("redis [redis] needs `url`")),
            "{e:#?}"
        );
        assert!(load_str(
            "t.toml",
            &format!("[redis]\nurl = \"redis://127.0.0.1:6379/2\"\n{limited}")
        )
        .is_ok());
    }

    #[test]
    fn route_plugins_are_checked_against_the_compiled_paths() {
        let transform = "[routes.r.plugins.request-transform]\n\
                         set_headers = { x-id = \"$path.id\" }\n";
        let paths = "[routes.r]\npaths = [\"~^/u/(?<id>[0-9]+)$\"]\n";
        let route = format!("{paths}respond = {{ body = \"x\" }}\n");
        assert!(load_str("t.toml", &format!("{route}{transform}")).is_ok());
        let e = errors(&format!(
            "[routes.r]\npaths = [\"/u\"]\nrespond = {{ body = \"x\" }}\n{transform}"
        ));
        assert!(
            e.iter()
                .any(|x| x.starts_with("routes.r.plugins.request-transform in template")),
            "{e:#?}"
        );
        // A route that stops early (its cluster is not defined) still has its plugins checked.
        let e =
            errors("[routes.r]\npaths = [\"/\"]\ncluster = \"nope\"\n[routes.r.plugins.nosuch]\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e.iter()
                .any(|x| x.starts_with("routes.r.plugins.nosuch unknown plugin")),
            "{e:#?}"
        );
        // So does one that cannot be deserialized, against the regex paths it has.
        let e = errors(&format!(
            "{paths}[routes.r.aggregate.calls.a]\npath = \"/\"\n{transform}[routes.r.plugins.nosuch]\n"
        ));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e.iter()
                .any(|x| x.starts_with("routes.r.aggregate.calls.a.cluster missing")),
            "{e:#?}"
        );
        // A plugin's problem does not hide the route's own.
        let e = errors(&format!(
            "{route}[routes.r.plugins.cache]\n[routes.r.plugins.nosuch]\n"
        ));
        assert!(
            e.iter()
                .any(|x| x.starts_with("routes.r.plugins.cache the cache stores")),
            "{e:#?}"
        );
    }

    #[test]
    fn a_route_to_a_broken_cluster_is_not_reported_twice() {
        let e =
            errors("[clusters.c]\nbackends = []\n[routes.r]\npaths = [\"/\"]\ncluster = \"c\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
    }

    #[test]
    fn stripped_headers_add_the_gateways_own_to_the_configured_list_once() {
        let configured = vec![
            http::HeaderName::from_static("x-custom"),
            http::HeaderName::from_static("x-real-ip"),
        ];
        let stripped = StrippedHeaders::new(configured);
        let untrusted: Vec<&str> = stripped
            .for_peer(false)
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(
            untrusted,
            [
                "x-custom",
                "x-real-ip",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-consumer-name",
                "x-consumer-groups",
                "x-client-cert-subject",
                "x-client-cert-san",
                "x-client-cert-fingerprint"
            ]
        );
        let trusted: Vec<&str> = stripped.for_peer(true).iter().map(|n| n.as_str()).collect();
        assert_eq!(
            trusted,
            [
                "x-consumer-name",
                "x-consumer-groups",
                "x-client-cert-subject",
                "x-client-cert-san",
                "x-client-cert-fingerprint"
            ]
        );
    }
}
