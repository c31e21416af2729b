//! User-facing errors: one enum, worded in one place, with the exit code each implies and
//! the one place that builds a "did you mean".
//!
//! Everything that should reach a user with a specific exit code is an [`Error`] (usually
//! made with [`invalid`], [`failed`] or [`unknown`]); anything else is an internal failure
//! (exit 1) printed with its context chain.

use std::fmt;

/// Exit codes from SPEC: 0 ok, 1 stage failed / stale, 2 invalid input, 3 gate failed, 130 interrupted.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const GATE: i32 = 3;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug)]
pub enum Error {
    /// The pipeline or the command line is invalid (exit 2); the message says where.
    Invalid(String),
    /// Something the user must act on failed (exit 1).
    Failed(String),
    /// A name that does not exist (exit 2): `no {what} named `{name}`{context}`, with a
    /// "did you mean" from `candidates`.
    Unknown {
        what: &'static str,
        name: String,
        context: String,
        candidates: Vec<String>,
    },
    /// Stopped by a signal (exit 130).
    Interrupted(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::Unknown { .. } => exit::INVALID,
            Error::Failed(_) => exit::FAILED,
            Error::Interrupted(_) => exit::INTERRUPTED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(m) | Error::Failed(m) | Error::Interrupted(m) => f.write_str(m),
            Error::Unknown {
                what,
                name,
                context,
                candidates,
            } => {
                write!(f, "no {what} named `{name}`{context}")?;
                match did_you_mean(name, candidates.iter().map(String::as_str)) {
                    Some(h) => write!(f, " ({h})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for Error {}

/// An invalid pipeline or command line (exit 2).
pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    Error::Invalid(message.into()).into()
}

/// A failure the user caused or must act on (exit 1).
pub fn failed(message: impl Into<String>) -> anyhow::Error {
    Error::Failed(message.into()).into()
}

/// Stopped by a signal (exit 130).
pub fn interrupted(message: impl Into<String>) -> anyhow::Error {
    Error::Interrupted(message.into()).into()
}

/// `no {what} named `{name}`{context} (did you mean …?)` (exit 2).
pub fn unknown<'a>(
    what: &'static str,
    name: &str,
    context: impl Into<String>,
    candidates: impl IntoIterator<Item = &'a str>,
) -> anyhow::Error {
    Error::Unknown {
        what,
        name: name.to_string(),
        context: context.into(),
        candidates: candidates.into_iter().map(str::to_string).collect(),
    }
    .into()
}

/// The exit code an error implies: the code of an [`Error`] anywhere in the chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>().map(Error::exit_code))
        .unwrap_or(exit::FAILED)
}

/// The closest of `candidates` to a misspelt `name`, if any is close.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// "did you mean `x`?" for a misspelt name: the one wording of a suggestion.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(name, candidates).map(|s| format!("did you mean `{s}`?"))
}

/// The same as a suffix for a sentence: " (did you mean `x`?)", or nothing.
pub fn hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates)
        .map(|h| format!(" ({h})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("cmdd", ["cmd", "deps", "outs"]), Some("cmd".into()));
        assert_eq!(suggest("zzz", ["cmd", "deps"]), None);
        assert_eq!(hint("trian", ["train"]), " (did you mean `train`?)");
        assert_eq!(hint("zzz", ["train"]), "");
    }

    #[test]
    fn unknown_names_are_worded_once_with_the_suggestion() {
        let e = unknown("stage", "trian", " in Pipeline.toml", ["train", "eval"]);
        assert_eq!(
            e.to_string(),
            "no stage named `trian` in Pipeline.toml (did you mean `train`?)"
        );
        assert_eq!(exit_code(&e), 2);
    }

    #[test]
    fn exit_code_found_in_chain() {
        let e = invalid("bad").context("while loading");
        assert_eq!(exit_code(&e), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), 1);
        assert_eq!(exit_code(&interrupted("stop")), 130);
    }
}
