//! The access log (`[log]`): one record per request, formatted on the request path into a
//! buffer of the request's thread and written by a dedicated thread that drains every buffer
//! every 20 ms, or as soon as one holds 64 KiB. A buffer holds at most 4 MiB; records that find it full are counted in
//! `gantry_access_log_dropped_total` instead of making requests wait for the disk.
//!
//! `access = "stdout"`, `"off"` or a file path; a file is reopened on `SIGUSR1`, after
//! logrotate moved it. `format = "json"` (one object per line, every string escaped) or
//! `"combined"` (nginx/Apache). Nothing secret is written: no header but `User-Agent` and
//! `Referer` (without its query), and query parameters whose names suggest a credential have
//! their values replaced by `REDACTED`.

use async_trait::async_trait;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Buffers: one per request thread while there are no more threads than this.
const SHARDS: usize = 16;

/// Bytes a buffer holds before records are dropped (about 10,000 records).
const SHARD_LIMIT: usize = 4 << 20;

/// How often the writer drains the buffers.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Bytes at which a buffer wakes the writer early: a buffer that is drained this soon stays
/// in the core's cache instead of streaming through it.
const DRAIN_AT: usize = 64 * 1024;

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// No access log.
    Off,
    /// A file, appended to and reopened on `SIGUSR1`.
    File(PathBuf),
}

/// How records look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// nginx's and Apache's `combined`.
    Combined,
}

/// What one request did: everything a record may show.
pub struct Record<'a> {
    /// When the request finished (written as RFC 3339 UTC with milliseconds).
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// The query with credential-like values redacted ([`redact_query`]).
    pub query: Option<Cow<'a, str>>,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// From the request header to the last byte.
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    /// To connect (0 when a pooled connection was reused).
    pub upstream_connect: Option<Duration>,
    /// From connected to the upstream's response header.
    pub upstream_response: Option<Duration>,
    /// Upstream attempts made (0 when none was: a direct response, a refusal, a cache hit).
    pub attempts: u32,
    pub route: &'a str,
    pub cluster: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub cache: Option<&'static str>,
    /// `allowed` or `limited`, on routes with a rate limit.
    pub rate_limit: Option<&'static str>,
    /// The problem `type` slug of an error response.
    pub error: Option<&'static str>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    /// The request's trace and the gateway's span in it, when `[tracing]` is configured.
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
}

/// The records written since the writer's last drain, one buffer per request thread (so
/// threads never wait for each other), each on its own cache line.
struct Buffers {
    shards: [CachePadded<Mutex<Vec<u8>>>; SHARDS],
    limit: usize,
    /// The writer thread, once it runs: woken when a buffer reaches [`DRAIN_AT`].
    writer: OnceLock<Thread>,
}

impl Buffers {
    fn new(limit: usize) -> Buffers {
        Buffers {
            shards: std::array::from_fn(|_| CachePadded::new(Mutex::new(Vec::new()))),
            limit,
            writer: OnceLock::new(),
        }
    }

    /// The calling thread's buffer.
    fn mine(&self) -> &Mutex<Vec<u8>> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        &self.shards[SHARD.with(|shard| *shard)]
    }
}

/// The access log of the process.
pub struct AccessLog {
    format: Format,
    buffers: Option<Arc<Buffers>>,
}

impl AccessLog {
    /// Opens `sink` (nothing for `Off`): the log, and the background service that writes it.
    /// Fails when the file cannot be opened.
    pub fn open(sink: &Sink, format: Format) -> io::Result<(AccessLog, Option<AccessLogWriter>)> {
        let out: Box<dyn Write + Send> = match sink {
            Sink::Off => {
                let off = AccessLog {
                    format,
                    buffers: None,
                };
                return Ok((off, None));
            }
            Sink::Stdout => Box::new(io::stdout()),
            Sink::File(path) => Box::new(open(path)?),
        };
        let reopen = Arc::new(AtomicBool::new(false));
        let path = match sink {
            Sink::File(path) => {
                signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&reopen))?;
                Some(path.clone())
            }
            _ => None,
        };
        let buffers = Arc::new(Buffers::new(SHARD_LIMIT));
        let writer = AccessLogWriter {
            parts: Mutex::new(Some(WriterParts {
                buffers: Arc::clone(&buffers),
                out,
                path,
                reopen,
            })),
        };
        let log = AccessLog {
            format,
            buffers: Some(buffers),
        };
        Ok((log, Some(writer)))
    }

    /// Whether records are wanted (skip building them when not).
    pub fn enabled(&self) -> bool {
        self.buffers.is_some()
    }

    /// Appends `record` to this thread's buffer; counts it as dropped when the buffer is full
    /// (the writer is behind).
    pub fn write(&self, record: &Record<'_>) {
        let Some(buffers) = &self.buffers else {
            return;
        };
        let mut buffer = buffers.mine().lock();
        if buffer.len() >= buffers.limit {
            drop(buffer);
            crate::metrics::access_log_dropped();
            return;
        }
        let before = buffer.len();
        append(self.format, record, &mut buffer);
        if before < DRAIN_AT && buffer.len() >= DRAIN_AT {
            drop(buffer);
            if let Some(writer) = buffers.writer.get() {
                writer.unpark();
            }
        }
    }
}

