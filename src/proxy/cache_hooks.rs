//! What the cache hooks need from a request: the route's caching rules and who the client is.

use super::request::request_host;
use super::Gateway;
use super::RequestCtx;
use gantry_plugins::gateway::ClientIdentity;
use http::header;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

/// Who the client is for the cache: its consumer, else the subject of its verified token;
/// `None` when the route authenticates and its plugin produced neither (not cached).
pub(super) fn client_identity(ctx: &RequestCtx) -> Option<ClientIdentity<'_>> {
    match (&ctx.state.consumer, &ctx.state.jwt_claims) {
        (Some(consumer), _) => Some(ClientIdentity::Consumer(&consumer.name)),
        (None, Some(claims)) => claims
            .get("sub")
            .and_then(|s| s.as_str())
            .map(ClientIdentity::Subject),
        (None, None) if ctx.route.as_ref()?.plugins.authenticates => None,
        (None, None) => Some(ClientIdentity::Nobody),
    }
}

/// The matched route's caching rules.
pub(super) fn cache_policy(ctx: &RequestCtx) -> Option<&gantry_plugins::gateway::CachePolicy> {
    ctx.route.as_ref()?.plugins.cache.as_deref()
}

impl Gateway {
    /// Caches GET and HEAD requests (not upgrades) of routes with the `cache` plugin.
    pub(super) fn enable_cache(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(config) = ctx.config.as_ref().filter(|c| c.caching) else {
            return Ok(());
        };
        let cache = crate::cache::node(&config.cache);
        let Some(policy) = cache_policy(ctx) else {
            return Ok(());
        };
        // Runs after the request plugins: an authenticated route knows who the client is, and
        // one whose plugin let the client through unidentified (`anonymous`, a token without
        // `sub`) does not use the cache.
        let has_body = !session.is_body_empty();
        let cacheable = pingora::cache::filters::request_cacheable(session.req_header())
            && !session.as_downstream().is_upgrade_req()
            && policy.bypass(session.req_header(), has_body).is_none()
            && client_identity(ctx).is_some();
        if cacheable {
            cache.enable(&mut session.cache);
        }
        Ok(())
    }

    pub(super) fn cache_key(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let Some(policy) = cache_policy(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a cache policy");
        };
        // The URL the client asked for: behind a trusted proxy, the scheme and host it forwarded.
        let req = session.req_header();
        let forwarded = |name: &str| {
            ctx.peer_trusted
                .then(|| req.headers.get(name)?.to_str().ok())
                .flatten()
        };
        let scheme = match forwarded("x-forwarded-proto") {
            Some("https") => "https",
            Some("http") => "http",
            _ => ctx.state.client.scheme.as_str(),
        };
        let host = forwarded("x-forwarded-host").unwrap_or_else(|| request_host(req));
        // A traffic split's clusters may answer differently: each keeps its own entries.
        let split = ctx
            .route
            .as_ref()
            .is_some_and(|r| matches!(r.action, crate::router::RouteAction::Split(_)));
        let scope: std::borrow::Cow<'_, str> = match (&ctx.cluster, split) {
            (Some(cluster), true) => format!("{}\u{0}{}", ctx.state.route, cluster.name).into(),
            _ => (*ctx.state.route).into(),
        };
        let key = policy.primary_key(&scope, scheme, host, req.uri.path(), req.uri.query());
        Ok(crate::cache::key_for(key))
    }

    pub(super) fn response_cacheability(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(policy) = cache_policy(ctx) else {
            return Ok(RespCacheable::Uncacheable(
                pingora::cache::NoCacheReason::OriginNotCache,
            ));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(header::AUTHORIZATION);
        Ok(policy.response_cacheable(resp, authorization))
    }

    pub(super) fn cache_variance(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &pingora::http::RequestHeader,
    ) -> Option<HashBinary> {
        let identity = client_identity(ctx)?;
        cache_policy(ctx)?.variance(req, meta.headers(), identity)
    }
}
