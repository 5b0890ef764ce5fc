//! `cache`: stores a route's responses in the node's shared cache (`[cache]`) and serves them
//! again, with RFC 9111 semantics from `pingora-cache`'s helpers.
//!
//! The plugin holds the route's [`CachePolicy`]: how the cache key is framed, which request
//! headers vary it, how long a response without freshness information stays fresh, and the
//! stale windows. The gateway's Pingora cache hooks ask the policy; the plugin itself only
//! writes `Cache-Status` (RFC 9211) and `X-Cache-Status` on every response of the route (the
//! gateway counts the outcomes in `gantry_cache_total{route,status}`).

use crate::support::cache_status::CacheStatus;
use crate::support::config_types::HumanDuration;
use crate::{Phases, Plugin, PluginState};
use async_trait::async_trait;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The plugin's name in configuration.
pub const NAME: &str = "cache";

/// `[routes.R.plugins.cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Freshness of a response that carries none (no `max-age`, `s-maxage` or `Expires`).
    #[serde(default = "default_ttl")]
    pub default_ttl: HumanDuration,
    /// The statuses `default_ttl` applies to.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// Request headers whose values select different stored variants.
    #[serde(default)]
    pub vary_headers: Vec<String>,
    /// Which query parameters are part of the key.
    #[serde(default)]
    pub key_query: KeyQuery,
    /// How long after expiry a stored response is served while one request refreshes it.
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// How long after expiry a stored response is served when the upstream fails.
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
    /// Cache requests that carry `Cookie` (the whole `Cookie` header then selects the variant).
    /// Default `false`: such requests bypass the cache.
    #[serde(default)]
    pub cache_cookies: bool,
}

fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_statuses() -> Vec<u16> {
    vec![200, 301, 404]
}

/// `key_query`: the whole query string, none of it, or the listed parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyQuery {
    /// The query string as sent.
    #[default]
    All,
    /// No query at all: `/a?x=1` and `/a` share an entry.
    None,
    /// Only these parameters, in this order, with every value each has.
    Only(Vec<String>),
}

impl<'de> Deserialize<'de> for KeyQuery {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyQueryVisitor;
        impl<'de> Visitor<'de> for KeyQueryVisitor {
            type Value = KeyQuery;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"all\", \"none\" or a list of query parameter names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyQuery, E> {
                match v {
                    "all" => Ok(KeyQuery::All),
                    "none" => Ok(KeyQuery::None),
                    other => Err(E::custom(format!(
                        "unknown key_query `{other}`: use \"all\", \"none\" or a list of names"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyQuery, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    if name.is_empty() {
                        return Err(de::Error::custom("a key_query name cannot be empty"));
                    }
                    names.push(name);
                }
                Ok(KeyQuery::Only(names))
            }
        }
        deserializer.deserialize_any(KeyQueryVisitor)
    }
}

/// The RFC 9211 `Cache-Status` value of `status`.
fn cache_status_header(status: CacheStatus) -> HeaderValue {
    HeaderValue::from_static(match status {
        CacheStatus::Hit => "Gantry; hit",
        CacheStatus::Miss => "Gantry; fwd=uri-miss; stored",
        CacheStatus::Expired => "Gantry; fwd=stale; stored",
        CacheStatus::Revalidated => "Gantry; fwd=stale; fwd-status=304",
        CacheStatus::Stale => "Gantry; hit; detail=stale",
        CacheStatus::NotStored => "Gantry; fwd=uri-miss; detail=not-stored",
        CacheStatus::Bypass => "Gantry; fwd=bypass",
    })
}

static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A route's caching rules, compiled from [`Config`].
#[derive(Debug)]
pub struct CachePolicy {
    default_ttl: Duration,
    statuses: Vec<StatusCode>,
    vary_headers: Vec<HeaderName>,
    key_query: KeyQuery,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    cache_cookies: bool,
}

/// Who an authentication plugin says the client is; part of every stored variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdentity<'a> {
    /// No authentication plugin on the route.
    Nobody,
    /// A consumer, by name.
    Consumer(&'a str),
    /// The `sub` of a verified token that maps to no consumer.
    Subject(&'a str),
}

/// Why a request does not use the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// It has a body: the response may depend on it, and the key does not include it.
    Body,
    /// It carries `Cookie` and the route does not set `cache_cookies`.
    Cookie,
}

/// The freshness defaults handed to `pingora-cache`: none, the policy applies its own.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

impl CachePolicy {
    /// The primary cache key: route, scheme, host with port, path and the configured query
    /// parts, each framed by its length so no two different requests share a key.
    /// `host` is the request's host, with or without a port.
    pub fn primary_key(
        &self,
        route: &str,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
    ) -> Vec<u8> {
        let mut key = Vec::with_capacity(64 + route.len() + host.len() + path.len());
        // `a.com:` names the default port, like `a.com`.
        let host = host.strip_suffix(':').unwrap_or(host);
        push_field(&mut key, route.as_bytes());
        push_field(&mut key, scheme.as_bytes());
        // The host, lowercased, with the scheme's default port when it names none.
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
            && !host.ends_with(']');
        let default_port: &[u8] = match (has_port, scheme) {
            (true, _) => b"",
            (false, "https") => b":443",
            (false, _) => b":80",
        };
        key.extend_from_slice(&((host.len() + default_port.len()) as u32).to_be_bytes());
        key.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
        key.extend_from_slice(default_port);
        push_field(&mut key, path.as_bytes());
        match (&self.key_query, query) {
            (KeyQuery::All, Some(q)) => push_field(&mut key, q.as_bytes()),
            (KeyQuery::All, None) | (KeyQuery::None, _) => push_field(&mut key, b""),
            (KeyQuery::Only(names), q) => {
                for name in names {
                    push_field(&mut key, name.as_bytes());
                    let values: Vec<_> = q
                        .into_iter()
                        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v)
                        .collect();
                    // The count frames the values: no value can pass for the next name.
                    key.extend_from_slice(&(values.len() as u32).to_be_bytes());
                    for value in &values {
                        push_field(&mut key, value.as_bytes());
                    }
                }
            }
        }
        key
    }

