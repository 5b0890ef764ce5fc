//! The built-in plugins, one module each, listed with their priorities in
//! [`crate::registry::BUILTINS`].

pub(crate) mod acl;
pub(crate) mod basic_auth;
pub(crate) mod body_limit;
pub(crate) mod cache;
pub(crate) mod concurrency_limit;
pub(crate) mod cors;
pub(crate) mod forward_auth;
pub(crate) mod ip_restriction;
pub(crate) mod jwt_auth;
pub(crate) mod key_auth;
pub(crate) mod mtls_auth;
pub(crate) mod oauth2_introspection;
pub(crate) mod rate_limit;
pub(crate) mod request_transform;
pub(crate) mod response_transform;
