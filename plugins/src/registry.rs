//! The explicit list of built-in plugins and how each is built from its configuration.

use crate::consumer::Consumers;
use crate::redis_store::{RedisStore, RedisUnavailable};
use crate::template::TemplateScope;
use crate::{
    acl, basic_auth, body_limit, cache, concurrency_limit, cors, ip_restriction, jwt_auth,
    key_auth, rate_limit, request_transform, response_transform, Plugin,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Every built-in plugin name, for configuration errors ("did you mean").
pub const NAMES: &[&str] = &[
    ip_restriction::NAME,
    jwt_auth::NAME,
    key_auth::NAME,
    basic_auth::NAME,
    acl::NAME,
    concurrency_limit::NAME,
    rate_limit::NAME,
    body_limit::NAME,
    cors::NAME,
    request_transform::NAME,
    response_transform::NAME,
    cache::NAME,
];

/// Where a plugin instance is configured.
pub struct PluginScope {
    /// `global`, or `route:NAME`: instances never share state across scopes.
    pub name: String,
    /// What the instance's templates may refer to.
    pub templates: TemplateScope,
}

/// What plugins may need from the rest of the configuration.
pub struct BuildContext {
    /// `[consumers.*]`.
    pub consumers: Arc<Consumers>,
    /// `[redis]`, or why it cannot be used.
    pub redis: Result<Arc<RedisStore>, RedisUnavailable>,
}

/// Where a plugin's typed configuration comes from. The gateway implements it over its
/// spanned TOML document, so problems are reported with line, column and key.
pub trait ConfigSource {
    /// Deserializes the plugin's table; `None` when it had problems (already reported).
    fn parse<T: DeserializeOwned>(&mut self) -> Option<T>;
}

/// The result of building a plugin.
pub enum Build {
    /// No plugin has this name.
    Unknown,
    /// The table did not deserialize; the source reported why.
    Invalid,
    /// The table deserialized but its values are not usable.
    Failed(String),
    /// A ready plugin.
    Ready(Arc<dyn Plugin>),
}

/// Builds the plugin `name` from `source`, for `scope`.
pub fn build<S: ConfigSource>(
    name: &str,
    scope: &PluginScope,
    source: &mut S,
    ctx: &BuildContext,
) -> Build {
    match name {
        ip_restriction::NAME => finish(source.parse().map(ip_restriction::IpRestriction::new)),
        key_auth::NAME => finish(
            source
                .parse()
                .map(|c| key_auth::KeyAuth::new(c, Arc::clone(&ctx.consumers))),
        ),
        jwt_auth::NAME => finish(
            source
                .parse()
                .map(|c| jwt_auth::JwtAuth::new(c, Arc::clone(&ctx.consumers))),
        ),
        basic_auth::NAME => finish(
            source
                .parse()
                .map(|c| basic_auth::BasicAuth::new(c, Arc::clone(&ctx.consumers))),
        ),
        acl::NAME => finish(source.parse().map(acl::Acl::new)),
        rate_limit::NAME => finish(source.parse().map(|c| {
            rate_limit::RateLimit::new(c, &scope.name, ctx.redis.as_ref().map_err(|e| *e))
        })),
        concurrency_limit::NAME => {
            finish(source.parse().map(concurrency_limit::ConcurrencyLimit::new))
        }
        body_limit::NAME => finish(source.parse().map(body_limit::BodyLimit::new)),
        cors::NAME => finish(source.parse().map(cors::Cors::new)),
        response_transform::NAME => finish(
            source
                .parse()
                .map(|c| response_transform::ResponseTransform::new(c, &scope.templates)),
        ),
        request_transform::NAME => finish(
            source
                .parse()
                .map(|c| request_transform::RequestTransform::new(c, &scope.templates)),
        ),
        cache::NAME => finish(source.parse().map(cache::Cache::new)),
        _ => Build::Unknown,
    }
}

fn finish<P: Plugin + 'static>(built: Option<Result<P, String>>) -> Build {
    match built {
        None => Build::Invalid,
        Some(Err(e)) => Build::Failed(e),
        Some(Ok(p)) => Build::Ready(Arc::new(p)),
    }
}
