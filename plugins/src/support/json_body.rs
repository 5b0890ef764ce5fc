//! JSON body edits for the transform plugins: `set`, `remove` and `rename` at JSON Pointer
//! paths (RFC 6901), on bodies buffered up to a size limit.
//!
//! Edits fail closed: a body that has to be edited but cannot be (it carries a
//! `Content-Encoding`, even `identity`; its `Content-Type` is not JSON; it is over `max_size`,
//! declared or as it streams; it is not valid JSON or nests deeper than `max_depth`) is never
//! passed on unedited. [`JsonEdits::start`] decides from the header what it can, and
//! [`JsonEdits::on_chunk`] holds the body and edits it at its end; both say why a body
//! cannot be edited with an [`Unusable`], which the request side turns into a refusal
//! ([`Unusable::rejection`]) and the response side into a 502 or an aborted response.
//! An edited body's framing becomes chunked: its length is unknown when the header goes out.
//! A message without a body has nothing to edit and is left alone.

use crate::support::config_types::HumanSize;
use crate::support::template::{Template, TemplateScope};
use crate::{PluginState, Rejection};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The default buffering limit.
const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;

/// The default nesting limit.
const DEFAULT_MAX_DEPTH: usize = 64;

/// The highest `max_depth` accepted: below `serde_json`'s own recursion limit (128), so the
/// configured limit is the one that answers.
const MAX_MAX_DEPTH: usize = 100;

/// `json_body = { set = {...}, remove = [...], rename = {...}, max_size = "1MiB" }`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JsonBodyConfig {
    /// `{ "/meta/source" = "gantry" }`: values set (strings are templates).
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// `["/password"]`: members removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `{ "/usr" = "/user" }`: members moved.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// The largest body edited; larger ones are refused. Default `"1MiB"`.
    pub max_size: Option<HumanSize>,
    /// The deepest nesting of arrays and objects edited; deeper bodies are refused.
    /// Default 64.
    pub max_depth: Option<usize>,
}

/// A JSON Pointer, split into unescaped tokens.
#[derive(Debug, Clone)]
struct Pointer(Vec<String>);

impl Pointer {
    fn parse(text: &str) -> Result<Pointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON Pointer: write it like \"/meta/source\""
            ));
        };
        Ok(Pointer(
            rest.split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }

    fn remove(&self, doc: &mut Value) -> Option<Value> {
        let (last, parents) = self.0.split_last()?;
        let mut cur = doc;
        for token in parents {
            cur = match cur {
                Value::Object(map) => map.get_mut(token)?,
                Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        match cur {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let index = last.parse::<usize>().ok()?;
                (index < items.len()).then(|| items.remove(index))
            }
            _ => None,
        }
    }

    /// Sets the value, creating missing objects on the way; a scalar in the way leaves the
    /// document unchanged.
    fn set(&self, doc: &mut Value, value: Value) {
        let Some((last, parents)) = self.0.split_last() else {
            return;
        };
        let mut cur = doc;
        for token in parents {
            cur = match cur {
                Value::Object(map) => map
                    .entry(token.clone())
                    .or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => match token.parse::<usize>() {
                    Ok(i) if i < items.len() => &mut items[i],
                    _ => return,
                },
                _ => return,
            };
        }
        match cur {
            Value::Object(map) => {
                map.insert(last.clone(), value);
            }
            Value::Array(items) if last == "-" => items.push(value),
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => items[i] = value,
                Ok(i) if i == items.len() => items.push(value),
                _ => {}
            },
            _ => {}
        }
    }
}

/// A value to set: JSON as written, or a string template rendered per request.
#[derive(Debug, Clone)]
enum SetValue {
    Json(Value),
    Template(Template),
}

/// Compiled edits.
#[derive(Debug)]
pub struct JsonEdits {
    sets: Vec<(Pointer, SetValue)>,
    removes: Vec<Pointer>,
    renames: Vec<(Pointer, Pointer)>,
    max: usize,
    max_depth: usize,
}

