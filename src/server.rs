//! Bootstrap: turns a compiled [`Config`] into a running Pingora server.

use crate::access_log::AccessLog;
use crate::client_auth::{ClientCertSwitch, HandshakeObserver};
use crate::config::Config;
use crate::connection::EdgeConnections;
use crate::proxy::Gateway;
use crate::reload::{CertSwitch, Live, ReloadOnSighup, TlsSwitches};
use crate::upstream::ClusterTasks;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;

/// Process options from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Fork into the background.
    pub daemon: bool,
    /// Take the listeners over from a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The access log file could not be opened.
    #[error("cannot open the access log {sink:?}: {source}")]
    AccessLog {
        /// Where the log goes.
        sink: crate::access_log::Sink,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime directory is unusable.
    #[error(transparent)]
    RuntimeDir(#[from] crate::runtime_dir::RuntimeDirError),
}

/// The socket buffers of a downstream connection. Pingora's default read buffer is 64 KiB per
/// connection, allocated at accept and held while the connection is idle; Gantry reads each
/// request head into a buffer of its own (`connection::head`) and Pingora reads bodies into
/// its own buffers, so reads go straight to the socket. The write buffer keeps Pingora's
/// default (one segment, 1,460 bytes), which coalesces the small writes of a response head.
fn downstream_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// Builds the Pingora server for `config`, read from `path` (which reloads re-read);
/// `run_forever` on the result serves it. Fails when the access log cannot be opened or the
/// runtime directory is unsafe.
pub fn build(config: Config, path: PathBuf, opts: RunOptions) -> Result<Server, StartupError> {
    let (access_log, log_writer) =
        AccessLog::open(&config.log.access, config.log.format).map_err(|source| {
            StartupError::AccessLog {
                sink: config.log.access.clone(),
                source,
            }
        })?;
    let settings = config.server.clone();
    if let Some(dir) = &settings.runtime_dir {
        crate::runtime_dir::ensure(dir)?;
    }
    let admin = config.admin.clone();
    let conf = ServerConf {
        threads: settings.threads,
        daemon: opts.daemon,
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        error_log: settings.error_log.clone(),
        grace_period_seconds: Some(settings.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: settings.upstream_keepalive_pool_size,
        work_stealing: settings.work_stealing,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let config = Arc::new(config);
    let (tasks_tx, cluster_tasks) = ClusterTasks::new(config.cluster_list());
    let tls: Vec<_> = settings
        .tls
        .iter()
        .map(|t| {
            let switches = TlsSwitches {
                certs: Arc::new(CertSwitch::new(Arc::clone(&t.certificates))),
                clients: Arc::new(ClientCertSwitch::new(Arc::clone(&t.client_verification))),
            };
            (t.addr, switches)
        })
        .collect();
    let live = Arc::new(Live::new(path, config, tasks_tx, tls.clone()));

    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(Arc::clone(&live), Arc::new(access_log)),
    );
    let mut options = HttpServerOptions::default();
    options.h2c = settings.h2c;
    app.server_options = Some(options);
    let fd_limit = crate::connection::raise_fd_limit();
    let default_max = crate::connection::default_max_connections(fd_limit);
    log::info!(
        "file-descriptor limit {fd_limit}: max_connections {}",
        settings
            .max_connections
            .map_or(format!("{default_max} (derived)"), |n| n.to_string())
    );
    let edge = EdgeConnections::new(Arc::new(app), Arc::clone(&live), default_max);
    let mut proxy = Service::new("gantry".into(), edge);
    for addr in &settings.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(downstream_buffers()));
    }
    for (addr, switches) in tls {
        let http2 = settings.tls.iter().any(|t| t.addr == addr && t.http2);
        // The resolver and the client verifier, loaded and checked with the configuration (and
        // replaced by reloads), provide every certificate and CA; the observer reads client
        // certificates for plugins and counts failed handshakes.
        match TlsSettings::with_callbacks(Box::new(HandshakeObserver::new(addr))) {
            Ok(mut tls_settings) => {
                tls_settings.set_cert_resolver(switches.certs as _);
                tls_settings.set_client_cert_verifier(switches.clients as _);
                if http2 {
                    tls_settings.enable_h2();
                }
                proxy.add_listener(
                    ListenerConfig::tcp(addr.to_string())
                        .tls(tls_settings)
                        .l4_buffer(downstream_buffers()),
                );
            }
            Err(e) => log::error!("TLS listener {addr}: {e}"),
        }
    }
    server.add_service(proxy);
    if let Some(admin) = &admin {
        server.add_service(crate::admin::service(admin, Arc::clone(&live)));
    }
    server.add_service(background_service("cluster tasks", cluster_tasks));
    server.add_service(background_service(
        "trace exporter",
        crate::trace::export::SpanExporter::new(Arc::clone(&live)),
    ));
    server.add_service(background_service("reload on SIGHUP", ReloadOnSighup(live)));
    if let Some(writer) = log_writer {
        server.add_service(background_service("access log", writer));
    }
    Ok(server)
}
