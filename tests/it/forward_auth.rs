//! `forward-auth` against a real auth service started by the test: allowed requests with the
//! service's headers upstream (spoofed copies removed), refusals passed to the client as
//! written (a 401 with `WWW-Authenticate`, a login redirect), a slow, a failing and an
//! unreachable service under both `on_error` settings, the decision cache counted by the
//! service's calls, consumers named by the answer with their ACL, the request body kept from
//! the service, `traceparent` on the call, calls through a cluster, and configuration errors.

use crate::common::{
    assert_problem, check_config, client, dead_addr, free_port, wait_for_metric, wait_for_port,
    Gantry, Upstream, PATIENCE,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One call the auth service received.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    uri: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An auth service deciding by the call's `authorization` header:
/// - `Bearer alice` / `Bearer bob`: 200 with `x-user-id` and `x-user-roles`;
/// - `Bearer carol`: 200 naming `carol` (no such consumer);
/// - `Bearer nobody`: 200 without identity headers;
/// - `Bearer login`: 302 to a login page, setting a cookie;
/// - `Bearer slow`: no answer (until the test's patience ends);
/// - `Bearer boom`: 500;
/// - anything else: 401 with `WWW-Authenticate`, a JSON body and a header kept back.
struct AuthService {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    server: tokio::task::JoinHandle<()>,
}

impl AuthService {
    async fn start() -> AuthService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the auth service");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&calls);
        let server = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let call = Call {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let answer = decide(&call).await;
                            record.lock().expect("calls").push(call);
                            Ok::<_, hyper::Error>(answer)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuthService {
            addr,
            calls,
            server,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    fn url(&self) -> String {
        format!("http://{}/check?realm=shop", self.addr)
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn decide(call: &Call) -> hyper::Response<Full<Bytes>> {
    let token = call
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let answer = hyper::Response::builder();
    let answer = match token {
        "Bearer alice" | "Bearer bob" => answer
            .status(200)
            .header("x-user-id", &token["Bearer ".len()..])
            .header("x-user-roles", "reader, writer"),
        "Bearer carol" => answer.status(200).header("x-user-id", "carol"),
        "Bearer nobody" => answer.status(200),
        "Bearer login" => answer
            .status(302)
            .header("location", "https://login.example/?rd=%2Forders")
            .header("set-cookie", "login-state=abc; HttpOnly"),
        "Bearer slow" => {
            tokio::time::sleep(PATIENCE).await;
            answer.status(200)
        }
        "Bearer boom" => answer.status(500),
        _ => answer
            .status(401)
            .header("www-authenticate", "Bearer realm=\"shop\"")
            .header("content-type", "application/json")
            .header("x-auth-internal", "kept back"),
    };
    let body = match token {
        "Bearer alice" | "Bearer bob" | "Bearer carol" | "Bearer nobody" | "Bearer slow" => "",
        "Bearer login" => "log in first",
        "Bearer boom" => "crashed",
        _ => "{\"error\":\"invalid_token\"}",
    };
    answer
        .body(Full::new(Bytes::from(body)))
        .expect("an answer")
}

/// A client that never follows redirects (a 302 is what the test looks at).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn get(g: &Gantry, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = no_redirects().get(g.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request")
}

/// The JSON echo of the upstream.
async fn echoed(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("echo")
}

/// A cluster `u` for `up` and route `r` on `/` with `plugin` as its forward-auth table.
fn route(up: &Upstream, plugin: &str) -> String {
    format!(
        "[clusters.u]\nbackends = [\"{}\"]\n[routes.r]\npaths = [\"/\"]\ncluster = \"u\"\n\
         [routes.r.plugins.forward-auth]\n{plugin}\n",
        up.addr
    )
}

#[tokio::test]
async fn allowed_requests_carry_the_services_headers_and_never_the_clients() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let g = Gantry::start(&route(
        &up,
        &format!(
            "url = \"{}\"\nrequest_headers = [\"authorization\"]\n\
             upstream_headers = [\"x-user-id\", \"x-user-roles\"]",
            auth.url()
        ),
    ));
    let spoofed = [
        ("x-user-id", "root"),
        ("x_user_id", "root"),
        ("x-user-roles", "admin"),
        ("cookie", "session=s3cret"),
    ];
    let with = |token: &'static str| {
        let mut headers = spoofed.to_vec();
        headers.push(("authorization", token));
        headers
    };
    let body = echoed(get(&g, "/orders/7?full=1", &with("Bearer alice")).await).await;
    assert_eq!(body["headers"]["x-user-id"], "alice");
    assert_eq!(body["headers"]["x-user-roles"], "reader, writer");
    assert!(body["headers"].get("x_user_id").is_none());
    // The client's request itself goes upstream unchanged otherwise.
    assert_eq!(body["headers"]["authorization"], "Bearer alice");
    assert_eq!(body["uri"], "/orders/7?full=1");

    // An answer without the headers: the client's copies are still removed.
    let body = echoed(get(&g, "/", &with("Bearer nobody")).await).await;
    for name in ["x-user-id", "x_user_id", "x-user-roles"] {
        assert!(body["headers"].get(name).is_none(), "{name} went upstream");
    }

    let call = &auth.calls()[0];
    assert_eq!(
        (call.method.as_str(), call.uri.as_str()),
        ("GET", "/check?realm=shop")
    );
    let seen = |name: &str| call.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(seen("x-forwarded-method"), Some("GET"));
    assert_eq!(seen("x-forwarded-uri"), Some("/orders/7?full=1"));
    assert_eq!(
        seen("x-forwarded-host"),
        Some(&*format!("127.0.0.1:{}", g.port))
    );
    assert_eq!(seen("x-forwarded-proto"), Some("http"));
    assert_eq!(seen("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen("authorization"), Some("Bearer alice"));
    assert!(seen("x-request-id").is_some_and(|id| !id.is_empty()));
    // Not listed in request_headers.
    assert_eq!((seen("cookie"), seen("x-user-id")), (None, None));
}

#[tokio::test]
async fn refusals_reach_the_client_as_the_service_wrote_them() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let g = Gantry::start(&route(
        &up,
        &format!(
            "url = \"{}\"\nrequest_headers = [\"authorization\"]\n\
             client_headers = [\"www-authenticate\", \"location\", \"set-cookie\"]",
            auth.url()
        ),
    ));
    let denied = get(&g, "/", &[("authorization", "Bearer forged")]).await;
    assert_eq!(denied.status(), 401);
    let header = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("text").to_string())
    };
    assert_eq!(
        header(&denied, "www-authenticate").as_deref(),
        Some("Bearer realm=\"shop\"")
    );
    assert_eq!(
        header(&denied, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(header(&denied, "x-auth-internal"), None);
    assert!(header(&denied, "x-request-id").is_some());
    assert_eq!(
        denied.text().await.expect("body"),
        "{\"error\":\"invalid_token\"}"
    );

    let redirect = get(&g, "/orders", &[("authorization", "Bearer login")]).await;
    assert_eq!(redirect.status(), 302);
    assert_eq!(
        header(&redirect, "location").as_deref(),
        Some("https://login.example/?rd=%2Forders")
    );
    assert_eq!(
        header(&redirect, "set-cookie").as_deref(),
        Some("login-state=abc; HttpOnly")
    );
    assert_eq!(redirect.text().await.expect("body"), "log in first");
    assert_eq!(up.hits(), 0, "a refused request went upstream");
}

#[tokio::test]
async fn a_slow_failing_or_unreachable_service_follows_on_error() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let table = |url: &str, on_error: &str| {
        format!(
            "url = \"{url}\"\nrequest_headers = [\"authorization\"]\n\
             upstream_headers = [\"x-user-id\"]\ntimeout = \"300ms\"\non_error = \"{on_error}\"\n"
        )
    };
    let down = format!("http://{}/check", dead_addr());
    let g = Gantry::start(&format!(
        "[clusters.u]\nbackends = [\"{}\"]\n\
         [routes.deny]\npaths = [\"/deny\"]\ncluster = \"u\"\n\
         [routes.deny.plugins.forward-auth]\n{}\
         [routes.allow]\npaths = [\"/allow\"]\ncluster = \"u\"\n\
         [routes.allow.plugins.forward-auth]\n{}\
         [routes.down]\npaths = [\"/down\"]\ncluster = \"u\"\n\
         [routes.down.plugins.forward-auth]\n{}\
         [routes.down-allow]\npaths = [\"/down-allow\"]\ncluster = \"u\"\n\
         [routes.down-allow.plugins.forward-auth]\n{}",
        up.addr,
        table(&auth.url(), "deny"),
        table(&auth.url(), "allow"),
        table(&down, "deny"),
        table(&down, "allow"),
    ));
    let spoofed = ("x-user-id", "root");
    for token in ["Bearer slow", "Bearer boom"] {
        let resp = get(&g, "/deny", &[("authorization", token), spoofed]).await;
        let problem = assert_problem(resp, 503, "auth-unavailable").await;
        assert!(!problem["detail"]
            .as_str()
            .expect("detail")
            .contains("127.0.0.1"));
        let body = echoed(get(&g, "/allow", &[("authorization", token), spoofed]).await).await;
        assert!(body["headers"].get("x-user-id").is_none());
    }
    let resp = get(&g, "/down", &[("authorization", "Bearer alice")]).await;
    assert_problem(resp, 503, "auth-unavailable").await;
    let body = echoed(
        get(
            &g,
            "/down-allow",
            &[("authorization", "Bearer alice"), spoofed],
        )
        .await,
    )
    .await;
    assert!(body["headers"].get("x-user-id").is_none());
    assert_eq!(
        up.hits(),
        3,
        "only the on_error = allow requests went upstream"
    );
    // The failures are logged without the request's credentials.
    let log = g.log();
    assert!(log.contains("forward-auth"), "log: {log}");
    assert!(!log.contains("Bearer"), "log: {log}");
}

#[tokio::test]
async fn allowed_decisions_are_cached_and_counted() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let admin = free_port();
    let g = Gantry::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
        route(
            &up,
            &format!(
                "url = \"{}\"\nrequest_headers = [\"authorization\"]\n\
                 upstream_headers = [\"x-user-id\"]\ncache = {{ ttl = \"1h\" }}",
                auth.url()
            ),
        )
    ));
    wait_for_port(admin);
    for _ in 0..3 {
        let body = echoed(get(&g, "/a", &[("authorization", "Bearer alice")]).await).await;
        assert_eq!(body["headers"]["x-user-id"], "alice");
    }
    assert_eq!(auth.calls().len(), 1, "the decision was not reused");
    // Another credential or another path is another decision.
    echoed(get(&g, "/a", &[("authorization", "Bearer bob")]).await).await;
    echoed(get(&g, "/b", &[("authorization", "Bearer alice")]).await).await;
    assert_eq!(auth.calls().len(), 3);
    // Refusals are never cached.
    for _ in 0..2 {
        let resp = get(&g, "/a", &[("authorization", "Bearer forged")]).await;
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(auth.calls().len(), 5);
    for line in [
        "gantry_forward_auth_decisions_total{outcome=\"allowed\"} 3",
        "gantry_forward_auth_decisions_total{outcome=\"cached\"} 2",
        "gantry_forward_auth_decisions_total{outcome=\"refused\"} 2",
    ] {
        wait_for_metric(admin, line).await;
    }
}

