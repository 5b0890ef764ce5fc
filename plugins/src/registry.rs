//! The explicit list of built-in plugins and how each is built from its configuration.

use crate::builtin::{
    acl, basic_auth, body_limit, cache, concurrency_limit, cors, forward_auth, ip_restriction,
    jwt_auth, key_auth, mtls_auth, oauth2_introspection, rate_limit, request_transform,
    response_transform,
};
use crate::services::Clusters;
use crate::slots::SlotAllocator;
use crate::support::consumer::Consumers;
use crate::support::redis_store::{RedisStore, RedisUnavailable};
use crate::support::template::TemplateScope;
use crate::Plugin;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Every built-in plugin with its fixed place in a chain (higher runs first), in chain order.
/// The one place priorities are written; `docs/plugins.md` lists the same table (a test
/// compares them).
pub const BUILTINS: &[(&str, i32)] = &[
    // Access rules first: a refused address costs nothing else.
    (ip_restriction::NAME, 3000),
    // Preflights carry no credentials and are answered before authentication.
    (cors::NAME, 2950),
    // An oversized upload is refused before any authentication work.
    (body_limit::NAME, 2900),
    // A certificate verified in the handshake costs only a lookup.
    (mtls_auth::NAME, 2030),
    (jwt_auth::NAME, 2020),
    (oauth2_introspection::NAME, 2015),
    (key_auth::NAME, 2010),
    (basic_auth::NAME, 2000),
    // After the local checks: it costs a call to another service.
    (forward_auth::NAME, 1950),
    // Authorization needs the consumer authentication found.
    (acl::NAME, 1900),
    (rate_limit::NAME, 1100),
    (concurrency_limit::NAME, 1000),
    // After authentication and limits, so `$consumer` and `$jwt.*` are known, and after their
    // consumer headers, so a transform can still change them.
    (request_transform::NAME, 500),
    (response_transform::NAME, 500),
    (cache::NAME, 100),
];

/// Every built-in plugin name, for configuration errors ("did you mean").
pub fn names() -> impl Iterator<Item = &'static str> + Clone {
    BUILTINS.iter().map(|(name, _)| *name)
}

/// The priority of the built-in plugin `name` (0 for a name not in [`BUILTINS`]).
pub fn priority(name: &str) -> i32 {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, priority)| *priority)
}

/// Where a plugin instance is configured.
#[derive(Default)]
pub struct PluginScope {
    /// `global`, or `route:NAME`: instances never share state across scopes.
    pub name: String,
    /// What the instance's templates may refer to.
    pub templates: TemplateScope,
    /// Where stateful instances get their per-request slots.
    pub slots: SlotAllocator,
}

