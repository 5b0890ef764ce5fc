//! Property tests over templates, JSON body edits and cache-key framing.
//!
//! They run in `make test` with proptest's case count (256 by default); `make fuzz` runs the
//! same properties with `PROPTEST_CASES` raised. Results are recorded in docs/testing.md.

use crate::builtin::cache::{Cache, CachePolicy, Config as CacheConfig, KeyQuery};
use crate::support::config_types::HumanSize;
use crate::support::json_body::{JsonBodyConfig, JsonEdits, Unusable};
use crate::support::template::{Template, TemplateScope};
use crate::{Plugin, PluginState};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::http::RequestHeader;
use proptest::prelude::*;
use serde_json::Value;

/// A request with a header value, a query and a cookie taken from arbitrary bytes.
fn request(header: &[u8], query: &str, cookie: &[u8]) -> RequestHeader {
    let uri = format!("/p?q={query}");
    let mut req = RequestHeader::build("GET", uri.as_bytes(), None)
        .or_else(|_| RequestHeader::build("GET", b"/p", None))
        .expect("request");
    if let Ok(v) = HeaderValue::from_bytes(header) {
        req.insert_header("x-h", v).expect("header");
    }
    if let Ok(v) = HeaderValue::from_bytes(cookie) {
        req.insert_header("cookie", v).expect("header");
    }
    req
}

proptest! {
    #[test]
    fn templates_parse_or_fail_and_render_without_panicking(
        text in "(\\$|\\$\\$|[a-z_.-]|\\PC){0,24}",
        header in prop::collection::vec(any::<u8>(), 0..16),
        query in "[a-z%0-9+&=]{0,12}",
    ) {
        if let Ok(t) = Template::parse(&text, &TemplateScope::default()) {
            let req = request(&header, &query, &header);
            let state = PluginState::default();
            let mut out = String::new();
            t.render(&req, &state, &mut out);
            out.clear();
            let _ = t.render_uri(&req, &state, &mut out);
            let _ = t.header_value(&req, &state);
        }
    }

    /// Values decoded from the query (`%0d%0a`) cannot put CR/LF into a header value, and in a
    /// request target every variable's value is encoded: no `/`, `?`, `#` or dot segment.
    #[test]
    fn rendered_values_cannot_inject(
        header in prop::collection::vec(any::<u8>(), 0..16),
        query in "([a-z./?#]|%0[aAdD]|%2[eEfF]|%3[fF]|%23|\\+|%00){0,8}",
    ) {
        let scope = TemplateScope::default();
        let req = request(&header, &query, &header);
        let state = PluginState::default();
        let t = Template::parse("v=$query.q;$header.x-h;$cookie.c", &scope).expect("valid");
        if let Some(v) = t.header_value(&req, &state) {
            prop_assert!(!v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
        }
        let t = Template::parse("/a/$query.q/$header.x-h", &scope).expect("valid");
        let mut out = String::new();
        if t.render_uri(&req, &state, &mut out) {
            let rest = out.strip_prefix("/a/").expect("literal kept");
            let (q, h) = rest.split_once('/').expect("literal kept");
            for part in [q, h] {
                prop_assert!(part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{out}");
                prop_assert!(part != "." && part != "..", "{out}");
            }
        }
    }
}

/// A JSON document whose objects use a small key alphabet, so pointers often hit.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[ab~/]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object-member pointer over the same alphabet (`~0`, `~1` escapes included).
fn pointer() -> impl Strategy<Value = (String, Vec<String>)> {
    prop::collection::vec("[ab~/]{1,2}", 1..4).prop_map(|tokens| {
        let text = tokens
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect();
        (text, tokens)
    })
}

/// Feeds `body` through `edits` in `chunk`-byte pieces; the bytes sent on.
/// Streams `body` through `edits` in `chunk`-sized pieces: what was passed on, or why the body
/// was refused together with what had been passed on before the refusal.
fn run(edits: &JsonEdits, body: &[u8], chunk: usize) -> Result<Vec<u8>, (Unusable, Vec<u8>)> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let req = RequestHeader::build("POST", b"/", None).expect("request");
    let mut buffer = edits
        .start(&headers, &req, &PluginState::default())
        .expect("buffered");
    let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut b = Some(Bytes::copy_from_slice(piece));
        if let Err(why) = edits.on_chunk(&mut buffer, &mut b, i + 1 == pieces.len()) {
            return Err((why, out));
        }
        out.extend_from_slice(&b.unwrap_or_default());
    }
    Ok(out)
}

fn remove_edits(pointer: &str, max: u64) -> JsonEdits {
    JsonEdits::new(
        JsonBodyConfig {
            remove: vec![pointer.to_string()],
            max_size: Some(HumanSize(max)),
            ..JsonBodyConfig::default()
        },
        &TemplateScope::default(),
    )
    .expect("valid")
}