#[tokio::test]
async fn the_answer_names_a_consumer_whose_acl_applies() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let g = Gantry::start(&format!(
        "[consumers.alice]\ngroups = [\"staff\"]\n[consumers.bob]\ngroups = [\"guests\"]\n{}\
         [routes.r.plugins.acl]\nallow_groups = [\"staff\"]\n",
        route(
            &up,
            &format!(
                "url = \"{}\"\nrequest_headers = [\"authorization\"]\nconsumer_header = \"x-user-id\"",
                auth.url()
            ),
        )
    ));
    let body = echoed(
        get(
            &g,
            "/",
            &[
                ("authorization", "Bearer alice"),
                ("x-consumer-name", "bob"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(body["headers"]["x-consumer-name"], "alice");
    assert_eq!(body["headers"]["x-consumer-groups"], "staff");
    let bob = get(&g, "/", &[("authorization", "Bearer bob")]).await;
    assert_problem(bob, 403, "consumer-forbidden").await;
    let carol = get(&g, "/", &[("authorization", "Bearer carol")]).await;
    assert_problem(carol, 403, "consumer-not-configured").await;
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn the_request_body_never_reaches_the_auth_service() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let g = Gantry::start(&route(
        &up,
        &format!(
            "url = \"{}\"\nrequest_headers = [\"authorization\", \"content-type\"]",
            auth.url()
        ),
    ));
    let resp = client()
        .post(g.url("/upload"))
        .header("authorization", "Bearer alice")
        .header("content-type", "text/plain")
        .body("the secret body")
        .send()
        .await
        .expect("request");
    let body = echoed(resp).await;
    assert_eq!(body["body"], "the secret body");
    let call = &auth.calls()[0];
    assert_eq!(call.method, "GET");
    assert!(call.body.is_empty());
    assert_eq!(call.headers["x-forwarded-method"], "POST");
    assert_eq!(call.headers["content-type"], "text/plain");
    for framing in ["content-length", "transfer-encoding"] {
        assert!(
            call.headers.get(framing).is_none_or(|v| v == "0"),
            "{framing} of the client's body reached the auth service"
        );
    }
}

#[tokio::test]
async fn the_call_carries_the_requests_trace_context_when_tracing_is_on() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let table = format!(
        "url = \"{}\"\nrequest_headers = [\"authorization\"]",
        auth.url()
    );
    let client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        ("authorization", "Bearer alice"),
        ("traceparent", client_trace),
    ];
    let untraced = Gantry::start(&route(&up, &table));
    echoed(get(&untraced, "/", &headers).await).await;
    assert!(auth.calls()[0].headers.get("traceparent").is_none());

    let traced = Gantry::start(&format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0\n{}",
        dead_addr(),
        route(&up, &table)
    ));
    echoed(get(&traced, "/", &headers).await).await;
    let calls = auth.calls();
    let sent = calls[1].headers["traceparent"].to_str().expect("text");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "not the client's trace"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the call has no span of its own"
    );
}

