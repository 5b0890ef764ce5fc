//! The admin listener (`[admin] listen`), on its own port, apart from proxied traffic:
//! `GET /metrics` (Prometheus text) and `GET /health` for anyone who can reach it;
//! `GET /status`, `GET /config` (secrets redacted), `GET /clusters`, `POST /reload` and
//! `POST /cache/purge` behind the bearer `token` (compared in constant time). See
//! `docs/admin-api.md`.

use crate::config::{AdminSettings, Config};
use crate::proxy::Problem;
use crate::reload::Live;
use crate::router::{normalize_host, Lookup, RequestView};
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::cache::key::CacheHashKey;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Answers admin requests.
pub struct AdminApp {
    token: Option<Vec<u8>>,
    started: Instant,
    live: Arc<Live>,
}

/// Largest `POST /cache/purge` body read.
const MAX_PURGE_BODY: usize = 8 * 1024;

/// The admin service for `settings`, reporting on and reloading `live`.
pub fn service(settings: &AdminSettings, live: Arc<Live>) -> Service<HttpServer<AdminApp>> {
    let app = AdminApp {
        token: settings.token.as_ref().map(|t| t.as_bytes().to_vec()),
        started: Instant::now(),
        live,
    };
    let mut service = Service::new("admin".into(), HttpServer::new_app(app));
    service.add_tcp(&settings.addr.to_string());
    service
}

impl AdminApp {
    /// Checks `Authorization: Bearer TOKEN` for the protected endpoints: `None` when it
    /// passes, else the refusal to send.
    fn refusal(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let Some(token) = &self.token else {
            return Some(problem(
                StatusCode::FORBIDDEN,
                "admin-token-required",
                "set [admin] token to use this endpoint",
            ));
        };
        let presented = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(p) if bool::from(p.ct_eq(token.as_slice())) => None,
            _ => {
                let mut refusal = problem(
                    StatusCode::UNAUTHORIZED,
                    "invalid-credentials",
                    "send Authorization: Bearer with the admin token",
                );
                refusal.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"gantry-admin\""),
                );
                Some(refusal)
            }
        }
    }

    /// Every backend of the running configuration: cluster, address, healthy.
    fn backend_health(&self) -> Vec<(String, String, bool)> {
        self.live
            .current()
            .clusters
            .values()
            .flat_map(|c| {
                c.backend_health()
                    .into_iter()
                    .map(|(addr, healthy)| (c.name.to_string(), addr.to_string(), healthy))
            })
            .collect()
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let mut body = String::new();
        crate::metrics::render(&mut body, &self.backend_health());
        respond(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            body.into_bytes(),
        )
    }

    /// The running configuration file, parsed, with every secret replaced by `REDACTED`.
    fn config(&self) -> Response<Vec<u8>> {
        let config = self.live.current();
        let mut parsed: toml::Value = match toml::from_str(&config.source) {
            Ok(v) => v,
            Err(e) => {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &format!("the running configuration does not parse again: {e}"),
                )
            }
        };
        redact(&mut parsed, &mut Vec::new());
        let body = serde_json::json!({
            "generation": self.live.generation(),
            "sha256": config.source_sha256,
            "config": parsed,
        });
        json(&body)
    }

    /// Every cluster's backends: health now, and failures seen by requests.
    fn clusters(&self) -> Response<Vec<u8>> {
        let config = self.live.current();
        let clusters: serde_json::Map<String, serde_json::Value> = config
            .clusters
            .values()
            .map(|c| {
                let backends: Vec<_> = c
                    .backend_health()
                    .into_iter()
                    .map(|(addr, healthy)| {
                        let (failures, last) = c.metrics.failures(addr);
                        let state = c.state(&addr);
                        let state = state.as_deref();
                        let ejected_until = state
                            .and_then(|s| s.ejected_until())
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string());
                        serde_json::json!({
                            "address": addr.to_string(),
                            "host": c.host_of(&addr),
                            "healthy": healthy,
                            "ejected_until": ejected_until,
                            "in_flight": state.map_or(0, |s| s.in_flight.load(std::sync::atomic::Ordering::Relaxed)),
                            "consecutive_failures": state.map_or(0, |s| s.consecutive_failures()),
                            "ewma_latency_ms": state.map(|s| s.ewma_micros(crate::upstream::now_ms()) / 1000.0),
                            "failures": failures,
                            "last_failure": last.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        })
                    })
                    .collect();
                let cluster = serde_json::json!({
                    "protocol": format!("{:?}", c.protocol).to_lowercase(),
                    "retry": {
                        "on": c.resilience.retry.conditions(),
                        "attempts": c.resilience.retry.attempts,
                    },
                    "outlier_detection": c.resilience.outlier.is_some(),
                    "max_requests": c.resilience.max_requests,
                    "health_check": c.has_health_check(),
                    "backends": backends,
                });
                (c.name.to_string(), cluster)
            })
            .collect();
        json(&serde_json::json!({ "clusters": clusters }))
    }

    /// Re-reads the configuration file: the new generation, or every error (the running
    /// configuration keeps serving).
    async fn reload(&self) -> Response<Vec<u8>> {
        let live = Arc::clone(&self.live);
        match tokio::task::spawn_blocking(move || live.reload()).await {
            Ok(Ok(done)) => json(&serde_json::json!({
                "generation": done.generation,
                "sha256": done.sha256,
                "needs_restart": done.needs_restart,
            })),
            Ok(Err(errors)) => {
                let list: Vec<_> = errors
                    .0
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "file": e.file, "line": e.line, "column": e.column,
                            "key": e.key, "message": e.message, "hint": e.hint,
                        })
                    })
                    .collect();
                let mut response = problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "config-invalid",
                    &format!(
                        "the file has {} error(s); generation {} keeps serving",
                        list.len(),
                        self.live.generation()
                    ),
                );
                if let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(response.body()) {
                    body["errors"] = serde_json::Value::Array(list);
                    let bytes = body.to_string().into_bytes();
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, bytes.len().into());
                    *response.body_mut() = bytes;
                }
                response
            }
            Err(e) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("the reload failed: {e}"),
            ),
        }
    }

    fn status(&self) -> Response<Vec<u8>> {
        let body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config": {
                "generation": self.live.generation(),
                "sha256": self.live.current().source_sha256,
            },
        });
        respond(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}

