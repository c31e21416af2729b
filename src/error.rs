//! User-facing errors: one type that carries an exit code and a worded message.
//!
//! Everything that should reach a user with a specific exit code is a [`UserError`];
//! anything else is an internal failure (exit 1) printed with its context chain.

use std::fmt;

/// Exit codes from SPEC: 0 ok, 1 stage failed / stale, 2 invalid input, 3 gate failed, 130 interrupted.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const GATE: i32 = 3;
    pub const INTERRUPTED: i32 = 130;
}

/// An error with a message already worded for the user and the exit code it implies.
#[derive(Debug)]
pub struct UserError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// An invalid pipeline or command line (exit 2).
pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    UserError {
        code: exit::INVALID,
        message: message.into(),
    }
    .into()
}

/// A failure the user caused or must act on (exit 1).
pub fn failed(message: impl Into<String>) -> anyhow::Error {
    UserError {
        code: exit::FAILED,
        message: message.into(),
    }
    .into()
}

/// The exit code an error implies: the code of a [`UserError`] anywhere in the chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<UserError>().map(|u| u.code))
        .unwrap_or(exit::FAILED)
}

/// "did you mean" for a misspelt name among `candidates`.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("cmdd", ["cmd", "deps", "outs"]), Some("cmd".into()));
        assert_eq!(suggest("zzz", ["cmd", "deps"]), None);
    }

    #[test]
    fn exit_code_found_in_chain() {
        let e = invalid("bad").context("while loading");
        assert_eq!(exit_code(&e), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), 1);
    }
}
