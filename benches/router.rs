//! Route matching cost with 10, 1,000 and 10,000 routes (criterion).
//!
//! Routes mix exact, prefix and regex paths, with and without hosts, the way a large gateway
//! config does. Each case looks up a deep prefix hit, an exact hit and a miss.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gantry::router::{Lookup, RequestView};
use http::{HeaderMap, Method};

fn config(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("[routes.r{i}]\n"));
        match i % 10 {
            0 => s.push_str(&format!("paths = [\"=/svc{i}/status\"]\n")),
            1 => s.push_str(&format!(
                "hosts = [\"svc{i}.example.com\"]\npaths = [\"/\"]\n"
            )),
            2 if i % 100 == 2 => s.push_str(&format!("paths = [\"~^/re{i}/[0-9]+$\"]\n")),
            3 => s.push_str(&format!(
                "paths = [\"/svc{i}/api\"]\nmethods = [\"GET\", \"POST\"]\n"
            )),
            _ => s.push_str(&format!("paths = [\"/svc{i}/api/v1\"]\n")),
        }
        s.push_str("respond = { body = \"x\" }\n");
    }
    s
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 10_000] {
        let cfg = gantry::config::load_str("bench.toml", &config(n)).expect("valid bench config");
        let mid = n / 2 / 10 * 10;
        let cases = [
            (
                "prefix_hit",
                format!("/svc{}/api/v1/users/42/orders", mid + 4),
            ),
            ("exact_hit", format!("/svc{mid}/status")),
            ("miss", "/nothing/here/at/all".to_string()),
        ];
        for (name, path) in &cases {
            group.bench_with_input(BenchmarkId::new(*name, n), path, |b, path| {
                b.iter(|| {
                    let view = RequestView {
                        host: "api.example.com",
                        path: black_box(path),
                        method: &Method::GET,
                        headers: &headers,
                    };
                    matches!(cfg.router.lookup(&view), Lookup::Found(_))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
