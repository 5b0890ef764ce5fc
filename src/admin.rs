//! The admin listener (`[admin] listen`), on its own port, apart from proxied traffic:
//! `GET /metrics` (Prometheus text) and `GET /health` for anyone who can reach it, and
//! `GET /status` behind the bearer `token` (compared in constant time).

use crate::config::AdminSettings;
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use prometheus::{Encoder, TextEncoder};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Answers admin requests.
pub struct AdminApp {
    token: Option<Vec<u8>>,
    started: Instant,
    config_sha256: String,
}

/// The admin service for `settings`; `config_sha256` identifies the running configuration.
pub fn service(settings: &AdminSettings, config_sha256: &str) -> Service<HttpServer<AdminApp>> {
    let app = AdminApp {
        token: settings.token.as_ref().map(|t| t.as_bytes().to_vec()),
        started: Instant::now(),
        config_sha256: config_sha256.to_string(),
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

    fn status(&self) -> Response<Vec<u8>> {
        let body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config": { "generation": 1, "sha256": self.config_sha256 },
        });
        respond(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        )
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
        if req.method != http::Method::GET {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "the admin endpoints answer GET",
            );
        }
        match req.uri.path() {
            "/metrics" => {
                let mut body = Vec::new();
                let encoder = TextEncoder::new();
                match encoder.encode(&prometheus::gather(), &mut body) {
                    Ok(()) => respond(StatusCode::OK, encoder.format_type(), body),
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
                "admin endpoints: GET /metrics, GET /health, GET /status",
            ),
        }
    }
}
