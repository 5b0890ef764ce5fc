//! Heap allocations per proxied request: Gantry's plain route and a bare Pingora proxy, each
//! in a process of its own with a counting global allocator.
//!
//! `cargo bench --bench allocations` (or `REQUESTS=20000 cargo bench --bench allocations`).
//! The process starts an upstream (a blocking loopback server answering a small fixed body),
//! the proxy under test (Gantry from a config with one cluster and one route, `threads = 1`,
//! no access log, no health check; or the bare `ProxyHttp` of `benches/floor/bare.rs`)
//! and one keep-alive client. The client and the upstream allocate nothing per request (fixed
//! buffers), so after a warm-up every allocation counted while the client sends REQUESTS
//! requests is the proxy's. Prints allocations and bytes allocated per request for both.

#[path = "floor/bare.rs"]
mod bare;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The system allocator, counting allocations and their bytes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM_UP: u64 = 2_000;
const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: allocations\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\nContent-Type: text/plain\r\n\r\nhello from the upstream\n";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Reads from `stream` into `buf` until a whole head has arrived; returns the bytes read.
fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(len);
        }
    }
}

/// A blocking upstream: answers every head on every connection with `RESPONSE`.
fn serve_upstream(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 8192];
            while read_head(&mut stream, &mut buf).is_some() {
                if stream.write_all(RESPONSE).is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends `count` keep-alive requests on `stream`, reading each whole answer.
fn send(stream: &mut TcpStream, count: u64) {
    let mut buf = [0u8; 8192];
    for _ in 0..count {
        stream.write_all(REQUEST).expect("request written");
        let len = read_head(stream, &mut buf).expect("an answer");
        let head_end = buf[..len]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(0)
            + 4;
        assert!(buf.starts_with(b"HTTP/1.1 200"), "not a 200");
        let body = content_length(&buf[..head_end]);
        let mut have = len - head_end;
        while have < body {
            have += stream.read(&mut buf).expect("body read");
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let text = std::str::from_utf8(head).unwrap_or("");
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Connects to `addr` once it accepts connections (within 30 s).
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{addr} never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn start_bare(listen: SocketAddr, upstream: SocketAddr) {
    let server = bare::server(&listen.to_string(), &upstream.to_string());
    std::thread::spawn(move || server.run_forever());
}

fn start_gantry(listen: SocketAddr, upstream: SocketAddr) {
    let dir = std::env::temp_dir().join(format!("gantry-allocations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path: PathBuf = dir.join("gantry.toml");
    let toml = format!(
        r#"[server]
listen = ["{listen}"]
threads = 1
pid_file = "{dir}/gantry.pid"
upgrade_sock = "{dir}/upgrade.sock"

[log]
access = "off"

[clusters.upstream]
backends = ["{upstream}"]

[routes.plain]
paths = ["/"]
cluster = "upstream"
"#,
        dir = dir.display()
    );
    std::fs::write(&path, toml).expect("config written");
    let config = gantry::config::load(&path).expect("the bench config loads");
    let opts = gantry::server::RunOptions {
        daemon: false,
        upgrade: false,
    };
    let server = gantry::server::build(config, path, opts).expect("the server builds");
    std::thread::spawn(move || server.run_forever());
}

fn main() {
    let requests: u64 = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let Some(which) = which else {
        // Each proxy in a process of its own, so one's background work is not counted as the
        // other's.
        println!(
            "{:<8} {:>10} {:>16} {:>16}",
            "proxy", "requests", "allocations/req", "bytes/req"
        );
        for proxy in ["pingora", "gantry"] {
            let status = std::process::Command::new(std::env::current_exe().expect("own path"))
                .arg(proxy)
                .status()
                .expect("the measuring process starts");
            assert!(status.success(), "{proxy}: measurement failed");
        }
        return;
    };
    let upstream_listener = TcpListener::bind("127.0.0.1:0").expect("upstream bound");
    let upstream = upstream_listener.local_addr().expect("upstream address");
    std::thread::spawn(move || serve_upstream(upstream_listener));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    match which.as_str() {
        "gantry" => start_gantry(listen, upstream),
        "pingora" => start_bare(listen, upstream),
        other => panic!("unknown proxy {other}: gantry or pingora"),
    }
    let mut client = connect(listen);
    send(&mut client, WARM_UP);
    let (a0, b0) = (ALLOCATIONS.load(Relaxed), BYTES.load(Relaxed));
    send(&mut client, requests);
    let (a1, b1) = (ALLOCATIONS.load(Relaxed), BYTES.load(Relaxed));
    println!(
        "{which:<8} {requests:>10} {:>16.2} {:>16.0}",
        (a1 - a0) as f64 / requests as f64,
        (b1 - b0) as f64 / requests as f64
    );
    // The servers run forever: leave without waiting for them.
    std::process::exit(0);
}
