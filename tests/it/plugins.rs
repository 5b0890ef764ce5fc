//! The plugin system through the real gateway: global and per-route plugins, `enabled = false`,
//! and `ip-restriction` with trusted and untrusted forwarding headers.

use crate::common::{assert_problem, check_config, client, Gantry, Upstream};
use serde_json::Value;

const ROUTES: &str = r#"
[routes.guarded]
paths = ["/guarded"]
respond = { body = "guarded" }

[routes.open]
paths = ["/open"]
respond = { body = "open" }
[routes.open.plugins.ip-restriction]
enabled = false

[routes.office]
paths = ["/office"]
respond = { body = "office" }
[routes.office.plugins.ip-restriction]
allow = ["127.0.0.0/8"]
"#;

#[tokio::test]
async fn global_plugins_apply_unless_a_route_replaces_or_disables_them() {
    let g = Gantry::start(&format!(
        "[plugins.ip-restriction]\ndeny = [\"127.0.0.1\"]\n{ROUTES}"
    ));
    let resp = g.get("/guarded", &[]).await;
    assert_problem(resp, 403, "ip-forbidden").await;
    for (path, body) in [("/open", "open"), ("/office", "office")] {
        let resp = g.get(path, &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.expect("body"), body);
    }
    // Plugins also run for WebSocket upgrade requests.
    let upgrade =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/guarded", g.port)).await;
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("unexpected upgrade error: {e}"),
        Ok(_) => panic!("the upgrade was not refused"),
    }
}

