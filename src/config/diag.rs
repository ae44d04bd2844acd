//! Configuration problems: where they are (file, document, field path, line) and how to fix them.
//!
//! Every loader reports through [`Problems`], so one run lists every problem it can find rather
//! than stopping at the first one.

use std::fmt;

use crate::text::suggest;

/// Where a value sits in the configuration sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file (or `<embedded default>`, `<command line>`).
    pub file: String,
    /// Index of the YAML document in a multi-document file, counting from 1.
    pub doc: Option<usize>,
    /// A short description of the object, e.g. `ServiceEntry default/www-oracle-com`.
    pub object: Option<String>,
    /// Line and column, when the parser knows them.
    pub line_col: Option<(usize, usize)>,
}

impl Origin {
    pub fn file(file: impl Into<String>) -> Self {
        Origin {
            file: file.into(),
            ..Origin::default()
        }
    }
    pub fn doc(mut self, doc: usize) -> Self {
        self.doc = Some(doc);
        self
    }
    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(doc) = self.doc {
            write!(f, " (document {doc})")?;
        }
        if let Some(object) = &self.object {
            write!(f, " {object}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: the source, the field path, what is wrong (with the value) and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub origin: Origin,
    /// Field path inside the document, e.g. `spec.trafficPolicy.tls.mode`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.origin)?;
        if !self.path.is_empty() && self.path != "." {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A collector of problems.
#[derive(Debug, Default)]
pub struct Problems {
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn error(
        &mut self,
        origin: &Origin,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, origin, path, message, hint);
    }

    pub fn warn(
        &mut self,
        origin: &Origin,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Warning, origin, path, message, hint);
    }

    fn push(
        &mut self,
        severity: Severity,
        origin: &Origin,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.list.push(Problem {
            severity,
            origin: origin.clone(),
            path: path.into(),
            message: message.into(),
            hint,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|p| p.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter().filter(|p| p.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter().filter(|p| p.severity == Severity::Warning)
    }

    pub fn extend(&mut self, other: Problems) {
        self.list.extend(other.list);
    }
}

/// The error returned when a configuration cannot be used: every error found, plus the warnings.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn single(
        origin: &Origin,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        let mut p = Problems::default();
        p.error(origin, path, message, hint);
        ConfigError { problems: p.list }
    }

    /// The messages of the errors only (handy in tests).
    pub fn messages(&self) -> Vec<String> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string())
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        writeln!(
            f,
            "the configuration has {errors} error{}:",
            if errors == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Turns a serde error message into (message, hint). Unknown fields and enum values get a
/// "did you mean" from the list serde gives.
pub fn explain_serde_message(msg: &str) -> (String, Option<String>) {
    // serde: "unknown field `x`, expected one of `a`, `b`" or "expected `a` or `b`";
    // serde-saphyr prints the list without backticks.
    for (prefix, what) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((word, tail)) = rest.split_once('`')
        {
            let expected = tail
                .trim_start_matches(',')
                .trim()
                .trim_start_matches("expected one of")
                .trim_start_matches("expected")
                .trim();
            let candidates: Vec<&str> = expected
                .split([',', ' '])
                .map(|s| s.trim().trim_matches('`'))
                .filter(|s| !s.is_empty() && *s != "or")
                .collect();
            let message = if candidates.is_empty() {
                format!("unknown {what} \"{word}\"")
            } else {
                format!(
                    "unknown {what} \"{word}\"; expected one of {}",
                    candidates.join(", ")
                )
            };
            let hint =
                suggest(word, candidates.iter().copied()).map(|s| format!("did you mean \"{s}\"?"));
            return (message, hint);
        }
    }
    (msg.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_serde_unknown_variant() {
        let (m, h) = explain_serde_message(
            "unknown variant `MUTAL`, expected one of DISABLE, SIMPLE, MUTUAL",
        );
        assert_eq!(
            m,
            "unknown value \"MUTAL\"; expected one of DISABLE, SIMPLE, MUTUAL"
        );
        assert_eq!(h.as_deref(), Some("did you mean \"MUTUAL\"?"));
        let (m, h) = explain_serde_message(
            "unknown field `portLevelSetting`, expected one of `hosts`, `portLevelSettings`",
        );
        assert_eq!(
            m,
            "unknown field \"portLevelSetting\"; expected one of hosts, portLevelSettings"
        );
        assert_eq!(h.as_deref(), Some("did you mean \"portLevelSettings\"?"));
    }
}
