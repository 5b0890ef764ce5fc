//! The access log (`[log]`): one record per request, formatted on the request path and written
//! by a dedicated thread. Records go through a bounded queue; when it is full they are counted
//! in `gantry_access_log_dropped_total` instead of making requests wait.
//!
//! `access = "stdout"`, `"off"` or a file path; a file is reopened on `SIGUSR1`, after
//! logrotate moved it. `format = "json"` (one object per line, every string escaped) or
//! `"combined"` (nginx/Apache). Nothing secret is written: no header but `User-Agent` and
//! `Referer` (without its query), and query parameters whose names suggest a credential have
//! their values replaced by `REDACTED`.

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use serde::Serialize;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Records waiting for the writer before new ones are dropped.
const QUEUE: usize = 65_536;

/// How long the writer waits after each batch, so records are written in batches.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

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
#[derive(Serialize)]
pub struct Record<'a> {
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// The query with credential-like values redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Seconds from the request header to the last byte.
    pub duration: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<std::net::SocketAddr>,
    /// Seconds to connect (0 when a pooled connection was reused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_connect: Option<f64>,
    /// Seconds from sending to the upstream's response header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_response: Option<f64>,
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// `allowed` or `limited`, on routes with a rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<&'static str>,
    /// The problem `type` slug of an error response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referer: Option<&'a str>,
}

static DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    let counter = IntCounter::new(
        "gantry_access_log_dropped_total",
        "Access log records dropped because the writer fell behind",
    )
    .expect("static metric definition");
    let _ = prometheus::register(Box::new(counter.clone()));
    counter
});

/// The access log of the process.
pub struct AccessLog {
    format: Format,
    queue: Option<SyncSender<Vec<u8>>>,
}

impl AccessLog {
    /// Opens `sink` (nothing for `Off`): the log, and the background service that writes it.
    /// Fails when the file cannot be opened.
    pub fn open(sink: &Sink, format: Format) -> io::Result<(AccessLog, Option<AccessLogWriter>)> {
        LazyLock::force(&DROPPED);
        let out: Box<dyn Write + Send> = match sink {
            Sink::Off => {
                let off = AccessLog {
                    format,
                    queue: None,
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
        let (tx, rx) = sync_channel(QUEUE);
        let writer = AccessLogWriter {
            parts: Mutex::new(Some(WriterParts {
                rx,
                out,
                path,
                reopen,
            })),
        };
        let log = AccessLog {
            format,
            queue: Some(tx),
        };
        Ok((log, Some(writer)))
    }

    /// Whether records are wanted (skip building them when not).
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `record`; counts it as dropped when the writer is behind.
    pub fn write(&self, record: &Record<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(line(self.format, record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => DROPPED.inc(),
        }
    }
}

/// `record` as one line of the log, newline included.
pub fn line(format: Format, record: &Record<'_>) -> Vec<u8> {
    let mut line = Vec::with_capacity(384);
    match format {
        Format::Json => {
            // Writing to a Vec fails only for non-string map keys, which a Record has not.
            let _ = serde_json::to_writer(&mut line, record);
        }
        Format::Combined => combined(&mut line, record),
    }
    line.push(b'\n');
    line
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// What the writer thread needs.
struct WriterParts {
    rx: Receiver<Vec<u8>>,
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

/// Writes queued lines in batches, flushing after each; reopens the file when asked.
fn write_loop(parts: WriterParts) {
    let WriterParts {
        rx,
        out,
        path,
        reopen,
    } = parts;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = out.write_all(&line);
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(&line);
                }
                let _ = out.flush();
                // Let records gather: while this thread sleeps, requests queue theirs without
                // waking it (one wake-up per batch, not per record).
                std::thread::sleep(BATCH_PAUSE);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
        if reopen.swap(false, Ordering::Relaxed) {
            if let Some(path) = &path {
                let _ = out.flush();
                match open(path) {
                    Ok(file) => out = BufWriter::with_capacity(64 * 1024, Box::new(file)),
                    Err(e) => log::error!("access log: cannot reopen {}: {e}", path.display()),
                }
            }
        }
    }
}

/// `$remote_addr - $consumer [$time_local] "$request" $status $bytes_out "$referer" "$ua"`.
fn combined(line: &mut Vec<u8>, r: &Record<'_>) {
    let client = r.client_ip.map(|ip| ip.to_string());
    let time = local_time(&r.time);
    let query = r
        .query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let _ = write!(
        line,
        "{} - {} [{}] \"{} {}{} {}\" {} {} \"{}\" \"{}\"",
        client.as_deref().unwrap_or("-"),
        r.consumer.unwrap_or("-"),
        time,
        r.method,
        quoted(r.path),
        quoted(&query),
        r.protocol,
        r.status,
        r.bytes_out,
        quoted(r.referer.unwrap_or("-")),
        quoted(r.user_agent.unwrap_or("-")),
    );
}

/// `"` and `\` escaped, control bytes dropped, as nginx escapes its log variables.
fn quoted(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// `2026-11-26T11:19:12.123Z` as `26/Nov/2026:11:19:12 +0000`.
fn local_time(rfc3339: &str) -> String {
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

thread_local! {
    /// The current second, formatted once per second per thread (`2026-11-26T11:19:12`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != since.as_secs() || second.1.is_empty() {
            let mut text = humantime::format_rfc3339_seconds(now).to_string();
            text.pop(); // the `Z`
            *second = (since.as_secs(), text);
        }
        let mut time = String::with_capacity(24);
        time.push_str(&second.1);
        let _ = write!(time, ".{:03}Z", since.subsec_millis());
        time
    })
}

/// `query` with the values of credential-like parameters (names containing key, token,
/// secret, password, passwd, signature, auth or session) replaced by `REDACTED`.
pub fn redact_query(query: &str) -> String {
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: "2026-11-26T11:19:12.123Z".into(),
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
            duration: 0.0015,
            upstream: None,
            upstream_connect: None,
            upstream_response: None,
            route: "r",
            cluster: None,
            consumer: Some("alice"),
            cache: None,
            rate_limit: None,
            error: None,
            user_agent: Some("curl/8 \"x\""),
            referer: None,
        }
    }

    #[test]
    fn times_are_rfc_3339_with_milliseconds() {
        let time = now();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        let parsed = humantime::parse_rfc3339(&time).expect("parses");
        let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew < Duration::from_secs(2));
    }

    #[test]
    fn credentials_in_the_query_are_redacted() {
        assert_eq!(
            redact_query("page=2&api_key=s3cret&Access_Token=t&x"),
            "page=2&api_key=REDACTED&Access_Token=REDACTED&x"
        );
    }

    #[test]
    fn combined_lines_look_like_nginx() {
        let mut line = Vec::new();
        combined(&mut line, &record());
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "10.0.0.1 - alice [26/Nov/2026:11:19:12 +0000] \"GET /a\\\"b?page=2&api_key=REDACTED&Access_Token=REDACTED HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\""
        );
    }

    #[test]
    fn json_records_escape_every_string() {
        let line = serde_json::to_string(&record()).unwrap();
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["path"], "/a\"b");
        assert_eq!(
            back["query"],
            "page=2&api_key=REDACTED&Access_Token=REDACTED"
        );
        assert!(back.get("upstream").is_none());
        assert!(!line.contains("s3cret"));
    }
}