/// `POST /cache/purge` with `{"url": "http://host/path?query", "route": "optional"}`:
/// removes every stored variant of that URL. The route is the one a plain GET of the URL
/// matches, unless named.
async fn purge(config: &Config, session: &mut ServerSession) -> Response<Vec<u8>> {
    let bad = |detail: &str| problem(StatusCode::BAD_REQUEST, "invalid-purge-request", detail);
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_PURGE_BODY => {
                body.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => return bad("the body is larger than 8KiB"),
            Ok(None) => break,
            Err(_) => return bad("the body could not be read"),
        }
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PurgeRequest {
        url: String,
        route: Option<String>,
    }
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("send {{\"url\": \"http://host/path\"}}: {e}")),
    };
    let uri: http::Uri = match request.url.parse() {
        Ok(u) => u,
        Err(_) => return bad("`url` is not a URL"),
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return bad("`url` must be absolute: http://host[:port]/path[?query]");
    };
    let route = match &request.route {
        Some(name) => config.router.route(name),
        None => {
            let host = normalize_host(authority.as_str());
            let view = RequestView {
                host: &host,
                path: uri.path(),
                method: &http::Method::GET,
                headers: &http::HeaderMap::new(),
            };
            match config.router.lookup(&view) {
                Lookup::Found(m) => Some(Arc::clone(m.route)),
                _ => None,
            }
        }
    };
    let Some(route) = route else {
        return problem(
            StatusCode::NOT_FOUND,
            "no-route",
            "no route matches this URL (name it with \"route\")",
        );
    };
    let (Some(policy), Some(cache)) = (route.plugins.cache.as_ref(), crate::cache::running())
    else {
        return problem(
            StatusCode::CONFLICT,
            "route-not-cached",
            &format!("route `{}` has no cache plugin", route.name),
        );
    };
    let key = policy.primary_key(
        &route.name,
        scheme,
        authority.as_str(),
        uri.path(),
        uri.query(),
    );
    let primary = crate::cache::key_for(key).primary_bin();
    let purged = cache.purge(&primary);
    let body = serde_json::json!({ "route": &*route.name, "purged": purged });
    respond(
        StatusCode::OK,
        "application/json",
        body.to_string().into_bytes(),
    )
}

fn json(body: &serde_json::Value) -> Response<Vec<u8>> {
    respond(
        StatusCode::OK,
        "application/json",
        body.to_string().into_bytes(),
    )
}

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 6] = [
    "token",
    "password",
    "keys",
    "secret",
    "secrets",
    "client_secret",
];

/// Tables whose every value may be a secret, wherever they are: header and query values set
/// by transforms (`authorization = "Bearer ..."`, `api_key = "..."`), and any `headers` table
/// (a route may match on a shared secret header).
const SECRET_TABLES: [&str; 5] = [
    "set_headers",
    "add_headers",
    "headers",
    "set_query",
    "add_query",
];

