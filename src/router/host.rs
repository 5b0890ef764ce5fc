//! Host patterns and request host normalization.

use super::PatternError;

/// A compiled `hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.example.com`, stored lower-case.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches any depth of subdomain.
    Wildcard(String),
}

impl HostPattern {
    /// Parses a `hosts` entry.
    pub fn parse(text: &str) -> Result<HostPattern, PatternError> {
        let lower = text.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(PatternError::Wildcard(text.into()));
            }
            return Ok(HostPattern::Wildcard(format!(".{rest}")));
        }
        if lower.is_empty() || lower.contains('*') {
            return Err(PatternError::Host(text.into()));
        }
        if lower.contains(':') && !lower.starts_with('[') {
            return Err(PatternError::HostPort(text.into()));
        }
        Ok(HostPattern::Exact(lower))
    }
}

/// The host a request is for, from `Host` (or the URI authority on HTTP/2), without the port
/// and lower-cased. Borrowed when already lower-case.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a trailing port.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalization_drops_port_and_case() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("localhost"), "localhost");
    }

    #[test]
    fn host_patterns_parse() {
        assert_eq!(
            HostPattern::parse("*.Example.com").ok(),
            Some(HostPattern::Wildcard(".example.com".into()))
        );
        assert!(matches!(
            HostPattern::parse("a.*.com"),
            Err(PatternError::Host(_))
        ));
        assert!(matches!(
            HostPattern::parse("a.com:80"),
            Err(PatternError::HostPort(_))
        ));
        assert!(matches!(
            HostPattern::parse("*.a*.com"),
            Err(PatternError::Wildcard(_))
        ));
    }
}
