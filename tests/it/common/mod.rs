//! Test harness: the real `gantry` binary as a child process and real upstream servers, all
//! on ephemeral loopback ports.

pub mod dns_server;
pub mod protocol_upstream;
pub mod raw_http;
pub mod recorder;
pub mod redis_server;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A loopback port that was free a moment ago, for a process the test starts. It comes from
/// below Linux's ephemeral range (32768 and up), one after another, so no `:0` listener of a
/// concurrent test (upstreams bind those) and no earlier call can be handed the same port
/// between this check and the process's own bind.
pub fn free_port() -> u16 {
    const FIRST: usize = 20_000;
    const SPAN: usize = 12_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = std::process::id() as usize * 97;
    (0..SPAN)
        .map(|_| (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16)
        .find(|port| StdListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free loopback port below the ephemeral range")
}

/// How long [`eventually`] waits before it fails: long, so a loaded machine only makes a test
/// slower, never red.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `probe` every 20 ms until it gives a value, and returns it; fails the test naming
/// `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until something accepts connections on loopback `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address nothing listens on (connections are refused).
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The gateway binary running one config.
pub struct Gantry {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub port: u16,
    dir: Arc<tempfile::TempDir>,
    log_name: &'static str,
}

/// The `[server]` section the harness writes: `port`, one thread, files in `dir`.
fn server_section(port: u16, dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 1\ngrace_period = \"1s\"\n\
         pid_file = \"{dir}/gantry.pid\"\nupgrade_sock = \"{dir}/upgrade.sock\"\n{extra}\n",
        dir = dir.display()
    )
}

impl Gantry {
    /// Runs `body` (clusters and routes) with a default `[server]` section.
    pub fn start(body: &str) -> Gantry {
        Gantry::start_with("", body)
    }

    /// Runs with extra `[server]` keys (`server_extra`) and `body`.
    pub fn start_with(server_extra: &str, body: &str) -> Gantry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!("{}{body}", server_section(port, dir.path(), server_extra));
        std::fs::write(dir.path().join("gantry.toml"), config).expect("write config");
        let gantry = Gantry::spawn(Arc::new(dir), port, "gantry.log", &[]);
        gantry.wait_ready();
        gantry
    }

    fn spawn(
        dir: Arc<tempfile::TempDir>,
        port: u16,
        log_name: &'static str,
        args: &[&str],
    ) -> Gantry {
        let log = std::fs::File::create(dir.path().join(log_name)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .arg("-c")
            .arg(dir.path().join("gantry.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gantry");
        Gantry {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            log_name,
        }
    }

    /// Starts a second process with `--upgrade` on the same config; it takes the listeners
    /// over once this one receives SIGQUIT.
    /// Returns once the new process waits on the upgrade socket for the listeners.
    pub fn spawn_upgrade(&self) -> Gantry {
        let new = Gantry::spawn(
            Arc::clone(&self.dir),
            self.port,
            "upgraded.log",
            &["--upgrade"],
        );
        let socket = self.dir.path().join("upgrade.sock");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < PATIENCE,
                "the new process never listened on {}; log:\n{}",
                socket.display(),
                new.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        new
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gantry did not start; log:\n{}", self.log());
    }

    /// What the gateway wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(self.log_name)).unwrap_or_default()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path` with `headers`, through a fresh proxy-free client.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = client().get(self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("request")
    }

    /// Rewrites the configuration file (the same `[server]` section, then `body`), for a
    /// reload to pick up.
    pub fn rewrite_config(&self, server_extra: &str, body: &str) {
        let config = format!(
            "{}{body}",
            server_section(self.port, self.dir.path(), server_extra)
        );
        std::fs::write(self.dir.path().join("gantry.toml"), config).expect("write config");
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit and returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the admin metrics on `admin` hold `line`.
pub async fn wait_for_metric(admin: u16, line: &str) {
    eventually(line, || async {
        admin_metrics(admin).await.contains(line).then_some(())
    })
    .await
}

/// The Prometheus text of the admin listener on `admin`.
pub async fn admin_metrics(admin: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics body")
}

/// An HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Runs `gantry -t -c FILE` on `text` and returns (exit success, stdout + stderr).
pub fn check_config(text: &str) -> (bool, String) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    check_config_file(file.path().to_path_buf())
}

/// Runs `gantry -t -c PATH`.
pub fn check_config_file(path: PathBuf) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("-t")
        .arg("-c")
        .arg(path)
        .output()
        .expect("run gantry -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A real HTTP/1.1 upstream that answers with a JSON echo of the request:
/// `{"upstream": NAME, "method", "uri", "headers": {..}, "body"}`.
/// `GET /healthz` answers 200 while healthy, 503 otherwise; `/slow/MS` waits MS milliseconds.
/// Faults the test injects: [`Faults::status`] answers every request with that status,
/// [`Faults::hang`] holds every request without answering (health checks excepted).
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests served, health checks excluded.
    pub hits: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    pub faults: Arc<Faults>,
    server: tokio::task::JoinHandle<()>,
}

/// Failures an [`Upstream`] is told to show.
#[derive(Default)]
pub struct Faults {
    /// Answer every request with this status (0: answer normally).
    pub status: std::sync::atomic::AtomicU16,
    /// Never answer (until [`PATIENCE`] has passed).
    pub hang: AtomicBool,
    /// Wait this many milliseconds before answering.
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl Faults {
    /// Answers every request with `status` (0 for normal answers).
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Starts or stops hanging.
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// An upstream listening on `addr` (any loopback address, port 0 for any port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let faults = Arc::new(Faults::default());
        let name: Arc<str> = name.into();
        let (h, ok, f) = (hits.clone(), healthy.clone(), faults.clone());
        let server = tokio::spawn(async move {
            // Connection tasks live in this set, so aborting the server kills them too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, hits, healthy, faults) =
                    (name.clone(), h.clone(), ok.clone(), f.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        echo(
                            req,
                            name.clone(),
                            hits.clone(),
                            healthy.clone(),
                            faults.clone(),
                        )
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            healthy,
            faults,
            server,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        self.server.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// How many requests of one `/together/` group have arrived, and a wake-up for each arrival.
type Group = Arc<(AtomicUsize, tokio::sync::Notify)>;

/// Requests under way per `/together/GROUP/N` group, across every upstream of the test binary.
static GROUPS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Group>>> =
    std::sync::LazyLock::new(Default::default);

/// Holds a request until `n` requests of `group` have arrived (any upstream), for at most
/// [`PATIENCE`]; false when they never did. Proves requests were in flight at the same time
/// without measuring any duration.
async fn together(group: &str, n: usize) -> bool {
    let shared = Arc::clone(
        GROUPS
            .lock()
            .expect("groups")
            .entry(group.to_string())
            .or_default(),
    );
    let (arrived, notify) = &*shared;
    arrived.fetch_add(1, Ordering::SeqCst);
    notify.notify_waiters();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if arrived.load(Ordering::SeqCst) >= n {
            return true;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

async fn echo(
    req: Request<Incoming>,
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    faults: Arc<Faults>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let status = if healthy.load(Ordering::SeqCst) {
            200
        } else {
            503
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"ok")))
            .expect("response"));
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if faults.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(PATIENCE).await;
    }
    let delay = faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = faults.status.load(Ordering::SeqCst);
    if status != 0 {
        let _ = req.into_body().collect().await?;
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(format!("{name} fails"))))
            .expect("response"));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some((group, n)) = path
        .strip_prefix("/together/")
        .and_then(|rest| rest.split_once('/'))
    {
        if !together(group, n.parse().unwrap_or(2)).await {
            return Ok(Response::builder()
                .status(500)
                .body(Full::new(Bytes::from_static(b"arrived alone")))
                .expect("response"));
        }
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(v.to_str().unwrap_or_default()),
            )
        })
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    let json = serde_json::json!({
        "upstream": &*name,
        "method": method,
        "uri": uri,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("response"))
}

/// Reads a problem+json response and checks the parts every problem must have.
pub async fn assert_problem(resp: reqwest::Response, status: u16, slug: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "problem content type"
    );
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("request id")
        .to_string();
    let body: serde_json::Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["type"], format!("urn:gantry:problem:{slug}"));
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], request_id);
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}