/// Tables whose every value is a secret, by key path (`*`: any one key), whatever their
/// name: the headers Gantry sends to the trace collector.
const SECRET_PATHS: [&[&str]; 1] = [&["tracing", "headers"]];

/// Whether the table at `path` holds only secrets.
fn secret_table(path: &[&str]) -> bool {
    let last = path.last().copied().unwrap_or_default();
    SECRET_TABLES.contains(&last)
        || SECRET_PATHS.iter().any(|pattern| {
            pattern.len() == path.len()
                && pattern.iter().zip(path).all(|(p, k)| *p == "*" || p == k)
        })
}

/// Replaces secrets in a parsed configuration: the values of [`SECRET_KEYS`], everything in
/// a [`secret_table`], and the credentials of URLs (`redis://user:password@host`). `path`: the
/// keys down to `value`.
fn redact<'k>(value: &'k mut toml::Value, path: &mut Vec<&'k str>) {
    if value.is_table() && secret_table(path) {
        return redact_all(value);
    }
    let key = path.last().copied().unwrap_or_default();
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                path.push(k);
                redact(v, path);
                path.pop();
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, &mut path.clone())),
        toml::Value::String(_) if SECRET_KEYS.contains(&key) => redact_all(value),
        toml::Value::String(s) => {
            if let Some((scheme, rest)) = s.split_once("://") {
                if let Some((_, host)) = rest.rsplit_once('@') {
                    *s = format!("{scheme}://REDACTED@{host}");
                }
            }
        }
        _ => {}
    }
}

/// Replaces every string under `value` by `REDACTED`.
fn redact_all(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| redact_all(v)),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_all),
        toml::Value::String(s) => *s = "REDACTED".into(),
        _ => {}
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn problem(status: StatusCode, slug: &'static str, detail: &str) -> Response<Vec<u8>> {
    let request_id = uuid::Uuid::new_v4().to_string();
    // The same body as the gateway's own problems.
    let body = Problem {
        status: status.as_u16(),
        slug,
        title: status.canonical_reason().unwrap_or_default(),
        detail,
        allow: &[],
        headers: &[],
        close: false,
    }
    .body(&request_id, None);
    let mut response = respond(status, "application/problem+json", body.into_bytes());
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The endpoints: method, path, whether the token is needed.
const ENDPOINTS: [(&str, &str, bool); 7] = [
    ("GET", "/metrics", false),
    ("GET", "/health", false),
    ("GET", "/status", true),
    ("GET", "/config", true),
    ("GET", "/clusters", true),
    ("POST", "/reload", true),
    ("POST", "/cache/purge", true),
];

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.as_str();
        let Some((_, _, protected)) = ENDPOINTS
            .iter()
            .find(|(m, p, _)| *p == path && *m == method)
        else {
            return match ENDPOINTS.iter().find(|(_, p, _)| *p == path) {
                Some((m, p, _)) => problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    &format!("use {m} {p}"),
                ),
                None => problem(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "admin endpoints: GET /metrics, /health, /status, /config, /clusters; POST /reload, /cache/purge",
                ),
            };
        };
        if *protected {
            if let Some(refusal) = self.refusal(session) {
                return refusal;
            }
        }
        match path.as_str() {
            "/metrics" => self.metrics(),
            "/health" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/status" => self.status(),
            "/config" => self.config(),
            "/clusters" => self.clusters(),
            "/reload" => self.reload().await,
            _ => purge(&self.live.current(), session).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(toml_text: &str) -> toml::Value {
        let mut value: toml::Value = toml::from_str(toml_text).unwrap();
        redact(&mut value, &mut Vec::new());
        value
    }

    #[test]
    fn secrets_are_redacted_by_key_and_by_key_path() {
        let v = redacted(
            r#"
[admin]
token = "t0ken"
[tracing]
otlp_endpoint = "http://u:pw@collector:4318/v1/traces"
headers = { "x-api-key" = "k3y" }
[routes.r]
headers = { "x-internal-auth" = "sh4red" }
[routes.r.plugins.request-transform]
set_headers = { authorization = "Bearer b" }
"#,
        );
        let text = v.to_string();
        for secret in ["t0ken", "k3y", "sh4red", "Bearer b", "pw@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            v["tracing"]["headers"]["x-api-key"].as_str(),
            Some("REDACTED")
        );
        assert!(text.contains("collector:4318"));
        assert!(secret_table(&["tracing", "headers"]));
        assert!(!secret_table(&["tracing", "resource"]));
        assert!(secret_table(&["routes", "r", "headers"]));
    }
}
