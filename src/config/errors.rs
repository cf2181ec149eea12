//! Configuration errors: one line per bad setting, all reported at once.

use std::fmt;

/// Every configuration problem found at start-up, one per bad variable.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.lines())]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    fn lines(&self) -> String {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        lines.join("\n")
    }
}

/// One bad setting: which variable, what is wrong with its value, and the expected form.
/// The value itself is quoted only for settings that are not secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The variable's name, e.g. `EXTERNAL_API_TIMEOUT`.
    pub var: String,
    /// What is wrong with the value.
    pub problem: String,
    /// The form a good value takes (empty when the problem says it all).
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)?;
        if !self.expected.is_empty() {
            write!(f, " (expected: {})", self.expected)?;
        }
        Ok(())
    }
}
