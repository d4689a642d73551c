//! How a checker tells what it found: a problem (`ConfigError::Invalid`)
//! or a warning, each naming the line and the key.

use std::ops::Range;

use crate::config::model::ConfigError;

/// The configuration's text, to turn byte offsets into lines, and the
/// warnings found so far.
pub(super) struct Report<'a> {
    text: &'a str,
    /// Legal but unwise choices, each naming its line, in the order found.
    pub warnings: Vec<String>,
}

impl<'a> Report<'a> {
    pub fn new(text: &'a str) -> Report<'a> {
        Report {
            text,
            warnings: Vec::new(),
        }
    }

    /// The 1-based line `span` starts on.
    pub fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// A problem with `key`, written at `span`.
    pub fn invalid(&self, span: Range<usize>, key: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            line: self.line(span),
            key: key.to_owned(),
            problem,
        }
    }

    /// A warning about `key`, written at `span`.
    pub fn warn(&mut self, span: Range<usize>, key: &str, warning: String) {
        let line = self.line(span);
        self.warnings.push(format!("line {line}: {key}: {warning}"));
    }
}
