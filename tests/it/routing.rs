//! Routing precedence through the real gateway, using direct responses to see which route won.

use crate::common::{assert_problem, client, Gantry};

fn respond(name: &str) -> String {
    format!("respond = {{ body = \"{name}\" }}")
}

async fn winner(
    g: &Gantry,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut req = client()
        .request(method.parse().expect("method"), g.url(path))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200, "{method} {host}{path}");
    resp.text().await.expect("body")
}

#[tokio::test]
async fn precedence_follows_priority_host_then_path() {
    let config = format!(
        r#"
[routes.catch_all]
paths = ["/"]
{}
[routes.api_prefix]
paths = ["/api"]
{}
[routes.api_v1_prefix]
paths = ["/api/v1"]
{}
[routes.api_exact]
paths = ["=/api/v1/status"]
{}
[routes.regex]
paths = ["~^/api/v1/items/[0-9]+$", "~^/files/.*$"]
{}
[routes.regex_later]
paths = ["~^/files/special$"]
{}
[routes.wild_host]
hosts = ["*.example.com"]
paths = ["/"]
{}
[routes.exact_host]
hosts = ["api.example.com"]
paths = ["/"]
{}
[routes.priority]
paths = ["/api/v1/items/999"]
priority = 10
{}
[routes.methods]
paths = ["=/things"]
methods = ["POST"]
{}
[routes.things_get]
paths = ["=/things"]
methods = ["GET"]
{}
[routes.header_v2]
paths = ["=/versioned"]
headers = {{ "x-api-version" = "2" }}
{}
[routes.header_none]
paths = ["=/versioned"]
{}
"#,
        respond("catch_all"),
        respond("api_prefix"),
        respond("api_v1_prefix"),
        respond("api_exact"),
        respond("regex"),
        respond("regex_later"),
        respond("wild_host"),
        respond("exact_host"),
        respond("priority"),
        respond("methods"),
        respond("things_get"),
        respond("header_v2"),
        respond("header_none"),
    );
    let g = Gantry::start(&config);
    let h = "localhost";
    // Longest prefix at a segment boundary; exact before prefix; prefix before regex.
    assert_eq!(winner(&g, h, "GET", "/api", &[]).await, "api_prefix");
    assert_eq!(winner(&g, h, "GET", "/apix", &[]).await, "catch_all");
    assert_eq!(
        winner(&g, h, "GET", "/api/v1/users", &[]).await,
        "api_v1_prefix"
    );
    assert_eq!(
        winner(&g, h, "GET", "/api/v1/status", &[]).await,
        "api_exact"
    );
    assert_eq!(
        winner(&g, h, "GET", "/api/v1/status/x", &[]).await,
        "api_v1_prefix"
    );
    assert_eq!(
        winner(&g, h, "GET", "/api/v1/items/7", &[]).await,
        "api_v1_prefix"
    );
    // A regex wins only where no prefix other than `/` matches; declared order breaks ties.
    assert_eq!(
        winner(&g, h, "GET", "/files/special", &[]).await,
        "catch_all"
    );
    // Priority beats everything else.
    assert_eq!(
        winner(&g, h, "GET", "/api/v1/items/999", &[]).await,
        "priority"
    );
    // Host: exact before wildcard before none, whatever the path specificity.
    assert_eq!(
        winner(&g, "api.example.com", "GET", "/api/v1/status", &[]).await,
        "exact_host"
    );
    assert_eq!(
        winner(&g, "API.Example.com:8080", "GET", "/x", &[]).await,
        "exact_host"
    );
    assert_eq!(
        winner(&g, "a.b.example.com", "GET", "/api", &[]).await,
        "wild_host"
    );
    assert_eq!(
        winner(&g, "example.com", "GET", "/api", &[]).await,
        "api_prefix"
    );
    // Methods and headers narrow the candidates.
    assert_eq!(winner(&g, h, "POST", "/things", &[]).await, "methods");
    assert_eq!(winner(&g, h, "GET", "/things", &[]).await, "things_get");
    assert_eq!(
        winner(&g, h, "GET", "/versioned", &[("x-api-version", "2")]).await,
        "header_v2"
    );
    assert_eq!(
        winner(&g, h, "GET", "/versioned", &[("x-api-version", "3")]).await,
        "header_none"
    );
    assert_eq!(winner(&g, h, "GET", "/versioned", &[]).await, "header_none");
}

#[tokio::test]
async fn regex_routes_match_in_declared_order() {
    let config = format!(
        "[routes.first]\npaths = [\"~^/r/.*$\"]\n{}\n[routes.second]\npaths = [\"~^/r/x$\"]\n{}\n",
        respond("first"),
        respond("second")
    );
    let g = Gantry::start(&config);
    assert_eq!(winner(&g, "localhost", "GET", "/r/x", &[]).await, "first");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let g = Gantry::start(
        "[routes.only_get]\npaths = [\"=/thing\"]\nmethods = [\"GET\", \"HEAD\"]\nrespond = { body = \"x\" }\n",
    );
    let resp = client()
        .get(g.url("/nothing"))
        .send()
        .await
        .expect("request");
    assert_problem(resp, 404, "no-route").await;

    let resp = client()
        .delete(g.url("/thing"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_problem(resp, 405, "method-not-allowed").await;

    let resp = client()
        .head(g.url("/thing"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "1");
}
