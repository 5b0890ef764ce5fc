//! The header edits both transform plugins share: headers set, added and removed, with values
//! that are [templates](crate::support::template) rendered from the client's request.
//!
//! Values are rendered first and applied afterwards, so a template reading a header sees it as
//! the client sent it, whatever the edits do to it.

use crate::support::template::{header_name, header_templates, Template, TemplateScope};
use crate::PluginState;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::BTreeMap;

/// Compiled `set_headers`, `add_headers` and `remove_headers`.
pub struct HeaderEdits {
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
    remove: Vec<HeaderName>,
}

/// The values of one request's edits, rendered.
pub struct RenderedEdits<'e> {
    edits: &'e HeaderEdits,
    /// `None`: the value rendered empty (or invalid), so the header is only removed.
    set: Vec<Option<HeaderValue>>,
    add: Vec<Option<HeaderValue>>,
}

/// A request or response header the edits apply to.
pub trait EditedHeader {
    /// Removes every field `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Appends a field.
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
}

impl EditedHeader for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.append_header(name.clone(), value).map(|_| ())
    }
}

impl EditedHeader for ResponseHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.append_header(name.clone(), value).map(|_| ())
    }
}

impl HeaderEdits {
    /// Compiles the three tables; templates may use what `scope` offers.
    pub fn new(
        set: &BTreeMap<String, String>,
        add: &BTreeMap<String, String>,
        remove: &[String],
        scope: &TemplateScope,
    ) -> Result<Self, String> {
        Ok(HeaderEdits {
            set: header_templates(set, scope)?,
            add: header_templates(add, scope)?,
            remove: remove
                .iter()
                .map(|h| header_name(h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Renders every value against `request`.
    pub fn render(&self, request: &RequestHeader, state: &PluginState) -> RenderedEdits<'_> {
        let values = |templates: &[(HeaderName, Template)]| {
            templates
                .iter()
                .map(|(_, t)| t.header_value(request, state))
                .collect()
        };
        RenderedEdits {
            edits: self,
            set: values(&self.set),
            add: values(&self.add),
        }
    }

    /// Removes the `remove_headers`.
    pub fn remove_listed(&self, header: &mut impl EditedHeader) {
        for name in &self.remove {
            header.remove(name);
        }
    }
}

impl RenderedEdits<'_> {
    /// Replaces the `set_headers` (removed when empty) and appends the `add_headers`.
    pub fn apply(self, header: &mut impl EditedHeader) -> pingora::Result<()> {
        for ((name, _), value) in self.edits.set.iter().zip(self.set) {
            header.remove(name);
            if let Some(value) = value {
                header.append(name, value)?;
            }
        }
        for ((name, _), value) in self.edits.add.iter().zip(self.add) {
            if let Some(value) = value {
                header.append(name, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_rendered_from_the_request_before_any_edit() {
        let edits = HeaderEdits::new(
            &table(&[("x-a", "[$header.x-a]"), ("x-empty", "$header.x-missing")]),
            &table(&[("x-b", "b")]),
            &["x-a".to_string(), "x-drop".to_string()],
            &TemplateScope::default(),
        )
        .expect("valid");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in [
            ("x-a", "orig"),
            ("x-drop", "1"),
            ("x-empty", "old"),
            ("x-b", "0"),
        ] {
            req.append_header(name, value).unwrap();
        }
        let state = PluginState::default();
        let rendered = edits.render(&req, &state);
        edits.remove_listed(&mut req);
        rendered.apply(&mut req).unwrap();
        assert_eq!(req.headers["x-a"], "[orig]", "read before x-a was removed");
        assert!(req.headers.get("x-drop").is_none());
        assert!(
            req.headers.get("x-empty").is_none(),
            "an empty value removes"
        );
        let b: Vec<_> = req.headers.get_all("x-b").iter().collect();
        assert_eq!(b, ["0", "b"], "added after what was there");

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("x-drop", "1").unwrap();
        let client = RequestHeader::build("GET", b"/", None).unwrap();
        let rendered = edits.render(&client, &state);
        edits.remove_listed(&mut resp);
        rendered.apply(&mut resp).unwrap();
        assert!(resp.headers.get("x-drop").is_none());
        assert_eq!(resp.headers["x-a"], "[]");
        assert_eq!(resp.headers["x-b"], "b");
    }
}
