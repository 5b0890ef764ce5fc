//! The spanned TOML document and per-entry deserialization.
//!
//! serde stops at the first error, which would make an operator fix a file one mistake at a
//! time. Instead the file is parsed once into spanned values and every entry (`[server]`, each
//! `[clusters.*]`, each `[routes.*]`) is deserialized on its own. When an entry fails, the
//! offending key is removed and the entry is tried again, so one pass reports every unknown key
//! and every bad value with its line and column.

use super::error::{did_you_mean, without_string_values, ConfigErrors, ErrorSink, KeyPath};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use std::ops::Range;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// A parsed configuration file whose sections are taken out one by one.
pub struct Document<'a> {
    root: DeTable<'a>,
    /// Errors found so far.
    errors: ErrorSink<'a>,
}

/// A named entry of a map section (`routes.users`).
pub struct Entry<'a> {
    /// The entry's name.
    pub name: String,
    /// The entry's value.
    pub value: Spanned<DeValue<'a>>,
}

impl<'a> Document<'a> {
    /// Parses `src`, reporting every syntax error at once.
    pub fn parse(file: &'a str, src: &'a str) -> Result<Self, ConfigErrors> {
        let (root, syntax_errors) = DeTable::parse_recoverable(src);
        let mut errors = ErrorSink::new(file, src);
        if !syntax_errors.is_empty() {
            for e in syntax_errors {
                errors.push(
                    e.span(),
                    &KeyPath::default(),
                    format!("TOML syntax: {}", e.message().trim()),
                    None,
                );
            }
            return Err(errors.into_errors());
        }
        Ok(Document {
            root: root.into_inner(),
            errors,
        })
    }

    /// Records a problem at `span` (a byte range of the source; `None`: no position) for `key`.
    pub fn report(
        &mut self,
        span: Option<Range<usize>>,
        key: &KeyPath,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.errors.push(span, key, message, hint);
    }

    /// Like [`Document::report`] but without quoting the source line, for problems in values
    /// that may hold secrets.
    pub fn report_redacted(
        &mut self,
        span: Option<Range<usize>>,
        key: &KeyPath,
        message: impl Into<String>,
    ) {
        self.errors.push_redacted(span, key, message);
    }

    /// Drops the quoted source lines of the problems reported after the first `from`, for
    /// sections whose values may hold secrets.
    pub fn redact_since(&mut self, from: usize) {
        self.errors.redact_since(from);
    }

    /// Number of problems reported so far.
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Every problem reported, sorted by position.
    pub fn into_errors(self) -> ConfigErrors {
        self.errors.into_errors()
    }

