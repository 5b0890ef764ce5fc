//! Compiles `[tracing]` and a route's `tracing`: the collector's endpoint (and CA), the
//! resource, the sample ratio, the collector's headers (secrets: their values never appear in
//! a problem) and the batch bounds.

use super::{span_of, Compiler};
use crate::config::error::KeyPath;
use crate::config::model::{HumanDuration, RouteTracingSection, TracingSection};
use crate::trace::{BatchSettings, Endpoint, TracingSettings, DEFAULT_BATCH};
use http::{HeaderName, HeaderValue};
use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use toml::Spanned;

/// `tracing.sample_ratio`'s default: one request in a hundred (Kong's default).
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// The largest `tracing.batch.max_queue`: the queue holds whole spans in memory.
const MAX_QUEUE: usize = 1 << 20;

/// Headers the exporter sets itself.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
];

impl Compiler<'_, '_> {
    /// `[tracing]`; `None` when it has errors.
    pub fn tracing(&mut self, t: TracingSection) -> Option<Arc<TracingSettings>> {
        let before = self.error_count();
        let key = KeyPath::root("tracing");
        let endpoint = self.endpoint(&key, &t.otlp_endpoint, t.ca_file.as_ref());
        let sample_ratio = t
            .sample_ratio
            .as_ref()
            .map_or(DEFAULT_SAMPLE_RATIO, |r| self.ratio(&key, r));
        let service_name = match &t.service_name {
            Some(name) if name.get_ref().trim().is_empty() => {
                let msg = "service_name must not be empty";
                self.report(span_of(name), &key.child("service_name"), msg, None);
                String::new()
            }
            Some(name) => name.get_ref().clone(),
            None => "gantry".into(),
        };
        let resource = t
            .resource
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect();
        // A header's value is a secret: its problems never quote the source line.
        let headers_from = self.error_count();
        let headers = self.collector_headers(&key.child("headers"), &t.headers);
        self.doc.redact_since(headers_from);
        let batch = self.batch(&key.child("batch"), t.batch);
        if self.error_count() != before {
            return None;
        }
        Some(Arc::new(TracingSettings {
            endpoint: endpoint?,
            service_name,
            resource,
            sample_ratio,
            headers,
            batch,
        }))
    }

    /// A route's `tracing` (its sample ratio); `tracing_on`: the file has `[tracing]`.
    pub(super) fn route_tracing(
        &mut self,
        key: &KeyPath,
        t: &Spanned<RouteTracingSection>,
        tracing_on: bool,
    ) -> Option<f64> {
        if !tracing_on {
            self.report(
                span_of(t),
                &key.child("tracing"),
                "a route's tracing settings need a [tracing] section",
                Some("add [tracing] with otlp_endpoint, or remove this key".into()),
            );
            return None;
        }
        Some(self.ratio(&key.child("tracing"), &t.get_ref().sample_ratio))
    }

    /// A sample ratio between 0 and 1.
    fn ratio(&mut self, key: &KeyPath, ratio: &Spanned<f64>) -> f64 {
        let r = *ratio.get_ref();
        if !(0.0..=1.0).contains(&r) {
            self.report(
                span_of(ratio),
                &key.child("sample_ratio"),
                format!("sample_ratio must be between 0 and 1, not {r}"),
                Some("0.05 samples one request in twenty".into()),
            );
        }
        r
    }

    fn endpoint(
        &mut self,
        key: &KeyPath,
        url: &Spanned<String>,
        ca_file: Option<&Spanned<String>>,
    ) -> Option<Endpoint> {
        let endpoint_key = key.child("otlp_endpoint");
        let parsed = parse_endpoint(url.get_ref());
        if let Err(why) = &parsed {
            let hint = "write it like \"http://127.0.0.1:4318/v1/traces\"";
            self.report(span_of(url), &endpoint_key, why.clone(), Some(hint.into()));
        }
        let ca = match (ca_file, &parsed) {
            (Some(file), Ok(e)) if !e.tls => {
                let msg = "ca_file applies to an https otlp_endpoint";
                self.report(span_of(file), &key.child("ca_file"), msg, None);
                None
            }
            (Some(file), _) => match load_ca(file.get_ref()) {
                Ok(ca) => Some(Arc::from(ca)),
                Err(why) => {
                    self.report(span_of(file), &key.child("ca_file"), why, None);
                    None
                }
            },
            (None, _) => None,
        };
        let mut endpoint = parsed.ok()?;
        endpoint.ca = ca;
        Some(endpoint)
    }