    /// Whether `req` skips the cache (`has_body`: it carries a request body).
    pub fn bypass(&self, req: &RequestHeader, has_body: bool) -> Option<Bypass> {
        if has_body {
            Some(Bypass::Body)
        } else if !self.cache_cookies && req.headers.contains_key(header::COOKIE) {
            Some(Bypass::Cookie)
        } else {
            None
        }
    }

    /// The variant of `req` for a stored response with `stored` headers: the configured
    /// `vary_headers`, whatever the response's own `Vary` names, `Cookie` with
    /// `cache_cookies`, and `identity`, tagged by kind (a consumer named like a token's `sub`
    /// never shares a variant with it). The identity is always part of it, so the result is
    /// never `None` (which would let Pingora serve any stored variant): one client's
    /// responses never reach another, while one purge still removes every variant of the URL.
    pub fn variance(
        &self,
        req: &RequestHeader,
        stored: &HeaderMap,
        identity: ClientIdentity<'_>,
    ) -> Option<HashBinary> {
        let mut builder = VarianceBuilder::new();
        // Header names cannot contain a space, so these never collide with one.
        match identity {
            ClientIdentity::Nobody => builder.add_value("client identity", ""),
            ClientIdentity::Consumer(name) => builder.add_value("client consumer", name),
            ClientIdentity::Subject(sub) => builder.add_value("client subject", sub),
        }
        let mut add = |name: &str| {
            let value = req
                .headers
                .get_all(name)
                .iter()
                .flat_map(|v| v.as_bytes().iter().copied().chain(*b","))
                .collect::<Vec<u8>>();
            builder.add_owned_name_value(name.to_string(), value);
        };
        for name in &self.vary_headers {
            add(name.as_str());
        }
        if self.cache_cookies && !self.vary_headers.contains(&header::COOKIE) {
            add(header::COOKIE.as_str());
        }
        for name in vary_names(stored) {
            if !self.vary_headers.iter().any(|h| h.as_str() == name) {
                add(&name);
            }
        }
        builder.finalize()
    }