/// Appends `record` to `out` as one line of the log, newline included.
pub fn append(format: Format, record: &Record<'_>, out: &mut Vec<u8>) {
    match format {
        Format::Json => json(out, record),
        Format::Combined => combined(out, record),
    }
    out.push(b'\n');
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// What the writer thread needs.
struct WriterParts {
    buffers: Arc<Buffers>,
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
}

/// The background service that writes the access log. Its thread starts with the server's
/// services, so it runs in the final process (after `--daemon` forked).
pub struct AccessLogWriter {
    parts: Mutex<Option<WriterParts>>,
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(parts) = self.parts.lock().take() {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_loop(parts));
            if let Err(e) = spawned {
                log::error!("cannot start the access log writer: {e}");
            }
        }
        let _ = shutdown.changed().await;
    }
}

/// Every [`DRAIN_EVERY`], or sooner when a buffer reaches [`DRAIN_AT`], swaps each non-empty
/// buffer for an empty one and writes it out; reopens the file when asked. Ends, after a last drain, when the log is gone.
fn write_loop(parts: WriterParts) {
    let WriterParts {
        buffers,
        mut out,
        path,
        reopen,
    } = parts;
    let mut spare = Vec::new();
    let _ = buffers.writer.set(std::thread::current());
    loop {
        std::thread::park_timeout(DRAIN_EVERY);
        let last = Arc::strong_count(&buffers) == 1;
        for shard in &buffers.shards {
            {
                let mut buffer = shard.lock();
                if buffer.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *buffer, &mut spare);
            }
            let _ = out.write_all(&spare);
            spare.clear();
            // A buffer that grew while the disk stalled gives its memory back.
            spare.shrink_to(2 * DRAIN_AT);
        }
        let _ = out.flush();
        if last {
            return;
        }
        if reopen.swap(false, Ordering::Relaxed) {
            if let Some(path) = &path {
                match open(path) {
                    Ok(file) => out = Box::new(file),
                    Err(e) => log::error!("access log: cannot reopen {}: {e}", path.display()),
                }
            }
        }
    }
}

/// The fields of one JSON object, written in order.
struct JsonObject<'o> {
    out: &'o mut Vec<u8>,
    fields: usize,
}

impl<'o> JsonObject<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        JsonObject { out, fields: 0 }
    }

    /// `"name":` (names are plain ASCII and need no escaping).
    fn key(&mut self, name: &str) {
        self.out.push(if self.fields == 0 { b'{' } else { b',' });
        self.fields += 1;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A value serde_json encodes (strings escaped, numbers exact, non-finite floats null).
    fn value<T: serde::Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        self.key(name);
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    /// A value only when there is one.
    fn some<T: serde::Serialize + ?Sized>(&mut self, name: &str, value: Option<&T>) {
        if let Some(value) = value {
            self.value(name, value);
        }
    }

    /// `took` in seconds with microseconds (`0.003100`), without float formatting.
    fn seconds(&mut self, name: &str, took: Duration) {
        self.key(name);
        let mut digits = itoa::Buffer::new();
        self.out
            .extend_from_slice(digits.format(took.as_secs()).as_bytes());
        let micros = digits.format(took.subsec_micros() + 1_000_000);
        self.out.push(b'.');
        self.out.extend_from_slice(&micros.as_bytes()[1..]);
    }

    /// A string that needs no escaping (an address), written by `write` in place.
    fn unescaped(&mut self, name: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.key(name);
        self.out.push(b'"');
        write(self.out);
        self.out.push(b'"');
    }

    fn close(self) {
        if self.fields == 0 {
            self.out.push(b'{');
        }
        self.out.push(b'}');
    }
}