#[tokio::test]
async fn the_service_can_be_a_balanced_cluster() {
    let auth = AuthService::start().await;
    let up = Upstream::start("u").await;
    let g = Gantry::start(&format!(
        "[clusters.auth]\nbackends = [\"{}\", \"{}\"]\n{}",
        auth.addr,
        dead_addr(),
        route(
            &up,
            "cluster = \"auth\"\npath = \"/verify\"\nrequest_headers = [\"authorization\"]\n\
             upstream_headers = [\"x-user-id\"]",
        )
    ));
    // Whichever backend is tried first, the dead one's refused connection is retried on the
    // live one.
    for _ in 0..4 {
        let body = echoed(get(&g, "/", &[("authorization", "Bearer alice")]).await).await;
        assert_eq!(body["headers"]["x-user-id"], "alice");
    }
    let denied = get(&g, "/", &[("authorization", "Bearer forged")]).await;
    assert_eq!(denied.status(), 401);
    let calls = auth.calls();
    assert_eq!(calls[0].uri, "/verify");
    assert_eq!(
        calls[0].headers["host"].to_str().expect("host"),
        auth.addr.to_string()
    );
}

#[test]
fn unusable_tables_are_configuration_errors_naming_the_key() {
    let base = "[clusters.u]\nbackends = [\"127.0.0.1:9\"]\n[routes.r]\npaths = [\"/\"]\n\
                cluster = \"u\"\n[routes.r.plugins.forward-auth]\n";
    let cases = [
        ("", "set `url` (the auth service) or `cluster`"),
        ("url = \"http://a.test/\"\ncluster = \"u\"", "not both"),
        (
            "url = \"file:///etc/passwd\"",
            "`url` must be an http:// or https:// URL",
        ),
        ("cluster = \"auht\"", "cluster `auht` is not defined"),
        (
            "url = \"http://a.test/\"\nrequest_headers = [\"host\"]",
            "`request_headers`: `host`",
        ),
        (
            "url = \"http://a.test/\"\nupstream_headers = [\"x bad\"]",
            "`upstream_headers`",
        ),
        (
            "url = \"http://a.test/\"\ntimeout = \"0s\"",
            "`timeout` must be greater than zero",
        ),
        ("url = \"http://a.test/\"\non_error = \"maybe\"", "on_error"),
        (
            "url = \"http://a.test/\"\ncache = { ttl = \"0s\" }",
            "`cache.ttl`",
        ),
        ("url = \"http://a.test/\"\ncache = { tll = \"1s\" }", "tll"),
    ];
    for (table, expected) in cases {
        let (ok, out) = check_config(&format!("{base}{table}\n"));
        assert!(!ok, "{table} was accepted");
        assert!(
            out.contains("routes.r.plugins.forward-auth") && out.contains(expected),
            "{table}: {out}"
        );
    }
    // The URL is never quoted: it may carry credentials.
    let (ok, out) = check_config(&format!("{base}url = \"ftp://user:pa55word@a.test/\"\n"));
    assert!(!ok && !out.contains("pa55word"), "{out}");
    let (ok, out) = check_config(&format!(
        "{base}url = \"http://auth.internal:9000/check\"\n"
    ));
    assert!(ok, "{out}");
}
