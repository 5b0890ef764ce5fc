//! Request routing: host, path, method and header matching compiled into an index.
//!
//! Precedence, in order: the highest `priority`; then the host (exact before wildcard before no
//! host); then the path (exact before the longest prefix before regex); then the route with more
//! method/header conditions; then the route declared first. Method and header conditions only
//! narrow a candidate. The index is a host hash map (exact and wildcard suffixes) over a path
//! index (exact hash map, segment trie for prefixes, regexes in declared order), so a lookup
//! costs a few hash probes per path segment, not a scan over every route.

mod host;
mod path;

pub use host::{normalize_host, HostPattern};
pub use path::PathPattern;

/// A `hosts` or `paths` entry that is not a pattern.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// `*.` followed by nothing or by another `*`.
    #[error("invalid wildcard host `{0}`")]
    Wildcard(String),
    /// Empty, or a `*` anywhere but a leading `*.`.
    #[error("invalid host `{0}`: only a leading `*.` wildcard is supported")]
    Host(String),
    /// A host with a port.
    #[error("host `{0}` has a port: hosts are matched without the port")]
    HostPort(String),
    /// A path that does not start with `/`.
    #[error("path `{0}` must start with `/` (or `=/` for exact, `~` for a regex)")]
    Path(String),
    /// A `~` path whose regex does not compile.
    #[error("invalid regex `{pattern}`: {source}")]
    Regex {
        /// The regex as written.
        pattern: String,
        /// Why it does not compile.
        source: regex::Error,
    },
}

use crate::upstream::Cluster;
use ahash::AHashMap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use path::{Candidate, PathIndex, PathRank};
use pingora::protocols::http::compression::Algorithm;
use std::sync::Arc;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's name from the config (`routes.NAME`).
    pub name: Arc<str>,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// Headers that must be present with exactly these values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Higher wins first.
    pub priority: i64,
    /// Remove the matched prefix before proxying.
    pub strip_prefix: bool,
    /// Bridge gRPC-Web requests to gRPC.
    pub grpc_web: bool,
    /// The route's plugins, grouped by phase.
    pub plugins: gantry_plugins::PluginChain,
    /// What happens to a matched request.
    pub action: RouteAction,
    /// Response compressions offered, most preferred first.
    pub compress: Vec<Algorithm>,
    /// The route's request counters.
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    /// The deadline until the response header, retries included.
    pub timeout: Option<std::time::Duration>,
    /// Where a share of the route's requests is copied to.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    /// The route's trace sample ratio, replacing `tracing.sample_ratio`.
    pub trace_ratio: Option<f64>,
    /// Responses carry `Server-Timing`.
    pub server_timing: bool,
}

/// What a matched route does.
#[derive(Debug)]
pub enum RouteAction {
    /// Proxy to a cluster.
    Proxy(Arc<Cluster>),
    /// Proxy to one of several clusters, by weight.
    Split(Arc<crate::upstream::TrafficSplit>),
    /// Answer directly.
    Respond(DirectResponse),
    /// Call several clusters and merge their JSON.
    Aggregate(Arc<crate::aggregate::Aggregate>),
}

/// A response served by the gateway itself, prepared at load.
#[derive(Debug)]
pub struct DirectResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers including `Content-Type`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Route {
    fn method_allowed(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }

    fn condition_count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len()
    }
}

/// A route with the hosts and paths it is reachable under, as input to [`Router::new`].
pub struct RouteSpec {
    /// The route.
    pub route: Arc<Route>,
    /// Host patterns; empty means any host.
    pub hosts: Vec<HostPattern>,
    /// Path patterns; at least one.
    pub paths: Vec<PathPattern>,
}

/// The parts of a request that routing looks at.
pub struct RequestView<'a> {
    /// Lower-case host without port (see [`normalize_host`]).
    pub host: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup<'r> {
    /// A route matched.
    Found(RouteMatch<'r>),
    /// A route matched host and path but not the method; these methods would have matched.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// A matched route and how much of the path its prefix covered.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'r> {
    /// The route.
    pub route: &'r Arc<Route>,
    /// Bytes of the path matched by a prefix (the part `strip_prefix` removes); 0 otherwise.
    pub prefix_len: usize,
}