/// Why a body that has to be edited cannot be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// It carries this `Content-Encoding` (any value, `identity` included).
    Encoded(String),
    /// Its `Content-Type` (this one, or none) is not JSON.
    NotJson(String),
    /// It is larger than `max_size` (this many bytes), as declared or as it streamed.
    TooLarge(usize),
    /// It is not valid JSON.
    Invalid,
    /// Its arrays and objects nest deeper than `max_depth` (this many levels).
    TooDeep(usize),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::Encoded(coding) => write!(
                f,
                "the body has Content-Encoding `{coding}`; only an unencoded body (no Content-Encoding) can be edited"
            ),
            Unusable::NotJson(kind) => write!(
                f,
                "the body's Content-Type `{kind}` is not JSON (application/json or */*+json)"
            ),
            Unusable::TooLarge(max) => write!(f, "the body is larger than {max} bytes"),
            Unusable::Invalid => f.write_str("the body is not valid JSON"),
            Unusable::TooDeep(max) => {
                write!(f, "the body nests arrays and objects deeper than {max} levels")
            }
        }
    }
}

impl Unusable {
    /// The refusal of a request whose body cannot be edited: 415 for an encoded or non-JSON
    /// body, 413 for one too large, 400 for invalid or too deeply nested JSON.
    pub fn rejection(&self) -> Rejection {
        let (status, slug, title) = match self {
            Unusable::Encoded(_) | Unusable::NotJson(_) => {
                (415, "unsupported-media-type", "Unsupported media type")
            }
            Unusable::TooLarge(_) => (413, "body-too-large", "Request body too large"),
            Unusable::Invalid => (400, "invalid-json", "Invalid JSON body"),
            Unusable::TooDeep(_) => (400, "json-too-deep", "JSON body nested too deeply"),
        };
        Rejection {
            status,
            slug,
            title,
            detail: self.to_string(),
            headers: Vec::new(),
        }
    }
}

/// The error type of a response whose body cannot be edited: the gateway answers it with a
/// 502 problem while the header is unsent, and aborts the response otherwise.
pub const NOT_EDITABLE: ErrorType = ErrorType::Custom("response body cannot be edited");

/// The error that stops a response whose body cannot be edited, saying why.
pub fn not_editable(why: &Unusable) -> Box<Error> {
    Error::explain(NOT_EDITABLE, format!("response-transform: {why}"))
}

/// One body being buffered.
#[derive(Debug)]
pub struct JsonBuffer {
    data: BytesMut,
    /// The `set` values, rendered when the body started.
    values: Vec<Value>,
}

impl JsonBuffer {
    /// Forgets what was held: the body is being sent again (a retry).
    pub fn restart(&mut self) {
        self.data.clear();
    }
}

/// The media type of `headers`' `Content-Type`, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// True for `application/json` and `*/*+json` content types.
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers)
        .is_some_and(|t| t == "application/json" || (t.contains('/') && t.ends_with("+json")))
}

/// The `Content-Length` of `headers`, when it is one number.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
}

