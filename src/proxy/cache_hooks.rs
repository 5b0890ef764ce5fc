//! What the cache hooks need from a request: the route's caching rules and who the client is.

use super::RequestCtx;
use gantry_plugins::cache::ClientIdentity;

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
pub(super) fn cache_policy(ctx: &RequestCtx) -> Option<&gantry_plugins::cache::CachePolicy> {
    ctx.route.as_ref()?.plugins.cache.as_deref()
}
