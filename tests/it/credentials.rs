//! Credentials at the edge: ambiguous copies refused (raw bytes), jwt-auth's
//! `hide_credentials`, the `any_audience` rule, `max_failures` lockouts and fair password checks.

use crate::common::{assert_problem, check_config, client, Gantry, Upstream};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const KEY: &str = "alice-key-123";

/// An HS256 token for `sub`, valid for ten minutes.
fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    encode(
        &Header::default(),
        &json!({ "sub": sub, "exp": now + 600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// An argon2 hash of `password`.
fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"gantry-test-salt").expect("salt");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Sends `target` with `headers` as raw bytes and returns the status and the body.
async fn raw(g: &Gantry, target: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(("127.0.0.1", g.port))
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let head = head.to_ascii_lowercase();
    let body = if head.contains("content-type: application/problem+json") {
        let problem: Value = serde_json::from_str(body).expect("problem JSON");
        let request_id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("x-request-id");
        assert_eq!(problem["request_id"], request_id);
        problem
    } else {
        Value::Null
    };
    (status, body)
}

#[tokio::test]
async fn credentials_sent_twice_or_in_two_places_are_refused() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&format!(
        r#"
[consumers.alice]
keys = ["{KEY}"]
password = "{hash}"

[clusters.echo]
backends = ["{up}"]

[routes.key]
paths = ["/key"]
cluster = "echo"
[routes.key.plugins.key-auth]
sources = ["header:x-api-key", "query:api_key"]

[routes.basic]
paths = ["/basic"]
cluster = "echo"
[routes.basic.plugins.basic-auth]

[routes.jwt]
paths = ["/jwt"]
cluster = "echo"
[routes.jwt.plugins.jwt-auth]
algorithms = ["HS256"]
secret = "{SECRET}"
token_sources = ["header:authorization", "cookie:token", "query:token"]
"#,
        hash = argon2_hash("s3cret"),
        up = up.addr,
    ));
    let valid = token("alice");
    let forged = token("mallory");
    let bearer = format!("Bearer {valid}");
    let other_bearer = format!("Bearer {forged}");
    let cookie = format!("token={valid}");
    let two_cookies = format!("token={valid}; token={forged}");
    let other_cookie = format!("token={forged}");
    let password = basic("alice", "s3cret");
    let other_password = basic("mallory", "guess");
    let query_twice = format!("/jwt?token={valid}&token={forged}");
    let in_query = format!("/jwt?token={valid}");

    let accepted: &[(&str, &[(&str, &str)])] = &[
        ("/key", &[("x-api-key", KEY)]),
        ("/key?api_key=alice-key-123", &[]),
        ("/basic", &[("authorization", &password)]),
        ("/jwt", &[("authorization", &bearer)]),
        (in_query.as_str(), &[]),
        // HTTP/2 splits cookies into fields; distinct names in two fields are one token.
        ("/jwt", &[("cookie", &cookie), ("cookie", "theme=dark")]),
    ];
    for (target, headers) in accepted {
        let (status, body) = raw(&g, target, headers).await;
        assert_eq!(status, 200, "{target} {headers:?}: {body}");
    }
    let ambiguous: &[(&str, &[(&str, &str)])] = &[
        ("/key", &[("x-api-key", KEY), ("x-api-key", "forged-key-1")]),
        ("/key?api_key=alice-key-123", &[("x-api-key", KEY)]),
        ("/key?api_key=alice-key-123&api_key=forged-key-1", &[]),
        ("/key?api_key=alice-key-123&api%5Fkey=forged-key-1", &[]),
        (
            "/basic",
            &[
                ("authorization", &password),
                ("authorization", &other_password),
            ],
        ),
        (
            "/jwt",
            &[("authorization", &bearer), ("authorization", &other_bearer)],
        ),
        ("/jwt", &[("authorization", &bearer), ("cookie", &cookie)]),
        (query_twice.as_str(), &[]),
        ("/jwt", &[("cookie", &two_cookies)]),
        ("/jwt", &[("cookie", &cookie), ("cookie", &other_cookie)]),
    ];
    for (target, headers) in ambiguous {
        let (status, body) = raw(&g, target, headers).await;
        assert_eq!(status, 400, "{target} {headers:?}: {body}");
        assert_eq!(
            body["type"], "urn:gantry:problem:ambiguous-credentials",
            "{target} {headers:?}"
        );
    }
    assert_eq!(
        up.hits(),
        accepted.len(),
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn jwt_hide_credentials_removes_the_token_wherever_it_was_read() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start(&format!(
        r#"
[clusters.echo]
backends = ["{up}"]

[routes.hidden]
paths = ["/hidden"]
cluster = "echo"
[routes.hidden.plugins.jwt-auth]
algorithms = ["HS256"]
secret = "{SECRET}"
token_sources = ["header:authorization", "cookie:token", "query:token"]
hide_credentials = true

[routes.shown]
paths = ["/shown"]
cluster = "echo"
[routes.shown.plugins.jwt-auth]
algorithms = ["HS256"]
secret = "{SECRET}"
"#,
        up = up.addr,
    ));
    let t = token("alice");
    let echo = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.expect("echo")
    };

    let bearer = format!("Bearer {t}");
    let seen = echo(g.get("/hidden", &[("authorization", &bearer)]).await).await;
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");

    let cookies = format!("theme=dark; token={t}; lang=en");
    let seen = echo(g.get("/hidden", &[("cookie", &cookies)]).await).await;
    assert_eq!(seen["headers"]["cookie"], "theme=dark; lang=en");

    let seen = echo(g.get(&format!("/hidden/x?page=2&token={t}"), &[]).await).await;
    assert_eq!(seen["uri"], "/hidden/x?page=2");
    assert!(!seen.to_string().contains(&t), "{seen}");

    // The default keeps the token, for backends that read it themselves.
    let seen = echo(g.get("/shown", &[("authorization", &bearer)]).await).await;
    assert_eq!(seen["headers"]["authorization"], bearer.as_str());
}

