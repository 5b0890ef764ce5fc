//! `mtls-auth`: authenticates a request by the client certificate verified in the TLS
//! handshake (against the listener's `client_ca`), mapping one of its names to a consumer
//! through `[consumers.NAME] certificate_subjects`.
//!
//! The certificate was verified once per connection; a request only looks its names up. With
//! `forward_certificate` the upstream learns the certificate too, in headers that only Gantry
//! sets (clients' copies are always removed, by the gateway).

use crate::client_cert::ClientCertificate;
use crate::support::consumer::{Consumer, Consumers};
use crate::{Flow, Phases, Plugin, PluginState, Rejection, RequestView, Scheme};
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

/// The configuration name.
pub const NAME: &str = "mtls-auth";

/// `X-Client-Cert-Subject`, `X-Client-Cert-SAN` and `X-Client-Cert-Fingerprint`: set by
/// `forward_certificate`, and removed from every client request.
pub const CERTIFICATE_HEADERS: [&str; 3] = [SUBJECT_HEADER, SAN_HEADER, FINGERPRINT_HEADER];

const SUBJECT_HEADER: &str = "x-client-cert-subject";
const SAN_HEADER: &str = "x-client-cert-san";
const FINGERPRINT_HEADER: &str = "x-client-cert-fingerprint";

/// Which names of the certificate identify the consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectClaim {
    /// The DNS names among the subject alternative names (the default).
    #[default]
    SanDns,
    /// The URIs among the subject alternative names (SPIFFE IDs).
    SanUri,
    /// The subject's common name.
    Cn,
}

/// `[routes.R.plugins.mtls-auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The certificate names looked up in `certificate_subjects`. Default `san_dns`.
    #[serde(default)]
    pub subject_claim: SubjectClaim,
    /// Send the certificate's subject, SANs and fingerprint upstream. Default `false`.
    #[serde(default)]
    pub forward_certificate: bool,
}

/// A compiled `mtls-auth`.
pub struct MtlsAuth {
    claim: SubjectClaim,
    forward_certificate: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

/// Why a verified certificate identifies no consumer.
enum Unmapped {
    /// None of its names is a consumer's.
    Unknown,
    /// Its names belong to different consumers.
    Ambiguous,
}

impl MtlsAuth {
    /// Compiles `config` against the configured consumers.
    pub fn new(config: Config, consumers: Arc<Consumers>) -> Result<Self, String> {
        Ok(MtlsAuth {
            claim: config.subject_claim,
            forward_certificate: config.forward_certificate,
            consumers,
            challenge: HeaderValue::from_static("Certificate realm=\"gantry\""),
        })
    }

