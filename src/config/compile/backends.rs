//! Compiles a cluster's `backends`, `dns_refresh` and `server.resolvers`: IP addresses as
//! written, host names resolved once here (through the same resolver the background refresh
//! uses) and kept resolved by `crate::upstream::dns`.

use super::{span_of, Compiler, MAX_WEIGHT};
use crate::config::error::KeyPath;
use crate::config::model::{BackendSpec, HumanDuration};
use crate::upstream::dns::{self, DnsBackends, NamedBackend, Nameservers};
use crate::upstream::BackendAddr;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use toml::Spanned;

/// The longest `dns_refresh`.
const MAX_DNS_REFRESH: Duration = dns::MAX_REFRESH;

/// One backend as written: an address, or a name to look up.
enum Written {
    Addr(SocketAddr),
    Name(NamedBackend),
}

/// A backend written as `host:port`, parsed (not resolved).
fn parse_backend(addr: &str, weight: usize) -> Result<Written, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(Written::Addr(a));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("backend `{addr}` has no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("backend `{addr}` has an invalid port"))?;
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.parse::<IpAddr>().is_err()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_name {
        return Err(format!(
            "backend `{addr}` is neither an IP address nor a host name"
        ));
    }
    Ok(Written::Name(NamedBackend {
        host: host.to_ascii_lowercase(),
        port,
        weight,
    }))
}

impl Compiler<'_, '_> {
    /// `server.resolvers`: `"ip:port"` nameservers (empty: the system's configuration).
    pub(super) fn resolvers(&mut self, key: &KeyPath, written: &[Spanned<String>]) -> Nameservers {
        let mut servers = Vec::with_capacity(written.len());
        for (i, r) in written.iter().enumerate() {
            match r.get_ref().parse::<SocketAddr>() {
                Ok(addr) => servers.push(addr),
                Err(_) => self.report(
                    span_of(r),
                    &key.child("resolvers").index(i),
                    format!("`{}` is not an IP address and port", r.get_ref()),
                    Some("write a nameserver like \"127.0.0.1:53\"".into()),
                ),
            }
        }
        Nameservers(servers.into())
    }

    /// A cluster's `backends` (resolved now) and, when some are host names, what keeps them
    /// resolved.
    pub(super) fn backends(
        &mut self,
        key: &KeyPath,
        specs: &[Spanned<BackendSpec>],
        dns_refresh: Option<HumanDuration>,
    ) -> (Vec<BackendAddr>, Option<DnsBackends>) {
        let hint = "write it like \"127.0.0.1:9000\" or \"backend.internal:9000\"";
        let mut written = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let bkey = key.child("backends").index(i);
            let b = spec.get_ref();
            if b.weight == 0 || b.weight > MAX_WEIGHT {
                self.report(
                    span_of(spec),
                    &bkey,
                    format!("weight must be between 1 and {MAX_WEIGHT}"),
                    Some(
                        "weights are relative: 1 and 3 send the second three times as much".into(),
                    ),
                );
                continue;
            }
            match parse_backend(&b.addr, b.weight) {
                Ok(w) => written.push((spec, bkey, w)),
                Err(e) => self.report(span_of(spec), &bkey, e, Some(hint.into())),
            }
        }
        let named: Vec<NamedBackend> = written
            .iter()
            .filter_map(|(_, _, w)| match w {
                Written::Name(n) => Some(n.clone()),
                Written::Addr(_) => None,
            })
            .collect();
        let mut lookups = if named.is_empty() {
            Vec::new()
        } else {
            dns::resolve_at_load(&self.nameservers, &named)
        }
        .into_iter();
        let mut backends: Vec<BackendAddr> = Vec::new();
        let mut fixed = Vec::new();
        for (spec, bkey, w) in written {
            let resolved = match w {
                Written::Addr(addr) => {
                    let b = BackendAddr {
                        addr,
                        weight: spec.get_ref().weight,
                        host: String::new(),
                    };
                    fixed.push(b.clone());
                    vec![b]
                }
                Written::Name(_) => match lookups.next() {
                    Some(Ok(addrs)) => addrs,
                    Some(Err(e)) => {
                        let fix =
                            "check the name, or set server.resolvers to a nameserver that knows it";
                        self.report(span_of(spec), &bkey, e, Some(fix.into()));
                        continue;
                    }
                    None => continue,
                },
            };
            if resolved
                .iter()
                .any(|a| backends.iter().any(|x| x.addr == a.addr))
            {
                self.report(
                    span_of(spec),
                    &bkey,
                    format!("backend `{}` is listed twice", spec.get_ref().addr),
                    Some("list each backend once and use weight to send it more traffic".into()),
                );
                continue;
            }
            backends.extend(resolved);
        }
        let refresh = dns_refresh.map(|d| d.0);
        match refresh {
            Some(d) if d.is_zero() || d > MAX_DNS_REFRESH => self.report(
                None,
                &key.child("dns_refresh"),
                format!("dns_refresh must be more than 0s and at most {}", humantime::format_duration(MAX_DNS_REFRESH)),
                Some("leave it out to follow each record's TTL".into()),
            ),
            Some(_) if named.is_empty() => self.report(
                None,
                &key.child("dns_refresh"),
                "dns_refresh only applies to backends written as host names, and every backend is an IP address",
                Some("remove dns_refresh".into()),
            ),
            _ => {}
        }
        let dns = (!named.is_empty()).then(|| DnsBackends {
            nameservers: self.nameservers.clone(),
            refresh,
            fixed,
            named,
        });
        (backends, dns)
    }
}
