//! The admin listener (`[admin] listen`): `GET /metrics` in the Prometheus text format and
//! `GET /health`, served on its own port, apart from proxied traffic.

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use prometheus::{Encoder, TextEncoder};
use std::net::SocketAddr;

/// Answers admin requests.
pub struct AdminApp;

/// The admin service listening on `addr`.
pub fn service(addr: SocketAddr) -> Service<HttpServer<AdminApp>> {
    let mut service = Service::new("admin".into(), HttpServer::new_app(AdminApp));
    service.add_tcp(&addr.to_string());
    service
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
            "/health" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            _ => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "admin endpoints: GET /metrics, GET /health",
            ),
        }
    }
}
