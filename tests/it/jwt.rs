//! `jwt-auth` through the real gateway, with a real JWKS server on loopback, and OIDC
//! discovery against a real OpenID configuration.

use crate::common::{assert_problem, check_config, client, eventually, Gantry, Upstream};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_file(name)).expect("rsa key")
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims that pass every check of the `/api` route; `edit` changes some.
fn claims(edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "iss": "https://idp.test/",
        "aud": "users-api",
        "sub": "alice@example.com",
        "tenant": "acme",
        "scope": "openid users:read",
        "iat": now(),
        "exp": now() + 600,
        "jti": format!("{:?}", std::time::Instant::now()),
    });
    edit(&mut c);
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    encode(&header, claims, key).expect("sign")
}

/// What an [`IdpServer`] answers on one path, and how often it was asked.
#[derive(Default)]
struct Documents {
    by_path: HashMap<String, (u16, String)>,
    hits: HashMap<String, usize>,
}

/// An identity provider whose documents (a JWKS at `/jwks`, an OpenID configuration) the test
/// changes; other paths get 404.
struct IdpServer {
    port: u16,
    documents: Arc<Mutex<Documents>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdpServer {
    async fn start(set: &JwkSet) -> IdpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let documents = Arc::new(Mutex::new(Documents::default()));
        let shared = Arc::clone(&documents);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let path = req.uri().path().to_string();
                        let (status, body) = {
                            let mut documents = shared.lock().expect("lock");
                            *documents.hits.entry(path.clone()).or_default() += 1;
                            documents
                                .by_path
                                .get(&path)
                                .cloned()
                                .unwrap_or((404, String::new()))
                        };
                        async move {
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let idp = IdpServer {
            port,
            documents,
            task,
        };
        idp.set(200, set);
        idp
    }

    /// Answers `/jwks` with `status` and `set`.
    fn set(&self, status: u16, set: &JwkSet) {
        self.serve("/jwks", status, &serde_json::to_string(set).expect("json"));
    }

    /// Answers `path` with `status` and `body`.
    fn serve(&self, path: &str, status: u16, body: &str) {
        let mut documents = self.documents.lock().expect("lock");
        documents
            .by_path
            .insert(path.to_string(), (status, body.to_string()));
    }

    /// Requests for `path` so far.
    fn hits(&self, path: &str) -> usize {
        let documents = self.documents.lock().expect("lock");
        documents.hits.get(path).copied().unwrap_or(0)
    }
}

impl Drop for IdpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn call(g: &Gantry, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(g.url(path)).header("x-user-id", "spoofed");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

async fn refused(g: &Gantry, path: &str, token: &str, detail: &str) {
    let resp = call(g, path, Some(token)).await;
    let Some(challenge) = resp.headers().get("www-authenticate").cloned() else {
        let status = resp.status();
        panic!(
            "{path} `{detail}`: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    };
    let challenge = challenge.to_str().expect("ascii").to_string();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body = assert_problem(resp, 401, "invalid-token").await;
    assert_eq!(body["detail"], detail);
}

/// The gateway of the jwt tests: an RS256/ES256 route against a JWKS server, an HS256
/// route, a PEM-key route reading cookies and the query, and an anonymous route.
struct JwtSetup {
    g: Gantry,
    jwks: IdpServer,
    _up: Upstream,
    rsa1: EncodingKey,
    rsa2: EncodingKey,
    ec1: EncodingKey,
}

async fn jwt_setup() -> JwtSetup {
    let (rsa1, rsa2) = (rsa("rsa1.key"), rsa("rsa2.key"));
    let ec1 = EncodingKey::from_ec_pem(&key_file("ec1.key")).expect("ec key");
    let jwks = IdpServer::start(&JwkSet {
        keys: vec![
            jwk(&rsa1, Algorithm::RS256, "k1"),
            jwk(&ec1, Algorithm::ES256, "e1"),
        ],
    })
    .await;
    let up = Upstream::start("users").await;
    let g = Gantry::start(&format!(
        r#"
[consumers.alice]
jwt_subject = "alice@example.com"

[clusters.users]
backends = ["{up}"]

[routes.api]
paths = ["/api"]
cluster = "users"
[routes.api.plugins.jwt-auth]
algorithms = ["RS256", "ES256"]
issuer = "https://idp.test/"
audiences = ["users-api"]
jwks_url = "http://127.0.0.1:{jwks}/jwks"
leeway = "5s"
required_scopes = ["users:read"]
required_claims = {{ tenant = "acme" }}
consumer_claim = "sub"
forward_claims = {{ "x-user-id" = "sub", "x-tenant" = "tenant" }}

[routes.hs]
paths = ["/hs"]
respond = {{ body = "hs" }}
[routes.hs.plugins.jwt-auth]
algorithms = ["HS256"]
secret = "{SECRET}"

[routes.pem]
paths = ["/pem"]
respond = {{ body = "pem" }}
[routes.pem.plugins.jwt-auth]
algorithms = ["RS256"]
public_key_file = "{FIXTURES}/rsa1.pub"
token_sources = ["cookie:auth_token", "query:access_token"]

[routes.anon]
paths = ["/anon"]
respond = {{ body = "anon" }}
[routes.anon.plugins.jwt-auth]
algorithms = ["RS256"]
public_key_file = "{FIXTURES}/rsa1.pub"
anonymous = true
"#,
        up = up.addr,
        jwks = jwks.port,
    ));
    JwtSetup {
        g,
        jwks,
        _up: up,
        rsa1,
        rsa2,
        ec1,
    }
}

#[tokio::test]
async fn jwt_tokens_are_verified_claims_checked_and_consumers_mapped() {
    // Named bindings keep the JWKS server and the upstream alive (`..` would drop them here).
    let JwtSetup {
        g,
        jwks: _jwks,
        _up,
        rsa1,
        ec1,
        ..
    } = jwt_setup().await;

    // Valid RS256 and ES256 tokens; claims forwarded, spoofed copies replaced, consumer mapped.
    let token = sign(Algorithm::RS256, Some("k1"), &rsa1, &claims(|_| {}));
    for _ in 0..2 {
        let echo: Value = call(&g, "/api/me", Some(&token))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(echo["headers"]["x-user-id"], "alice@example.com", "{echo}");
        assert_eq!(echo["headers"]["x-tenant"], "acme");
        assert_eq!(echo["headers"]["x-consumer-name"], "alice");
    }
    let es = sign(Algorithm::ES256, Some("e1"), &ec1, &claims(|_| {}));
    assert_eq!(call(&g, "/api", Some(&es)).await.status(), 200);

    // Missing token.
    let resp = call(&g, "/api", None).await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"gantry\""
    );
    assert_problem(resp, 401, "missing-credentials").await;

    // alg=none, and HS256 signed with the RSA public key as the secret (key confusion).
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(|_| {}))
    );
    refused(
        &g,
        "/api",
        &none,
        "the token is malformed or its algorithm is not supported",
    )
    .await;
    let confused = sign(
        Algorithm::HS256,
        Some("k1"),
        &EncodingKey::from_secret(&key_file("rsa1.pub")),
        &claims(|_| {}),
    );
    refused(
        &g,
        "/api",
        &confused,
        "the token's algorithm is not allowed",
    )
    .await;

    // Time, issuer, audience and integrity.
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["exp"] = json!(now() - 60)),
    );
    refused(&g, "/api", &t, "the token has expired").await;
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["nbf"] = json!(now() + 600)),
    );
    refused(&g, "/api", &t, "the token is not valid yet").await;
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["iss"] = json!("https://evil.test/")),
    );
    refused(&g, "/api", &t, "the token's issuer is not accepted").await;
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["aud"] = json!("other-api")),
    );
    refused(&g, "/api", &t, "the token's audience is not accepted").await;
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| {
            c.as_object_mut().map(|o| o.remove("aud"));
        }),
    );
    refused(&g, "/api", &t, "the token has no audience (aud)").await;
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&claims(|c| c["sub"] = json!("admin"))),
        parts[2]
    );
    refused(&g, "/api", &tampered, "the token's signature is not valid").await;

    // Authorization: scopes, claims, consumers.
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["scope"] = json!("openid")),
    );
    let resp = call(&g, "/api", Some(&t)).await;
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap_or_default()
        .contains("insufficient_scope"));
    assert_problem(resp, 403, "insufficient-scope").await;
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["tenant"] = json!("other")),
    );
    assert_problem(call(&g, "/api", Some(&t)).await, 403, "claim-mismatch").await;
    let t = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["sub"] = json!("nobody@example.com")),
    );
    assert_problem(call(&g, "/api", Some(&t)).await, 401, "unknown-consumer").await;
}

