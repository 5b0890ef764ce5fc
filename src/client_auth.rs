//! Client certificates on TLS listeners (`client_ca` and `client_auth` of `[[server.tls]]`).
//!
//! - [`ClientVerification`]: a listener's verification, compiled with the configuration: the
//!   CA certificates a client certificate must chain to, and whether one is required.
//! - [`ClientCertSwitch`]: the verifier rustls asks on each handshake; reloads replace what it
//!   holds, so a new `client_ca` (or `client_auth`) applies to the next handshake.
//! - [`HandshakeObserver`]: reads the verified certificate's identities once per connection,
//!   for plugins (`ClientFacts::certificate`), and counts the handshakes that fail (logged at
//!   debug: clients cause them, and must not be able to flood the log).
//!
//! A resumed TLS session keeps the certificate it was verified with, as in any TLS server: a
//! reload that drops a CA does not end sessions the old CA's clients have already resumed.

use crate::metrics::{TlsHandshakeFailure, TlsListenerMetrics};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use gantry_plugins::ClientCertificate;
use parking_lot::Mutex;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

/// `client_auth = "…"` of a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A handshake without a valid client certificate is refused (the default).
    #[default]
    Required,
    /// A client without a certificate is accepted, and plugins decide (`mtls-auth`); one with
    /// an invalid certificate is still refused.
    Optional,
}

/// How a TLS listener verifies client certificates.
pub struct ClientVerification {
    /// `None`: the listener asks for no certificate.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The CA names sent in certificate requests (see [`interned`]).
    hints: &'static [DistinguishedName],
    /// The CA file and mode, for diagnostics.
    source: Option<(String, ClientAuthMode)>,
}

impl std::fmt::Debug for ClientVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerification")
            .field("source", &self.source)
            .finish()
    }
}

impl ClientVerification {
    /// No client certificates: the listener never asks for one.
    pub fn none() -> Self {
        ClientVerification {
            verifier: None,
            hints: &[],
            source: None,
        }
    }

    /// Client certificates verified against the PEM CA certificates in `ca_file`.
    pub fn load(ca_file: &str, mode: ClientAuthMode) -> Result<Self, String> {
        let cas = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA certificates from `{ca_file}`: {e}"))?;
        if cas.is_empty() {
            return Err(format!("`{ca_file}` holds no PEM certificate"));
        }
        let mut roots = RootCertStore::empty();
        for (i, ca) in cas.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                format!(
                    "certificate {} in `{ca_file}` is not a usable CA certificate: {e}",
                    i + 1
                )
            })?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(default_provider()),
        );
        let builder = match mode {
            ClientAuthMode::Required => builder,
            ClientAuthMode::Optional => builder.allow_unauthenticated(),
        };
        let verifier = builder
            .build()
            .map_err(|e| format!("cannot verify clients with `{ca_file}`: {e}"))?;
        Ok(ClientVerification {
            hints: interned(verifier.root_hint_subjects()),
            verifier: Some(verifier),
            source: Some((ca_file.to_string(), mode)),
        })
    }
}

/// rustls borrows the CA names of a certificate request from the verifier, which reloads
/// replace: each distinct list is kept for the life of the process (a few hundred bytes per
/// CA file ever configured), so a borrow can never outlive it.
fn interned(hints: &[DistinguishedName]) -> &'static [DistinguishedName] {
    static KEPT: Mutex<Vec<&'static [DistinguishedName]>> = Mutex::new(Vec::new());
    let same = |kept: &[DistinguishedName]| {
        kept.len() == hints.len()
            && kept
                .iter()
                .zip(hints)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    };
    let mut kept = KEPT.lock();
    if let Some(known) = kept.iter().copied().find(|k| same(k)) {
        return known;
    }
    let new: &'static [DistinguishedName] = Vec::leak(hints.to_vec());
    kept.push(new);
    new
}

/// A TLS listener's client certificate verification, replaced by reloads.
#[derive(Debug)]
pub struct ClientCertSwitch(ArcSwap<ClientVerification>);

impl ClientCertSwitch {
    /// Starts with `verification`.
    pub fn new(verification: Arc<ClientVerification>) -> Self {
        ClientCertSwitch(ArcSwap::new(verification))
    }

    /// Verifies the next handshakes with `verification`.
    pub fn store(&self, verification: Arc<ClientVerification>) {
        self.0.store(verification);
    }

    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0.load().verifier.clone().ok_or_else(|| {
            rustls::Error::General("this listener no longer asks for client certificates".into())
        })
    }
}

