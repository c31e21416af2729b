//! Why a stage failed, as a value: the job and the executors produce it, the reporter words
//! it (without the stage name, which the reporter adds), events and the manifest carry it.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageFailure {
    /// A command exited with a non-zero code.
    Exit { cmd: String, code: i32 },
    /// A command was killed by a signal pipe did not send.
    Signal { cmd: String, signal: i32 },
    /// The attempt ran past the stage's `timeout`.
    TimedOut {
        after: String,
        detail: Option<String>,
    },
    /// The command could not be started or waited for.
    Spawn { error: String },
    /// The executor (Slurm) failed or reported the job failed.
    Executor { error: String },
    /// The command succeeded but did not create these declared outs.
    OutMissing { outs: Vec<String> },
    /// Preparing or collecting outs failed (folders, hashing, storing, escaping symlinks).
    Outs { error: String },
    /// The last of several attempts failed.
    Retried {
        attempts: u32,
        last: Box<StageFailure>,
    },
}

impl StageFailure {
    /// The failure of the last attempt, through any retry wrapper.
    pub fn last(&self) -> &StageFailure {
        match self {
            StageFailure::Retried { last, .. } => last.last(),
            other => other,
        }
    }
}

impl fmt::Display for StageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageFailure::Exit { cmd, code } => {
                write!(f, "`{}` exited with code {code}", short(cmd))
            }
            StageFailure::Signal { cmd, signal } => {
                write!(f, "`{}` was killed by signal {signal}", short(cmd))
            }
            StageFailure::TimedOut { after, detail } => match detail {
                Some(d) => write!(f, "timed out after {after} {d}"),
                None => write!(f, "timed out after {after}"),
            },
            StageFailure::Spawn { error }
            | StageFailure::Executor { error }
            | StageFailure::Outs { error } => f.write_str(error),
            StageFailure::OutMissing { outs } => {
                let list = outs
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(
                    f,
                    "the command succeeded but did not create declared out {list}"
                )
            }
            StageFailure::Retried { attempts, last } => {
                write!(f, "{last} (after {attempts} attempts)")
            }
        }
    }
}

/// The first line of a command, cut at 60 characters, for messages.
pub fn short(cmd: &str) -> String {
    let first = cmd.lines().next().unwrap_or("");
    if first.chars().count() > 60 || cmd.contains('\n') {
        format!("{}…", first.chars().take(60).collect::<String>())
    } else {
        first.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_failures_without_the_stage_name() {
        let e = StageFailure::Exit {
            cmd: "python3 train.py".into(),
            code: 3,
        };
        assert_eq!(e.to_string(), "`python3 train.py` exited with code 3");
        let r = StageFailure::Retried {
            attempts: 3,
            last: Box::new(e),
        };
        assert_eq!(
            r.to_string(),
            "`python3 train.py` exited with code 3 (after 3 attempts)"
        );
        let m = StageFailure::OutMissing {
            outs: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            m.to_string(),
            "the command succeeded but did not create declared out `a`, `b`"
        );
    }
}
