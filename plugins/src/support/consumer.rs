//! Consumers: the identities that authentication plugins resolve requests to.
//!
//! API keys are stored only as SHA-256 digests (`sha256:HEX` in the config, or a plain key that
//! is hashed when the config loads). A presented key is hashed and looked up by digest, then the
//! digests are compared in constant time, so neither the stored keys nor response timing reveal
//! anything about a valid key.

use http::HeaderValue;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// An authenticated identity.
#[derive(Debug, PartialEq, Eq)]
pub struct Consumer {
    /// The name from `[consumers.NAME]`.
    pub name: Arc<str>,
    /// The consumer's groups, for `acl`.
    pub groups: Box<[Arc<str>]>,
    /// `name`, ready to send upstream as `X-Consumer-Name`.
    pub name_header: HeaderValue,
    /// `groups` joined with `,`, ready to send upstream as `X-Consumer-Groups`.
    pub groups_header: HeaderValue,
}

type KeyDigest = [u8; 32];

/// The shortest plain API key accepted.
pub const MIN_KEY_LEN: usize = 8;

/// Every configured consumer, indexed by credential.
#[derive(Debug, Default)]
pub struct Consumers {
    by_key: HashMap<KeyDigest, Arc<Consumer>>,
    /// Consumers with a password, by name, with their argon2 PHC hash.
    by_name: HashMap<Box<str>, (Arc<Consumer>, Arc<str>)>,
    /// Consumers by the JWT subject they are mapped from.
    by_subject: HashMap<Box<str>, Arc<Consumer>>,
    /// Every consumer, by name (an auth service's answer names one).
    named: HashMap<Box<str>, Arc<Consumer>>,
    /// Consumers by the client certificate subjects they are mapped from (`mtls-auth`).
    by_certificate_subject: HashMap<Box<str>, Arc<Consumer>>,
}

/// A consumer's configuration, as the gateway's config loader hands it over.
pub struct ConsumerSpec<'s> {
    /// The consumer's name.
    pub name: &'s str,
    /// Its groups.
    pub groups: &'s [String],
    /// Its API keys: `sha256:HEX` digests or plain keys.
    pub keys: &'s [String],
    /// Its password for basic auth, as an argon2 PHC hash.
    pub password: Option<&'s str>,
    /// The verified JWT claim value (`consumer_claim`) that maps a token to it.
    pub jwt_subject: Option<&'s str>,
    /// The client certificate subjects (DNS names, URIs or common names) that map a verified
    /// certificate to it.
    pub certificate_subjects: &'s [String],
}

/// A consumer that cannot be indexed. Messages never quote a key or a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerError {
    /// A name or group that cannot travel upstream as a header value.
    #[error("names and groups must be printable ASCII (they are sent upstream as headers)")]
    NotPrintable { consumer: String },
    /// Two consumers claim one JWT subject.
    #[error("`{subject}` is also the jwt_subject of consumer `{other}`")]
    SharedSubject {
        consumer: String,
        subject: String,
        other: String,
    },
    /// Two consumers claim one client certificate subject.
    #[error("`{subject}` is also a certificate subject of consumer `{other}`")]
    SharedCertificateSubject {
        consumer: String,
        index: usize,
        subject: String,
        other: String,
    },
    /// A password that is not an argon2 hash.
    #[error(
        "only argon2 hashes are accepted (`$argon2id$v=19$...`); make one with: \
         echo -n 'PASSWORD' | argon2 \"$(openssl rand -base64 12)\" -id -e"
    )]
    NotArgon2 { consumer: String },
    /// `sha256:` without a 64-digit hex digest.
    #[error("`sha256:` must be followed by 64 hex digits")]
    BadDigest { consumer: String, index: usize },
    /// A plain key shorter than the minimum.
    #[error("a plain key must be at least {MIN_KEY_LEN} characters")]
    ShortKey { consumer: String, index: usize },
    /// One key for two consumers.
    #[error("the same key is also a key of consumer `{other}`")]
    SharedKey {
        consumer: String,
        index: usize,
        other: String,
    },
}

