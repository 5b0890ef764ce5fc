//! The `cache` plugin through the real gateway: a configurable origin on loopback counts every
//! request it serves, so each test asserts exactly how many reached it.

use crate::common::{admin_metrics, client, eventually, free_port, wait_for_port, Gantry};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const TOKEN: &str = "admin-token-0123456789";

/// An origin whose responses are set by the query: `cc=` (Cache-Control), `vary=`,
/// `cookie=1` (Set-Cookie), `etag=1` (ETag and Last-Modified), `size=N` (body bytes),
/// `status=N`. Paths under `/slow/` wait 300 ms. With `etag=1`, `If-None-Match: "v1"` gets a
/// 304. While `failing` is set every answer is a 500. The body names the host, the target and
/// how many times this target was served.
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    failing: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let counter = Arc::clone(&hits);
        let fail = Arc::clone(&failing);
        let server = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = Arc::clone(&counter);
                let fail = Arc::clone(&fail);
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        respond(req, Arc::clone(&counter), fail.load(Ordering::SeqCst))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            failing,
            server,
        }
    }

    /// Requests served for `target` (path and query).
    fn hits(&self, target: &str) -> usize {
        self.hits.lock().unwrap().get(target).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    failing: bool,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let target = req.uri().to_string();
    let n = {
        let mut hits = hits.lock().unwrap();
        let n = hits.entry(target.clone()).or_default();
        *n += 1;
        *n
    };
    if req.uri().path().starts_with("/slow/") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let params: HashMap<String, String> = req
        .uri()
        .query()
        .map(form_urlencoded_pairs)
        .unwrap_or_default();
    if failing {
        let resp = Response::builder()
            .status(500)
            .body(Full::new(Bytes::from("down")));
        return Ok(resp.expect("response"));
    }
    let revalidated = params.contains_key("etag")
        && req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
    let mut resp = Response::builder();
    if revalidated {
        resp = resp.status(304);
    }
    if let Some(cc) = params.get("cc") {
        resp = resp.header("cache-control", cc);
    }
    if let Some(vary) = params.get("vary") {
        resp = resp.header("vary", vary);
    }
    if params.contains_key("cookie") {
        resp = resp.header("set-cookie", "session=abc");
    }
    if params.contains_key("etag") {
        resp = resp
            .header("etag", "\"v1\"")
            .header("last-modified", "Wed, 21 Oct 2026 07:28:00 GMT");
    }
    if let Some(status) = params.get("status") {
        resp = resp.status(status.parse::<u16>().unwrap());
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let body = match params.get("size") {
        _ if revalidated => String::new(),
        Some(size) => "x".repeat(size.parse().unwrap()),
        None => format!("{host} {target} #{n}"),
    };
    Ok(resp.body(Full::new(Bytes::from(body))).expect("response"))
}

fn form_urlencoded_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%2C", ",")))
        .collect()
}

fn config(origin: &Origin, cache: &str, plugin: &str) -> String {
    format!(
        "{cache}\n[clusters.origin]\nbackends = [\"{}\"]\n\
         [routes.cached]\npaths = [\"/\"]\ncluster = \"origin\"\n\
         [routes.cached.plugins.cache]\n{plugin}\n",
        origin.addr
    )
}

struct Got {
    status: u16,
    cache: String,
    body: String,
    headers: reqwest::header::HeaderMap,
}

/// The first answer for `path` that is not a fresh hit: polling waits out the stored
/// response's freshness without a fixed sleep (hits do not change what is stored).
async fn first_after_freshness(g: &Gantry, path: &str) -> Got {
    eventually(&format!("{path} is no longer fresh"), || async {
        let got = get(g, path, &[]).await;
        (got.cache != "HIT").then_some(got)
    })
    .await
}

async fn get(g: &Gantry, path: &str, headers: &[(&str, &str)]) -> Got {
    let resp = g.get(path, headers).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let cache = headers
        .get("x-cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Got {
        status,
        cache,
        body: resp.text().await.expect("body"),
        headers,
    }
}