/// One JSON object; absent values are left out, but `client_ip` is always there (null when
/// unknown).
fn json(out: &mut Vec<u8>, r: &Record<'_>) {
    let mut o = JsonObject::new(out);
    o.key("time");
    o.out.push(b'"');
    rfc3339(o.out, r.time);
    o.out.push(b'"');
    o.value("request_id", r.request_id);
    match r.client_ip {
        Some(ip) => o.unescaped("client_ip", |out| ip_address(out, ip)),
        None => o.value("client_ip", &()),
    }
    o.value("method", r.method);
    o.value("host", r.host);
    o.value("path", r.path);
    o.some("query", r.query.as_deref());
    o.value("protocol", r.protocol);
    o.value("status", &r.status);
    o.value("bytes_in", &r.bytes_in);
    o.value("bytes_out", &r.bytes_out);
    o.seconds("duration", r.duration);
    if let Some(upstream) = r.upstream {
        o.unescaped("upstream", |out| socket_address(out, upstream));
    }
    if let Some(connect) = r.upstream_connect {
        o.seconds("upstream_connect", connect);
    }
    if let Some(response) = r.upstream_response {
        o.seconds("upstream_response", response);
    }
    if r.attempts > 0 {
        o.value("attempts", &r.attempts);
    }
    o.value("route", r.route);
    o.some("cluster", r.cluster);
    o.some("consumer", r.consumer);
    o.some("cache", r.cache);
    o.some("rate_limit", r.rate_limit);
    o.some("error", r.error);
    o.some("user_agent", r.user_agent);
    o.some("referer", r.referer);
    o.some("trace_id", r.trace_id);
    o.some("span_id", r.span_id);
    o.close();
}

/// `$remote_addr - $consumer [$time_local] "$request" $status $bytes_out "$referer" "$ua"`.
fn combined(out: &mut Vec<u8>, r: &Record<'_>) {
    match r.client_ip {
        Some(ip) => ip_address(out, ip),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - ");
    out.extend_from_slice(r.consumer.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" [");
    local_time(out, r.time);
    out.extend_from_slice(b"] \"");
    out.extend_from_slice(r.method.as_bytes());
    out.push(b' ');
    quoted(out, r.path);
    if let Some(query) = &r.query {
        out.push(b'?');
        quoted(out, query);
    }
    out.push(b' ');
    out.extend_from_slice(r.protocol.as_bytes());
    let _ = write!(out, "\" {} {} \"", r.status, r.bytes_out);
    quoted(out, r.referer.unwrap_or("-"));
    out.extend_from_slice(b"\" \"");
    quoted(out, r.user_agent.unwrap_or("-"));
    out.push(b'"');
}

/// `ip` as its `Display` writes it; IPv4 (most clients) without the formatting machinery.
fn ip_address(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => ipv4_address(out, ip),
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// `addr` as its `Display` writes it (`10.0.0.1:80`, `[::1]:80`).
fn socket_address(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(addr) => {
            ipv4_address(out, *addr.ip());
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(addr.port()).as_bytes());
        }
        SocketAddr::V6(addr) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn ipv4_address(out: &mut Vec<u8>, ip: Ipv4Addr) {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
}

/// `value` with `"` and `\` escaped and control characters dropped, as nginx escapes its log
/// variables.
fn quoted(out: &mut Vec<u8>, value: &str) {
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push(b'\\');
        }
        let mut utf8 = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }
}

/// The current second, formatted once per second per thread.
struct Second {
    /// Seconds since the epoch.
    epoch: u64,
    /// `2026-11-26T11:19:12`.
    rfc3339: String,
    /// `26/Nov/2026:11:19:12 +0000`.
    local: String,
}

thread_local! {
    static SECOND: RefCell<Second> = const {
        RefCell::new(Second { epoch: u64::MAX, rfc3339: String::new(), local: String::new() })
    };
}