impl ConsumerError {
    /// The consumer the problem is in.
    pub fn consumer(&self) -> &str {
        match self {
            ConsumerError::NotPrintable { consumer }
            | ConsumerError::SharedSubject { consumer, .. }
            | ConsumerError::SharedCertificateSubject { consumer, .. }
            | ConsumerError::NotArgon2 { consumer }
            | ConsumerError::BadDigest { consumer, .. }
            | ConsumerError::ShortKey { consumer, .. }
            | ConsumerError::SharedKey { consumer, .. } => consumer,
        }
    }

    /// The configuration key of the problem (`consumers.alice.keys[1]`).
    pub fn key_path(&self) -> String {
        let consumer = self.consumer();
        match self {
            ConsumerError::NotPrintable { .. } => format!("consumers.{consumer}"),
            ConsumerError::SharedSubject { .. } => format!("consumers.{consumer}.jwt_subject"),
            ConsumerError::SharedCertificateSubject { index, .. } => {
                format!("consumers.{consumer}.certificate_subjects[{index}]")
            }
            ConsumerError::NotArgon2 { .. } => format!("consumers.{consumer}.password"),
            ConsumerError::BadDigest { index, .. }
            | ConsumerError::ShortKey { index, .. }
            | ConsumerError::SharedKey { index, .. } => {
                format!("consumers.{consumer}.keys[{index}]")
            }
        }
    }
}

impl Consumers {
    /// Indexes `specs`. Errors name the consumer and the problem (a bad digest, a key used by two
    /// consumers).
    pub fn new<'s>(
        specs: impl IntoIterator<Item = ConsumerSpec<'s>>,
    ) -> Result<Self, Vec<ConsumerError>> {
        let mut consumers = Consumers::default();
        let mut errors = Vec::new();
        for spec in specs {
            let headers = (
                HeaderValue::from_str(spec.name),
                HeaderValue::from_str(&spec.groups.join(",")),
            );
            let (Ok(name_header), Ok(groups_header)) = headers else {
                errors.push(ConsumerError::NotPrintable {
                    consumer: spec.name.into(),
                });
                continue;
            };
            let consumer = Arc::new(Consumer {
                name: spec.name.into(),
                groups: spec.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                name_header,
                groups_header,
            });
            consumers
                .named
                .insert(spec.name.into(), Arc::clone(&consumer));
            if let Some(subject) = spec.jwt_subject {
                if let Some(other) = consumers
                    .by_subject
                    .insert(subject.into(), Arc::clone(&consumer))
                {
                    errors.push(ConsumerError::SharedSubject {
                        consumer: spec.name.into(),
                        subject: subject.into(),
                        other: other.name.to_string(),
                    });
                }
            }
            for (i, subject) in spec.certificate_subjects.iter().enumerate() {
                let taken = consumers
                    .by_certificate_subject
                    .insert(subject.as_str().into(), Arc::clone(&consumer));
                if let Some(other) = taken {
                    errors.push(ConsumerError::SharedCertificateSubject {
                        consumer: spec.name.into(),
                        index: i,
                        subject: subject.clone(),
                        other: other.name.to_string(),
                    });
                }
            }
            if let Some(hash) = spec.password {
                match argon2::PasswordHash::new(hash) {
                    Ok(parsed) if parsed.algorithm.as_str().starts_with("argon2") => {
                        consumers
                            .by_name
                            .insert(spec.name.into(), (Arc::clone(&consumer), hash.into()));
                    }
                    _ => errors.push(ConsumerError::NotArgon2 {
                        consumer: spec.name.into(),
                    }),
                }
            }
            for (i, key) in spec.keys.iter().enumerate() {
                let digest = match key.strip_prefix("sha256:") {
                    Some(hex_digest) => match hex::decode(hex_digest)
                        .ok()
                        .and_then(|d| KeyDigest::try_from(d).ok())
                    {
                        Some(d) => d,
                        None => {
                            errors.push(ConsumerError::BadDigest {
                                consumer: spec.name.into(),
                                index: i,
                            });
                            continue;
                        }
                    },
                    None if key.len() < MIN_KEY_LEN => {
                        errors.push(ConsumerError::ShortKey {
                            consumer: spec.name.into(),
                            index: i,
                        });
                        continue;
                    }
                    None => digest(key),
                };
                if let Some(other) = consumers.by_key.insert(digest, Arc::clone(&consumer)) {
                    errors.push(ConsumerError::SharedKey {
                        consumer: spec.name.into(),
                        index: i,
                        other: other.name.to_string(),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(consumers)
        } else {
            Err(errors)
        }
    }

    /// The consumer called `name` and its password hash, if it has a password.
    pub fn with_password(&self, name: &str) -> Option<&(Arc<Consumer>, Arc<str>)> {
        self.by_name.get(name)
    }

    /// The consumer called `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.named.get(name)
    }

    /// The consumer a token's `consumer_claim` value maps to.
    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.by_subject.get(subject)
    }

    /// The consumer a verified client certificate subject maps to (compared exactly).
    pub fn by_certificate_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.by_certificate_subject.get(subject)
    }

    /// The consumer owning API key `key`, if any.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let presented = digest(key);
        self.by_key
            .get_key_value(&presented)
            .filter(|(stored, _)| bool::from(stored.ct_eq(&presented)))
            .map(|(_, consumer)| consumer)
    }
}

