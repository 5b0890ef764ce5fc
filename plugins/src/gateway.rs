//! What the gateway uses of this crate beyond the plugin API: one module, so that the line
//! between the two crates is visible in one place.

pub use crate::builtin::cache::{CachePolicy, ClientIdentity, NAME as CACHE_PLUGIN};
pub use crate::builtin::forward_auth::decisions_total as forward_auth_decisions_total;
pub use crate::builtin::mtls_auth::CERTIFICATE_HEADERS as CLIENT_CERTIFICATE_HEADERS;
pub use crate::builtin::rate_limit::REJECTED_SLUG as RATE_LIMITED_SLUG;
pub use crate::support::cache_status::CacheStatus;
pub use crate::support::config_types::{HumanDuration, HumanSize};
pub use crate::support::consumer::{Consumer, ConsumerError, ConsumerSpec, Consumers};
pub use crate::support::header_aliases::remove_headers_and_aliases;
pub use crate::support::json_body::{is_json, not_editable, Unusable, NOT_EDITABLE};
pub use crate::support::query::{cookie, param as query_param};
pub use crate::support::redis_store::{
    check_url as check_redis_url, errors_total as redis_errors_total, RedisSettings, RedisStore,
    RedisUnavailable,
};
pub use crate::support::template::{Template, TemplateScope};