/// Runs `f` with `time`'s second formatted, and its milliseconds.
fn with_second<R>(time: SystemTime, f: impl FnOnce(&Second, u32) -> R) -> R {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.epoch != since.as_secs() {
            // The last second humantime formats (9999-12-31T23:59:59), should the clock be wild.
            let whole = UNIX_EPOCH + Duration::from_secs(since.as_secs().min(253_402_300_799));
            let mut rfc3339 = humantime::format_rfc3339_seconds(whole).to_string();
            rfc3339.pop(); // the `Z`
            second.local = local_from_rfc3339(&rfc3339);
            second.rfc3339 = rfc3339;
            second.epoch = since.as_secs();
        }
        f(&second, since.subsec_millis())
    })
}

/// `time` as `2026-11-26T11:19:12.123Z`.
fn rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    with_second(time, |second, millis| {
        out.extend_from_slice(second.rfc3339.as_bytes());
        let digit = |n: u32| b'0' + (n % 10) as u8;
        out.extend_from_slice(&[
            b'.',
            digit(millis / 100),
            digit(millis / 10),
            digit(millis),
            b'Z',
        ]);
    })
}

/// `time` as `26/Nov/2026:11:19:12 +0000`.
fn local_time(out: &mut Vec<u8>, time: SystemTime) {
    with_second(time, |second, _| {
        out.extend_from_slice(second.local.as_bytes())
    })
}

/// `2026-11-26T11:19:12` as `26/Nov/2026:11:19:12 +0000`.
fn local_from_rfc3339(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (Some(year), Some(month), Some(day), Some(clock)) = (
        rfc3339.get(0..4),
        rfc3339.get(5..7).and_then(|m| m.parse::<usize>().ok()),
        rfc3339.get(8..10),
        rfc3339.get(11..19),
    ) else {
        return rfc3339.to_string();
    };
    let month = MONTHS.get(month.wrapping_sub(1)).copied().unwrap_or("???");
    format!("{day}/{month}/{year}:{clock} +0000")
}