/// How deeply the arrays and objects of `json` nest, counted until it passes `max`
/// (then `max + 1`): a scan outside strings, so nothing deep is ever parsed.
fn depth(json: &[u8], max: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > max {
                    return deepest;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl JsonEdits {
    /// Compiles `config`; string values of `set` are templates.
    pub fn new(config: JsonBodyConfig, scope: &TemplateScope) -> Result<JsonEdits, String> {
        let sets = config
            .set
            .into_iter()
            .map(|(path, value)| {
                let value = match value {
                    Value::String(text) => SetValue::Template(Template::parse(&text, scope)?),
                    other => SetValue::Json(other),
                };
                Ok((Pointer::parse(&path)?, value))
            })
            .collect::<Result<_, String>>()?;
        let max = config.max_size.map_or(DEFAULT_MAX_SIZE, |s| s.0);
        if max == 0 || max > 64 * 1024 * 1024 {
            return Err("json_body.max_size must be between 1 byte and 64MiB".into());
        }
        let max_depth = config.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
        if !(1..=MAX_MAX_DEPTH).contains(&max_depth) {
            return Err(format!(
                "json_body.max_depth must be between 1 and {MAX_MAX_DEPTH}"
            ));
        }
        Ok(JsonEdits {
            sets,
            removes: config
                .remove
                .iter()
                .map(|p| Pointer::parse(p))
                .collect::<Result<_, _>>()?,
            renames: config
                .rename
                .iter()
                .map(|(from, to)| Ok((Pointer::parse(from)?, Pointer::parse(to)?)))
                .collect::<Result<_, String>>()?,
            max: max as usize,
            max_depth,
        })
    }

    /// Starts buffering the body of a message with `headers` (the caller knows it has one).
    /// `Err` says why it cannot be edited: it is encoded, not JSON, or declared too large.
    pub fn start(
        &self,
        headers: &HeaderMap,
        req: &RequestHeader,
        state: &PluginState,
    ) -> Result<JsonBuffer, Unusable> {
        if let Some(coding) = headers.get(CONTENT_ENCODING) {
            return Err(Unusable::Encoded(
                String::from_utf8_lossy(coding.as_bytes()).into_owned(),
            ));
        }
        if !is_json(headers) {
            return Err(Unusable::NotJson(media_type(headers).unwrap_or_default()));
        }
        if declared_length(headers).is_some_and(|len| len > self.max as u64) {
            return Err(Unusable::TooLarge(self.max));
        }
        let values = self
            .sets
            .iter()
            .map(|(_, value)| match value {
                SetValue::Json(v) => v.clone(),
                SetValue::Template(t) => {
                    let mut text = String::new();
                    t.render(req, state, &mut text);
                    Value::String(text)
                }
            })
            .collect();
        Ok(JsonBuffer {
            data: BytesMut::new(),
            values,
        })
    }

    /// Feeds one chunk: holds it, or at the end replaces the body with the edited document.
    /// `Err` says why the body cannot be edited; nothing held has been passed on then.
    pub fn on_chunk(
        &self,
        buffer: &mut JsonBuffer,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Unusable> {
        if let Some(chunk) = body.take() {
            if buffer.data.len() + chunk.len() > self.max {
                buffer.data = BytesMut::new();
                return Err(Unusable::TooLarge(self.max));
            }
            buffer.data.extend_from_slice(&chunk);
        }
        if !end {
            // An empty chunk is never written: the body is held.
            *body = Some(Bytes::new());
            return Ok(());
        }
        let held = buffer.data.split().freeze();
        if held.iter().all(u8::is_ascii_whitespace) {
            // An empty body has nothing to edit.
            *body = Some(held);
            return Ok(());
        }
        if depth(&held, self.max_depth) > self.max_depth {
            return Err(Unusable::TooDeep(self.max_depth));
        }
        let mut doc = serde_json::from_slice::<Value>(&held).map_err(|_| Unusable::Invalid)?;
        self.apply(&mut doc, &buffer.values);
        // Serializing a `Value` cannot fail: its map keys are strings.
        *body = Some(Bytes::from(
            serde_json::to_vec(&doc).map_err(|_| Unusable::Invalid)?,
        ));
        Ok(())
    }

    fn apply(&self, doc: &mut Value, values: &[Value]) {
        for pointer in &self.removes {
            pointer.remove(doc);
        }
        for (from, to) in &self.renames {
            if let Some(value) = from.remove(doc) {
                to.set(doc, value);
            }
        }
        for ((pointer, _), value) in self.sets.iter().zip(values) {
            pointer.set(doc, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn edits(set: Value, remove: &[&str], rename: &[(&str, &str)], max: u64) -> JsonEdits {
        let set = match set {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        JsonEdits::new(
            JsonBodyConfig {
                set,
                remove: remove.iter().map(|s| s.to_string()).collect(),
                rename: rename
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                max_size: Some(HumanSize(max)),
                max_depth: Some(4),
            },
            &TemplateScope::default(),
        )
        .expect("valid")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        headers
    }

    fn start(
        e: &JsonEdits,
        pairs: &[(&'static str, &'static str)],
    ) -> Result<JsonBuffer, Unusable> {
        let req = RequestHeader::build("POST", b"/", None).expect("request");
        e.start(&headers(pairs), &req, &PluginState::default())
    }

    fn run(e: &JsonEdits, chunks: &[&[u8]]) -> Result<Vec<u8>, Unusable> {
        let mut buffer = start(e, &[("content-type", "application/json; charset=utf-8")])?;
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            e.on_chunk(&mut buffer, &mut body, i + 1 == chunks.len())?;
            out.extend_from_slice(&body.unwrap_or_default());
        }
        Ok(out)
    }

    #[test]
    fn set_remove_and_rename_edit_the_document() {
        let e = edits(
            json!({"/meta/source": "gantry", "/tags/-": 7, "/a~1b": true}),
            &["/password", "/items/0"],
            &[("/usr", "/user")],
            1024,
        );
        let out = run(
            &e,
            &[
                br#"{"usr":"al","password":"x","#,
                br#""items":[1,2],"tags":[]}"#,
            ],
        )
        .expect("edited");
        let doc: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            doc,
            json!({"user":"al","items":[2],"tags":[7],"meta":{"source":"gantry"},"a/b":true})
        );
    }

    #[test]
    fn bodies_that_cannot_be_edited_are_refused_with_the_reason() {
        let e = edits(json!({"/x": 1}), &["/password"], &[], 10);
        assert_eq!(
            run(&e, &[b"{\"a\":", b"\"0123456789\"}"]).err(),
            Some(Unusable::TooLarge(10))
        );
        let e = edits(json!({"/x": 1}), &["/password"], &[], 1024);
        assert_eq!(run(&e, &[b"not json"]).err(), Some(Unusable::Invalid));
        assert_eq!(
            run(&e, &[br#"{"a":[[{"b":[1]}]]}"#]).err(),
            Some(Unusable::TooDeep(4))
        );
        // Brackets inside strings are not nesting.
        assert!(run(&e, &[br#"{"a":"[[[[[{{{{\"]]"}"#]).is_ok());
        assert_eq!(run(&e, &[b""]).expect("empty"), b"");
        let json = ("content-type", "application/json");
        for coding in ["identity", "gzip"] {
            assert_eq!(
                start(&e, &[json, ("content-encoding", coding)]).err(),
                Some(Unusable::Encoded(coding.into()))
            );
        }
        assert_eq!(
            start(&e, &[("content-type", "text/html")]).err(),
            Some(Unusable::NotJson("text/html".into()))
        );
        assert_eq!(start(&e, &[]).err(), Some(Unusable::NotJson(String::new())));
        assert_eq!(
            start(&e, &[json, ("content-length", "1025")]).err(),
            Some(Unusable::TooLarge(1024))
        );
        let statuses = [
            Unusable::Encoded("gzip".into()),
            Unusable::NotJson("text/plain".into()),
            Unusable::TooLarge(1),
            Unusable::Invalid,
            Unusable::TooDeep(1),
        ]
        .map(|u| u.rejection().status);
        assert_eq!(statuses, [415, 415, 413, 400, 400]);
    }

    #[test]
    fn config_mistakes_are_errors() {
        let bad =
            |config: JsonBodyConfig| JsonEdits::new(config, &TemplateScope::default()).is_err();
        assert!(bad(JsonBodyConfig {
            remove: vec!["password".into()],
            ..JsonBodyConfig::default()
        }));
        assert!(bad(JsonBodyConfig {
            max_depth: Some(0),
            ..JsonBodyConfig::default()
        }));
        assert!(bad(JsonBodyConfig {
            max_depth: Some(MAX_MAX_DEPTH + 1),
            ..JsonBodyConfig::default()
        }));
    }
}
