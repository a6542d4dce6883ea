//! Errors shared by the commands. A leaf module, so the commands need not depend on `cli`.

/// An error that is the user's to fix (exit code 2), as opposed to a runtime failure (1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
