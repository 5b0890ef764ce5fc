//! TLS termination: certificates loaded and checked when the configuration loads, chosen per
//! connection by SNI (exact names first, then `*.` wildcards, else the listener's first
//! certificate). TLS 1.2 and 1.3 only (Pingora's rustls acceptor); ALPN offers h2 and
//! http/1.1. Also the client certificates clusters present to their backends
//! ([`load_client_certificate`]), checked the same way.

use pingora::utils::tls::CertKey;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates of one TLS listener, indexed by the names they cover.
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no SNI or an unknown name.
    default: Arc<CertifiedKey>,
    /// Every name, for diagnostics.
    names: Vec<String>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.names)
            .finish()
    }
}

/// One certificate chain and its key, with the DNS names it covers.
pub struct LoadedCertificate {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// A PEM certificate chain, leaf first, as DER.
fn read_chain(cert_path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from `{cert_path}`: {e}"))?;
    if chain.is_empty() {
        return Err(format!("`{cert_path}` holds no PEM certificate"));
    }
    Ok(chain)
}

/// A PEM private key, as DER. Errors name the file, never what it holds.
fn read_key(key_path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => {
            format!("cannot read a private key from `{key_path}`: {e}")
        }
        _ => format!("`{key_path}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"),
    })
}

/// Loads a PEM chain and PEM private key and checks they belong together.
pub fn load_certificate(cert_path: &str, key_path: &str) -> Result<LoadedCertificate, String> {
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let names = dns_names(&chain[0])
        .map_err(|e| format!("cannot parse the certificate in `{cert_path}`: {e}"))?;
    if names.is_empty() {
        return Err(format!(
            "the certificate in `{cert_path}` names no DNS host"
        ));
    }
    let key = CertifiedKey::from_der(chain, key, &default_provider()).map_err(|e| {
        format!("the key `{key_path}` does not fit the certificate `{cert_path}`: {e}")
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(key),
        names,
    })
}

/// A client certificate that cannot be used: a problem of the certificate file or of the key.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientCertificateError {
    /// The certificate file is unreadable or holds no usable certificate.
    Certificate(String),
    /// The key file is unreadable, holds no usable key, or the key does not fit.
    Key(String),
}

/// Loads the client certificate (PEM chain, leaf first) and PEM private key a cluster presents
/// to its backends, and checks them as Pingora will use them on every connection: each
/// certificate parses, the key's format is recognised from its DER, and the key fits the leaf.
pub fn load_client_certificate(
    cert_path: &str,
    key_path: &str,
) -> Result<CertKey, ClientCertificateError> {
    use ClientCertificateError::{Certificate, Key};
    let chain = read_chain(cert_path).map_err(Certificate)?;
    for (i, cert) in chain.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert).map_err(|e| {
            Certificate(format!(
                "certificate {} in `{cert_path}` cannot be parsed: {e}",
                i + 1
            ))
        })?;
    }
    let key = read_key(key_path).map_err(Key)?;
    let key_der = key.secret_der().to_vec();
    if PrivateKeyDer::try_from(key_der.as_slice()).is_err() {
        return Err(Key(format!(
            "the key in `{key_path}` is not PKCS#8, PKCS#1 or SEC1 DER"
        )));
    }
    let chain_der = chain.iter().map(|c| c.to_vec()).collect();
    CertifiedKey::from_der(chain, key, &default_provider()).map_err(|e| {
        Key(format!(
            "the key `{key_path}` does not fit the certificate `{cert_path}`: {e}"
        ))
    })?;
    Ok(CertKey::new(chain_der, key_der))
}

/// The certificate's DNS subject alternative names, or its common name when it has none.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

impl CertStore {
    /// Indexes `certificates`; the first one is the default. `None` when there is none.
    pub fn new(certificates: Vec<LoadedCertificate>) -> Option<CertStore> {
        let default = Arc::clone(&certificates.first()?.key);
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
            names: Vec::new(),
        };
        for cert in certificates {
            for name in cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => store
                        .wildcard
                        .entry(parent.to_string())
                        .or_insert_with(|| Arc::clone(&cert.key)),
                    None => store
                        .exact
                        .entry(name.clone())
                        .or_insert_with(|| Arc::clone(&cert.key)),
                };
                store.names.push(name);
            }
        }
        Some(store)
    }

    fn lookup(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        self.exact
            .get(&name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .map_or_else(|| Arc::clone(&self.default), Arc::clone)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(hello.server_name()))
    }
}
