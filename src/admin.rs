//! The admin listener (`[admin] listen`), on its own port, apart from proxied traffic:
//! `GET /metrics` (Prometheus text) and `GET /health` for anyone who can reach it;
//! `GET /status` and `POST /cache/purge` behind the bearer `token` (compared in constant
//! time).

use crate::config::{AdminSettings, Config};
use crate::router::{normalize_host, Lookup, RequestView};
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::cache::key::CacheHashKey;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use prometheus::{Encoder, TextEncoder};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Answers admin requests.
pub struct AdminApp {
    token: Option<Vec<u8>>,
    started: Instant,
    config: Arc<Config>,
}

/// Largest `POST /cache/purge` body read.
const MAX_PURGE_BODY: usize = 8 * 1024;

/// The admin service for `settings`, reporting on `config`.
pub fn service(settings: &AdminSettings, config: Arc<Config>) -> Service<HttpServer<AdminApp>> {
    let app = AdminApp {
        token: settings.token.as_ref().map(|t| t.as_bytes().to_vec()),
        started: Instant::now(),
        config,
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
        self.config
            .clusters
            .values()
            .flat_map(|c| {
                c.backend_health()
                    .into_iter()
                    .map(|(addr, healthy)| (c.name.to_string(), addr.to_string(), healthy))
            })
            .collect()
    }

    fn status(&self) -> Response<Vec<u8>> {
        let body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config": { "generation": 1, "sha256": self.config.source_sha256 },
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

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<Vec<u8>> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "type": format!("urn:gantry:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or_default(),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    let mut response = respond(
        status,
        "application/problem+json",
        body.to_string().into_bytes(),
    );
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let post = req.method == http::Method::POST;
        if req.uri.path() == "/cache/purge" {
            if !post {
                return problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "purge with POST /cache/purge",
                );
            }
            return match self.refusal(session) {
                Some(refusal) => refusal,
                None => purge(&self.config, session).await,
            };
        }
        if req.method != http::Method::GET {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this admin endpoint answers GET",
            );
        }
        match req.uri.path() {
            "/metrics" => {
                let mut body = String::new();
                let encoder = TextEncoder::new();
                match encoder.encode_utf8(&prometheus::gather(), &mut body) {
                    Ok(()) => {
                        crate::metrics::render(&mut body, &self.backend_health());
                        respond(StatusCode::OK, encoder.format_type(), body.into_bytes())
                    }
                    Err(e) => problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &format!("cannot encode the metrics: {e}"),
                    ),
                }
            }
            "/status" => self.refusal(session).unwrap_or_else(|| self.status()),
            "/health" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            _ => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "admin endpoints: GET /metrics, GET /health, GET /status, POST /cache/purge",
            ),
        }
    }
}