    /// Removes the top-level key `name` and returns its value.
    pub fn take(&mut self, name: &str) -> Option<Spanned<DeValue<'a>>> {
        take_key(&mut self.root, name)
    }

    /// Removes `name` from a table value (so the table can be deserialized without it).
    pub fn take_child(
        value: &mut Spanned<DeValue<'a>>,
        name: &str,
    ) -> Option<Spanned<DeValue<'a>>> {
        match value.get_mut() {
            DeValue::Table(table) => take_key(table, name),
            _ => None,
        }
    }

    /// Reports every top-level key that is left over as unknown.
    pub fn reject_remaining(&mut self, known: &[&str]) {
        let leftovers: Vec<_> = self.root.iter().map(|(k, _)| k.clone()).collect();
        for key in leftovers {
            let hint = did_you_mean(key.get_ref(), known.iter().copied())
                .or_else(|| Some(format!("top-level sections are: {}", known.join(", "))));
            self.report(
                Some(key.span()),
                &KeyPath::root(key.get_ref()),
                format!("unknown section `{}`", key.get_ref()),
                hint,
            );
        }
    }

    /// Splits a map section (`[routes]`) into its named entries.
    pub fn entries(&mut self, section: &KeyPath, value: Spanned<DeValue<'a>>) -> Vec<Entry<'a>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(table) => table
                .into_iter()
                .map(|(k, v)| Entry {
                    name: k.get_ref().to_string(),
                    value: v,
                })
                .collect(),
            other => {
                self.report(
                    Some(span),
                    section,
                    format!(
                        "expected a table of named entries, found {}",
                        other.type_str()
                    ),
                    Some(format!("write entries as [{}]", section.child("NAME"))),
                );
                Vec::new()
            }
        }
    }

    /// Deserializes every named entry of a map section (`[routes.*]`): name, span and value.
    pub fn deserialize_entries<T: DeserializeOwned>(
        &mut self,
        section: &str,
        value: Option<Spanned<DeValue<'a>>>,
    ) -> Vec<(String, Range<usize>, Option<T>)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let section = KeyPath::root(section);
        self.entries(&section, value)
            .into_iter()
            .map(|e| {
                let span = e.value.span();
                let parsed = self.deserialize(&section.child(&e.name), e.value);
                (e.name, span, parsed)
            })
            .collect()
    }

    /// Deserializes one entry, recording every problem in it. Keys with problems are dropped
    /// and the rest is returned for semantic checks; `None` when a required key is missing.
    pub fn deserialize<T: DeserializeOwned>(
        &mut self,
        key: &KeyPath,
        value: Spanned<DeValue<'a>>,
    ) -> Option<T> {
        self.try_deserialize(key, value).ok()
    }

    /// Like [`Document::deserialize`], but when the entry cannot be deserialized (a required
    /// key is missing) it gives back what is left of the value, without the keys reported.
    pub fn try_deserialize<T: DeserializeOwned>(
        &mut self,
        key: &KeyPath,
        mut value: Spanned<DeValue<'a>>,
    ) -> Result<T, Spanned<DeValue<'a>>> {
        let mut removed: Vec<KeyPath> = Vec::new();
        // Each failed attempt removes one key, so this ends after at most one pass per key.
        loop {
            let attempt =
                serde_path_to_error::deserialize::<_, T>(ValueDeserializer::from(value.clone()));
            let err = match attempt {
                // Keys removed above were reported already; the rest is still checked.
                Ok(parsed) => return Ok(parsed),
                Err(err) => err,
            };
            // `Spanned<T>` reads its value through a hidden key; it is not part of the user's path.
            let mut path: Vec<Segment> = err
                .path()
                .iter()
                .filter(|seg| !matches!(seg, Segment::Map { key } if key.starts_with("$__serde_spanned")))
                .cloned()
                .collect();
            let inner = err.into_inner();
            let message = inner.message().trim().to_string();

            if let Some(field) = quoted(&message, "missing field `") {
                if !removed.iter().any(|r| r.ends_with(field)) {
                    let full = join_key(key, &path).child(field);
                    self.report(
                        inner.span(),
                        &full,
                        format!("missing required key `{field}`"),
                        Some(format!("add `{field} = …` here")),
                    );
                }
                return Err(value);
            }

            let (text, hint) = if let Some(field) = quoted(&message, "unknown field `") {
                if !matches!(path.last(), Some(Segment::Map { key }) if key == field) {
                    path.push(Segment::Map {
                        key: field.to_string(),
                    });
                }
                let expected = expected_names(&message);
                let hint = did_you_mean(field, expected.iter().copied()).or_else(|| {
                    (!expected.is_empty())
                        .then(|| format!("valid keys here: {}", expected.join(", ")))
                });
                (format!("unknown key `{field}`"), hint)
            } else if let Some(variant) = quoted(&message, "unknown variant `") {
                let expected = expected_names(&message);
                let hint = did_you_mean(variant, expected.iter().copied())
                    .or_else(|| Some(format!("use one of: {}", expected.join(", "))));
                (format!("unknown value `{variant}`"), hint)
            } else {
                (without_string_values(&message), None)
            };
            let full = join_key(key, &path);
            self.report(inner.span(), &full, text, hint);
            removed.push(full);
            if path.is_empty() || !remove_path(&mut value, &path) {
                return Err(value);
            }
        }
    }
}

fn take_key<'a>(table: &mut DeTable<'a>, name: &str) -> Option<Spanned<DeValue<'a>>> {
    let key = table.keys().find(|k| k.get_ref() == name)?.clone();
    table.remove(&key)
}

/// Removes the value at `path` so the next attempt can find the next problem.
fn remove_path(value: &mut Spanned<DeValue<'_>>, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value.get_mut();
    for seg in parents {
        cur = match (cur, seg) {
            (DeValue::Table(t), Segment::Map { key }) => {
                match t.iter_mut().find(|(k, _)| k.get_ref() == key) {
                    Some((_, v)) => v.get_mut(),
                    None => return false,
                }
            }
            (DeValue::Array(a), Segment::Seq { index }) => match a.get_mut(*index) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            _ => return false,
        };
    }
    match (cur, last) {
        (DeValue::Table(t), Segment::Map { key }) => take_key(t, key).is_some(),
        (DeValue::Array(a), Segment::Seq { index }) if *index < a.len() => {
            let items = std::mem::replace(a, DeArray::new());
            *a = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| (i != *index).then_some(v))
                .collect();
            true
        }
        _ => false,
    }
}

/// `routes.users` + `[health_check, interval]` -> `routes.users.health_check.interval`.
fn join_key(base: &KeyPath, path: &[Segment]) -> KeyPath {
    path.iter().fold(base.clone(), |key, seg| match seg {
        Segment::Map { key: name } => key.child(name),
        Segment::Seq { index } => key.index(*index),
        Segment::Enum { variant } => key.child(variant),
        Segment::Unknown => key,
    })
}

/// The text between `prefix` and the next backtick.
fn quoted<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}

/// The backticked names after "expected" in a serde message.
fn expected_names(message: &str) -> Vec<&str> {
    let Some(pos) = message.find("expected") else {
        return Vec::new();
    };
    message[pos..].split('`').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_names_are_read_from_serde_messages() {
        let msg = "unknown field `clsuter`, expected one of `hosts`, `paths`, `cluster`";
        assert_eq!(quoted(msg, "unknown field `"), Some("clsuter"));
        assert_eq!(expected_names(msg), vec!["hosts", "paths", "cluster"]);
        assert_eq!(
            expected_names("unknown variant `x`, expected `a` or `b`"),
            vec!["a", "b"]
        );
    }
}
