//! Property tests over the request-target checks, the router and the configuration loader.
//!
//! They run in `make test` with proptest's case count (256 by default); `make fuzz` runs the
//! same properties with `PROPTEST_CASES` raised. Results are recorded in docs/testing.md.

use gantry::config::load_str;
use gantry::router::{Lookup, RequestView, Router};
use http::{HeaderMap, Method};
use proptest::prelude::*;

/// Path bytes that exercise the router: separators, dots, percent escapes, params.
fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("/"),
            Just("."),
            Just("%2e"),
            Just("%2F"),
            Just(";"),
            Just("a"),
            Just("b"),
            Just("r"),
            Just("7"),
            Just("é"),
        ],
        0..10,
    )
    .prop_map(|parts| parts.concat())
}

/// A router with exact, prefix (with and without trailing slash) and host-specific routes.
fn router() -> Router {
    let src = r#"
[routes.root]
paths = ["/"]
respond = { body = "root" }
[routes.a]
paths = ["/a"]
respond = { body = "a" }
[routes.ab]
paths = ["/a/b/"]
respond = { body = "ab" }
[routes.exact]
paths = ["=/a/b"]
methods = ["PUT"]
respond = { body = "exact" }
[routes.host]
hosts = ["*.example.com", "api.test"]
paths = ["/c"]
respond = { body = "host" }
[routes.re]
paths = ["~^/r/[0-9]+$"]
respond = { body = "re" }
"#;
    load_str("props.toml", src).expect("valid").router
}

fn lookup(r: &Router, host: &str, method: &Method, path: &str) -> Option<(String, usize)> {
    let headers = HeaderMap::new();
    let view = RequestView {
        host,
        path,
        method,
        headers: &headers,
    };
    match r.lookup(&view) {
        Lookup::Found(m) => Some((m.route.name.to_string(), m.prefix_len)),
        Lookup::MethodNotAllowed(_) | Lookup::NotFound => None,
    }
}

/// Whether `path` is under the prefix `p` by the documented rule: `p` itself or `p/...`.
fn under(path: &str, p: &str) -> bool {
    path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
}

proptest! {
    #[test]
    fn lookup_is_total_and_deterministic(
        host in "[a-zA-Z0-9.*:\\[\\]-]{0,20}|\\PC{0,8}",
        path in path_strategy(),
        method in "[A-Z]{1,8}",
    ) {
        let r = router();
        let method = Method::from_bytes(method.as_bytes()).expect("token");
        let first = lookup(&r, &host, &method, &path);
        prop_assert_eq!(&first, &lookup(&r, &host, &method, &path));
        if let Some((_, prefix_len)) = &first {
            // The matched prefix is a prefix of the path on a char boundary.
            prop_assert!(path.is_char_boundary(*prefix_len) && *prefix_len <= path.len());
        }
    }

    #[test]
    fn a_prefix_route_matches_exactly_the_paths_under_it(
        path in path_strategy(),
        method in prop_oneof![Just(Method::GET), Just(Method::PUT)],
    ) {
        let r = router();
        let found = lookup(&r, "h.test", &method, &path);
        let route = found.as_ref().map(|(n, _)| n.as_str());
        let want = if method == Method::PUT && path == "/a/b" {
            Some("exact")
        } else if path.starts_with("/a/b/") && path.len() > 5 {
            Some("ab")
        } else if under(&path, "/a") {
            Some("a")
        } else if regex::Regex::new("^/r/[0-9]+$").unwrap().is_match(&path) {
            Some("re")
        } else if path.starts_with('/') {
            Some("root")
        } else {
            // Relative paths never reach the router (`check_path` refuses them first).
            return Ok(());
        };
        prop_assert_eq!(route, want, "{}", path);
        if let Some((name, len)) = &found {
            let prefix = &path[..*len];
            match name.as_str() {
                "a" => prop_assert_eq!(prefix, "/a"),
                "ab" => prop_assert_eq!(prefix, "/a/b"),
                _ => {}
            }
            // What `strip_prefix` leaves stays under the prefix: empty or starting with `/`.
            let rest = &path[*len..];
            prop_assert!(rest.is_empty() || rest.starts_with('/') || name == "re" || name == "exact");
        }
    }

    #[test]
    fn host_routes_match_only_their_hosts(sub in "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}", tld in "example\\.com|api\\.test|other\\.org") {
        let r = router();
        let host = format!("{sub}.{tld}");
        let found = lookup(&r, &host, &Method::GET, "/c").map(|(n, _)| n);
        let want = if tld == "example.com" { "host" } else { "root" };
        prop_assert_eq!(found.as_deref(), Some(want), "{}", host);
        let apex = lookup(&r, &tld, &Method::GET, "/c").map(|(n, _)| n);
        let want = if tld == "api.test" { "host" } else { "root" };
        prop_assert_eq!(apex.as_deref(), Some(want));
    }
}