/// `query` with the values of credential-like parameters (names containing key, token,
/// secret, password, passwd, signature, auth or session) replaced by `REDACTED`; borrowed
/// when there is nothing to redact.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    const SECRET: [&str; 8] = [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "signature",
        "auth",
        "session",
    ];
    let secret = |name: &str| {
        SECRET.iter().any(|s| {
            name.as_bytes()
                .windows(s.len())
                .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
        })
    };
    let pairs = || query.split('&').map(|pair| pair.split_once('='));
    if !pairs().any(|pair| pair.is_some_and(|(name, _)| secret(name))) {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if secret(name) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: humantime::parse_rfc3339("2026-11-26T11:19:12.123Z").unwrap(),
            request_id: "r1",
            client_ip: Some("10.0.0.1".parse().unwrap()),
            method: "GET",
            host: "example.com",
            path: "/a\"b",
            query: Some(redact_query("page=2&api_key=s3cret&Access_Token=t")),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            duration: Duration::from_micros(1500),
            upstream: None,
            upstream_connect: None,
            upstream_response: None,
            attempts: 0,
            route: "r",
            cluster: None,
            consumer: Some("alice"),
            cache: None,
            rate_limit: None,
            error: None,
            user_agent: Some("curl/8 \"x\"\u{1}"),
            referer: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: Some("00f067aa0ba902b7"),
        }
    }

    fn json_line(record: &Record<'_>) -> serde_json::Value {
        let mut line = Vec::new();
        append(Format::Json, record, &mut line);
        assert_eq!(line.pop(), Some(b'\n'));
        serde_json::from_slice(&line).expect("valid JSON")
    }

    #[test]
    fn times_are_rfc_3339_with_milliseconds() {
        let mut time = Vec::new();
        rfc3339(&mut time, SystemTime::now());
        let time = String::from_utf8(time).unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        let parsed = humantime::parse_rfc3339(&time).expect("parses");
        let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew < Duration::from_secs(2));
        let mut early = Vec::new();
        rfc3339(&mut early, UNIX_EPOCH + Duration::from_millis(7));
        assert_eq!(early, b"1970-01-01T00:00:00.007Z");
        let mut wild = Vec::new();
        rfc3339(&mut wild, UNIX_EPOCH + Duration::from_secs(300_000_000_000));
        assert_eq!(
            wild, b"9999-12-31T23:59:59.000Z",
            "a wild clock does not panic"
        );
    }

    #[test]
    fn credentials_in_the_query_are_redacted() {
        assert_eq!(
            redact_query("page=2&api_key=s3cret&Access_Token=t&x"),
            "page=2&api_key=REDACTED&Access_Token=REDACTED&x"
        );
        assert!(matches!(
            redact_query("page=2&x"),
            Cow::Borrowed("page=2&x")
        ));
    }

    #[test]
    fn combined_lines_look_like_nginx() {
        let mut line = Vec::new();
        append(Format::Combined, &record(), &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "10.0.0.1 - alice [26/Nov/2026:11:19:12 +0000] \"GET /a\\\"b?page=2&api_key=REDACTED&Access_Token=REDACTED HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\"\n"
        );
    }

    #[test]
    fn json_records_escape_every_string() {
        let back = json_line(&record());
        assert_eq!(back["time"], "2026-11-26T11:19:12.123Z");
        assert_eq!(back["client_ip"], "10.0.0.1");
        assert_eq!(back["path"], "/a\"b");
        assert_eq!(back["user_agent"], "curl/8 \"x\"\u{1}");
        assert_eq!(
            back["query"],
            "page=2&api_key=REDACTED&Access_Token=REDACTED"
        );
        assert_eq!(back["status"], 200);
        assert_eq!(back["duration"], 0.0015);
        let slow = Record {
            duration: Duration::from_secs(12) + Duration::from_nanos(7_999),
            ..record()
        };
        let mut line = Vec::new();
        append(Format::Json, &slow, &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(line.contains(",\"duration\":12.000007,"), "{line}");
        assert!(back.get("upstream").is_none());
        assert!(!back.to_string().contains("s3cret"));

        let full = Record {
            client_ip: None,
            upstream: Some("10.0.1.7:9001".parse().unwrap()),
            upstream_connect: Some(Duration::ZERO),
            upstream_response: Some(Duration::from_millis(24)),
            attempts: 2,
            cluster: Some("c"),
            cache: Some("HIT"),
            ..record()
        };
        let back = json_line(&full);
        assert_eq!(back["attempts"], 2);
        assert_eq!(back["client_ip"], serde_json::Value::Null);
        assert_eq!(back["upstream"], "10.0.1.7:9001");
        assert_eq!(back["upstream_connect"], 0.0);
        assert_eq!(back["upstream_response"], 0.024);
        assert_eq!(
            (back["cluster"].clone(), back["cache"].clone()),
            ("c".into(), "HIT".into())
        );
        let v6 = Record {
            client_ip: Some("2001:db8::1".parse().unwrap()),
            upstream: Some("[2001:db8::2]:8080".parse().unwrap()),
            ..record()
        };
        let back = json_line(&v6);
        assert_eq!(back["client_ip"], "2001:db8::1");
        assert_eq!(back["upstream"], "[2001:db8::2]:8080");
    }

    /// A `Write` the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_drains_every_thread_and_a_full_buffer_drops() {
        let buffers = Arc::new(Buffers::new(SHARD_LIMIT));
        let out = Shared::default();
        let writer = {
            let parts = WriterParts {
                buffers: Arc::clone(&buffers),
                out: Box::new(out.clone()),
                path: None,
                reopen: Arc::new(AtomicBool::new(false)),
            };
            std::thread::spawn(move || write_loop(parts))
        };
        let log = Arc::new(AccessLog {
            format: Format::Json,
            buffers: Some(buffers),
        });
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || (0..250).for_each(|_| log.write(&record())))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(log);
        writer.join().unwrap(); // ends once the log is gone, after a last drain
        let written = out.0.lock();
        let lines: Vec<_> = written
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 1000);
        for line in lines {
            let record: serde_json::Value = serde_json::from_slice(line).expect("whole lines");
            assert_eq!(record["request_id"], "r1");
        }

        let full = AccessLog {
            format: Format::Combined,
            buffers: Some(Arc::new(Buffers::new(1))),
        };
        let dropped = crate::metrics::access_log_dropped_total();
        full.write(&record());
        full.write(&record());
        assert_eq!(
            crate::metrics::access_log_dropped_total(),
            dropped + 1,
            "the second record found the buffer full"
        );
    }
}
