//! What a limit counts by (`key = "consumer"`, `["route", "header:x-tenant"]`, …), reduced to
//! one 64-bit hash per request without allocating.
//!
//! A request that lacks a part (no consumer yet, no such header) is counted under its client IP
//! for that part, so it is never silently unlimited.

use crate::PluginState;
use http::HeaderName;
use pingora::http::RequestHeader;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::hash::{DefaultHasher, Hash, Hasher};

/// `key` as written: one part or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeySpec {
    /// `key = "client_ip"`.
    One(String),
    /// `key = ["route", "header:x-tenant"]`.
    Many(Vec<String>),
}

enum Part {
    ClientIp,
    Consumer,
    Route,
    Header(HeaderName),
}

/// A compiled key.
pub struct LimitKey {
    parts: Vec<Part>,
}

impl LimitKey {
    /// Parses `client_ip | consumer | route | header:NAME`, or a list of them.
    pub fn new(spec: &KeySpec) -> Result<Self, String> {
        let texts: Vec<&str> = match spec {
            KeySpec::One(one) => vec![one.as_str()],
            KeySpec::Many(many) => many.iter().map(String::as_str).collect(),
        };
        if texts.is_empty() {
            return Err("`key` needs at least one part".into());
        }
        let parts = texts
            .iter()
            .map(|t| match *t {
                "client_ip" => Ok(Part::ClientIp),
                "consumer" => Ok(Part::Consumer),
                "route" => Ok(Part::Route),
                other => match other.strip_prefix("header:") {
                    Some(name) => HeaderName::from_bytes(name.as_bytes())
                        .map(Part::Header)
                        .map_err(|_| format!("`{name}` is not a valid header name")),
                    None => Err(format!(
                        "invalid key `{other}`: use client_ip, consumer, route or header:NAME"
                    )),
                },
            })
            .collect::<Result<_, _>>()?;
        Ok(LimitKey { parts })
    }

    /// The request's key as stable, readable text for a shared store: the same request gives
    /// the same text in every gateway process and version. Long or unusual header values are
    /// replaced by a digest.
    pub fn write_text(&self, req: &RequestHeader, state: &PluginState, out: &mut String) {
        let ip = |out: &mut String, tag: &str| {
            out.push_str(tag);
            match state.client.ip {
                Some(ip) => {
                    let _ = write!(out, "{ip}");
                }
                None => out.push('-'),
            }
        };
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            match part {
                Part::ClientIp => ip(out, "ip="),
                Part::Route => {
                    out.push_str("route=");
                    out.push_str(&state.route);
                }
                Part::Consumer => match &state.consumer {
                    Some(c) => {
                        out.push_str("consumer=");
                        out.push_str(&c.name);
                    }
                    None => ip(out, "anonymous-ip="),
                },
                Part::Header(name) => match req.headers.get(name) {
                    Some(v) => {
                        out.push_str("header=");
                        let bytes = v.as_bytes();
                        let plain = bytes.len() <= 64
                            && bytes
                                .iter()
                                .all(|b| b.is_ascii_graphic() && !b"|{}".contains(b));
                        match std::str::from_utf8(bytes) {
                            Ok(text) if plain => out.push_str(text),
                            _ => {
                                out.push_str("sha256:");
                                out.push_str(&hex::encode(&Sha256::digest(bytes)[..16]));
                            }
                        }
                    }
                    None => ip(out, "no-header-ip="),
                },
            }
        }
    }

    /// The request's key.
    pub fn hash(&self, req: &RequestHeader, state: &PluginState) -> u64 {
        let mut h = DefaultHasher::new();
        for part in &self.parts {
            match part {
                Part::ClientIp => (0u8, state.client.ip).hash(&mut h),
                Part::Route => (1u8, &*state.route).hash(&mut h),
                Part::Consumer => match &state.consumer {
                    Some(c) => (2u8, &*c.name).hash(&mut h),
                    None => (3u8, state.client.ip).hash(&mut h),
                },
                Part::Header(name) => match req.headers.get(name) {
                    Some(v) => (4u8, v.as_bytes()).hash(&mut h),
                    None => (5u8, state.client.ip).hash(&mut h),
                },
            }
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{consumers, request, state};

    fn key(parts: &[&str]) -> LimitKey {
        LimitKey::new(&KeySpec::Many(
            parts.iter().map(|p| p.to_string()).collect(),
        ))
        .expect("valid key")
    }

    fn text(key: &LimitKey, req: &RequestHeader, state: &PluginState) -> String {
        let mut out = String::new();
        key.write_text(req, state, &mut out);
        out
    }

    #[test]
    fn parts_are_read_from_the_request_and_its_state() {
        let k = key(&["route", "header:x-tenant", "consumer"]);
        let req = request("GET", "/", &[("x-tenant", "acme")]);
        let mut s = state("users", "10.0.0.1");
        assert_eq!(
            text(&k, &req, &s),
            "route=users|header=acme|anonymous-ip=10.0.0.1"
        );
        s.consumer = consumers(&[("alice", &[], &["alice-key-0123456789"])])
            .by_key(b"alice-key-0123456789")
            .cloned();
        assert_eq!(text(&k, &req, &s), "route=users|header=acme|consumer=alice");
    }

    #[test]
    fn a_missing_header_counts_by_client_and_odd_values_by_digest() {
        let k = key(&["header:x-tenant"]);
        let bare = request("GET", "/", &[]);
        let (a, b) = (state("r", "10.0.0.1"), state("r", "10.0.0.2"));
        assert_eq!(text(&k, &bare, &a), "no-header-ip=10.0.0.1");
        assert_ne!(k.hash(&bare, &a), k.hash(&bare, &b));
        let odd = request("GET", "/", &[("x-tenant", "a|b{c}")]);
        assert!(text(&k, &odd, &a).starts_with("header=sha256:"));
        let long = "t".repeat(65);
        let long = request("GET", "/", &[("x-tenant", long.as_str())]);
        assert!(text(&k, &long, &a).starts_with("header=sha256:"));
    }

    #[test]
    fn the_hash_is_stable_and_tells_keys_apart() {
        let k = key(&["client_ip", "header:x-tenant"]);
        let acme = request("GET", "/", &[("x-tenant", "acme")]);
        let other = request("GET", "/", &[("x-tenant", "other")]);
        let s = state("r", "10.0.0.1");
        assert_eq!(k.hash(&acme, &s), k.hash(&acme, &s));
        assert_ne!(k.hash(&acme, &s), k.hash(&other, &s));
    }

    #[test]
    fn key_mistakes_are_errors() {
        for bad in ["cookie:x", "header:bad name", ""] {
            assert!(LimitKey::new(&KeySpec::One(bad.into())).is_err(), "{bad}");
        }
        assert!(LimitKey::new(&KeySpec::Many(Vec::new())).is_err());
    }
}