#[tokio::test]
async fn a_rotated_jwks_is_fetched_and_the_last_good_keys_outlive_the_idp() {
    let JwtSetup {
        g,
        jwks,
        _up,
        rsa1,
        rsa2,
        ..
    } = jwt_setup().await;
    // Key rotation: a kid the cached set lacks makes the gateway fetch the JWKS again.
    jwks.set(
        200,
        &JwkSet {
            keys: vec![
                jwk(&rsa1, Algorithm::RS256, "k1"),
                jwk(&rsa2, Algorithm::RS256, "k2"),
            ],
        },
    );
    // Refetches are at most one a second: the first tries may still see the old set.
    let rotated = sign(Algorithm::RS256, Some("k2"), &rsa2, &claims(|_| {}));
    eventually("the rotated key is fetched", || async {
        (call(&g, "/api", Some(&rotated)).await.status() == 200).then_some(())
    })
    .await;

    // The IdP goes down: the last good keys keep working for new tokens.
    jwks.set(503, &JwkSet { keys: vec![] });
    // A lower bound, not a wait for an event: past the one-second refetch interval, so the
    // unknown kid below does make the gateway ask the failing IdP.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = sign(Algorithm::RS256, Some("k9"), &rsa2, &claims(|_| {}));
    refused(&g, "/api", &unknown, "the token's signing key is unknown").await;
    let fresh = sign(Algorithm::RS256, Some("k1"), &rsa1, &claims(|_| {}));
    assert_eq!(call(&g, "/api", Some(&fresh)).await.status(), 200);
}