/// Precedence of one candidate; the greatest wins.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
struct Rank {
    priority: i64,
    /// Exact host (`usize::MAX`), then wildcards by suffix length, then no host (0).
    host: usize,
    path: PathRank,
    conditions: usize,
    earlier: std::cmp::Reverse<usize>,
}

/// The compiled routing index.
#[derive(Default)]
pub struct Router {
    exact_hosts: AHashMap<Box<str>, PathIndex>,
    /// Keyed by the suffix including its leading dot: `*.example.com` is `.example.com`.
    wildcard_hosts: AHashMap<Box<str>, PathIndex>,
    any_host: PathIndex,
    /// Every route by name, for the admin API.
    by_name: AHashMap<Box<str>, Arc<Route>>,
    len: usize,
}

impl Router {
    /// Builds the index. `specs` are in declaration order, which breaks ties.
    pub fn new(specs: Vec<RouteSpec>) -> Router {
        let mut router = Router {
            len: specs.len(),
            ..Router::default()
        };
        for (order, spec) in specs.into_iter().enumerate() {
            router
                .by_name
                .insert(spec.route.name.as_ref().into(), Arc::clone(&spec.route));
            if spec.hosts.is_empty() {
                insert_paths(&mut router.any_host, &spec, order);
                continue;
            }
            let mut hosts = spec.hosts.clone();
            hosts.sort_unstable();
            hosts.dedup();
            for host in hosts {
                let index = match host {
                    HostPattern::Exact(name) => router.exact_hosts.entry(name.into()),
                    HostPattern::Wildcard(suffix) => router.wildcard_hosts.entry(suffix.into()),
                }
                .or_default();
                insert_paths(index, &spec, order);
            }
        }
        router
            .exact_hosts
            .values_mut()
            .chain(router.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut router.any_host))
            .for_each(PathIndex::finish);
        router
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.by_name.get(name).cloned()
    }

    /// Number of routes in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no route is configured.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds the route for a request.
    pub fn lookup(&self, req: &RequestView<'_>) -> Lookup<'_> {
        let mut best: Option<(Rank, &Candidate)> = None;
        let mut method_blocked = false;
        self.for_each_host_index(req.host, |index, host_rank| {
            if let Some((rank, _)) = &best {
                if rank.priority >= index.max_priority {
                    return;
                }
            }
            index.for_each_match(req.path, |cand, path_rank| {
                let route = &cand.route;
                if !route.headers_match(req.headers) {
                    return;
                }
                if !route.method_allowed(req.method) {
                    method_blocked = true;
                    return;
                }
                let rank = Rank {
                    priority: route.priority,
                    host: host_rank,
                    path: path_rank,
                    conditions: route.condition_count(),
                    earlier: std::cmp::Reverse(cand.order),
                };
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    best = Some((rank, cand));
                }
            });
        });
        match best {
            Some((_, cand)) => Lookup::Found(RouteMatch {
                route: &cand.route,
                prefix_len: cand.prefix_len,
            }),
            None if method_blocked => Lookup::MethodNotAllowed(self.allowed_methods(req)),
            None => Lookup::NotFound,
        }
    }

    /// The methods that would have matched host, path and headers (for `Allow` on a 405).
    fn allowed_methods(&self, req: &RequestView<'_>) -> Vec<Method> {
        let mut methods: Vec<Method> = Vec::new();
        self.for_each_host_index(req.host, |index, _| {
            index.for_each_match(req.path, |cand, _| {
                if cand.route.headers_match(req.headers) {
                    methods.extend(cand.route.methods.iter().cloned());
                }
            });
        });
        methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        methods.dedup();
        methods
    }

    /// Calls `f` for each path index that applies to `host` with its host rank, highest first
    /// (which is what lets `lookup` skip indexes that cannot beat the best match).
    fn for_each_host_index<'s>(&'s self, host: &str, mut f: impl FnMut(&'s PathIndex, usize)) {
        if !self.exact_hosts.is_empty() {
            if let Some(index) = self.exact_hosts.get(host) {
                f(index, usize::MAX);
            }
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: `a.b.example.com` tries `.b.example.com`, then `.example.com`.
            for (i, _) in host.match_indices('.') {
                let suffix = &host[i..];
                if let Some(index) = self.wildcard_hosts.get(suffix) {
                    f(index, suffix.len());
                }
            }
        }
        f(&self.any_host, 0);
    }
}

