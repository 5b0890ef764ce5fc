//! Bootstrap: turns a compiled [`Config`] into a running Pingora server.

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::metrics::ConnectionGuard;
use crate::proxy::Gateway;
use crate::upstream::HealthChecks;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::Stream;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::server::ShutdownWatch;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Process options from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Fork into the background.
    pub daemon: bool,
    /// Take the listeners over from a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// Builds the Pingora server for `config`; `run_forever` on the result serves it. Fails
/// when the access log cannot be opened.
pub fn build(config: Config, opts: RunOptions) -> Result<Server, String> {
    let access_log = AccessLog::start(&config.log.access, config.log.format)
        .map_err(|e| format!("cannot open the access log {:?}: {e}", config.log.access))?;
    let settings = config.server.clone();
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
    let probes: Vec<_> = config
        .clusters
        .values()
        .filter_map(|c| c.health_probe())
        .collect();
    let health = HealthChecks::new(probes);

    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(Arc::clone(&config), Arc::new(access_log)),
    );
    let mut options = HttpServerOptions::default();
    options.h2c = settings.h2c;
    app.server_options = Some(options);
    let mut proxy = Service::new("gantry".into(), CountedConnections(Arc::new(app)));
    for addr in &settings.listen {
        proxy.add_tcp(&addr.to_string());
    }
    for tls in &settings.tls {
        // The paths are unused: the resolver, loaded and checked with the configuration,
        // provides every certificate.
        match TlsSettings::intermediate("", "") {
            Ok(mut tls_settings) => {
                tls_settings.set_cert_resolver(Arc::clone(&tls.certificates) as _);
                if tls.http2 {
                    tls_settings.enable_h2();
                }
                proxy.add_tls_with_settings(&tls.addr.to_string(), None, tls_settings);
            }
            Err(e) => log::error!("TLS listener {}: {e}", tls.addr),
        }
    }
    server.add_service(proxy);
    if let Some(admin) = &admin {
        server.add_service(crate::admin::service(admin, Arc::clone(&config)));
    }
    if !health.is_empty() {
        server.add_service(background_service("health checks", health));
    }
    Ok(server)
}

/// Counts the connections an app is serving (`gantry_connections_active`).
struct CountedConnections<A>(Arc<A>);

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountedConnections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = ConnectionGuard::open();
        self.0.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.0.cleanup().await
    }
}