    /// The collector's headers: valid names and values, none the exporter sets itself. A
    /// value is a secret: a problem names the header, never its value.
    fn collector_headers(
        &mut self,
        key: &KeyPath,
        headers: &std::collections::BTreeMap<String, Spanned<String>>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (name, value) in headers {
            let header_key = key.child(name);
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                let msg = format!("`{name}` is not a valid header name");
                self.report(span_of(value), &header_key, msg, None);
                continue;
            };
            if RESERVED_HEADERS.contains(&header.as_str()) {
                let msg = format!("`{name}` is set by the exporter itself");
                self.report(span_of(value), &header_key, msg, None);
                continue;
            }
            match HeaderValue::from_str(value.get_ref()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    out.push((header, v));
                }
                Err(_) => {
                    let msg = "the value is not a valid header value (it is not shown: it may be a secret)";
                    self.report(span_of(value), &header_key, msg, None);
                }
            }
        }
        out
    }

    fn batch(
        &mut self,
        key: &KeyPath,
        b: Option<crate::config::model::TracingBatchSection>,
    ) -> BatchSettings {
        let Some(b) = b else {
            return DEFAULT_BATCH;
        };
        let mut count = |value: &Option<Spanned<usize>>, field: &str, default: usize| {
            let Some(v) = value else {
                return default;
            };
            let n = *v.get_ref();
            if n == 0 || n > MAX_QUEUE {
                let msg = format!("{field} must be between 1 and {MAX_QUEUE}");
                self.report(span_of(v), &key.child(field), msg, None);
                return default;
            }
            n
        };
        let max_queue = count(&b.max_queue, "max_queue", DEFAULT_BATCH.max_queue);
        let max_batch = count(&b.max_batch, "max_batch", DEFAULT_BATCH.max_batch);
        if max_batch > max_queue {
            let span = b.max_batch.as_ref().and_then(span_of);
            let msg = format!("max_batch ({max_batch}) cannot exceed max_queue ({max_queue})");
            self.report(span, &key.child("max_batch"), msg, None);
        }
        let duration = |d: Option<HumanDuration>| d.map(|d| d.0);
        BatchSettings {
            max_queue,
            max_batch,
            interval: self.positive(
                duration(b.interval),
                DEFAULT_BATCH.interval,
                key,
                "interval",
            ),
            timeout: self.positive(duration(b.timeout), DEFAULT_BATCH.timeout, key, "timeout"),
        }
    }
}

/// `http[s]://host[:port][/path]`, without credentials (those go in `headers`).
fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    // Not quoted back: a URL that does not parse may still hold a credential.
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "otlp_endpoint is not a URL".to_string())?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("otlp_endpoint must be an http:// or https:// URL".into()),
    };
    let authority = uri.authority().ok_or("otlp_endpoint has no host")?;
    if authority.as_str().contains('@') {
        return Err(
            "otlp_endpoint must not carry credentials: send them in tracing.headers".into(),
        );
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("otlp_endpoint has no host".into());
    }
    if uri.query().is_some() {
        return Err(
            "otlp_endpoint must not have a query (a key there would show in logs): send it in tracing.headers"
                .into(),
        );
    }
    let target = match uri.path() {
        "" | "/" => "/v1/traces".to_string(),
        p => p.to_string(),
    };
    Ok(Endpoint {
        url: url.to_string(),
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        tls,
        target,
        ca: None,
    })
}

/// The certificates of a PEM file, each checked to parse (Pingora's wrapper would panic on
/// one that does not).
fn load_ca(path: &str) -> Result<Box<[WrappedX509]>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from `{path}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{path}` holds no PEM certificate"));
    }
    certs
        .into_iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(&der)
                .map_err(|_| format!("`{path}` holds a certificate that does not parse"))?;
            Ok(WrappedX509::new(der.to_vec(), parse_x509))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn endpoints_take_a_default_path_and_port() {
        let e = parse_endpoint("http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 4318, false));
        assert_eq!(e.target, "/v1/traces");
        let e = parse_endpoint("https://otel.example.com").unwrap();
        assert_eq!(
            (e.port, e.tls, e.target.as_str()),
            (443, true, "/v1/traces")
        );
        let e = parse_endpoint("http://[::1]:4318/x").unwrap();
        assert_eq!(e.host, "::1");
        for bad in ["ftp://x/", "/v1/traces", "http://user:pw@x/", "nonsense"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_collector_url_that_is_not_a_url_is_not_quoted() {
        let err = parse_endpoint("http://user:s3cret x@host/").err().unwrap();
        assert!(
            err.contains("is not a URL") && !err.contains("s3cret"),
            "{err}"
        );
        assert!(parse_endpoint("http://x/v1/traces?key=1").is_err());
    }

    #[test]
    fn batch_defaults_follow_opentelemetry() {
        assert_eq!(DEFAULT_BATCH.max_batch, 512);
        assert_eq!(DEFAULT_BATCH.interval, Duration::from_secs(2));
    }
}
