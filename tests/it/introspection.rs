//! `oauth2-introspection` through the real gateway, against a real RFC 7662 endpoint on
//! loopback that counts its calls, records what it was sent and fails on demand.

use crate::common::recorder::Recorder;
use crate::common::{
    admin_metrics, assert_problem, check_config, client, eventually, free_port, wait_for_port,
    Gantry, Upstream,
};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;

const SECRET: &str = "introspection-client-s3cr3t";
const POST_SECRET: &str = "post-client-s3cr3t-from-a-file";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// How the endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The answer configured for the token (inactive when none is).
    Answer,
    /// This status, with an error body.
    Status(u16),
    /// 200 with a body that is not JSON.
    NotJson,
    /// 200 with a JSON object without `active`.
    NoActive,
    /// Never answer.
    Hang,
}

/// One call the endpoint received.
#[derive(Clone)]
struct Call {
    headers: http::HeaderMap,
    form: HashMap<String, String>,
}

#[derive(Default)]
struct EndpointState {
    answers: HashMap<String, Value>,
    calls: Vec<Call>,
}

/// An introspection endpoint. While its gate is closed, calls wait before answering.
struct Endpoint {
    port: u16,
    state: Arc<Mutex<EndpointState>>,
    mode: watch::Sender<Mode>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(EndpointState::default()));
        let (mode, _) = watch::channel(Mode::Answer);
        let (gate, _) = watch::channel(true);
        let (shared, modes, gates) = (Arc::clone(&state), mode.clone(), gate.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (shared, modes, gates) = (Arc::clone(&shared), modes.clone(), gates.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (shared, modes, gates) =
                            (Arc::clone(&shared), modes.clone(), gates.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let form = parse_form(&body);
                            let token = form.get("token").cloned().unwrap_or_default();
                            shared.lock().expect("state").calls.push(Call {
                                headers: parts.headers,
                                form,
                            });
                            let _ = gates.subscribe().wait_for(|open| *open).await;
                            let mode = *modes.borrow();
                            let (status, body) = match mode {
                                Mode::Answer => {
                                    let answers = &shared.lock().expect("state").answers;
                                    let answer = answers
                                        .get(&token)
                                        .cloned()
                                        .unwrap_or(json!({"active": false}));
                                    (200, answer.to_string())
                                }
                                Mode::Status(status) => (status, "{\"error\":\"boom\"}".into()),
                                Mode::NotJson => (200, "<html>maintenance</html>".into()),
                                Mode::NoActive => (200, "{\"scope\":\"billing:read\"}".into()),
                                Mode::Hang => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Endpoint {
            port,
            state,
            mode,
            gate,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/oauth2/introspect", self.port)
    }

    fn answer(&self, token: &str, answer: Value) {
        let mut state = self.state.lock().expect("state");
        state.answers.insert(token.into(), answer);
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("state").calls.clone()
    }

    /// Calls about `token` so far.
    fn calls_for(&self, token: &str) -> usize {
        let calls = self.calls();
        calls
            .iter()
            .filter(|c| c.form.get("token").map(String::as_str) == Some(token))
            .count()
    }

    fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn hold(&self, closed: bool) {
        self.gate.send_replace(!closed);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `a=b&c=d` with `+` and `%XX` decoded.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1..i + 3)) {
                (b'%', Some(hex)) => {
                    let hex = std::str::from_utf8(hex).unwrap_or("zz");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// An answer for an active token that passes the `/billing` checks; `edit` changes some.
fn active(edit: impl FnOnce(&mut Value)) -> Value {
    let mut answer = json!({
        "active": true,
        "client_id": "acme-client",
        "scope": "billing:read billing:write",
        "aud": ["billing-api", "other-api"],
        "token_type": "Bearer",
        "exp": now() + 600,
    });
    edit(&mut answer);
    answer
}

/// The gateway: `/billing` (basic client auth, scopes, audience, consumers) and `/post` (post
/// client auth, the secret from a file, tokens from a cookie), both to an echo upstream.
fn gateway(
    endpoint: &Endpoint,
    up: &Upstream,
    admin: u16,
    extra: &str,
) -> (Gantry, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{POST_SECRET}\n")).expect("secret file");
    let g = Gantry::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
token = "{ADMIN_TOKEN}"
{extra}

[consumers.acme]
jwt_subject = "acme-client"

[clusters.billing]
backends = ["{up}"]

[routes.billing]
paths = ["/billing"]
cluster = "billing"
[routes.billing.plugins.oauth2-introspection]
introspection_url = "{url}"
client_id = "gantry"
client_secret = "{SECRET}"
client_auth = "basic"
required_scopes = ["billing:read"]
audiences = ["billing-api"]
consumer_claim = "client_id"
cache_ttl = "60s"
negative_cache_ttl = "60s"
timeout = "300ms"

[routes.post]
paths = ["/post"]
cluster = "billing"
[routes.post.plugins.oauth2-introspection]
introspection_url = "{url}"
client_id = "gantry-post"
client_secret_file = "{file}"
client_auth = "post"
sources = ["cookie:access_token"]
hide_credentials = true
"#,
        up = up.addr,
        url = endpoint.url(),
        file = secret_file.display(),
    ));
    wait_for_port(admin);
    (g, dir)
}

async fn call(g: &Gantry, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(g.url(path))
        .bearer_auth(token)
        .header("x-consumer-name", "spoofed")
        .send()
        .await
        .expect("request")
}

async fn refused_token(g: &Gantry, token: &str, detail: &str) {
    let resp = call(g, "/billing", token).await;
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body = assert_problem(resp, 401, "invalid-token").await;
    assert_eq!(body["detail"], detail);
}

/// Neither the client secrets nor any of `tokens` appear in the gateway's output or in
/// `GET /config`.
async fn assert_no_secrets(g: &Gantry, admin: u16, tokens: &[&str]) {
    let config = client()
        .get(format!("http://127.0.0.1:{admin}/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("config")
        .text()
        .await
        .expect("body");
    assert!(config.contains("client_secret"), "{config}");
    let log = g.log();
    for secret in [SECRET, POST_SECRET].iter().chain(tokens) {
        assert!(
            !config.contains(secret),
            "GET /config shows {secret}: {config}"
        );
        assert!(!log.contains(secret), "the log shows {secret}: {log}");
    }
}

#[tokio::test]
async fn introspected_tokens_are_checked_cached_and_mapped_to_consumers() {
    let endpoint = Endpoint::start().await;
    let up = Upstream::start("billing").await;
    let collector = Recorder::start().await;
    let admin = free_port();
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0\n",
        collector.addr
    );
    let (g, _dir) = gateway(&endpoint, &up, admin, &tracing);

    // An active token: through, with its consumer; the second request asks nobody.
    endpoint.answer("tok-good", active(|_| {}));
    for _ in 0..2 {
        let resp = client()
            .get(g.url("/billing/invoices"))
            .bearer_auth("tok-good")
            .header("x-consumer-name", "spoofed")
            .header("traceparent", PARENT)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.expect("echo");
        assert_eq!(echo["headers"]["x-consumer-name"], "acme", "{echo}");
        assert_eq!(echo["headers"]["authorization"], "Bearer tok-good");
    }
    assert_eq!(endpoint.calls_for("tok-good"), 1, "the answer is cached");

    // The call: basic client authentication, the token in the form, the trace continued.
    let first = &endpoint.calls()[0];
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gantry:{SECRET}"));
    assert_eq!(
        first.headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert_eq!(
        first.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(first.form["token_type_hint"], "access_token");
    assert!(!first.form.contains_key("client_secret"));
    let traceparent = first.headers["traceparent"].to_str().expect("ascii");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && !traceparent.contains("00f067aa0ba902b7"),
        "the call is a span of the client's trace: {traceparent}"
    );

    // Refusals: inactive (cached as well), expired although active, audience, scope, consumer.
    endpoint.answer("tok-expired", active(|a| a["exp"] = json!(now() - 10)));
    endpoint.answer("tok-audience", active(|a| a["aud"] = json!("other-api")));
    endpoint.answer("tok-scope", active(|a| a["scope"] = json!("billing:write")));
    endpoint.answer("tok-stranger", active(|a| a["client_id"] = json!("nobody")));
    for _ in 0..2 {
        refused_token(&g, "tok-revoked", "the token is not active").await;
    }
    assert_eq!(
        endpoint.calls_for("tok-revoked"),
        1,
        "negative answers are cached"
    );
    refused_token(&g, "tok-expired", "the token has expired").await;
    refused_token(&g, "tok-audience", "the token's audience is not accepted").await;
    let resp = call(&g, "/billing", "tok-scope").await;
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("billing:read"),
        "{challenge}"
    );
    assert_problem(resp, 403, "insufficient-scope").await;
    assert_problem(
        call(&g, "/billing", "tok-stranger").await,
        401,
        "unknown-consumer",
    )
    .await;
    let resp = client()
        .get(g.url("/billing"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"gantry\""
    );
    assert_problem(resp, 401, "missing-credentials").await;
    assert_eq!(
        endpoint.calls().len(),
        6,
        "one call per token, none without one"
    );

    // Post client authentication with the secret from its file; the cookie is not forwarded.
    endpoint.answer("tok-cookie", active(|_| {}));
    let resp = client()
        .get(g.url("/post"))
        .header("cookie", "theme=dark; access_token=tok-cookie")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.expect("echo");
    assert_eq!(echo["headers"]["cookie"], "theme=dark", "{echo}");
    let posted = endpoint
        .calls()
        .into_iter()
        .find(|c| c.form.get("token").map(String::as_str) == Some("tok-cookie"))
        .expect("the cookie's token was introspected");
    assert_eq!(posted.form["client_id"], "gantry-post");
    assert_eq!(posted.form["client_secret"], POST_SECRET);
    assert!(posted.headers.get("authorization").is_none());

    let tokens = [
        "tok-good",
        "tok-revoked",
        "tok-expired",
        "tok-scope",
        "tok-cookie",
    ];
    assert_no_secrets(&g, admin, &tokens).await;
}

#[tokio::test]
async fn concurrent_requests_with_one_token_share_one_call_and_answers_end_at_exp() {
    let endpoint = Endpoint::start().await;
    let up = Upstream::start("billing").await;
    let admin = free_port();
    let (g, _dir) = gateway(&endpoint, &up, admin, "");
    endpoint.answer("tok-shared", active(|_| {}));

    // The endpoint holds its answer until every request is in: they all wait on one call.
    const N: usize = 8;
    endpoint.hold(true);
    let requests: Vec<_> = (0..N)
        .map(|_| {
            let url = g.url("/billing");
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth("tok-shared")
                    .send()
                    .await
                    .expect("request")
                    .status()
            })
        })
        .collect();
    eventually("the first request asks the endpoint", || async {
        (endpoint.calls_for("tok-shared") >= 1).then_some(())
    })
    .await;
    eventually("every request is connected", || async {
        let metrics = admin_metrics(admin).await;
        let active = metrics
            .lines()
            .find_map(|l| l.strip_prefix("gantry_connections_active "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        (active >= N).then_some(())
    })
    .await;
    endpoint.hold(false);
    for request in requests {
        assert_eq!(request.await.expect("joined"), 200);
    }
    assert_eq!(
        endpoint.calls_for("tok-shared"),
        1,
        "one call for {N} requests"
    );

    // A positive answer is never reused past the token's exp, whatever cache_ttl says.
    let exp = now() + 2;
    endpoint.answer("tok-short", active(|a| a["exp"] = json!(exp)));
    assert_eq!(call(&g, "/billing", "tok-short").await.status(), 200);
    eventually("the token expires", || async {
        let resp = call(&g, "/billing", "tok-short").await;
        (resp.status() == 401).then_some(resp)
    })
    .await;
    assert!(now() >= exp, "refused only once expired");
    assert_eq!(endpoint.calls_for("tok-short"), 2, "asked again after exp");
}

#[tokio::test]
async fn a_failing_endpoint_leaves_cached_answers_working_and_other_tokens_get_503() {
    let endpoint = Endpoint::start().await;
    let up = Upstream::start("billing").await;
    let admin = free_port();
    let (g, _dir) = gateway(&endpoint, &up, admin, "");
    endpoint.answer("tok-cached", active(|_| {}));
    assert_eq!(call(&g, "/billing", "tok-cached").await.status(), 200);

    let failures = [
        ("5xx", Mode::Status(500)),
        ("401 to the gateway", Mode::Status(401)),
        ("not json", Mode::NotJson),
        ("no active", Mode::NoActive),
        ("timeout", Mode::Hang),
    ];
    for (i, (what, mode)) in failures.into_iter().enumerate() {
        endpoint.set_mode(mode);
        let token = format!("tok-uncached-{i}");
        endpoint.answer(&token, active(|_| {}));
        let body = assert_problem(
            call(&g, "/billing", &token).await,
            503,
            "introspection-unavailable",
        )
        .await;
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.contains(&token)),
            "{what}"
        );
        assert_eq!(
            call(&g, "/billing", "tok-cached").await.status(),
            200,
            "{what}"
        );
    }
    // Failures are not cached: the endpoint is asked again once it works.
    endpoint.set_mode(Mode::Answer);
    assert_eq!(call(&g, "/billing", "tok-uncached-0").await.status(), 200);

    // Down altogether.
    drop(endpoint);
    assert_problem(
        call(&g, "/billing", "tok-never-seen").await,
        503,
        "introspection-unavailable",
    )
    .await;
    assert_eq!(call(&g, "/billing", "tok-cached").await.status(), 200);
    let log = g.log();
    assert!(
        log.contains("introspection endpoint http://127.0.0.1:"),
        "{log}"
    );
    assert_no_secrets(
        &g,
        admin,
        &["tok-cached", "tok-uncached-1", "tok-never-seen"],
    )
    .await;
}

#[test]
fn introspection_configuration_errors_name_the_key_and_never_the_secret() {
    let route = |table: &str| {
        format!(
            "[routes.r]\npaths = [\"/\"]\nrespond = {{ body = \"x\" }}\n\
             [routes.r.plugins.oauth2-introspection]\n{table}\n"
        )
    };
    let (ok, out) = check_config(&route(&format!(
        "introspection_url = \"http://idp.example/introspect\"\nclient_id = \"g\"\n\
         client_secret = \"{SECRET}\""
    )));
    assert!(
        !ok && out.contains("`introspection_url` must be https://"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    let (ok, out) = check_config(&route(&format!(
        "introspection_url = \"https://idp.example/introspect\"\nclient_id = \"g\"\n\
         client_secret = \"{SECRET}\"\nclient_secret_file = \"/run/secret\""
    )));
    assert!(
        !ok && out.contains("exactly one of `client_secret`"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    // The authorization server is only asked once requests come: -t needs none.
    let (ok, out) = check_config(&route(&format!(
        "introspection_url = \"https://idp.invalid/introspect\"\nclient_id = \"g\"\n\
         client_secret = \"{SECRET}\"\nclient_auth = \"post\""
    )));
    assert!(ok, "{out}");
}