#[tokio::test]
async fn a_hit_after_a_miss_reaches_the_origin_once_and_expires_with_its_ttl() {
    let origin = Origin::start().await;
    let g = Gantry::start(&config(&origin, "", ""));

    let first = get(&g, "/a?cc=max-age=1", &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    assert_eq!(
        first.headers["cache-status"],
        "Gantry; fwd=uri-miss; stored"
    );
    let second = get(&g, "/a?cc=max-age=1", &[]).await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["cache-status"], "Gantry; hit");
    assert!(second.headers.contains_key("age"));
    assert!(second.headers.contains_key("x-request-id"));
    assert_ne!(
        second.headers["x-request-id"],
        first.headers["x-request-id"]
    );
    assert_eq!(origin.hits("/a?cc=max-age=1"), 1);

    // HEAD and conditional requests are answered from the stored response.
    let head = client()
        .head(g.url("/a?cc=max-age=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["x-cache-status"], "HIT");
    let etag = "/e?cc=max-age=60&etag=1";
    assert_eq!(get(&g, etag, &[]).await.cache, "MISS");
    let not_modified = get(&g, etag, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((not_modified.status, not_modified.body.as_str()), (304, ""));
    assert_eq!(origin.hits(etag), 1);
    // Expires with the entry below: the origin confirms it with a 304.
    let validated = "/r?cc=max-age=1&etag=1";
    let stored = get(&g, validated, &[]).await;
    assert_eq!(stored.cache, "MISS");

    // One second of freshness: the first request after it fetches again.
    let third = first_after_freshness(&g, "/a?cc=max-age=1").await;
    assert_eq!(third.cache, "EXPIRED");
    assert!(third.body.ends_with("#2"), "{}", third.body);
    assert_eq!(origin.hits("/a?cc=max-age=1"), 2);
    assert_eq!(get(&g, "/a?cc=max-age=1", &[]).await.cache, "HIT");
    let revalidated = first_after_freshness(&g, validated).await;
    assert_eq!(
        (revalidated.status, revalidated.cache.as_str()),
        (200, "REVALIDATED")
    );
    assert_eq!(revalidated.body, stored.body, "the stored body, confirmed");
    assert_eq!(origin.hits(validated), 2);
    assert_eq!(get(&g, validated, &[]).await.cache, "HIT");

    // default_ttl applies to listed statuses without freshness; 500 is not listed.
    assert_eq!(get(&g, "/plain", &[]).await.cache, "MISS");
    assert_eq!(get(&g, "/plain", &[]).await.cache, "HIT");
    assert_eq!(get(&g, "/err?status=500", &[]).await.cache, "BYPASS");
    assert_eq!(get(&g, "/err?status=500", &[]).await.cache, "BYPASS");
    assert_eq!(origin.hits("/err?status=500"), 2);
}

#[tokio::test]
async fn private_responses_and_authorized_requests_are_not_stored() {
    let origin = Origin::start().await;
    let g = Gantry::start(&config(&origin, "", ""));
    for target in [
        "/n?cc=no-store",
        "/p?cc=private,%20max-age=60",
        "/c?cookie=1",
        "/c?cookie=1&cc=max-age=60",
    ] {
        for _ in 0..2 {
            let got = get(&g, target, &[]).await;
            assert_eq!(
                (got.status, got.cache.as_str()),
                (200, "BYPASS"),
                "{target}"
            );
        }
        assert_eq!(origin.hits(target), 2, "{target}");
    }
    // `public` lets a response with Set-Cookie be shared.
    let public = "/c?cookie=1&cc=public,%20max-age=60";
    get(&g, public, &[]).await;
    assert_eq!(get(&g, public, &[]).await.cache, "HIT");
    assert_eq!(origin.hits(public), 1);

    // Requests with Authorization: stored only when the response is public or s-maxage.
    let auth = [("authorization", "Bearer t")];
    for _ in 0..2 {
        assert_eq!(get(&g, "/private-to-user", &auth).await.cache, "BYPASS");
    }
    assert_eq!(origin.hits("/private-to-user"), 2);
    get(&g, "/shared?cc=s-maxage=60", &auth).await;
    assert_eq!(get(&g, "/shared?cc=s-maxage=60", &auth).await.cache, "HIT");

    // Only GET and HEAD use the cache.
    let post = client().post(g.url("/plain")).send().await.unwrap();
    assert_eq!(post.headers()["x-cache-status"], "BYPASS");
    assert_eq!(post.headers()["cache-status"], "Gantry; fwd=bypass");
}

#[tokio::test]
async fn keys_separate_hosts_variants_and_configured_query_parameters() {
    let origin = Origin::start().await;
    let g = Gantry::start(&format!(
        "{}\n[routes.paged]\npaths = [\"/paged\"]\ncluster = \"origin\"\n\
         [routes.paged.plugins.cache]\nkey_query = [\"page\"]\n\
         [consumers.alice]\nkeys = [\"alice-key-0123456789\"]\n\
         [consumers.bob]\nkeys = [\"bob-key-0123456789\"]\n\
         [routes.members]\npaths = [\"/members\"]\ncluster = \"origin\"\n\
         [routes.members.plugins.key-auth]\n[routes.members.plugins.cache]\n",
        config(
            &origin,
            "",
            "vary_headers = [\"accept-encoding\"]\nkey_query = \"all\""
        )
    ));
    // Two hosts, one path: two entries, each with its own body.
    let a = get(&g, "/same", &[("host", "a.example")]).await;
    let b = get(&g, "/same", &[("host", "b.example")]).await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("MISS", "MISS"));
    assert!(a.body.starts_with("a.example"), "{}", a.body);
    let b2 = get(&g, "/same", &[("host", "b.example")]).await;
    assert_eq!((b2.cache.as_str(), b2.body), ("HIT", b.body));
    let a_port = get(&g, "/same", &[("host", "a.example:8080")]).await;
    assert_eq!(a_port.cache, "MISS", "the port is part of the host");
    assert_eq!(origin.hits("/same"), 3);

    // Vary on accept-encoding: one entry per value.
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    assert_eq!(get(&g, "/v", &gzip).await.cache, "MISS");
    assert_eq!(get(&g, "/v", &br).await.cache, "MISS");
    assert_eq!(get(&g, "/v", &gzip).await.cache, "HIT");
    assert_eq!(get(&g, "/v", &br).await.cache, "HIT");
    assert_eq!(origin.hits("/v"), 2);
    // The origin's own Vary counts too.
    let lang = "/l?vary=accept-language";
    assert_eq!(
        get(&g, lang, &[("accept-language", "en")]).await.cache,
        "MISS"
    );
    assert_eq!(
        get(&g, lang, &[("accept-language", "fr")]).await.cache,
        "MISS"
    );
    let en = get(&g, lang, &[("accept-language", "en")]).await;
    assert_eq!(en.cache, "HIT");

    // Consumers never share entries: each gets its own, and a refused request is not served
    // from the cache.
    let alice = [("x-api-key", "alice-key-0123456789")];
    let bob = [("x-api-key", "bob-key-0123456789")];
    assert_eq!(get(&g, "/members", &alice).await.cache, "MISS");
    assert_eq!(get(&g, "/members", &bob).await.cache, "MISS");
    assert_eq!(get(&g, "/members", &alice).await.cache, "HIT");
    assert_eq!(get(&g, "/members", &bob).await.cache, "HIT");
    let anonymous = get(&g, "/members", &[]).await;
    assert_eq!(
        (anonymous.status, anonymous.cache.as_str()),
        (401, "BYPASS")
    );
    assert_eq!(origin.hits("/members"), 2);

    // key_query = "all": any query change is another entry.
    assert_eq!(get(&g, "/q?x=1", &[]).await.cache, "MISS");
    assert_eq!(get(&g, "/q?x=2", &[]).await.cache, "MISS");
    // key_query = ["page"]: other parameters and their order do not matter.
    assert_eq!(get(&g, "/paged?page=1&utm=a", &[]).await.cache, "MISS");
    assert_eq!(get(&g, "/paged?utm=b&page=1", &[]).await.cache, "HIT");
    assert_eq!(get(&g, "/paged?page=2", &[]).await.cache, "MISS");
}

#[tokio::test]
async fn concurrent_misses_for_one_key_reach_the_origin_once() {
    let origin = Origin::start().await;
    let g = Arc::new(Gantry::start(&config(&origin, "", "")));
    let mut tasks = JoinSet::new();
    for _ in 0..100 {
        let g = Arc::clone(&g);
        tasks.spawn(async move { get(&g, "/slow/one", &[]).await });
    }
    let mut statuses: HashMap<String, usize> = HashMap::new();
    while let Some(got) = tasks.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, 200);
        assert!(got.body.ends_with("#1"), "{}", got.body);
        *statuses.entry(got.cache).or_default() += 1;
    }
    assert_eq!(origin.hits("/slow/one"), 1, "{statuses:?}");
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
}