fn insert_paths(index: &mut PathIndex, spec: &RouteSpec, order: usize) {
    for p in &spec.paths {
        index.insert(p, Arc::clone(&spec.route), order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml: &str) -> Router {
        crate::config::load_str("t.toml", toml)
            .expect("valid")
            .router
    }

    fn find<'r>(r: &'r Router, host: &str, method: Method, path: &str) -> Lookup<'r> {
        let headers = HeaderMap::new();
        let view = RequestView {
            host,
            path,
            method: &method,
            headers: &headers,
        };
        r.lookup(&view)
    }

    fn name(l: &Lookup<'_>) -> String {
        match l {
            Lookup::Found(m) => format!("{}+{}", m.route.name, m.prefix_len),
            Lookup::MethodNotAllowed(m) => format!("405 {m:?}"),
            Lookup::NotFound => "404".into(),
        }
    }

    const R: &str = r#"
[routes.root]
paths = ["/"]
respond = {}
[routes.a]
paths = ["/a"]
respond = {}
[routes.ab_slash]
paths = ["/a/b/"]
respond = {}
[routes.exact]
paths = ["=/a/b"]
methods = ["PUT"]
respond = {}
[routes.wild]
hosts = ["*.example.com"]
paths = ["/a"]
respond = {}
"#;

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        let r = router(R);
        assert_eq!(name(&find(&r, "h", Method::GET, "/a")), "a+2");
        assert_eq!(name(&find(&r, "h", Method::GET, "/a/x")), "a+2");
        assert_eq!(name(&find(&r, "h", Method::GET, "/ab")), "root+0");
        // `/a/b/` needs something after the slash; `/a/b` alone falls back to `/a`.
        assert_eq!(name(&find(&r, "h", Method::GET, "/a/b/c")), "ab_slash+4");
        assert_eq!(name(&find(&r, "h", Method::GET, "/a/b")), "a+2");
        assert_eq!(name(&find(&r, "h", Method::PUT, "/a/b")), "exact+4");
    }

    #[test]
    fn wildcards_match_any_depth_but_not_the_apex() {
        let r = router(R);
        assert_eq!(
            name(&find(&r, "x.y.example.com", Method::GET, "/a")),
            "wild+2"
        );
        assert_eq!(name(&find(&r, "example.com", Method::GET, "/a")), "a+2");
    }

    #[test]
    fn method_mismatch_on_a_matching_path_is_405_with_allowed_methods() {
        let r = router(
            "[routes.x]\npaths = [\"=/x\"]\nmethods = [\"POST\", \"GET\"]\nrespond = {}\n\
             [routes.y]\npaths = [\"=/x\"]\nmethods = [\"PUT\"]\nrespond = {}\n",
        );
        assert_eq!(
            name(&find(&r, "h", Method::DELETE, "/x")),
            "405 [GET, POST, PUT]"
        );
        assert_eq!(name(&find(&r, "h", Method::GET, "/y")), "404");
    }

    #[test]
    fn the_longer_wildcard_wins_whatever_other_routes_exist() {
        let base = "[routes.short]\nhosts = [\"*.example.com\"]\npaths = [\"=/login\"]\nrespond = {}\n\
                    [routes.long]\nhosts = [\"*.api.example.com\"]\npaths = [\"/\"]\nrespond = {}\n";
        let with_priority = format!(
            "{base}[routes.other]\nhosts = [\"*.example.com\"]\npaths = [\"=/x\"]\npriority = 1\nrespond = {{}}\n"
        );
        for cfg in [base.to_string(), with_priority] {
            let r = router(&cfg);
            assert_eq!(
                name(&find(&r, "x.api.example.com", Method::GET, "/login")),
                "long+0"
            );
        }
    }

    #[test]
    fn empty_router_finds_nothing() {
        let r = Router::new(Vec::new());
        assert!(r.is_empty());
        assert_eq!(name(&find(&r, "h", Method::GET, "/")), "404");
    }
}
