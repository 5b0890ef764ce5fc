//! Configuration: the TOML file model, its validation, and the compiled runtime model.
//!
//! [`load`] reads a file and returns either a ready-to-serve [`Config`] or every problem in the
//! file at once ([`ConfigErrors`]), each with file, line, column, key path and a fix.

mod compile;
mod document;
mod error;
pub mod model;

pub use error::{ConfigError, ConfigErrors};

use crate::router::Router;
use crate::upstream::Cluster;
use compile::Compiler;
use document::Document;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The top-level sections a file may have.
const SECTIONS: &[&str] = &["server", "clusters", "routes"];

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
    /// Drain time on SIGTERM.
    pub grace_period: Duration,
    /// Idle client keep-alive.
    pub keepalive_timeout: Duration,
    /// Largest accepted request line plus headers, in bytes.
    pub max_request_header_size: usize,
    /// Idle upstream connections per thread.
    pub upstream_keepalive_pool_size: usize,
    /// Pid file for `--daemon`.
    pub pid_file: String,
    /// Upgrade socket for `--upgrade`.
    pub upgrade_sock: String,
    /// Log file for `--daemon`.
    pub error_log: Option<String>,
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
}

/// Reads and compiles the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&file, &src),
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
    let mut doc = Document::parse(file, src)?;
    let server = doc.take("server");
    let clusters = doc.take("clusters");
    let routes = doc.take("routes");
    doc.reject_remaining(SECTIONS);

    let server = match server {
        Some(v) => {
            let span = v.span();
            doc.deserialize::<model::ServerSection>("server", v)
                .map(|s| (span, s))
        }
        None => Some((0..0, model::ServerSection::default())),
    };
    let cluster_sections: Vec<_> = match clusters {
        Some(v) => doc
            .entries("clusters", v)
            .into_iter()
            .map(|e| {
                let key = format!("clusters.{}", e.name);
                let span = e.value.span();
                (
                    e.name,
                    span,
                    doc.deserialize::<model::ClusterSection>(&key, e.value),
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let route_sections: Vec<_> = match routes {
        Some(v) => doc
            .entries("routes", v)
            .into_iter()
            .map(|e| {
                let key = format!("routes.{}", e.name);
                let span = e.value.span();
                (
                    e.name,
                    span,
                    doc.deserialize::<model::RouteSection>(&key, e.value),
                )
            })
            .collect(),
        None => Vec::new(),
    };

    let mut errors = doc.errors;
    let mut compiler = Compiler::new(&mut errors);
    let server = server.map(|(span, s)| {
        compiler.at_entry(span);
        compiler.server(s)
    });
    // A cluster that failed to compile stays as a name (with `None`), so routes naming it do
    // not get a second, misleading "not defined" error.
    let mut clusters: BTreeMap<String, Option<Arc<Cluster>>> = BTreeMap::new();
    for (name, span, section) in cluster_sections {
        compiler.at_entry(span);
        let cluster = section
            .and_then(|s| compiler.cluster(&name, s))
            .map(Arc::new);
        clusters.insert(name, cluster);
    }
    let mut specs = Vec::new();
    for (name, span, section) in route_sections {
        compiler.at_entry(span);
        if let Some(spec) = section.and_then(|s| compiler.route(&name, s, &clusters)) {
            specs.push(spec);
        }
    }
    match server {
        Some(server) if errors.is_empty() => Ok(Config {
            server,
            router: Router::new(specs),
            clusters: clusters
                .into_iter()
                .filter_map(|(k, v)| v.map(|c| (k, c)))
                .collect(),
        }),
        _ => Err(errors.into_errors()),
    }
}