#[tokio::test]
async fn hs256_pem_keys_token_sources_anonymous_access_and_websockets() {
    let JwtSetup {
        g,
        jwks: _jwks,
        _up,
        rsa1,
        ..
    } = jwt_setup().await;
    // HS256 with a shared secret.
    let hs = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(|_| {}),
    );
    assert_eq!(call(&g, "/hs", Some(&hs)).await.status(), 200);
    let wrong = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        &claims(|_| {}),
    );
    refused(&g, "/hs", &wrong, "the token's signature is not valid").await;

    // A PEM public key, tokens from a cookie or the query; anonymous access.
    let t = sign(Algorithm::RS256, None, &rsa1, &claims(|_| {}));
    let resp = client()
        .get(g.url("/pem"))
        .header("cookie", format!("a=b; auth_token={t}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(g.url(&format!("/pem?access_token={t}")))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_problem(call(&g, "/pem", None).await, 401, "missing-credentials").await;
    assert_eq!(call(&g, "/anon", None).await.status(), 200);
    // Anonymous access never excuses a bad token (here one signed with the public key).
    let confused = sign(
        Algorithm::HS256,
        Some("k1"),
        &EncodingKey::from_secret(&key_file("rsa1.pub")),
        &claims(|_| {}),
    );
    refused(
        &g,
        "/anon",
        &confused,
        "the token's algorithm is not allowed",
    )
    .await;

    // WebSocket upgrades are authenticated too.
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/api/ws", g.port)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        Err(e) => panic!("unexpected upgrade error: {e}"),
        Ok(_) => panic!("an unauthenticated upgrade went through"),
    }
}

// OIDC discovery: the keys found through the issuer's OpenID configuration.

const CONFIGURATION: &str = "/.well-known/openid-configuration";

/// An identity provider on loopback whose OpenID configuration names `issuer` (its own when
/// `None`) and `jwks_uri` (its own `/jwks` when `None`); the JWKS holds `key` as `k1`.
async fn discoverable(
    key: &EncodingKey,
    issuer: Option<&str>,
    jwks_uri: Option<&str>,
) -> IdpServer {
    let idp = IdpServer::start(&JwkSet {
        keys: vec![jwk(key, Algorithm::RS256, "k1")],
    })
    .await;
    let own = format!("http://127.0.0.1:{}/", idp.port);
    let document = json!({
        "issuer": issuer.unwrap_or(&own),
        "jwks_uri": jwks_uri.map_or(format!("{own}jwks"), String::from),
        "response_types_supported": ["code"],
    });
    idp.serve(CONFIGURATION, 200, &document.to_string());
    idp
}