    /// Whether `resp` may be stored, and for how long: `s-maxage`, `max-age`, `Expires`,
    /// then `default_ttl` for the configured statuses. `no-store`, `private`, `Vary: *`,
    /// partial content, and (unless `public`/`s-maxage`) `Set-Cookie` or a request with
    /// `Authorization` make it uncacheable.
    pub fn response_cacheable(&self, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        let cc = CacheControl::from_resp_headers(resp);
        let shared_ok = cc
            .as_ref()
            .is_some_and(|cc| cc.public() || cc.s_maxage().ok().flatten().is_some());
        let refused = resp.status == StatusCode::PARTIAL_CONTENT
            || vary_names(&resp.headers).any(|n| n == "*")
            || (resp.headers.contains_key(header::SET_COOKIE) && !shared_ok)
            || cc
                .as_ref()
                .is_some_and(|cc| cc.is_cacheable() == Cacheable::No);
        if refused {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        let explicit = calculate_fresh_until(now, cc.as_ref(), resp, authorization, &NO_DEFAULTS);
        let fresh_until = match explicit {
            Some(t) => t,
            None if authorization => {
                return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)
            }
            None if self.statuses.contains(&resp.status) => now + self.default_ttl,
            None => return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        };
        let defaults =
            CacheMetaDefaults::new(|_| None, self.stale_while_revalidate, self.stale_if_error);
        let (swr, sie) = if cc.as_ref().is_some_and(|cc| cc.no_cache()) {
            // no-cache: stored, but never used without revalidation, not even stale.
            (0, 0)
        } else {
            calculate_serve_stale_durations(cc.as_ref(), &defaults)
        };
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        // A shareable response's cookie belongs to the client that caused the fetch.
        header.remove_header(&header::SET_COOKIE);
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
    }
}

/// Appends `bytes` to `key`, preceded by its length.
fn push_field(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    key.extend_from_slice(bytes);
}

/// The lowercase names a `Vary` header lists.
fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// The `cache` plugin: the route's [`CachePolicy`] and its status headers.
pub struct Cache {
    policy: Arc<CachePolicy>,
}

impl Cache {
    /// Validates `config` for the route (or `global`) named `scope`.
    pub fn new(config: Config) -> Result<Self, String> {
        let mut statuses = Vec::with_capacity(config.statuses.len());
        for status in &config.statuses {
            match StatusCode::from_u16(*status) {
                Ok(s) if (200..600).contains(status) && *status != 206 => statuses.push(s),
                _ => {
                    return Err(format!(
                        "`statuses` holds {status}: list final statuses from 200 to 599 (206 partial content cannot be cached)"
                    ))
                }
            }
        }
        let vary_headers = config
            .vary_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("`vary_headers` holds `{h}`, which is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let seconds = |d: Option<HumanDuration>| -> u32 {
            d.map_or(0, |d| u32::try_from(d.0.as_secs()).unwrap_or(u32::MAX))
        };
        if config.default_ttl.0 < Duration::from_secs(1) {
            return Err("`default_ttl` must be at least 1s".into());
        }
        Ok(Cache {
            policy: Arc::new(CachePolicy {
                default_ttl: config.default_ttl.0,
                statuses,
                vary_headers,
                key_query: config.key_query,
                stale_while_revalidate: seconds(config.stale_while_revalidate),
                stale_if_error: seconds(config.stale_if_error),
                cache_cookies: config.cache_cookies,
            }),
        })
    }
}