/// What plugins may need from the rest of the configuration.
pub struct BuildContext {
    /// `[consumers.*]`.
    pub consumers: Arc<Consumers>,
    /// `[redis]`, or why it cannot be used.
    pub redis: Result<Arc<RedisStore>, RedisUnavailable>,
    /// `[clusters.*]`, for the plugins that call one.
    pub clusters: Arc<dyn Clusters>,
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
    scope: &mut PluginScope,
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
        mtls_auth::NAME => finish(
            source
                .parse()
                .map(|c| mtls_auth::MtlsAuth::new(c, Arc::clone(&ctx.consumers))),
        ),
        acl::NAME => finish(source.parse().map(acl::Acl::new)),
        rate_limit::NAME => finish(
            source
                .parse()
                .map(|c| rate_limit::RateLimit::new(c, scope, ctx.redis.as_ref().map_err(|e| *e))),
        ),
        concurrency_limit::NAME => finish(
            source
                .parse()
                .map(|c| concurrency_limit::ConcurrencyLimit::new(c, &mut scope.slots)),
        ),
        body_limit::NAME => finish(source.parse().map(body_limit::BodyLimit::new)),
        cors::NAME => finish(source.parse().map(|c| cors::Cors::new(c, &mut scope.slots))),
        response_transform::NAME => finish(source.parse().map(|c| {
            response_transform::ResponseTransform::new(c, &scope.templates, &mut scope.slots)
        })),
        request_transform::NAME => finish(source.parse().map(|c| {
            request_transform::RequestTransform::new(c, &scope.templates, &mut scope.slots)
        })),
        cache::NAME => finish(source.parse().map(cache::Cache::new)),
        oauth2_introspection::NAME => finish(
            source
                .parse()
                .map(|c| oauth2_introspection::Introspection::new(c, Arc::clone(&ctx.consumers))),
        ),
        forward_auth::NAME => finish(
            source
                .parse()
                .map(|c| forward_auth::ForwardAuth::new(c, ctx, &mut scope.slots)),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/plugins.md`'s order table lists exactly [`BUILTINS`], in the same order.
    #[test]
    fn the_documented_order_is_the_registry_order() {
        let doc = include_str!("../../docs/plugins.md");
        let rows: Vec<(String, i32)> = doc
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let priority = cells.next()?.parse().ok()?;
                let plugin = cells.next()?;
                let name = plugin.strip_prefix('[')?.split(']').next()?;
                Some((name.to_string(), priority))
            })
            .collect();
        let registry: Vec<(String, i32)> = BUILTINS
            .iter()
            .map(|(name, priority)| (name.to_string(), *priority))
            .collect();
        assert_eq!(
            rows, registry,
            "docs/plugins.md and registry::BUILTINS differ"
        );
    }

    /// A configuration without clusters.
    struct NoClusters;

    impl Clusters for NoClusters {
        fn client(&self, name: &str) -> Result<Arc<dyn crate::ClusterClient>, String> {
            Err(format!("cluster `{name}` is not defined"))
        }
    }

    /// A source whose every table failed to deserialize.
    struct Unparsable;

    impl ConfigSource for Unparsable {
        fn parse<T: DeserializeOwned>(&mut self) -> Option<T> {
            None
        }
    }

    #[test]
    fn every_listed_plugin_is_built_by_the_registry_and_nothing_else() {
        let mut scope = PluginScope::default();
        let ctx = BuildContext {
            consumers: Arc::new(Consumers::default()),
            redis: Err(RedisUnavailable::NotConfigured),
            clusters: Arc::new(NoClusters),
        };
        for (name, priority) in BUILTINS {
            let built = build(name, &mut scope, &mut Unparsable, &ctx);
            assert!(
                matches!(built, Build::Invalid),
                "{name} is listed but not built"
            );
            assert_eq!(super::priority(name), *priority);
        }
        let unknown = build("no-such-plugin", &mut scope, &mut Unparsable, &ctx);
        assert!(matches!(unknown, Build::Unknown));
    }

    /// A source holding one table as JSON.
    struct Json(Option<serde_json::Value>);

    impl ConfigSource for Json {
        fn parse<T: DeserializeOwned>(&mut self) -> Option<T> {
            serde_json::from_value(self.0.take()?).ok()
        }
    }

    fn ready(name: &str, table: serde_json::Value, scope: &mut PluginScope) -> Arc<dyn Plugin> {
        let ctx = BuildContext {
            consumers: Arc::new(Consumers::default()),
            redis: Err(RedisUnavailable::NotConfigured),
            clusters: Arc::new(NoClusters),
        };
        match build(name, scope, &mut Json(Some(table)), &ctx) {
            Build::Ready(plugin) => plugin,
            Build::Failed(why) => panic!("{name}: {why}"),
            _ => panic!("{name} was not built"),
        }
    }

    #[test]
    fn built_plugins_carry_their_name_and_priority_and_get_their_own_slots() {
        let mut scope = PluginScope::default();
        let cors = ready(
            "cors",
            serde_json::json!({"allow_origins": ["*"]}),
            &mut scope,
        );
        let limit = ready(
            "concurrency-limit",
            serde_json::json!({"max_inflight": 1}),
            &mut scope,
        );
        assert_eq!((cors.name(), cors.priority()), ("cors", priority("cors")));
        assert_eq!(limit.priority(), priority("concurrency-limit"));
        // Two stateful instances took two slots; a third starts after them.
        assert_eq!(format!("{:?}", scope.slots.claim::<()>()), "Slot(2)");
        let chain = crate::PluginChain::new(vec![limit, cors]);
        assert_eq!(chain.names(), ["cors", "concurrency-limit"]);
        assert!(chain.answers_preflights && !chain.authenticates);
    }

    #[test]
    fn values_that_deserialize_but_cannot_work_fail_with_a_reason() {
        let ctx = BuildContext {
            consumers: Arc::new(Consumers::default()),
            redis: Err(RedisUnavailable::NotConfigured),
            clusters: Arc::new(NoClusters),
        };
        let table = serde_json::json!({"max_inflight": 0});
        let built = build(
            "concurrency-limit",
            &mut PluginScope::default(),
            &mut Json(Some(table)),
            &ctx,
        );
        assert!(matches!(built, Build::Failed(why) if why.contains("max_inflight")));
        let redis =
            serde_json::json!({"limits": [{"requests": 1, "per": "1s"}], "policy": "redis"});
        let built = build(
            "rate-limit",
            &mut PluginScope::default(),
            &mut Json(Some(redis)),
            &ctx,
        );
        assert!(matches!(built, Build::Failed(why) if why.contains("redis")));
    }
}