fn discovery_route(name: &str, idp: &IdpServer) -> String {
    format!(
        "[routes.{name}]\npaths = [\"/{name}\"]\nrespond = {{ body = \"{name}\" }}\n\
         [routes.{name}.plugins.jwt-auth]\nalgorithms = [\"RS256\"]\n\
         issuer = \"http://127.0.0.1:{}/\"\naudiences = [\"users-api\"]\ndiscovery = true\n",
        idp.port
    )
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys_and_never_uses_a_document_of_another_issuer() {
    let rsa1 = rsa("rsa1.key");
    let good = discoverable(&rsa1, None, None).await;
    let mixed = discoverable(&rsa1, Some("https://evil.test/"), None).await;
    let insecure = discoverable(&rsa1, None, Some("http://keys.example/jwks")).await;
    let g = Gantry::start(&format!(
        "{}{}{}",
        discovery_route("users", &good),
        discovery_route("mixed", &mixed),
        discovery_route("insecure", &insecure)
    ));
    let token_of = |idp: &IdpServer| {
        let issuer = format!("http://127.0.0.1:{}/", idp.port);
        sign(
            Algorithm::RS256,
            Some("k1"),
            &rsa1,
            &claims(|c| c["iss"] = json!(issuer)),
        )
    };

    // Found on first use, then cached like a JWKS.
    assert_eq!(
        good.hits(CONFIGURATION),
        0,
        "nothing is fetched before a token comes"
    );
    let token = token_of(&good);
    for _ in 0..2 {
        let resp = call(&g, "/users", Some(&token)).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!((good.hits(CONFIGURATION), good.hits("/jwks")), (1, 1));
    let other = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa1,
        &claims(|c| c["iss"] = json!("https://evil.test/")),
    );
    refused(&g, "/users", &other, "the token's issuer is not accepted").await;

    // Mix-up: the document names another issuer, so none of its keys are ever fetched.
    let mixed_token = token_of(&mixed);
    refused(&g, "/mixed", &mixed_token, "no signing keys are available").await;
    assert_eq!(mixed.hits(CONFIGURATION), 1);
    assert_eq!(
        mixed.hits("/jwks"),
        0,
        "keys of a foreign document are never fetched"
    );
    eventually("the mix-up is logged", || async {
        g.log()
            .contains("names the issuer \"https://evil.test/\"")
            .then_some(())
    })
    .await;

    // A jwks_uri in the clear is refused like a jwks_url would be.
    refused(
        &g,
        "/insecure",
        &token_of(&insecure),
        "no signing keys are available",
    )
    .await;
    eventually("the plain jwks_uri is logged", || async {
        g.log()
            .contains("`jwks_uri` must be https://")
            .then_some(())
    })
    .await;
    let log = g.log();
    for token in [&token, &mixed_token] {
        assert!(!log.contains(token.as_str()), "{log}");
    }
}

#[test]
fn discovery_needs_no_identity_provider_at_load_and_checks_its_keys() {
    // `-t` and startup fetch nothing: an unreachable identity provider is fine.
    let dead = crate::common::dead_addr();
    let route = |table: &str| {
        format!(
            "[routes.r]\npaths = [\"/\"]\nrespond = {{ body = \"x\" }}\n\
             [routes.r.plugins.jwt-auth]\nalgorithms = [\"RS256\"]\naudiences = [\"a\"]\n{table}\n"
        )
    };
    let (ok, out) = check_config(&route(&format!(
        "issuer = \"http://{dead}/\"\ndiscovery = true"
    )));
    assert!(ok, "{out}");
    let (ok, out) = check_config(&route("discovery = true"));
    assert!(!ok && out.contains("needs `issuer`"), "{out}");
    let (ok, out) = check_config(&route(
        "issuer = \"https://idp.example/\"\ndiscovery = true\njwks_url = \"https://idp.example/jwks\"",
    ));
    assert!(!ok && out.contains("finds the keys itself"), "{out}");
    let (ok, out) = check_config(&route("issuer = \"http://idp.example/\"\ndiscovery = true"));
    assert!(!ok && out.contains("`issuer` must be https://"), "{out}");
}
