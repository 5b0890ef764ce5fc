//! Configuration errors: each names the file, line, column, key path, the problem and the fix.

use std::fmt::{self, Write};
use std::ops::Range;

/// Where a problem is in the file, as the operator writes it: `routes.users.paths[0]`. Built
/// one segment at a time (`KeyPath::root("routes").child("users").child("paths").index(0)`),
/// shown by `Display`. Empty for whole-file problems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(String);

impl KeyPath {
    /// A top-level key: `routes`.
    pub fn root(key: impl fmt::Display) -> Self {
        KeyPath::default().child(key)
    }

    /// The key `key` inside this one: `routes.users`.
    pub fn child(&self, key: impl fmt::Display) -> Self {
        let mut path = self.clone();
        if !path.0.is_empty() {
            path.0.push('.');
        }
        let _ = write!(path.0, "{key}");
        path
    }

    /// Item `index` of the array at this key: `routes.users.paths[0]`.
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        let _ = write!(path.0, "[{index}]");
        path
    }

    /// True when the last key is `key` (and has a parent): `routes.r.paths` ends with `paths`.
    pub fn ends_with(&self, key: &str) -> bool {
        self.0
            .strip_suffix(key)
            .is_some_and(|parent| parent.ends_with('.'))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key path rendered elsewhere (the consumer problems of `gantry-plugins`).
impl From<String> for KeyPath {
    fn from(path: String) -> Self {
        KeyPath(path)
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line, 0 when the problem has no position (for example the file cannot be read).
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The dotted key path, e.g. `routes.users.cluster`. Empty for whole-file problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something better to say than the message.
    pub hint: Option<String>,
    /// The offending source line, for display.
    pub source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(src) = &self.source_line {
            write!(f, "\n  {:>4} | {}", self.line, src)?;
            write!(f, "\n       | {:>1$}", "^", self.column.max(1))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one load, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "error: {e}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "\n{n} error{} in configuration",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte spans into file positions and collects errors.
pub struct ErrorSink<'a> {
    file: &'a str,
    src: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> ErrorSink<'a> {
    /// A sink for errors in `src`, read from `file`.
    pub fn new(file: &'a str, src: &'a str) -> Self {
        ErrorSink {
            file,
            src,
            errors: Vec::new(),
        }
    }

    /// Records a problem at `span` (a byte range of the source; `None`: no position) for `key`.
    pub fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: &KeyPath,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column, source_line) = match span {
            Some(span) => self.position(span.start),
            None => (0, 0, None),
        };
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.0.clone(),
            message: message.into(),
            hint,
            source_line,
        });
    }

    /// Like [`ErrorSink::push`] but without quoting the source line, for problems in values
    /// that may hold secrets (consumers' keys and passwords).
    pub fn push_redacted(
        &mut self,
        span: Option<Range<usize>>,
        key: &KeyPath,
        message: impl Into<String>,
    ) {
        self.push(span, key, message, None);
        if let Some(last) = self.errors.last_mut() {
            last.source_line = None;
        }
    }

    /// Drops the quoted source lines of the errors recorded after the first `from`, for
    /// sections whose values may hold secrets.
    pub fn redact_since(&mut self, from: usize) {
        for error in self.errors.iter_mut().skip(from) {
            error.source_line = None;
        }
    }

    /// Number of errors recorded so far.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// The recorded errors, sorted by position.
    pub fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(self.errors)
    }

    fn position(&self, offset: usize) -> (usize, usize, Option<String>) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.src[line_start..offset].chars().count() + 1;
        let text = self.src[line_start..].lines().next().unwrap_or_default();
        (line, column, Some(mask_secret_strings(text)))
    }
}