/// The example configuration, and a seed with most sections, as the base of mutations.
fn seeds() -> Vec<String> {
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gantry.toml"))
        .expect("conf/gantry.toml");
    let extra = r#"
[server]
listen = ["127.0.0.1:18080"]
trusted_proxies = ["10.0.0.0/8"]
keepalive_timeout = "60s"
[clusters.users]
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]
read_timeout = "5s"
[clusters.users.health_check]
type = "http"
path = "/health"
[routes.users]
hosts = ["api.example.com"]
paths = ["/users", "~^/u/(?<id>\\d+)$"]
methods = ["GET", "POST"]
cluster = "users"
strip_prefix = true
[routes.users.plugins.request-transform]
set_headers = { "x-user" = "$path.id" }
json_body = { remove = ["/password"], set = { "/meta/src" = "gantry" } }
[routes.users.plugins.cache]
default_ttl = "30s"
key_query = ["page"]
[routes.hello]
paths = ["=/hello"]
respond = { status = 200, body = "hi" }
[cache]
max_size = "64MiB"
"#;
    vec![conf, extra.to_string()]
}

/// One mutation of a config line list.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Insert(usize, String),
    ReplaceValue(usize, String),
    Bytes(usize, usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        Just("\"\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"1x\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("true".to_string()),
        Just("\"~(\"".to_string()),
        Just("\"$nope\"".to_string()),
        Just("\"=/x\"".to_string()),
        Just("\"*.\"".to_string()),
        "\"\\PC{0,12}\"",
        "-?[0-9]{1,12}(\\.[0-9]{1,3})?",
    ];
    let line = prop_oneof![
        Just("[server]".to_string()),
        Just("[routes.x]".to_string()),
        Just("[routes.x.plugins.key-auth]".to_string()),
        Just("[[server.tls]]".to_string()),
        Just("paths = [\"/\"]".to_string()),
        Just("cluster = \"nope\"".to_string()),
        "[a-z_]{1,12} = \"[a-z0-9/.$]{0,8}\"",
        "\\PC{0,20}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<usize>(), line).prop_map(|(a, l)| Mutation::Insert(a, l)),
        (any::<usize>(), value).prop_map(|(a, v)| Mutation::ReplaceValue(a, v)),
        (
            any::<usize>(),
            any::<usize>(),
            prop::collection::vec(any::<u8>(), 1..4)
        )
            .prop_map(|(a, b, v)| Mutation::Bytes(a, b, v)),
    ]
}

fn apply(src: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = src.lines().map(str::to_string).collect();
    for m in mutations {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match m {
            Mutation::Delete(i) => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Swap(a, b) => lines.swap(a % n, b % n),
            Mutation::Insert(i, l) => lines.insert(i % (n + 1), l.clone()),
            Mutation::ReplaceValue(i, v) => {
                let l = &mut lines[i % n];
                if let Some(eq) = l.find(" = ") {
                    l.truncate(eq + 3);
                    l.push_str(v);
                }
            }
            Mutation::Bytes(i, at, bytes) => {
                let l = &mut lines[i % n];
                let mut raw = std::mem::take(l).into_bytes();
                let at = at % (raw.len() + 1);
                raw.splice(at..at, bytes.iter().copied());
                *l = String::from_utf8_lossy(&raw).into_owned();
            }
        }
    }
    lines.join("\n")
}

/// Loads `src`: never panics, and every error says where (line or key).
fn check_located(src: &str) -> Result<(), TestCaseError> {
    if let Err(errors) = load_str("fuzz.toml", src) {
        prop_assert!(!errors.0.is_empty());
        for e in &errors.0 {
            prop_assert!(
                e.line > 0 || !e.key.is_empty(),
                "unlocated error {:?} in\n{}",
                e,
                src
            );
            prop_assert!(
                e.line <= src.lines().count().max(1) + 1,
                "line out of range: {:?}",
                e
            );
        }
        // Display never panics either.
        let _ = errors.to_string();
    }
    Ok(())
}

proptest! {
    #[test]
    fn mutated_configs_load_or_report_located_errors(
        seed in 0usize..2,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let src = apply(&seeds()[seed], &mutations);
        check_located(&src)?;
    }

    #[test]
    fn random_toml_loads_or_reports_located_errors(src in "(\\[[a-z.]{0,12}\\]\n|[a-z_.]{1,10} = (\"\\PC{0,6}\"|[0-9]{1,4}|\\[\\]|\\{\\})\n|\\PC{0,10}\n){0,10}") {
        check_located(&src)?;
    }
}