fn digest(key: impl AsRef<[u8]>) -> KeyDigest {
    Sha256::digest(key.as_ref()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_plain_or_hashed_form() {
        let hashed = format!("sha256:{}", hex::encode(digest("secret-b")));
        let consumers = Consumers::new([
            ConsumerSpec {
                name: "alice",
                groups: &["gold".into()],
                keys: &["secret-a".into()],
                password: None,
                jwt_subject: None,
                certificate_subjects: &[],
            },
            ConsumerSpec {
                name: "bob",
                groups: &[],
                keys: &[hashed],
                password: None,
                jwt_subject: None,
                certificate_subjects: &[],
            },
        ])
        .expect("valid");
        assert_eq!(
            &*consumers.by_key(b"secret-a").expect("alice").name,
            "alice"
        );
        assert_eq!(&*consumers.by_key(b"secret-b").expect("bob").name, "bob");
        assert!(consumers.by_key(b"secret-c").is_none());
    }

    #[test]
    fn bad_digests_and_shared_keys_are_errors() {
        let errors = Consumers::new([
            ConsumerSpec {
                name: "a",
                groups: &[],
                keys: &["sha256:abc".into(), "shared-key".into(), "short".into()],
                password: None,
                jwt_subject: None,
                certificate_subjects: &[],
            },
            ConsumerSpec {
                name: "b",
                groups: &[],
                keys: &["shared-key".into()],
                password: Some("plain-text"),
                jwt_subject: None,
                certificate_subjects: &[],
            },
        ])
        .expect_err("invalid");
        let a = || "a".to_string();
        assert_eq!(
            errors,
            [
                ConsumerError::BadDigest {
                    consumer: a(),
                    index: 0
                },
                ConsumerError::ShortKey {
                    consumer: a(),
                    index: 2
                },
                ConsumerError::NotArgon2 {
                    consumer: "b".into()
                },
                ConsumerError::SharedKey {
                    consumer: "b".into(),
                    index: 0,
                    other: a()
                },
            ]
        );
        assert_eq!(errors[1].key_path(), "consumers.a.keys[2]");
        assert!(errors[1].to_string().contains("at least 8 characters"));
    }

    #[test]
    fn a_certificate_subject_belongs_to_one_consumer() {
        let subjects = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (acme, globex) = (
            subjects(&["api.acme.example"]),
            subjects(&["api.acme.example"]),
        );
        let spec = |name, certificate_subjects| ConsumerSpec {
            name,
            groups: &[],
            keys: &[],
            password: None,
            jwt_subject: None,
            certificate_subjects,
        };
        let errors = Consumers::new([spec("acme", &acme[..]), spec("globex", &globex[..])])
            .expect_err("shared");
        assert_eq!(
            errors[0].key_path(),
            "consumers.globex.certificate_subjects[0]"
        );
        assert!(errors[0].to_string().contains("consumer `acme`"));
        let consumers = Consumers::new([spec("acme", &acme[..])]).expect("valid");
        let found = consumers.by_certificate_subject("api.acme.example");
        assert_eq!(found.map(|c| &*c.name), Some("acme"));
        assert!(consumers
            .by_certificate_subject("API.acme.example")
            .is_none());
    }
}
