//! W3C Trace Context: the `traceparent` and `tracestate` a request arrives with, parsed
//! strictly (anything malformed is ignored, never refused), and the `traceparent` sent on.
//!
//! <https://www.w3.org/TR/trace-context/>: `VERSION-TRACEID-PARENTID-FLAGS`, lowercase hex,
//! neither id all zeros, version `ff` invalid; a later version may append fields after a `-`.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `tracestate` passed on (the specification's limit for what a vendor must
/// propagate).
const MAX_TRACESTATE: usize = 512;

/// A 16-byte trace id.
pub type TraceId = [u8; 16];
/// An 8-byte span id.
pub type SpanId = [u8; 8];

/// A well-formed parent from `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace it belongs to.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller sampled it (flag `01`).
    pub sampled: bool,
}

/// The parent in `headers`: exactly one well-formed `traceparent`, or none.
pub fn parent(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_traceparent(value.as_bytes())
}

/// The `tracestate` to pass on with a continued parent: one value of at most 512 visible
/// ASCII characters, or none.
pub fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let value = values.next()?;
    let fits =
        value.len() <= MAX_TRACESTATE && value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b));
    (values.next().is_none() && fits && !value.is_empty()).then(|| value.clone())
}

/// Parses one `traceparent` value.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    match version {
        0xff => return None,
        // Version 00 is exactly 55 characters; a later one may append `-...`.
        0 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    decode(&value[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    decode(&value[36..52], &mut span_id)?;
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `00-TRACEID-SPANID-FLAGS`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    encode(trace_id, &mut out[3..35]);
    out[35] = b'-';
    encode(span_id, &mut out[36..52]);
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

/// A new random trace id (never all zeros).
pub fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
    id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    id
}

/// A new random span id (never all zeros).
pub fn new_span_id() -> SpanId {
    nonzero_u64().to_be_bytes()
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// `bytes` as lowercase hex, into `out` (twice as long).
pub fn encode(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// A trace id as 32 lowercase hex digits.
pub fn trace_id_hex(id: &TraceId) -> HexId<32> {
    let mut out = [0u8; 32];
    encode(id, &mut out);
    HexId(out)
}

/// A span id as 16 lowercase hex digits.
pub fn span_id_hex(id: &SpanId) -> HexId<16> {
    let mut out = [0u8; 16];
    encode(id, &mut out);
    HexId(out)
}

/// An id in hex, without an allocation.
#[derive(Clone, Copy)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (pair, byte) in hex.chunks_exact(2).zip(out.iter_mut()) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

/// Two lowercase hex digits (uppercase is invalid in `traceparent`).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed_and_written_back() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(
            trace_id_hex(&p.trace_id).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_id_hex(&p.span_id).as_str(), "00f067aa0ba902b7");
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true), VALID);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        let cases = [
            "",
            "00",
            &VALID[..54],
            &format!("{VALID}-extra"),
            &VALID.replace("4bf9", "4BF9"),
            &VALID.replace("4bf9", "4bg9"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            &VALID.replacen("00", "ff", 1),
            &VALID.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            &VALID.replacen("00-", "0-0", 1),
        ];
        for case in cases {
            assert_eq!(parse_traceparent(case.as_bytes()), None, "{case:?}");
        }
        // A later version may append fields, after a dash.
        let future = format!("{}-more", VALID.replacen("00", "01", 1));
        assert!(parse_traceparent(future.as_bytes()).is_some());
        let glued = format!("{}x", VALID.replacen("00", "01", 1));
        assert_eq!(parse_traceparent(glued.as_bytes()), None);
    }

    #[test]
    fn two_traceparents_are_no_parent_and_tracestate_is_bounded() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(parent(&h).is_some());
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(parent(&h), None);
        let mut h = HeaderMap::new();
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert_eq!(tracestate(&h).unwrap(), "congo=t61rcWkgMzE");
        h.insert(TRACESTATE, HeaderValue::from_str(&"a".repeat(513)).unwrap());
        assert_eq!(tracestate(&h), None);
    }

    #[test]
    fn new_ids_are_never_zero() {
        for _ in 0..1000 {
            assert_ne!(new_trace_id(), [0; 16]);
            assert_ne!(new_span_id(), [0; 8]);
        }
    }
}
