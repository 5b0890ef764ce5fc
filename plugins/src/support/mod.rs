//! What the built-in plugins share; the gateway reaches the parts it needs through
//! [`crate::gateway`].

pub(crate) mod cache_status;
pub(crate) mod config_types;
pub(crate) mod consumer;
pub(crate) mod credentials;
pub(crate) mod failure_limit;
pub(crate) mod header_aliases;
pub(crate) mod header_edits;
pub(crate) mod json_body;
pub(crate) mod jwks;
pub(crate) mod limit_key;
pub(crate) mod outbound;
pub(crate) mod password_checks;
pub(crate) mod query;
pub(crate) mod redis_store;
pub(crate) mod template;
pub(crate) mod token_checks;
