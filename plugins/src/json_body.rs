//! JSON body edits for the transform plugins: `set`, `remove` and `rename` at JSON Pointer
//! paths (RFC 6901), on bodies buffered up to a size limit.
//!
//! A body is buffered only when its `Content-Type` is JSON (`application/json`, `*/*+json`),
//! it is not compressed and its declared length fits; its framing becomes chunked because the
//! edited length is unknown when the header goes out. A body that grows past the limit, or is
//! not valid JSON after all, is passed on untouched (what was held is sent as it came) and the
//! reason is logged. Everything else streams as before.

use crate::config_types::HumanSize;
use crate::template::{Template, TemplateScope};
use crate::PluginState;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The default buffering limit.
const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;

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
    /// The largest body edited; larger ones pass untouched. Default `"1MiB"`.
    pub max_size: Option<HumanSize>,
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
}

/// One body being buffered.
#[derive(Debug)]
pub struct JsonBuffer {
    data: BytesMut,
    /// The `set` values, rendered when the body started.
    values: Vec<Value>,
    passthrough: bool,
}

impl JsonBuffer {
    /// Forgets what was held: the body is being sent again (a retry).
    pub fn restart(&mut self) {
        self.data.clear();
        self.passthrough = false;
    }
}

/// True for `application/json` and `*/*+json` content types.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| t == "application/json" || (t.contains('/') && t.ends_with("+json")))
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
        })
    }

    /// Starts buffering a body whose message has `headers`, when it can be edited: then the
    /// framing headers are changed for the edited length. `None` leaves the body streaming.
    pub fn start(
        &self,
        headers: &HeaderMap,
        req: &RequestHeader,
        state: &PluginState,
    ) -> Option<JsonBuffer> {
        if !is_json(headers) || headers.contains_key(CONTENT_ENCODING) {
            return None;
        }
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max) {
            log::info!(
                "json_body: a {} byte body is over max_size ({} bytes); passed untouched",
                declared.unwrap_or_default(),
                self.max
            );
            return None;
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
        Some(JsonBuffer {
            data: BytesMut::new(),
            values,
            passthrough: false,
        })
    }

    /// Feeds one chunk: holds it, or at the end replaces the body with the edited document.
    pub fn on_chunk(&self, buffer: &mut JsonBuffer, body: &mut Option<Bytes>, end: bool) {
        if buffer.passthrough {
            return;
        }
        if let Some(chunk) = body.take() {
            buffer.data.extend_from_slice(&chunk);
        }
        if buffer.data.len() > self.max {
            log::info!(
                "json_body: the body grew over max_size ({} bytes); passed untouched",
                self.max
            );
            buffer.passthrough = true;
            *body = Some(buffer.data.split().freeze());
            return;
        }
        if !end {
            // An empty chunk is never written: the body is held.
            *body = Some(Bytes::new());
            return;
        }
        let held = buffer.data.split().freeze();
        if held.is_empty() {
            return;
        }
        *body = Some(match serde_json::from_slice::<Value>(&held) {
            Ok(mut doc) => {
                self.apply(&mut doc, &buffer.values);
                Bytes::from(serde_json::to_vec(&doc).unwrap_or_else(|_| held.to_vec()))
            }
            Err(e) => {
                log::info!("json_body: the body is not valid JSON ({e}); passed untouched");
                held
            }
        });
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
            },
            &TemplateScope::default(),
        )
        .expect("valid")
    }

    fn run(e: &JsonEdits, chunks: &[&[u8]]) -> Vec<u8> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        let req = RequestHeader::build("POST", b"/", None).expect("request");
        let mut buffer = e
            .start(&headers, &req, &PluginState::default())
            .expect("buffered");
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            e.on_chunk(&mut buffer, &mut body, i + 1 == chunks.len());
            out.extend_from_slice(&body.unwrap_or_default());
        }
        out
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
        );
        let doc: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            doc,
            json!({"user":"al","items":[2],"tags":[7],"meta":{"source":"gantry"},"a/b":true})
        );
    }

    #[test]
    fn oversized_or_invalid_bodies_pass_untouched() {
        let e = edits(json!({"/x": 1}), &[], &[], 10);
        assert_eq!(
            run(&e, &[b"{\"a\":", b"\"0123456789\"}"]),
            b"{\"a\":\"0123456789\"}"
        );
        let e = edits(json!({"/x": 1}), &[], &[], 1024);
        assert_eq!(run(&e, &[b"not json"]), b"not json");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let req = RequestHeader::build("GET", b"/", None).expect("request");
        assert!(e.start(&headers, &req, &PluginState::default()).is_none());
        assert!(JsonEdits::new(
            JsonBodyConfig {
                remove: vec!["password".into()],
                ..JsonBodyConfig::default()
            },
            &TemplateScope::default()
        )
        .is_err());
    }
}