#[tokio::test]
async fn stale_responses_are_served_while_revalidating_and_when_the_origin_fails() {
    let origin = Origin::start().await;
    let g = Gantry::start(&config(
        &origin,
        "",
        "stale_while_revalidate = \"30s\"\nstale_if_error = \"5m\"",
    ));
    let target = "/slow/s?cc=max-age=1";
    assert_eq!(get(&g, target, &[]).await.cache, "MISS");
    // Expired: the stale copy is answered at once (the origin takes 300 ms) and refreshed
    // in the background.
    let stale = first_after_freshness(&g, target).await;
    assert_eq!(stale.cache, "STALE");
    assert!(stale.body.ends_with("#1"), "{}", stale.body);
    eventually("refreshed in the background", || async {
        (origin.hits(target) >= 2).then_some(())
    })
    .await;
    // The refresh is stored once the origin's (slow) answer is complete.
    let fresh = eventually("the refresh is stored", || async {
        let got = get(&g, target, &[]).await;
        (got.cache != "STALE").then_some(got)
    })
    .await;
    assert_eq!(fresh.cache, "HIT");
    assert!(fresh.body.ends_with("#2"), "{}", fresh.body);
    assert_eq!(
        origin.hits(target),
        2,
        "stale answers while refreshing start no fetch"
    );

    // stale-if-error alone (the origin turns off stale-while-revalidate for these): once
    // expired, the stored response stands in for the origin's 500s and then for the origin
    // itself.
    let on_500 = "/f?cc=max-age=1,%20stale-while-revalidate=0";
    let gone = "/e?cc=max-age=1,%20stale-while-revalidate=0";
    get(&g, on_500, &[]).await;
    get(&g, gone, &[]).await;
    origin.failing.store(true, Ordering::SeqCst);
    let rescued = first_after_freshness(&g, on_500).await;
    assert_eq!((rescued.status, rescued.cache.as_str()), (200, "STALE"));
    assert!(rescued.body.ends_with("#1"));
    assert_eq!(origin.hits(on_500), 2, "the origin was asked and failed");
    origin.stop();
    let rescued = first_after_freshness(&g, gone).await;
    assert_eq!((rescued.status, rescued.cache.as_str()), (200, "STALE"));
    assert!(rescued.body.ends_with("#1"));
    // Without a stored copy the failure shows.
    assert_eq!(get(&g, "/never-stored", &[]).await.status, 502);
}

