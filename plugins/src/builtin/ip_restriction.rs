//! `ip-restriction`: allow or deny requests by client IP or CIDR block.
//!
//! The client IP honours `server.trusted_proxies`: `X-Forwarded-For` is only believed from a
//! trusted peer, so a client cannot spoof its way past the rule.

use crate::{Flow, Phases, Plugin, Rejection, RequestView};
use async_trait::async_trait;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// The configuration name.
pub const NAME: &str = "ip-restriction";

/// `[plugins.ip-restriction]` / `[routes.R.plugins.ip-restriction]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Only these addresses or blocks may pass. Default: not set.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These addresses or blocks are refused. Default: not set.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A compiled allow or deny list.
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRestriction {
    /// Compiles `config`; exactly one of `allow` and `deny` must be set.
    pub fn new(config: Config) -> Result<Self, String> {
        if config.allow.is_empty() == config.deny.is_empty() {
            return Err("set exactly one of `allow` and `deny`".into());
        }
        Ok(IpRestriction {
            allow: parse_nets(&config.allow)?,
            deny: parse_nets(&config.deny)?,
        })
    }

    fn permits(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            Some(ip) if !self.allow.is_empty() => self.allow.iter().any(|n| n.contains(&ip)),
            Some(ip) => !self.deny.iter().any(|n| n.contains(&ip)),
            // Without a client address nothing can be allowed; a deny list has nothing to match.
            None => self.allow.is_empty(),
        }
    }
}

fn parse_nets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))
        })
        .collect()
}

#[async_trait]
impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        if self.permits(request.client_ip()) {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Reject(Rejection {
            status: 403,
            slug: "ip-forbidden",
            title: "Forbidden by IP rule",
            detail: "requests from this address are not allowed here".into(),
            headers: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: &[&str], deny: &[&str]) -> Result<IpRestriction, String> {
        IpRestriction::new(Config {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn allow_and_deny_lists() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let allow = rule(&["10.0.0.0/8", "192.168.1.7"], &[]).expect("valid");
        assert!(allow.permits(ip("10.1.2.3")));
        assert!(allow.permits(ip("192.168.1.7")));
        assert!(!allow.permits(ip("192.168.1.8")));
        assert!(!allow.permits(None));
        let deny = rule(&[], &["203.0.113.0/24"]).expect("valid");
        assert!(!deny.permits(ip("203.0.113.9")));
        assert!(deny.permits(ip("198.51.100.1")));
    }

    #[test]
    fn config_mistakes_are_errors() {
        assert!(rule(&[], &[]).is_err());
        assert!(rule(&["10.0.0.0/8"], &["10.1.0.0/16"]).is_err());
        assert_eq!(
            rule(&["10.0.0.0/33"], &[]).err().as_deref(),
            Some("`10.0.0.0/33` is not an IP address or CIDR block")
        );
    }
}