#[tokio::test]
async fn client_ip_rules_follow_trusted_proxies_only() {
    let rule = "[plugins.ip-restriction]\nallow = [\"203.0.113.0/24\"]\n";
    let route = "[routes.all]\npaths = [\"/\"]\nrespond = { body = \"in\" }\n";

    // An untrusted client cannot claim an allowed address in X-Forwarded-For.
    let g = Gantry::start(&format!("{rule}{route}"));
    let resp = g.get("/", &[("x-forwarded-for", "203.0.113.5")]).await;
    assert_problem(resp, 403, "ip-forbidden").await;
    drop(g);

    // Through a trusted proxy, the forwarded client address is the one checked.
    let g = Gantry::start_with(
        "trusted_proxies = [\"127.0.0.1\"]",
        &format!("{rule}{route}"),
    );
    let resp = g.get("/", &[("x-forwarded-for", "203.0.113.5")]).await;
    assert_eq!(resp.status(), 200);
    let resp = g.get("/", &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_problem(resp, 403, "ip-forbidden").await;
}

#[test]
fn misspelt_or_misconfigured_plugins_fail_the_check() {
    let (ok, out) = check_config(
        "[plugins.ip-restrictoin]\ndeny = [\"10.0.0.0/8\"]\n\
         [routes.r]\npaths = [\"/\"]\nrespond = {}\n\
         [routes.r.plugins.ip-restriction]\nallow = [\"10.0.0.0/33\"]\n\
         [routes.s]\npaths = [\"/\"]\nrespond = {}\n\
         [routes.s.plugins.ip-restriction]\nalow = [\"10.0.0.0/8\"]\nenabled = \"no\"\n",
    );
    assert!(!ok, "{out}");
    for expected in [
        ":1:1: `plugins.ip-restrictoin`: unknown plugin `ip-restrictoin`",
        "did you mean `ip-restriction`?",
        "`routes.r.plugins.ip-restriction`: `10.0.0.0/33` is not an IP address or CIDR block",
        "`routes.s.plugins.ip-restriction.enabled`: `enabled` must be true or false",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

#[tokio::test]
async fn api_keys_identify_consumers_and_acl_limits_groups() {
    let up = Upstream::start("api").await;
    let g = Gantry::start(&format!(
        r#"
[consumers.alice]
groups = ["gold", "admins"]
keys = ["sha256:72ee9d4355ccb9d3a4c9dbf37382e38e75c1b1a225b5bd1f729ee91bbda30c20"]   # alice-key
[consumers.bob]
keys = ["bob-key-123"]

[clusters.api]
backends = ["{}"]

[routes.api]
paths = ["/api"]
cluster = "api"
[routes.api.plugins.key-auth]
sources = ["header:x-api-key", "query:api_key"]

[routes.admin]
paths = ["/admin"]
cluster = "api"
[routes.admin.plugins.key-auth]
[routes.admin.plugins.acl]
allow_groups = ["admins"]

[routes.visible]
paths = ["/visible"]
cluster = "api"
[routes.visible.plugins.key-auth]
hide_credentials = false

[routes.free]
paths = ["/free"]
cluster = "api"
"#,
        up.addr
    ));
    let c = client();
    let get = |path: &str, key: Option<&str>| {
        let mut req = c.get(g.url(path));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };

    let resp = get("/api", None).await.expect("request");
    assert_eq!(resp.headers()["www-authenticate"], "Key realm=\"gantry\"");
    assert_problem(resp, 401, "missing-credentials").await;
    let resp = get("/api", Some("wrong")).await.expect("request");
    let body = assert_problem(resp, 401, "invalid-credentials").await;
    assert!(!body.to_string().contains("wrong"), "the key is not echoed");

    let echo: Value = get("/api", Some("alice-key"))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["headers"]["x-consumer-name"], "alice");
    assert_eq!(echo["headers"]["x-consumer-groups"], "gold,admins");
    assert!(
        echo["headers"].get("x-api-key").is_none(),
        "key hidden from upstream"
    );

    let resp = g
        .get(
            "/api/items?api_key=bob-key-123&page=2",
            &[("x-consumer-name", "alice")],
        )
        .await;
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(echo["uri"], "/api/items?page=2");
    assert_eq!(echo["headers"]["x-consumer-name"], "bob");
    assert!(echo["headers"].get("x-consumer-groups").is_none());

    let resp = get("/admin", Some("bob-key-123")).await.expect("request");
    assert_problem(resp, 403, "consumer-forbidden").await;
    assert_eq!(
        get("/admin", Some("alice-key"))
            .await
            .expect("request")
            .status(),
        200
    );

    let echo: Value = get("/visible", Some("bob-key-123"))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["headers"]["x-api-key"], "bob-key-123");

    // Client-supplied consumer headers never reach the upstream.
    let resp = c
        .get(g.url("/free"))
        .header("x-consumer-name", "admin")
        .header("x-consumer-groups", "admins")
        .header("x_consumer_name", "admin")
        .send()
        .await
        .expect("request");
    let echo: Value = resp.json().await.expect("json");
    for h in ["x-consumer-name", "x-consumer-groups", "x_consumer_name"] {
        assert!(echo["headers"].get(h).is_none(), "{h} reached the upstream");
    }
}

#[tokio::test]
async fn basic_auth_checks_argon2_passwords() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"gantry-test-salt").expect("salt");
    let hash = argon2::Argon2::default()
        .hash_password(b"s3cret", &salt)
        .expect("hash")
        .to_string();
    let up = Upstream::start("ops").await;
    let g = Gantry::start(&format!(
        "[consumers.carol]\ngroups = [\"ops\"]\npassword = \"{hash}\"\n\
         [clusters.ops]\nbackends = [\"{}\"]\n\
         [routes.ops]\npaths = [\"/ops\"]\ncluster = \"ops\"\n\
         [routes.ops.plugins.basic-auth]\nrealm = \"operations\"\n",
        up.addr
    ));
    let c = client();
    let resp = g.get("/ops", &[]).await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"operations\", charset=\"UTF-8\""
    );
    assert_problem(resp, 401, "missing-credentials").await;
    for (user, password) in [("carol", "wrong"), ("mallory", "s3cret")] {
        let resp = c
            .get(g.url("/ops"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("request");
        assert_problem(resp, 401, "invalid-credentials").await;
    }
    // Twice: the second is answered from the verification cache.
    for _ in 0..2 {
        let resp = c
            .get(g.url("/ops"))
            .basic_auth("carol", Some("s3cret"))
            .send()
            .await
            .expect("request");
        let echo: Value = resp.json().await.expect("json");
        assert_eq!(echo["headers"]["x-consumer-name"], "carol");
        assert!(
            echo["headers"].get("authorization").is_none(),
            "password hidden from upstream"
        );
    }

    let (ok, out) = check_config("[consumers.dave]\npassword = \"hunter2\"\n");
    assert!(!ok);
    assert!(
        out.contains("consumers.dave.password") && out.contains("only argon2 hashes"),
        "{out}"
    );
}

#[tokio::test]
async fn body_limit_refuses_large_bodies_by_length_and_while_streaming() {
    let up = Upstream::start("uploads").await;
    let g = Gantry::start(&format!(
        "[clusters.up]\nbackends = [\"{}\"]\n[routes.upload]\npaths = [\"/upload\"]\ncluster = \"up\"\n\
         [routes.upload.plugins.body-limit]\nmax_body_size = \"1KiB\"\n",
        up.addr
    ));
    let post = |body: reqwest::Body| client().post(g.url("/upload")).body(body).send();

    // Within the limit: proxied whole.
    let resp = post(vec![b'a'; 1024].into()).await.expect("answered");
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.expect("echo");
    assert_eq!(echo["body"].as_str().map(str::len), Some(1024));

    // Declared too large: refused before anything goes upstream.
    let hits = up.hits();
    let resp = post(vec![b'a'; 1025].into()).await.expect("answered");
    let problem = assert_problem(resp, 413, "body-too-large").await;
    assert!(problem["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("1024"));
    assert_eq!(up.hits(), hits, "the upstream never saw it");

    // Chunked, without a length: refused once the running total passes the limit.
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 512]));
    let resp = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .await
        .expect("answered");
    assert_problem(resp, 413, "body-too-large").await;

    // A chunked body within the limit still goes through.
    let chunks = (0..2).map(|_| Ok::<_, std::io::Error>(vec![b'c'; 300]));
    let resp = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn cors_answers_preflights_itself_and_marks_only_allowed_origins() {
    let up = Upstream::start("api").await;
    let g = Gantry::start(&format!(
        r#"
[consumers.app]
keys = ["app-key-123456"]
[clusters.api]
backends = ["{}"]
[routes.api]
paths = ["/api"]
methods = ["GET", "POST", "PUT"]
cluster = "api"
[routes.api.plugins.key-auth]
[routes.api.plugins.cors]
allow_origins = ["https://app.example.com", "https://*.example.com"]
allow_methods = ["GET", "POST"]
allow_headers = ["authorization", "content-type", "x-api-key"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m"
"#,
        up.addr
    ));
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, g.url("/api"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
    };
    let vary_has_origin = |resp: &reqwest::Response| {
        resp.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap_or_default().contains("Origin"))
    };

    // Allowed (the route lists no OPTIONS: the preflight belongs to the POST it asks about).
    for origin in ["https://app.example.com", "https://eu.example.com"] {
        let resp = preflight(origin, "POST", "Content-Type, X-Api-Key")
            .await
            .expect("answered");
        assert_eq!(resp.status(), 204, "{origin}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, POST");
        assert_eq!(
            h["access-control-allow-headers"],
            "authorization, content-type, x-api-key"
        );
        assert_eq!(h["access-control-max-age"], "600");
        assert!(vary_has_origin(&resp));
    }
    assert_eq!(up.hits(), 0, "preflights are never forwarded");

    // Refused: another origin (never reflected), a method or a header not allowed.
    for (origin, method, headers) in [
        ("https://evil.com", "POST", "content-type"),
        ("https://example.com.evil.com", "GET", ""),
        ("https://app.example.com", "PUT", ""),
        ("https://app.example.com", "POST", "x-secret"),
    ] {
        let resp = preflight(origin, method, headers).await.expect("answered");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
        assert_problem(resp, 403, "cors-forbidden").await;
    }

    // A preflight for a method the route does not serve at all is the route's 405.
    let resp = preflight("https://app.example.com", "DELETE", "")
        .await
        .expect("answered");
    assert_problem(resp, 405, "method-not-allowed").await;

    // Actual requests: an allowed origin gets the headers, on success and on errors alike.
    let ok = g
        .get(
            "/api",
            &[
                ("origin", "https://app.example.com"),
                ("x-api-key", "app-key-123456"),
            ],
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        ok.headers()["access-control-expose-headers"],
        "x-request-id"
    );
    assert!(vary_has_origin(&ok));
    let denied = g
        .get("/api", &[("origin", "https://app.example.com")])
        .await;
    assert_eq!(
        denied.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "the browser can read the 401"
    );
    assert_problem(denied, 401, "missing-credentials").await;
    let other = g
        .get(
            "/api",
            &[
                ("origin", "https://evil.com"),
                ("x-api-key", "app-key-123456"),
            ],
        )
        .await;
    assert_eq!(other.status(), 200);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert!(vary_has_origin(&other));

    let (ok, text) =
        check_config("[plugins.cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n");
    assert!(!ok && text.contains("allow_credentials"), "{text}");
}

#[tokio::test]
async fn request_transform_reshapes_headers_query_and_path_with_variables() {
    let up = Upstream::start("users").await;
    let g = Gantry::start(&format!(
        r#"
[consumers.alice]
keys = ["alice-key-123456"]
[clusters.users]
backends = ["{}"]
[routes.users]
paths = ["~^/users/(?<id>[0-9]+)$"]
cluster = "users"
[routes.users.plugins.key-auth]
[routes.users.plugins.request-transform]
set_headers = {{ "x-gateway" = "gantry", "x-user" = "$consumer", "x-user-id" = "$path.id", "x-spoofed" = "$header.x-absent" }}
add_headers = {{ "x-trace" = "$request_id", "x-from" = "$client_ip via $method $host" }}
remove_headers = ["cookie"]
rename_headers = {{ "x-old" = "x-new" }}
set_query = {{ "source" = "edge", "who" = "$consumer & co" }}
remove_query = ["debug"]
rewrite = {{ pattern = "^/users/([0-9]+)$", replacement = "/api/users/$1" }}
"#,
        up.addr
    ));
    let resp = g
        .get(
            "/users/42?debug=1&keep=yes&source=client",
            &[
                ("x-api-key", "alice-key-123456"),
                ("cookie", "session=secret"),
                ("x-old", "renamed"),
                ("x-spoofed", "by-client"),
                ("x-request-id", "ignored-untrusted"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let echo: Value = resp.json().await.expect("echo");
    assert_eq!(
        echo["uri"],
        "/api/users/42?keep=yes&source=edge&who=alice+%26+co"
    );
    let h = &echo["headers"];
    assert_eq!(h["x-gateway"], "gantry");
    assert_eq!(h["x-user"], "alice");
    assert_eq!(h["x-user-id"], "42");
    assert_eq!(h["x-trace"], request_id.as_str());
    assert_eq!(
        h["x-from"],
        format!("127.0.0.1 via GET 127.0.0.1:{}", g.port)
    );
    assert_eq!(h["x-new"], "renamed");
    assert!(h.get("x-old").is_none() && h.get("cookie").is_none());
    assert!(
        h.get("x-spoofed").is_none(),
        "set to empty: removed, not passed through"
    );

    let (ok, text) = check_config(
        "[routes.r]\npaths = [\"/r\"]\nrespond = { body = \"x\" }\n\
         [routes.r.plugins.request-transform]\nset_headers = { \"x-id\" = \"$path.id\" }\n",
    );
    assert!(!ok && text.contains("$path.id"), "{text}");
}

#[tokio::test]
async fn transforms_edit_json_bodies_and_response_headers_with_framing_fixed() {
    let up = Upstream::start("json").await;
    let g = Gantry::start(&format!(
        r#"
[clusters.json]
backends = ["{}"]
[routes.json]
paths = ["/json"]
cluster = "json"
[routes.json.plugins.request-transform]
json_body = {{ set = {{ "/meta/source" = "gantry", "/meta/method" = "$method", "/meta/n" = 1 }}, remove = ["/password"], max_size = "1KiB" }}
[routes.json.plugins.response-transform]
set_headers = {{ "cache-control" = "no-store", "x-route" = "$route" }}
remove_headers = ["x-powered-by"]
json_body = {{ remove = ["/headers/user-agent"], rename = {{ "/uri" = "/path" }} }}
"#,
        up.addr
    ));
    let post = |content_type: &'static str, body: String| {
        client()
            .post(g.url("/json"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let resp = post("application/json", r#"{"name":"a","password":"p"}"#.into())
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-route"], "json");
    assert!(resp.headers().get("content-length").is_none(), "re-framed");
    let echo: Value = resp.json().await.expect("edited JSON");
    assert_eq!(echo["path"], "/json");
    assert!(echo.get("uri").is_none());
    assert!(echo["headers"].get("user-agent").is_none());
    assert_eq!(echo["headers"]["transfer-encoding"], "chunked");
    assert!(echo["headers"].get("content-length").is_none());
    let sent: Value = serde_json::from_str(echo["body"].as_str().expect("body")).expect("json");
    assert_eq!(
        sent,
        serde_json::json!({"name": "a", "meta": {"source": "gantry", "method": "POST", "n": 1}})
    );

    // Not JSON, or over max_size: refused, never passed unedited.
    let text = post("text/plain", "password=p".into())
        .await
        .expect("answered");
    assert_problem(text, 415, "unsupported-media-type").await;
    let big = format!(r#"{{"password":"p","pad":"{}"}}"#, "x".repeat(2048));
    let big = post("application/json", big).await.expect("answered");
    assert_problem(big, 413, "body-too-large").await;
}