#[tokio::test]
async fn the_size_bound_holds_and_purge_removes_every_variant() {
    let origin = Origin::start().await;
    let admin = free_port();
    let g = Gantry::start(&config(
        &origin,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
             [cache]\nmax_size = \"1MiB\"\nmax_object_size = \"64KiB\""
        ),
        "vary_headers = [\"accept-language\"]",
    ));
    wait_for_port(admin);
    let gauge = |name: &'static str| async move {
        let text = admin_metrics(admin).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };

    // Larger than max_object_size: streamed whole, never stored.
    let big = "/big?size=100000";
    for _ in 0..2 {
        let got = get(&g, big, &[]).await;
        assert_eq!((got.cache.as_str(), got.body.len()), ("BYPASS", 100_000));
    }
    assert_eq!(origin.hits(big), 2);

    // 3 MiB of distinct 32 KiB objects into a 1 MiB cache.
    for i in 0..96 {
        let got = get(&g, &format!("/obj/{i}?size=32768"), &[]).await;
        assert_eq!(got.body.len(), 32768);
    }
    let bytes = eventually("the cache shrinks to its bound", || async {
        let bytes = gauge("gantry_cache_bytes").await;
        (bytes <= 1 << 20).then_some(bytes)
    })
    .await;
    assert!(bytes > 1 << 19, "the cache is used, not emptied: {bytes}");
    // 32 objects of 32 KiB (plus headers) cannot fit: most of the 96 were evicted.
    let entries = gauge("gantry_cache_entries").await;
    assert!((16..32).contains(&entries), "{entries} entries");

    // Purge removes one URL's entries, all its variants, and nothing else.
    for lang in ["en", "fr"] {
        get(&g, "/p", &[("accept-language", lang)]).await;
        let hit = get(&g, "/p", &[("accept-language", lang)]).await;
        assert_eq!(hit.cache, "HIT");
    }
    let before = gauge("gantry_cache_entries").await;
    let purge = |body: serde_json::Value, token: &'static str| {
        client()
            .post(format!("http://127.0.0.1:{admin}/cache/purge"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let url = format!(
        "http://127.0.0.1:{}/p",
        g.url("").rsplit(':').next().unwrap()
    );
    let refused = purge(serde_json::json!({ "url": url }), "wrong-token-0123456789")
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let done = purge(serde_json::json!({ "url": url }), TOKEN)
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let done: serde_json::Value = done.json().await.unwrap();
    assert_eq!(done, serde_json::json!({ "route": "cached", "purged": 2 }));
    let after = gauge("gantry_cache_entries").await;
    for lang in ["en", "fr"] {
        let got = get(&g, "/p", &[("accept-language", lang)]).await;
        assert_eq!(got.cache, "MISS", "{lang} was purged");
    }
    assert_eq!(after, before - 2, "only /p's two variants went");
    let bad = purge(serde_json::json!({ "url": "/relative" }), TOKEN)
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(origin.total() > 0);
}

#[tokio::test]
async fn cookies_bodies_and_unidentified_clients_bypass_the_cache() {
    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
    let origin = Origin::start().await;
    let g = Gantry::start(&format!(
        "{}\n[routes.cookies]\npaths = [\"/cookies\"]\ncluster = \"origin\"\n\
         [routes.cookies.plugins.cache]\ncache_cookies = true\n\
         [routes.tokens]\npaths = [\"/tokens\"]\ncluster = \"origin\"\n\
         [routes.tokens.plugins.jwt-auth]\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\
         anonymous = true\n[routes.tokens.plugins.cache]\n",
        config(&origin, "", "")
    ));
    // A response to a request with Cookie is neither stored nor served from the cache.
    let target = "/k?cc=max-age=60";
    for _ in 0..2 {
        let got = get(&g, target, &[("cookie", "session=alice")]).await;
        assert_eq!((got.status, got.cache.as_str()), (200, "BYPASS"));
    }
    assert_eq!(get(&g, target, &[]).await.cache, "MISS");
    assert_eq!(
        get(&g, target, &[("cookie", "session=alice")]).await.cache,
        "BYPASS"
    );
    assert_eq!(origin.hits(target), 4);

    // A GET with a body: the response may depend on the body, which the key does not hold.
    let with_body = "/b?cc=max-age=60";
    for _ in 0..2 {
        let resp = client()
            .get(g.url(with_body))
            .body("{\"q\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-cache-status"], "BYPASS");
    }
    assert_eq!(origin.hits(with_body), 2);

    // cache_cookies: stored, one variant per Cookie header.
    let cookies = "/cookies?cc=max-age=60";
    let alice = [("cookie", "session=alice")];
    assert_eq!(get(&g, cookies, &alice).await.cache, "MISS");
    assert_eq!(get(&g, cookies, &alice).await.cache, "HIT");
    assert_eq!(
        get(&g, cookies, &[("cookie", "session=bob")]).await.cache,
        "MISS"
    );
    assert_eq!(origin.hits(cookies), 2);

    // An authenticating route stores only for an identified client.
    let tokens = "/tokens?cc=public,%20max-age=60";
    for _ in 0..2 {
        assert_eq!(get(&g, tokens, &[]).await.cache, "BYPASS", "anonymous");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: serde_json::Value| {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        format!("Bearer {token}")
    };
    let no_sub = sign(serde_json::json!({ "exp": now + 600 }));
    for _ in 0..2 {
        let got = get(&g, tokens, &[("authorization", &no_sub)]).await;
        assert_eq!(got.cache, "BYPASS", "a token without sub identifies no one");
    }
    let carol = sign(serde_json::json!({ "sub": "carol", "exp": now + 600 }));
    assert_eq!(
        get(&g, tokens, &[("authorization", &carol)]).await.cache,
        "MISS"
    );
    assert_eq!(
        get(&g, tokens, &[("authorization", &carol)]).await.cache,
        "HIT"
    );
    assert_eq!(origin.hits(tokens), 5);
}