#[async_trait]
impl Plugin for Cache {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::RESPONSE
    }

    fn cache_policy(&self) -> Option<Arc<CachePolicy>> {
        Some(Arc::clone(&self.policy))
    }

    async fn on_response(
        &self,
        _request: &RequestHeader,
        response: &mut ResponseHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        let status = state.cache_status.unwrap_or(CacheStatus::Bypass);
        response.insert_header(
            X_CACHE_STATUS.clone(),
            HeaderValue::from_static(status.as_str()),
        )?;
        response.insert_header(CACHE_STATUS.clone(), cache_status_header(status))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(key_query: KeyQuery) -> CachePolicy {
        CachePolicy {
            default_ttl: Duration::from_secs(60),
            statuses: vec![StatusCode::OK],
            vary_headers: vec![HeaderName::from_static("accept-encoding")],
            key_query,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            cache_cookies: false,
        }
    }

    #[test]
    fn keys_are_framed_and_include_host_with_port() {
        let p = policy(KeyQuery::All);
        let a = p.primary_key("r", "http", "Example.com", "/x", None);
        assert_eq!(a, p.primary_key("r", "http", "example.com:80", "/x", None));
        assert_ne!(
            a,
            p.primary_key("r", "http", "example.com:8080", "/x", None)
        );
        assert_ne!(a, p.primary_key("r", "https", "example.com", "/x", None));
        assert_ne!(a, p.primary_key("r", "http", "other.com", "/x", None));
        assert_ne!(a, p.primary_key("r2", "http", "example.com", "/x", None));
        // Framing: moving bytes between fields never gives the same key.
        assert_ne!(
            p.primary_key("r", "http", "a.com", "/bc", None),
            p.primary_key("r", "http", "a.com/b", "c", None)
        );
        assert_ne!(
            p.primary_key("r", "http", "a.com", "/x", Some("y=1")),
            p.primary_key("r", "http", "a.com", "/x", None)
        );
    }

    #[test]
    fn key_query_selects_parameters() {
        let none = policy(KeyQuery::None);
        assert_eq!(
            none.primary_key("r", "http", "h", "/x", Some("a=1")),
            none.primary_key("r", "http", "h", "/x", None)
        );
        let only = policy(KeyQuery::Only(vec!["page".into()]));
        assert_eq!(
            only.primary_key("r", "http", "h", "/x", Some("page=2&utm=abc")),
            only.primary_key("r", "http", "h", "/x", Some("utm=zzz&page=2"))
        );
        assert_ne!(
            only.primary_key("r", "http", "h", "/x", Some("page=2")),
            only.primary_key("r", "http", "h", "/x", Some("page=3"))
        );
        let two = policy(KeyQuery::Only(vec!["a".into(), "b".into()]));
        assert_ne!(
            two.primary_key("r", "http", "h", "/x", Some("a=%26&a=b")),
            two.primary_key("r", "http", "h", "/x", Some("b=%26&b=b")),
            "values cannot pass for names"
        );
    }

    #[test]
    fn rfc_9111_directives_decide_storage() {
        let p = policy(KeyQuery::All);
        let resp = |status: u16, headers: &[(&str, &str)]| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).unwrap();
            }
            r
        };
        let cacheable = |r: &ResponseHeader, authz: bool| {
            matches!(p.response_cacheable(r, authz), RespCacheable::Cacheable(_))
        };
        assert!(cacheable(&resp(200, &[]), false));
        assert!(!cacheable(&resp(500, &[]), false), "no default for 500");
        assert!(cacheable(
            &resp(500, &[("cache-control", "max-age=5")]),
            false
        ));
        assert!(!cacheable(
            &resp(200, &[("cache-control", "no-store")]),
            false
        ));
        assert!(!cacheable(
            &resp(200, &[("cache-control", "private, max-age=9")]),
            false
        ));
        assert!(!cacheable(&resp(200, &[("set-cookie", "a=b")]), false));
        assert!(cacheable(
            &resp(
                200,
                &[
                    ("set-cookie", "a=b"),
                    ("cache-control", "public, max-age=9")
                ]
            ),
            false
        ));
        assert!(
            !cacheable(&resp(200, &[]), true),
            "Authorization needs public"
        );
        assert!(cacheable(
            &resp(200, &[("cache-control", "s-maxage=9")]),
            true
        ));
        assert!(!cacheable(&resp(200, &[("vary", "*")]), false));
        assert!(!cacheable(
            &resp(206, &[("cache-control", "max-age=9")]),
            false
        ));
        match p.response_cacheable(
            &resp(
                200,
                &[
                    ("set-cookie", "a=b"),
                    ("cache-control", "public, max-age=9"),
                ],
            ),
            false,
        ) {
            RespCacheable::Cacheable(meta) => {
                assert!(
                    !meta.headers().contains_key("set-cookie"),
                    "cookie not stored"
                )
            }
            _ => panic!("public responses are stored"),
        }
        let swr = CachePolicy {
            stale_while_revalidate: 30,
            stale_if_error: 30,
            ..policy(KeyQuery::All)
        };
        match swr.response_cacheable(&resp(200, &[("cache-control", "no-cache")]), false) {
            RespCacheable::Cacheable(meta) => {
                assert_eq!(
                    (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
                    (0, 0)
                )
            }
            _ => panic!("no-cache is stored"),
        }
        match p.response_cacheable(&resp(200, &[("cache-control", "max-age=0")]), false) {
            RespCacheable::Cacheable(meta) => assert!(!meta.is_fresh(SystemTime::now())),
            _ => panic!("max-age=0 is stored, always stale"),
        }
    }

    #[test]
    fn variance_follows_configured_and_response_vary_headers() {
        let p = policy(KeyQuery::All);
        let req = |headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).unwrap();
            }
            r
        };
        let none = HeaderMap::new();
        let gzip = p.variance(
            &req(&[("accept-encoding", "gzip")]),
            &none,
            ClientIdentity::Nobody,
        );
        let br = p.variance(
            &req(&[("accept-encoding", "br")]),
            &none,
            ClientIdentity::Nobody,
        );
        assert_ne!(gzip, br);
        let alice = p.variance(
            &req(&[("accept-encoding", "gzip")]),
            &none,
            ClientIdentity::Consumer("alice"),
        );
        let bob = p.variance(
            &req(&[("accept-encoding", "gzip")]),
            &none,
            ClientIdentity::Consumer("bob"),
        );
        assert!(alice != bob && alice != gzip);
        let nobody = policy(KeyQuery::None);
        assert!(
            CachePolicy {
                vary_headers: Vec::new(),
                ..nobody
            }
            .variance(&req(&[]), &none, ClientIdentity::Nobody)
            .is_some(),
            "never None: Pingora would serve any stored variant"
        );
        let mut vary = HeaderMap::new();
        vary.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
        let en = p.variance(
            &req(&[("accept-encoding", "gzip"), ("accept-language", "en")]),
            &vary,
            ClientIdentity::Nobody,
        );
        let fr = p.variance(
            &req(&[("accept-encoding", "gzip"), ("accept-language", "fr")]),
            &vary,
            ClientIdentity::Nobody,
        );
        assert_ne!(en, fr);
    }

    #[test]
    fn identities_are_tagged_by_kind() {
        let p = policy(KeyQuery::All);
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let none = HeaderMap::new();
        let consumer = p.variance(&req, &none, ClientIdentity::Consumer("alice"));
        let subject = p.variance(&req, &none, ClientIdentity::Subject("alice"));
        let nobody = p.variance(&req, &none, ClientIdentity::Nobody);
        assert!(consumer != subject && consumer != nobody && subject != nobody);
        assert_ne!(p.variance(&req, &none, ClientIdentity::Subject("")), nobody);
    }

    #[test]
    fn bodies_and_cookies_bypass_unless_cookies_are_opted_in() {
        let p = policy(KeyQuery::All);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(p.bypass(&req, false), None);
        assert_eq!(p.bypass(&req, true), Some(Bypass::Body));
        req.insert_header("cookie", "session=a").unwrap();
        assert_eq!(p.bypass(&req, false), Some(Bypass::Cookie));
        let cookies = CachePolicy {
            cache_cookies: true,
            ..policy(KeyQuery::All)
        };
        assert_eq!(cookies.bypass(&req, false), None);
        let none = HeaderMap::new();
        let a = cookies.variance(&req, &none, ClientIdentity::Nobody);
        req.insert_header("cookie", "session=b").unwrap();
        let b = cookies.variance(&req, &none, ClientIdentity::Nobody);
        assert_ne!(a, b, "the cookie selects the variant");
    }

    #[test]
    fn an_empty_port_is_the_default_port() {
        let p = policy(KeyQuery::All);
        let key = |host| p.primary_key("r", "http", host, "/", None);
        assert_eq!(key("a.com:"), key("a.com"));
        assert_eq!(key("a.com:"), key("a.com:80"));
    }
}
