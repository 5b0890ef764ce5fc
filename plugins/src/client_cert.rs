//! The identities of a verified TLS client certificate: read once, when the handshake
//! completes, and shared by every request of the connection (through
//! [`crate::ClientFacts::certificate`]).
//!
//! The values come from a certificate that a configured CA signed, but a CA may sign anything:
//! they are treated as untrusted text. The headers that forward them upstream escape every byte
//! outside printable ASCII (and the separators of their own syntax), so no value can end a
//! header or forge a field of a distinguished name or of the SAN list.

use http::HeaderValue;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid_registry};
use x509_parser::x509::X509Name;

/// A verified client certificate's identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    subject: String,
    common_names: Vec<String>,
    dns_names: Vec<String>,
    uris: Vec<String>,
    sha256: [u8; 32],
    subject_header: HeaderValue,
    san_header: HeaderValue,
    fingerprint_header: HeaderValue,
}

impl ClientCertificate {
    /// Reads the leaf certificate `der`. Fails (with the parser's reason) on a certificate
    /// that is not DER X.509, or whose subject alternative names cannot be read.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        let common_names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_string)
            .collect();
        let subject = rfc4514(cert.subject());
        let sha256: [u8; 32] = Sha256::digest(der).into();
        let san_list = dns_names
            .iter()
            .map(|d| ("DNS:", d))
            .chain(uris.iter().map(|u| ("URI:", u)))
            .fold(String::new(), |mut list, (kind, value)| {
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(kind);
                escape_into(&mut list, value, b",");
                list
            });
        Ok(ClientCertificate {
            subject_header: header(&subject),
            san_header: header(&san_list),
            fingerprint_header: header(&hex::encode(sha256)),
            subject,
            common_names,
            dns_names,
            uris,
            sha256,
        })
    }

    /// The subject's distinguished name in RFC 4514 form (`CN=api.acme.example,O=Acme`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject's common names (usually one).
    pub fn common_names(&self) -> &[String] {
        &self.common_names
    }

    /// The DNS names among the subject alternative names, as written in the certificate.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The URIs among the subject alternative names (SPIFFE IDs, for example).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The SHA-256 digest of the certificate's DER encoding.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// `X-Client-Cert-Subject`: [`Self::subject`].
    pub fn subject_header(&self) -> &HeaderValue {
        &self.subject_header
    }

    /// `X-Client-Cert-SAN`: `DNS:name, URI:uri, ...` (a `,` inside a value is `\2C`).
    pub fn san_header(&self) -> &HeaderValue {
        &self.san_header
    }

    /// `X-Client-Cert-Fingerprint`: the SHA-256 digest in lower-case hex.
    pub fn fingerprint_header(&self) -> &HeaderValue {
        &self.fingerprint_header
    }
}

/// `name` in RFC 4514 form: the last RDN first, attributes by their short names (or dotted
/// OID), values escaped; a value that is not a string is `#` and its bytes in hex.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match oid2abbrev(attribute.attr_type(), oid_registry()) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attribute.attr_type().to_id_string()),
            }
            out.push('=');
            match attribute.as_str() {
                Ok(value) => escape_dn_value(&mut out, value),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(attribute.as_slice()));
                }
            }
        }
    }
    out
}

/// An attribute value escaped as RFC 4514 asks (`,+"\<>;` and a leading `#` or space or a
/// trailing space), and every byte outside printable ASCII as `\XX`.
fn escape_dn_value(out: &mut String, value: &str) {
    let last = value.len().saturating_sub(1);
    for (i, byte) in value.bytes().enumerate() {
        let edge_space = byte == b' ' && (i == 0 || i == last);
        if edge_space || (i == 0 && byte == b'#') {
            let _ = write!(out, "\\{byte:02X}");
        } else {
            escape_byte(out, byte, b",+\"<>;");
        }
    }
}

/// `value` with `\`, the bytes in `special` and every byte outside printable ASCII as `\XX`.
fn escape_into(out: &mut String, value: &str, special: &[u8]) {
    for byte in value.bytes() {
        escape_byte(out, byte, special);
    }
}

fn escape_byte(out: &mut String, byte: u8, special: &[u8]) {
    if byte == b'\\' || special.contains(&byte) || !(0x20..0x7f).contains(&byte) {
        let _ = write!(out, "\\{byte:02X}");
    } else {
        out.push(char::from(byte));
    }
}

/// Escaped text is printable ASCII, always a valid header value.
fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn certificate(cn: &str, org: &str, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn identities_are_read_from_the_certificate() {
        let der = certificate(
            "api.acme.example",
            "Acme",
            vec![
                SanType::DnsName("api.acme.example".try_into().expect("dns")),
                SanType::URI("spiffe://acme/payments".try_into().expect("uri")),
            ],
        );
        let cert = ClientCertificate::from_der(&der).expect("parsed");
        assert_eq!(cert.subject(), "CN=api.acme.example,O=Acme");
        assert_eq!(cert.common_names(), ["api.acme.example"]);
        assert_eq!(cert.dns_names(), ["api.acme.example"]);
        assert_eq!(cert.uris(), ["spiffe://acme/payments"]);
        assert_eq!(cert.sha256(), &<[u8; 32]>::from(Sha256::digest(&der)));
        assert_eq!(
            cert.san_header(),
            "DNS:api.acme.example, URI:spiffe://acme/payments"
        );
        assert_eq!(cert.fingerprint_header().len(), 64);
    }

    #[test]
    fn forwarded_values_cannot_forge_fields_or_break_headers() {
        let der = certificate(
            "x, O=Admin\r\nX-Evil: 1",
            " Acme+Co\u{e9} ",
            vec![SanType::DnsName(
                "a.example, URI:spiffe://admin".try_into().expect("dns"),
            )],
        );
        let cert = ClientCertificate::from_der(&der).expect("parsed");
        assert_eq!(
            cert.subject(),
            "CN=x\\2C O=Admin\\0D\\0AX-Evil: 1,O=\\20Acme\\2BCo\\C3\\A9\\20"
        );
        assert_eq!(cert.subject_header().to_str().ok(), Some(cert.subject()));
        assert_eq!(cert.san_header(), "DNS:a.example\\2C URI:spiffe://admin");
    }

    #[test]
    fn anything_but_a_certificate_is_refused() {
        assert!(ClientCertificate::from_der(b"not a certificate").is_err());
    }
}
