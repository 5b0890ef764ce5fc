//! The bare Pingora proxy shared by `bare_pingora.rs` (the benchmark scripts' floor) and the
//! allocations bench: the smallest `ProxyHttp` (one fixed upstream over plain HTTP/1.1, no
//! filters) on Pingora's own listener, HTTP/1 loop and defaults, with one worker thread.

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// Proxies every request to one upstream over plain HTTP/1.1.
struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

/// A server with one worker thread proxying `listen` to `upstream`, ready for `run_forever`;
/// it stops at once on SIGTERM (no grace period).
pub fn server(listen: &str, upstream: &str) -> Server {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let bare = Bare {
        upstream: upstream.to_owned(),
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server
}