#[test]
fn jwks_url_without_audiences_needs_any_audience() {
    let config = |extra: &str| {
        format!(
            "[routes.r]\npaths = [\"/\"]\nrespond = {{}}\n\
             [routes.r.plugins.jwt-auth]\nalgorithms = [\"RS256\"]\n\
             jwks_url = \"https://idp.example.com/jwks\"\n{extra}"
        )
    };
    let (ok, out) = check_config(&config(""));
    assert!(!ok, "{out}");
    assert!(
        out.contains("`routes.r.plugins.jwt-auth`")
            && out.contains("`jwks_url` needs `audiences`")
            && out.contains("any_audience = true"),
        "{out}"
    );
    let (ok, out) = check_config(&config("any_audience = true\n"));
    assert!(ok, "{out}");
    let (ok, out) = check_config(&config("audiences = [\"users-api\"]\n"));
    assert!(ok, "{out}");
    let (ok, out) = check_config(&config("audiences = [\"a\"]\nany_audience = true\n"));
    assert!(!ok && out.contains("not both"), "{out}");
    let (ok, out) = check_config(&config(
        "any_audience = true\nmax_failures = { count = 0, per = \"1m\" }\n",
    ));
    assert!(
        !ok && out.contains("`max_failures.count` must be at least 1"),
        "{out}"
    );
    let (ok, out) = check_config(&config(
        "any_audience = true\nmax_failures = { count = 3, every = \"1m\" }\n",
    ));
    assert!(
        !ok && out.contains("`routes.r.plugins.jwt-auth.max_failures.every`: unknown key `every`"),
        "{out}"
    );
}

