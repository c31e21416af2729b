//! One vocabulary for a stage's state (and a run's: [`RunStatus`]), used by the status table, every `--json`, the run
//! manifest and the build summary. Plan states (`stale`, `restorable`, ...) and outcome
//! states (`ran`, `restored`, ...) share it so a word means one thing everywhere.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    // What a plan says before anything runs.
    UpToDate,
    Frozen,
    Stale,
    Restorable,
    Blocked,
    /// A build in another process is running it now.
    Running,
    /// A release stage whose inputs are those of a release that was rolled back from: it
    /// does not release them again (not a failure).
    RolledBack,
    // What a build did.
    Ran,
    Restored,
    Failed,
    Skipped,
}

impl StageState {
    /// The snake_case word of `--json` and the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::UpToDate => "up_to_date",
            StageState::Frozen => "frozen",
            StageState::Stale => "stale",
            StageState::Restorable => "restorable",
            StageState::Blocked => "blocked",
            StageState::Running => "running",
            StageState::RolledBack => "rolled_back",
            StageState::Ran => "ran",
            StageState::Restored => "restored",
            StageState::Failed => "failed",
            StageState::Skipped => "skipped",
        }
    }

    /// The words of tables and terminal lines.
    pub fn label(self) -> &'static str {
        match self {
            StageState::UpToDate => "up to date",
            StageState::RolledBack => "rolled back",
            other => other.as_str(),
        }
    }

    /// Nothing to do for this stage (up to date, frozen, or held back after a rollback).
    pub fn is_fresh(self) -> bool {
        matches!(
            self,
            StageState::UpToDate | StageState::Frozen | StageState::RolledBack
        )
    }
}

impl fmt::Display for StageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_word_and_label_agree() {
        for s in [
            StageState::UpToDate,
            StageState::Frozen,
            StageState::Stale,
            StageState::Restorable,
            StageState::Blocked,
            StageState::Running,
            StageState::RolledBack,
            StageState::Ran,
            StageState::Restored,
            StageState::Failed,
            StageState::Skipped,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.label().replace(' ', "_"), s.as_str());
        }
    }
}

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Running,
    Success,
    Failed,
    GateFailed,
    Interrupted,
    /// Found `running` by a later build: the process died without closing its record.
    Crashed,
    /// `build --dry-run`: nothing ran (never written to a manifest).
    DryRun,
    /// `pipe rollback`: the manifest's `rollback_to` names the release put back.
    Rollback,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
            RunStatus::GateFailed => "gate_failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Crashed => "crashed",
            RunStatus::DryRun => "dry_run",
            RunStatus::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}
