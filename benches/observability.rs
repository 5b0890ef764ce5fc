//! What the access log and the metrics cost per request (criterion): recording a finished
//! request in its route's counters and histogram, and building and formatting its access-log
//! record (the writer thread's I/O is off the request path and not measured here).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gantry::access_log::{append, redact_query, Format, Record};
use http::Method;
use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

fn record(query: Option<Cow<'static, str>>) -> Record<'static> {
    Record {
        time: SystemTime::now(),
        request_id: "6f1c1e52-4b8e-4a57-9d8e-0c2f5b7a9e11",
        client_ip: Some(Ipv4Addr::new(203, 0, 113, 9).into()),
        method: "GET",
        host: "api.example.com",
        path: "/users/7/orders",
        query,
        protocol: "HTTP/1.1",
        status: 200,
        bytes_in: 0,
        bytes_out: 512,
        duration: Duration::from_micros(3100),
        upstream: Some(SocketAddr::from(([10, 0, 1, 7], 9001))),
        upstream_connect: Some(Duration::ZERO),
        upstream_response: Some(Duration::from_micros(2400)),
        attempts: 1,
        route: "users",
        cluster: Some("users"),
        consumer: Some("alice"),
        cache: None,
        rate_limit: Some("allowed"),
        error: None,
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        referer: None,
        trace_id: None,
        span_id: None,
    }
}

fn bench(c: &mut Criterion) {
    let metrics = gantry::metrics::route("bench");
    c.bench_function("metrics_record", |b| {
        b.iter(|| {
            metrics.record(
                black_box(&Method::GET),
                black_box(200),
                black_box(Duration::from_micros(3100)),
                false,
            )
        })
    });
    // Records are appended to a buffer that is reused, as each thread's buffer is.
    let mut out = Vec::with_capacity(64 * 1024);
    c.bench_function("access_log_json", |b| {
        b.iter(|| {
            out.clear();
            let query = Some(redact_query(black_box("page=2&api_key=s3cret")));
            append(Format::Json, &record(query), &mut out);
            black_box(&out);
        })
    });
    c.bench_function("access_log_combined", |b| {
        b.iter(|| {
            out.clear();
            append(Format::Combined, &record(None), &mut out);
            black_box(&out);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