/// `message` (serde's) with every quoted string value left out: `invalid type: string "k3y",
/// expected a sequence` becomes `invalid type: a string, expected a sequence`. A value in the
/// wrong place may be a key, a password or a URL with credentials.
pub fn without_string_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        let value = &rest[at + "string \"".len()..];
        let mut escaped = false;
        let end = value.char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i + 1)
        });
        rest = &value[end.unwrap_or(value.len())..];
    }
    out.push_str(rest);
    out
}

/// Words that make a source line's strings secret when its text contains one (lower-cased):
/// credential keys, header values set by transforms, and cookies.
const SECRET_WORDS: [&str; 10] = [
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "authorization",
    "bearer",
    "cookie",
    "credential",
    "headers",
];

/// `line` for display in an error: on a line that may hold a secret (see [`SECRET_WORDS`], or
/// a URL with user information), every quoted string's characters are replaced by `*`, so
/// `-t`, `POST /reload` answers and logs never quote a secret, and the caret still lines up.
fn mask_secret_strings(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let url_credentials = lower.contains("://") && lower.contains('@');
    if !url_credentials && !SECRET_WORDS.iter().any(|w| lower.contains(w)) {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in line.chars() {
        match quote {
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                out.push(c);
            }
            Some(q) if c == q && !escaped => {
                quote = None;
                out.push(c);
            }
            Some(q) => {
                escaped = q == '"' && c == '\\' && !escaped;
                out.push('*');
            }
        }
    }
    out
}

/// "did you mean `x`?" for the closest candidate, if any is close enough.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_string_values() {
        assert_eq!(
            without_string_values(r#"invalid type: string "k\"3y", expected a sequence"#),
            "invalid type: a string, expected a sequence"
        );
        assert_eq!(
            without_string_values(r#"invalid value: string "redis://:pw@h", expected x"#),
            "invalid value: a string, expected x"
        );
        assert_eq!(
            without_string_values("expected a string"),
            "expected a string"
        );
    }

    #[test]
    fn lines_that_may_hold_secrets_are_quoted_masked() {
        assert_eq!(
            mask_secret_strings(r#"set_headers = { authorization = "Bearer abc" }"#),
            r#"set_headers = { authorization = "**********" }"#
        );
        assert_eq!(
            mask_secret_strings(r#"url = "redis://u:pw@h:6379""#),
            r#"url = "*******************""#
        );
        assert_eq!(
            mask_secret_strings(r#"secret = "a\"b" # x"#),
            r#"secret = "****" # x"#
        );
        assert_eq!(
            mask_secret_strings(r#"paths = ["/a"]"#),
            r#"paths = ["/a"]"#
        );
    }

    #[test]
    fn key_paths_render_as_written_in_toml() {
        let routes = KeyPath::root("routes");
        assert_eq!(routes.to_string(), "routes");
        let path = routes.child("r").child("paths").index(0);
        assert_eq!(path.to_string(), "routes.r.paths[0]");
        assert_eq!(path.child("x").to_string(), "routes.r.paths[0].x");
        assert_eq!(KeyPath::default().to_string(), "");
        assert_eq!(KeyPath::default().index(2).to_string(), "[2]");
        assert!(path.child("cluster").ends_with("cluster"));
        assert!(!KeyPath::root("cluster").ends_with("cluster"));
        assert!(!routes.child("xcluster").ends_with("cluster"));
    }

    #[test]
    fn a_quoted_source_line_never_shows_a_secret() {
        let src = "[routes.r.plugins.request-transform]\nset_headers = { authorization = 7 }\n\
                   x = { token = \"tok-123\" }\n";
        let mut sink = ErrorSink::new("g.toml", src);
        sink.push(Some(40..41), &KeyPath::root("k"), "bad", None);
        let x = src.find("x =").unwrap()..src.len();
        sink.push(Some(x), &KeyPath::root("x"), "bad", None);
        let shown = ConfigErrors(sink.errors).to_string();
        assert!(!shown.contains("tok-123"), "{shown}");
        assert!(shown.contains("x = { token = \"*******\" }"), "{shown}");
    }
}
