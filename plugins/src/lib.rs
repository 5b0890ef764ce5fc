//! Gantry's plugin system.
//!
//! - The API a plugin implements and the gateway drives: [`Plugin`] and its outcomes
//!   ([`Flow`], [`Rejection`], [`Answer`]) in `plugin`, the request's [`RequestView`] and
//!   [`PluginState`] in `state`, plugin-private [`Slots`] in `slots`, and a route's
//!   [`PluginChain`], which runs one phase per call, in `chain`.
//! - `client_cert`: the identities of a verified TLS client certificate
//!   ([`ClientCertificate`]), which the gateway reads once per connection.
//! - [`registry`]: every built-in plugin, its fixed priority, and how it is built from its
//!   configuration.
//! - `builtin/`: one module per built-in plugin, each with its typed `Config`
//!   (`deny_unknown_fields`).
//! - `support/`: what the plugins share (credentials, templates, JSON bodies, Redis, limit
//!   keys...), private to this crate.
//! - `services`: the calls a plugin makes through the gateway's clusters ([`Clusters`],
//!   [`ClusterClient`]), which the gateway implements.
//! - [`trace_events`]: the decisions a sampled request's plugins record for its trace.
//! - [`gateway`]: the one module the gateway imports beyond the API (templates, query parsing,
//!   cache status and policy, consumers, Redis, config value types).
//!
//! A plugin is configured globally (`[plugins.NAME]`, every route) or per route
//! (`[routes.R.plugins.NAME]`, replacing the global instance on that route; `enabled = false`
//! switches it off there). Chains are compiled per route when the configuration loads and are
//! ordered by each kind's fixed [`Plugin::priority`] (access control before authentication
//! before rate limiting before transforms), so nothing is looked up by name per request.
//!
//! Plugins never write responses: they return [`Flow::Reject`] and the gateway writes one
//! problem+json response, so status, headers and request id stay consistent. No hook sees
//! Pingora's `Session`: a chain also runs on a request that never arrived on a connection.
#![forbid(unsafe_code)]

mod builtin;
mod chain;
mod client_cert;
pub mod gateway;
mod plugin;
#[cfg(test)]
mod props;
pub mod registry;
mod services;
mod slots;
mod state;
mod support;
#[cfg(test)]
mod testing;
pub mod trace_events;

pub use chain::PluginChain;
pub use client_cert::ClientCertificate;
pub use plugin::{Answer, Flow, Phases, Plugin, Rejection};
pub use services::{ClusterClient, Clusters, ServiceAnswer, ServiceFailure};
pub use slots::{Slot, SlotAllocator, Slots};
pub use state::{Claims, ClientFacts, PeerCertificate, PluginState, RequestView, Scheme};
