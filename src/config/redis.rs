//! `[redis]`: the store shared by plugins that keep cluster-wide state (`rate-limit` with
//! `policy = "redis"`). Checked here, connected lazily on first use.

use super::document::Document;
use super::error::KeyPath;
use super::model::{
    RedisSection, DEFAULT_REDIS_KEY_PREFIX, DEFAULT_REDIS_POOL_SIZE, DEFAULT_REDIS_TIMEOUT,
};
use gantry_plugins::gateway::{check_redis_url, RedisSettings, RedisStore, RedisUnavailable};
use std::sync::Arc;
use std::time::Duration;
use toml::de::DeValue;
use toml::Spanned;

/// The longest `timeout` accepted: it bounds the time a request waits for Redis.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest `timeout` accepted.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The largest `pool_size` accepted.
const MAX_POOL_SIZE: usize = 1024;

/// Builds the store from `[redis]`, reporting problems (without quoting lines: they may hold a
/// password), or says why there is none.
pub fn store<'a>(
    doc: &mut Document<'a>,
    section: Option<Spanned<DeValue<'a>>>,
) -> Result<Arc<RedisStore>, RedisUnavailable> {
    let section = section.ok_or(RedisUnavailable::NotConfigured)?;
    build(doc, section).ok_or(RedisUnavailable::Invalid)
}

fn build<'a>(doc: &mut Document<'a>, section: Spanned<DeValue<'a>>) -> Option<Arc<RedisStore>> {
    let span = section.span();
    let key = KeyPath::root("redis");
    let errors_before = doc.error_count();
    let parsed: Option<RedisSection> = doc.deserialize(&key, section);
    // Any problem in this section may quote a URL with its password: never echo the line.
    doc.redact_since(errors_before);
    let s = parsed?;
    let from_list = !s.urls.is_empty();
    let urls: Vec<Spanned<String>> = match (s.url, from_list) {
        (Some(url), false) => vec![url],
        (None, true) => s.urls,
        (Some(url), true) => {
            doc.report(
                Some(url.span()),
                &key.child("url"),
                "`url` and `urls` are both set",
                Some("use `url` for one server, or `urls` with cluster = true".into()),
            );
            Vec::new()
        }
        (None, false) => {
            doc.report(
                Some(span.clone()),
                &key,
                "[redis] needs `url`",
                Some("add url = \"redis://127.0.0.1:6379\"".into()),
            );
            Vec::new()
        }
    };
    if urls.len() > 1 && !s.cluster {
        doc.report(
            Some(span.clone()),
            &key.child("urls"),
            "several `urls` need cluster = true",
            Some("set cluster = true for Redis Cluster, or use `url` for one server".into()),
        );
    }
    for (i, url) in urls.iter().enumerate() {
        if let Err(e) = check_redis_url(url.get_ref()) {
            let url_key = if from_list {
                key.child("urls").index(i)
            } else {
                key.child("url")
            };
            doc.report_redacted(Some(url.span()), &url_key, e);
        }
    }
    let timeout = s.timeout.map_or(DEFAULT_REDIS_TIMEOUT, |d| d.0);
    if timeout < MIN_TIMEOUT || timeout > MAX_TIMEOUT {
        doc.report(
            Some(span.clone()),
            &key.child("timeout"),
            format!("timeout must be between 1ms and {}s", MAX_TIMEOUT.as_secs()),
            Some("requests wait at most this long for Redis; 50ms suits a local network".into()),
        );
    }
    let pool_size = s.pool_size.unwrap_or(DEFAULT_REDIS_POOL_SIZE);
    if pool_size == 0 || pool_size > MAX_POOL_SIZE {
        doc.report(
            Some(span.clone()),
            &key.child("pool_size"),
            format!("pool_size must be between 1 and {MAX_POOL_SIZE}"),
            None,
        );
    }
    let key_prefix = s
        .key_prefix
        .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.into());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}']) {
        doc.report(
            Some(span.clone()),
            &key.child("key_prefix"),
            "key_prefix must be non-empty and without `{` or `}`",
            Some("braces would change the Redis Cluster hash tag of every key".into()),
        );
    }
    if doc.error_count() > errors_before {
        return None;
    }
    let settings = RedisSettings {
        urls: urls.into_iter().map(Spanned::into_inner).collect(),
        cluster: s.cluster,
        timeout,
        pool_size,
        key_prefix,
    };
    match RedisStore::new(settings) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            doc.report_redacted(Some(span), &key, e);
            None
        }
    }
}