impl ClientCertVerifier for ClientCertSwitch {
    fn offer_client_auth(&self) -> bool {
        self.0.load().verifier.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0
            .load()
            .verifier
            .as_ref()
            .is_some_and(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.load().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .load()
            .verifier
            .as_ref()
            .map_or_else(Vec::new, |v| v.supported_verify_schemes())
    }
}

/// A TLS listener's handshake callbacks.
pub struct HandshakeObserver {
    listener: SocketAddr,
    metrics: Arc<TlsListenerMetrics>,
}

impl HandshakeObserver {
    /// The callbacks of the listener on `listener`.
    pub fn new(listener: SocketAddr) -> Self {
        HandshakeObserver {
            listener,
            metrics: crate::metrics::tls_listener(listener),
        }
    }
}

#[async_trait]
impl TlsAccept for HandshakeObserver {
    /// The verified client certificate's identities, kept with the connection's TLS digest
    /// (as an `Arc<ClientCertificate>`, which each request's `ClientFacts` shares).
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        match ClientCertificate::from_der(der) {
            Ok(cert) => Some(Arc::new(Arc::new(cert))),
            Err(e) => {
                log::debug!(
                    "TLS listener {}: the verified client certificate cannot be read ({e}); \
                     plugins see none",
                    self.listener
                );
                None
            }
        }
    }

    fn handshake_failed_callback(&self, error: &pingora::Error) {
        let reason = failure_reason(error);
        self.metrics.record_handshake_failure(reason);
        log::debug!(
            "TLS listener {}: handshake failed ({}): {error}",
            self.listener,
            reason.label()
        );
    }
}

/// Why a handshake failed, from the TLS library's error (the cause Pingora keeps).
fn failure_reason(error: &pingora::Error) -> TlsHandshakeFailure {
    let tls_error = error
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::NoCertificatesPresented) => TlsHandshakeFailure::NoClientCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => TlsHandshakeFailure::BadClientCertificate,
        Some(rustls::Error::AlertReceived(_)) => TlsHandshakeFailure::ClientAlert,
        Some(_) => TlsHandshakeFailure::Protocol,
        None => TlsHandshakeFailure::Connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::ErrorType;
    use rustls::{AlertDescription, CertificateError};

    fn reason_of(cause: std::io::Error) -> TlsHandshakeFailure {
        let error = pingora::Error::because(ErrorType::TLSHandshakeFailure, "accept", cause);
        failure_reason(&error)
    }

    fn tls(error: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn failures_are_classified_by_the_tls_error() {
        use TlsHandshakeFailure::*;
        let cases = [
            (
                tls(rustls::Error::NoCertificatesPresented),
                NoClientCertificate,
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                BadClientCertificate,
            ),
            (
                tls(rustls::Error::AlertReceived(
                    AlertDescription::BadCertificate,
                )),
                ClientAlert,
            ),
            (
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                Protocol,
            ),
            (
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                Connection,
            ),
        ];
        for (cause, expected) in cases {
            assert_eq!(reason_of(cause), expected);
        }
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        let empty = empty.display().to_string();
        let missing = dir.path().join("missing.pem").display().to_string();
        for (file, complaint) in [(&empty, "holds no PEM"), (&missing, "cannot read")] {
            let why = ClientVerification::load(file, ClientAuthMode::Required).expect_err(file);
            assert!(
                why.contains(complaint) && why.contains(file.as_str()),
                "{why}"
            );
        }
    }

    #[test]
    fn the_switch_follows_what_it_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).expect("ca");
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca.cert.pem()).expect("write");
        let file = file.display().to_string();
        let switch = ClientCertSwitch::new(Arc::new(ClientVerification::none()));
        assert!(!switch.offer_client_auth() && !switch.client_auth_mandatory());
        for (mode, mandatory) in [
            (ClientAuthMode::Required, true),
            (ClientAuthMode::Optional, false),
        ] {
            let loaded = ClientVerification::load(&file, mode).expect("loaded");
            switch.store(Arc::new(loaded));
            assert!(switch.offer_client_auth());
            assert_eq!(switch.client_auth_mandatory(), mandatory);
            assert_eq!(switch.root_hint_subjects().len(), 1);
        }
        // Loading the same CA again keeps one copy of its names.
        let again = ClientVerification::load(&file, ClientAuthMode::Required).expect("again");
        assert!(std::ptr::eq(again.hints, switch.root_hint_subjects()));
    }
}