proptest! {
    /// Removing a member removes exactly it, whatever the document and the chunking.
    #[test]
    fn removing_a_pointer_removes_it_and_nothing_else(
        doc in json(),
        (text, tokens) in pointer(),
        chunk in 1usize..64,
    ) {
        let body = serde_json::to_vec(&doc).expect("json");
        let out = run(&remove_edits(&text, 1 << 20), &body, chunk).expect("editable");
        let got: Value = serde_json::from_slice(&out).expect("edited body is JSON");
        let mut want = doc.clone();
        let (last, parents) = tokens.split_last().expect("non-empty");
        let mut cur = Some(&mut want);
        for t in parents {
            cur = cur.and_then(|v| v.as_object_mut()).and_then(|m| m.get_mut(t));
        }
        if let Some(map) = cur.and_then(|v| v.as_object_mut()) {
            map.remove(last);
        }
        prop_assert_eq!(got, want);
    }

    /// A body over `max_size`, or not JSON, is refused, and none of it was passed on first
    /// (edits fail closed: an unedited byte never reaches the other side).
    #[test]
    fn bodies_that_cannot_be_edited_are_refused_before_any_byte_passes(
        body in prop::collection::vec(any::<u8>(), 0..200),
        max in 1u64..100,
        chunk in 1usize..64,
    ) {
        let blank = body.iter().all(u8::is_ascii_whitespace);
        let editable = body.len() as u64 <= max
            && (blank || serde_json::from_slice::<Value>(&body).is_ok());
        match run(&remove_edits("/a", max), &body, chunk) {
            Ok(_) => prop_assert!(editable, "an uneditable body was passed on"),
            Err((_, passed)) => {
                prop_assert!(!editable, "an editable body was refused");
                prop_assert!(passed.is_empty(), "bytes passed before the refusal");
            }
        }
    }
}

/// The cache policy of a route with `key_query`.
fn policy(key_query: KeyQuery) -> std::sync::Arc<CachePolicy> {
    let config: CacheConfig = serde_json::from_value(serde_json::json!({})).expect("defaults");
    let cache = Cache::new(CacheConfig {
        key_query,
        ..config
    })
    .expect("valid");
    cache.cache_policy().expect("policy")
}

/// The host as the key means it: lower-case, with the scheme's port when it names none.
fn canonical_host(host: &str) -> String {
    // `a.com:` names the default port, like `a.com`.
    let lower = host.strip_suffix(':').unwrap_or(host).to_ascii_lowercase();
    let has_port = lower
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && !lower.ends_with(']');
    if has_port {
        lower
    } else {
        format!("{lower}:80")
    }
}

/// Query parameter values as decoded by `form_urlencoded`, per name.
fn values(query: Option<&str>, name: &str) -> Vec<String> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Small alphabets with the separators, so that different tuples often share bytes.
fn url_part() -> impl Strategy<Value = (String, String, Option<String>)> {
    (
        "[aA.:]{0,3}[0-9]{0,2}",
        "[/a=&?%]{0,4}",
        prop::option::of("([ab=&%+]|%26|%3[dD]|%2[bB]){0,6}"),
    )
}

proptest! {
    /// With the whole query in the key, two requests share a key exactly when their canonical
    /// host, path and query are the same (`a=%26` vs `a=&`, fields moved across boundaries...).
    #[test]
    fn primary_keys_are_injective_over_host_path_query(
        (h1, p1, q1) in url_part(),
        (h2, p2, q2) in url_part(),
        route in prop_oneof![Just("r"), Just("r/")],
    ) {
        let all = policy(KeyQuery::All);
        let k1 = all.primary_key("r", "http", &h1, &p1, q1.as_deref());
        let k2 = all.primary_key(route, "http", &h2, &p2, q2.as_deref());
        let same = route == "r"
            && canonical_host(&h1) == canonical_host(&h2)
            && p1 == p2
            && q1.as_deref().unwrap_or_default() == q2.as_deref().unwrap_or_default();
        prop_assert_eq!(k1 == k2, same, "{:?} vs {:?}", (&h1, &p1, &q1), (&h2, &p2, &q2));
    }

    /// With listed parameters, keys are equal exactly when each listed name has the same
    /// decoded values in the same order: no value can pass for another parameter.
    #[test]
    fn listed_query_parameters_frame_their_values(
        q1 in prop::option::of("([ab=&%+]|%26|%3[dD]){0,8}"),
        q2 in prop::option::of("([ab=&%+]|%26|%3[dD]){0,8}"),
    ) {
        let names = ["a".to_string(), "b".to_string()];
        let only = policy(KeyQuery::Only(names.to_vec()));
        let k1 = only.primary_key("r", "http", "h", "/", q1.as_deref());
        let k2 = only.primary_key("r", "http", "h", "/", q2.as_deref());
        let same = names
            .iter()
            .all(|n| values(q1.as_deref(), n) == values(q2.as_deref(), n));
        prop_assert_eq!(k1 == k2, same, "{:?} vs {:?}", q1, q2);
    }
}
