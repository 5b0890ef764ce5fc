//! A real `redis-server` per test on a free loopback port, without persistence, killed on
//! drop. A missing `redis-server` fails the test with the fix (never a silent skip).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    /// The cluster bus port of a cluster node, picked like `port` (Redis's own default,
    /// `port + 10000`, could be a port another test holds).
    cluster_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server.
    pub fn start() -> RedisServer {
        RedisServer::launch(false)
    }

    /// A one-node Redis Cluster that owns every slot.
    pub fn start_cluster() -> RedisServer {
        let server = RedisServer::launch(true);
        let mut con = server.connection();
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .exec(&mut con)
            .expect("assign every slot");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut con)
                .expect("cluster info");
            if info.contains("cluster_state:ok") {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not come up:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn launch(cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            port: super::free_port(),
            cluster_port: cluster.then(super::free_port),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A `[redis]` section for this server. Its timeout is generous: on a loaded test machine
    /// the first call (connect, load the script) must not fall back to `on_store_error`.
    pub fn section(&self) -> String {
        self.section_with_timeout("1s")
    }

    /// A `[redis]` section with this `timeout`.
    pub fn section_with_timeout(&self, timeout: &str) -> String {
        let target = if self.cluster_port.is_some() {
            format!("urls = [\"{}\"]\ncluster = true", self.url())
        } else {
            format!("url = \"{}\"", self.url())
        };
        format!("[redis]\n{target}\ntimeout = \"{timeout}\"\n")
    }

    /// Kills the server; its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty), and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cluster_port) = self.cluster_port {
            let _ = std::fs::remove_file(self.dir.path().join("nodes.conf"));
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &cluster_port.to_string(),
            ]);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}): the Redis tests need it; \
                 `make deps` installs it (scripts/ensure-deps.sh)"
            )
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {ping:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A synchronous client connection, for checks and clock reads.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to redis-server")
    }

    /// Redis's clock in milliseconds: the limiter's windows are aligned to it.
    pub fn now_ms(&self) -> u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query(&mut self.connection())
            .expect("TIME");
        secs * 1000 + micros / 1000
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection())
            .expect("KEYS")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
