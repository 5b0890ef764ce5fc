//! Configuration errors: each names the file, line, column, key path, the problem and the fix.

use std::fmt;
use std::ops::Range;

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

    /// Records a problem at `span` (a byte range of the source) for `key`.
    pub fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
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
            key: key.to_string(),
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
        key: &str,
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

    /// True when no error was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
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
        let text = self.src[line_start..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        (line, column, Some(text))
    }
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
