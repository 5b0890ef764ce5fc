//! Integration tests: the real gateway binary, real upstreams, real HTTP on loopback.

mod admin;
mod aggregate;
mod balancing;
mod body_edits;
mod cache;
mod cli;
mod common;
mod compression;
mod conformance;
mod credentials;
mod dns;
mod docs;
mod errors;
mod jwt;
mod mirror;
mod observability;
mod plugins;
mod proxying;
mod rate_limiting;
mod reload;
mod resilience;
mod routing;
mod tls;
mod tracing;
mod traffic;
mod websocket;
