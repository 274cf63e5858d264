//! Diagnostics: a problem found in a rules folder, with its file, line, column and (when the
//! source is at hand) a snippet rendered the way rustc shows one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How bad a problem is: an error keeps a file (or a rule) from loading; a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem. Line and column are 1-based; 0 when unknown (a file that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// The source line and a caret under the column, as rustc prints them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
            snippet: None,
        }
    }

    pub fn warning(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, line, column, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Attach the snippet of `source` (the file's text) at this diagnostic's line and column.
    pub fn with_source(mut self, source: &str) -> Self {
        self.snippet = snippet(source, self.line, self.column);
        self
    }

    /// The full text: the headline, then the snippet if there is one.
    pub fn render(&self) -> String {
        let mut out = self.to_string();
        if let Some(snippet) = &self.snippet {
            out.push('\n');
            out.push_str(snippet);
        }
        out
    }
}

impl From<mqtter_engine::definitions::Diagnostic> for Diagnostic {
    fn from(d: mqtter_engine::definitions::Diagnostic) -> Self {
        Self::error(&d.file, d.line, d.column, d.message)
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        // serde-saphyr's messages may carry their own rendering of the place: keep the first line.
        let message = self.message.lines().next().unwrap_or("");
        write!(
            f,
            "{level}: {}:{}:{}: {message}",
            self.file.display(),
            self.line,
            self.column
        )
    }
}

/// ```text
///   |
/// 3 |     do: 'publish("a", 1'
///   |                        ^
/// ```
fn snippet(source: &str, line: u64, column: u64) -> Option<String> {
    let text = source
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    let caret_at = usize::try_from(column.max(1) - 1).ok()?;
    let lead: String = text
        .chars()
        .take(caret_at)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{number} | {text}");
    let _ = write!(out, "{pad} | {lead}^");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_points_at_the_column() {
        let d = Diagnostic::error(Path::new("a.yaml"), 2, 5, "bad").with_source("x: 1\ny: [2\n");
        assert_eq!(
            d.render(),
            "error: a.yaml:2:5: bad\n  |\n2 | y: [2\n  |     ^"
        );
    }
}