#[tokio::test]
async fn repeated_failures_from_one_client_end_in_429_for_every_plugin() {
    let up = Upstream::start("echo").await;
    let g = Gantry::start_with(
        "trusted_proxies = [\"127.0.0.1\"]",
        &format!(
            r#"
[consumers.alice]
keys = ["{KEY}"]
password = "{hash}"
jwt_subject = "alice"

[clusters.echo]
backends = ["{up}"]

[routes.key]
paths = ["/key"]
cluster = "echo"
[routes.key.plugins.key-auth]
max_failures = {{ count = 10, per = "1m" }}

[routes.basic]
paths = ["/basic"]
cluster = "echo"
[routes.basic.plugins.basic-auth]
max_failures = {{ count = 3, per = "1m" }}

[routes.jwt]
paths = ["/jwt"]
cluster = "echo"
[routes.jwt.plugins.jwt-auth]
algorithms = ["HS256"]
secret = "{SECRET}"
consumer_claim = "sub"
max_failures = {{ count = 3, per = "1m" }}
"#,
            hash = argon2_hash("s3cret"),
            up = up.addr,
        ),
    );
    let bad_token = format!("Bearer {}x", token("alice"));
    let good_token = format!("Bearer {}", token("alice"));
    #[allow(clippy::type_complexity)]
    let cases: [(&str, usize, usize, (&str, String), (&str, String)); 3] = [
        (
            "/key",
            10,
            30,
            ("x-api-key", "wrong-key-1".into()),
            ("x-api-key", KEY.into()),
        ),
        (
            "/basic",
            3,
            6,
            ("authorization", basic("alice", "wrong")),
            ("authorization", basic("alice", "s3cret")),
        ),
        (
            "/jwt",
            3,
            6,
            ("authorization", bad_token),
            ("authorization", good_token),
        ),
    ];
    // `count` wrong attempts from one client get 401, then every attempt from it gets 429.
    let c = client();
    for (path, count, attempts, (wrong_name, wrong), (right_name, right)) in &cases {
        let send = |ip: &str, name: &str, value: &str| {
            c.get(g.url(path))
                .header("x-forwarded-for", ip)
                .header(name, value)
                .send()
        };
        for i in 0..*attempts {
            let resp = send("198.51.100.1", wrong_name, wrong)
                .await
                .expect("request");
            if i < *count {
                assert_eq!(resp.status(), 401, "{path} attempt {i}");
                continue;
            }
            let retry_after: u64 = resp.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&retry_after), "{path}: {retry_after}");
            assert_problem(resp, 429, "too-many-failures").await;
        }
        // Refused before any verification: the right credentials do not help this client.
        let resp = send("198.51.100.1", right_name, right)
            .await
            .expect("request");
        assert_problem(resp, 429, "too-many-failures").await;
        let resp = send("203.0.113.9", right_name, right)
            .await
            .expect("request");
        assert_eq!(
            resp.status(),
            200,
            "{path}: another client is not locked out"
        );
    }
    assert_eq!(up.hits(), cases.len());
}

#[tokio::test]
async fn one_clients_login_flood_does_not_fail_another_clients_login() {
    let hash = argon2_hash("s3cret");
    let users = ["carol", "dave", "erin"];
    let consumers: String = users
        .iter()
        .map(|u| format!("[consumers.{u}]\npassword = \"{hash}\"\n"))
        .collect();
    let up = Upstream::start("echo").await;
    let g = Arc::new(Gantry::start_with(
        "trusted_proxies = [\"127.0.0.1\"]",
        &format!(
            "{consumers}[clusters.echo]\nbackends = [\"{}\"]\n\
             [routes.ops]\npaths = [\"/ops\"]\ncluster = \"echo\"\n\
             [routes.ops.plugins.basic-auth]\n",
            up.addr
        ),
    ));

    // 64 concurrent wrong logins at a time from one address, each with a new password (so
    // each costs a hash), until the other client is done.
    let stop = Arc::new(AtomicBool::new(false));
    let (refused, over_share) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let saturated = Arc::new(Notify::new());
    let mut flood = JoinSet::new();
    for task in 0..64 {
        let (g, stop, refused, over_share, saturated) = (
            Arc::clone(&g),
            Arc::clone(&stop),
            Arc::clone(&refused),
            Arc::clone(&over_share),
            Arc::clone(&saturated),
        );
        flood.spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let resp = c
                    .get(g.url("/ops"))
                    .header("x-forwarded-for", "198.51.100.1")
                    .header(
                        "authorization",
                        basic("carol", &format!("guess-{task}-{i}")),
                    )
                    .send()
                    .await
                    .expect("flood request");
                match resp.status().as_u16() {
                    401 => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    429 => {
                        assert_problem(resp, 429, "too-many-password-checks").await;
                        over_share.fetch_add(1, Ordering::SeqCst);
                        saturated.notify_one();
                    }
                    other => panic!("flood got {other}"),
                }
            }
        });
    }
    // Once the flooder is past its share, the other client logs in, three times as three users
    // (each a fresh hash, none answered from the verification cache).
    saturated.notified().await;
    let c = client();
    for user in users {
        let resp = c
            .get(g.url("/ops"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("authorization", basic(user, "s3cret"))
            .send()
            .await
            .expect("login");
        assert_eq!(resp.status(), 200, "{user}'s login during the flood");
        let echo: Value = resp.json().await.expect("echo");
        assert_eq!(echo["headers"]["x-consumer-name"], user);
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = flood.join_next().await {
        done.expect("flood task");
    }
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the flood's guesses were checked"
    );
    assert!(over_share.load(Ordering::SeqCst) > 0);
}