    /// The one consumer the certificate's `subject_claim` names map to.
    fn consumer_of(&self, cert: &ClientCertificate) -> Result<&Arc<Consumer>, Unmapped> {
        let names = match self.claim {
            SubjectClaim::SanDns => cert.dns_names(),
            SubjectClaim::SanUri => cert.uris(),
            SubjectClaim::Cn => cert.common_names(),
        };
        let mut found: Option<&Arc<Consumer>> = None;
        for consumer in names
            .iter()
            .filter_map(|n| self.consumers.by_certificate_subject(n))
        {
            match found {
                Some(first) if !Arc::ptr_eq(first, consumer) => return Err(Unmapped::Ambiguous),
                _ => found = Some(consumer),
            }
        }
        found.ok_or(Unmapped::Unknown)
    }
}

#[async_trait]
impl Plugin for MtlsAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        if self.forward_certificate {
            Phases::REQUEST.and(Phases::UPSTREAM_REQUEST)
        } else {
            Phases::REQUEST
        }
    }

    async fn on_request(&self, request: &mut RequestView<'_>) -> pingora::Result<Flow> {
        let Some(cert) = request.client_certificate() else {
            let detail = match request.scheme() {
                Scheme::Https => "a client certificate is required",
                Scheme::Http => "a client certificate is required: connect over TLS",
            };
            return Ok(Flow::Reject(Rejection::unauthorized(
                "missing-credentials",
                detail,
                &self.challenge,
            )));
        };
        let detail = match self.consumer_of(cert) {
            Ok(consumer) => {
                request.state.consumer = Some(Arc::clone(consumer));
                return Ok(Flow::Continue);
            }
            Err(Unmapped::Unknown) => "the client certificate belongs to no known consumer",
            Err(Unmapped::Ambiguous) => "the client certificate names more than one consumer",
        };
        Ok(Flow::Reject(Rejection {
            status: 403,
            slug: "certificate-not-mapped",
            title: "Forbidden",
            detail: detail.into(),
            headers: Vec::new(),
        }))
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        state: &mut PluginState,
    ) -> pingora::Result<()> {
        // The request phase let the request through, so it has a certificate.
        if let Some(cert) = &state.client.certificate {
            upstream.insert_header(SUBJECT_HEADER, cert.subject_header().clone())?;
            upstream.insert_header(SAN_HEADER, cert.san_header().clone())?;
            upstream.insert_header(FINGERPRINT_HEADER, cert.fingerprint_header().clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::consumer::ConsumerSpec;
    use crate::testing::{block_on, on_request, request, state};
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    /// A certificate for `cn` with DNS and URI names.
    fn certificate(cn: &str, dns: &[&str], uris: &[&str]) -> Arc<ClientCertificate> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = dns
            .iter()
            .map(|d| SanType::DnsName((*d).try_into().expect("dns")))
            .chain(
                uris.iter()
                    .map(|u| SanType::URI((*u).try_into().expect("uri"))),
            )
            .collect();
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        Arc::new(ClientCertificate::from_der(&der).expect("parsed"))
    }

    fn mtls_auth(claim: SubjectClaim) -> MtlsAuth {
        let acme = ["api.acme.example".to_string(), "spiffe://acme/api".into()];
        let globex = ["api.globex.example".to_string(), "Globex Client".into()];
        let spec = |name, certificate_subjects| ConsumerSpec {
            name,
            groups: &[],
            keys: &[],
            password: None,
            jwt_subject: None,
            certificate_subjects,
        };
        let consumers = Consumers::new([spec("acme", &acme[..]), spec("globex", &globex[..])])
            .expect("valid consumers");
        let config = Config {
            subject_claim: claim,
            forward_certificate: true,
        };
        MtlsAuth::new(config, Arc::new(consumers)).expect("valid mtls-auth")
    }

    fn verdict(
        plugin: &MtlsAuth,
        cert: Option<Arc<ClientCertificate>>,
    ) -> Result<String, (u16, &'static str)> {
        let mut s = state("r", "10.0.0.1");
        s.client.scheme = Scheme::Https;
        s.client.certificate = cert;
        match on_request(plugin, &request("GET", "/", &[]), &mut s) {
            Flow::Continue => Ok(s.consumer.expect("consumer").name.to_string()),
            Flow::Reject(r) => Err((r.status, r.slug)),
            Flow::Answer(_) => panic!("mtls-auth answered"),
        }
    }

    #[test]
    fn each_claim_maps_its_own_names() {
        let cert = || Some(certificate("Globex Client", &["api.acme.example"], &[]));
        assert_eq!(
            verdict(&mtls_auth(SubjectClaim::SanDns), cert()),
            Ok("acme".into())
        );
        assert_eq!(
            verdict(&mtls_auth(SubjectClaim::Cn), cert()),
            Ok("globex".into())
        );
        assert_eq!(
            verdict(&mtls_auth(SubjectClaim::SanUri), cert()),
            Err((403, "certificate-not-mapped"))
        );
        let spiffe = Some(certificate("x", &[], &["spiffe://acme/api"]));
        assert_eq!(
            verdict(&mtls_auth(SubjectClaim::SanUri), spiffe),
            Ok("acme".into())
        );
    }

    #[test]
    fn no_certificate_unknown_names_and_two_consumers_are_refused() {
        let plugin = mtls_auth(SubjectClaim::SanDns);
        assert_eq!(verdict(&plugin, None), Err((401, "missing-credentials")));
        let unknown = Some(certificate("x", &["api.initech.example"], &[]));
        assert_eq!(
            verdict(&plugin, unknown),
            Err((403, "certificate-not-mapped"))
        );
        // DNS names are compared exactly.
        let upper = Some(certificate("x", &["API.acme.example"], &[]));
        assert_eq!(
            verdict(&plugin, upper),
            Err((403, "certificate-not-mapped"))
        );
        let both = Some(certificate(
            "x",
            &["api.acme.example", "api.globex.example"],
            &[],
        ));
        assert_eq!(verdict(&plugin, both), Err((403, "certificate-not-mapped")));
        let twice = Some(certificate(
            "x",
            &["api.acme.example", "api.initech.example"],
            &["spiffe://acme/api"],
        ));
        assert_eq!(verdict(&plugin, twice), Ok("acme".into()));
    }

    #[test]
    fn the_certificate_is_forwarded_in_place_of_any_copy() {
        let plugin = mtls_auth(SubjectClaim::SanDns);
        let cert = certificate("api", &["api.acme.example"], &[]);
        let mut s = state("r", "10.0.0.1");
        s.client.certificate = Some(Arc::clone(&cert));
        let mut upstream = request("GET", "/", &[("x-client-cert-subject", "CN=admin")]);
        block_on(plugin.on_upstream_request(&mut upstream, &mut s)).expect("upstream request");
        let headers = &upstream.headers;
        assert_eq!(headers.get_all("x-client-cert-subject").iter().count(), 1);
        assert_eq!(headers["x-client-cert-subject"], "CN=api");
        assert_eq!(headers["x-client-cert-san"], "DNS:api.acme.example");
        assert_eq!(
            headers["x-client-cert-fingerprint"],
            hex::encode(cert.sha256())
        );
    }
}
