//! Release manifests: written into the run folder of the run that made the release, with a
//! copy under `.pipe/releases/` so pruning old runs never forgets a release. And the release
//! lifecycle's state (`.pipe/state/releases.json`): the current release of each stage, the
//! fingerprints a rollback moved away from (never released again), and sticky gate
//! overrides (kept against the gate file's content hash).

use super::Recorder;
use crate::fsutil::atomic_write;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use crate::release::{Artifact, ReleaseManifest};

/// A person passed a failing gate: who, when, why, and for which content of its file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Override {
    pub file_hash: String,
    pub reason: Option<String>,
    pub by: String,
    pub at: String,
}

pub const STATE_VERSION: u32 = 1;

/// The release lifecycle's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReleaseState {
    pub version: u32,
    /// Stage → run id of its current release.
    #[serde(default)]
    pub current: BTreeMap<String, String>,
    /// Stage → fingerprints a rollback moved away from.
    #[serde(default)]
    pub rolled_back: BTreeMap<String, BTreeSet<String>>,
    /// Gate → its sticky override.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
}

impl ReleaseState {
    fn path(state_dir: &Path) -> std::path::PathBuf {
        state_dir.join("releases.json")
    }

    pub fn load(state_dir: &Path) -> ReleaseState {
        std::fs::read(Self::path(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice::<ReleaseState>(&b).ok())
            .filter(|s| s.version == STATE_VERSION)
            .unwrap_or_default()
    }

    pub fn save(&mut self, state_dir: &Path) -> Result<()> {
        self.version = STATE_VERSION;
        atomic_write(&Self::path(state_dir), &serde_json::to_vec_pretty(self)?)
    }

    /// The override that still holds for a gate whose file now hashes to `file_hash`.
    pub fn sticky_override(&self, gate: &str, file_hash: Option<&str>) -> Option<&Override> {
        self.overrides
            .get(gate)
            .filter(|o| Some(o.file_hash.as_str()) == file_hash)
    }

    /// A release of `stage` at this fingerprint was rolled back from.
    pub fn is_rolled_back(&self, stage: &str, fingerprint: &str) -> bool {
        self.rolled_back
            .get(stage)
            .is_some_and(|s| s.contains(fingerprint))
    }

    /// The current release of a stage: the recorded one, else the newest.
    pub fn current_of<'a>(&'a self, stage: &str, all: &'a [ReleaseManifest]) -> Option<&'a str> {
        self.current.get(stage).map(String::as_str).or_else(|| {
            all.iter()
                .find(|r| r.stage == stage)
                .map(|r| r.run_id.as_str())
        })
    }
}

impl crate::plan::Releases for ReleaseState {
    fn held_at(&self, stage: &str, fingerprint: &str) -> Option<String> {
        self.is_rolled_back(stage, fingerprint)
            .then(|| self.current.get(stage).cloned().unwrap_or_default())
    }
    fn overridden(&self, gate: &str, file_hash: Option<&str>) -> bool {
        self.sticky_override(gate, file_hash).is_some()
    }
}

/// `user@host`, for who overrode a gate.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", super::hostname())
}

impl Recorder {
    /// Write the release manifest into the run folder and keep a copy under `.pipe/releases/`
    /// so pruning old runs never forgets a release.
    pub fn write_release(&self, r: &ReleaseManifest, releases_dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(r)?;
        atomic_write(&self.dir.join("release_manifest.json"), &bytes)?;
        let name = format!(
            "{}--{}.json",
            r.run_id,
            crate::fsutil::marker_name(&r.stage)
        );
        atomic_write(&releases_dir.join(name), &bytes)
    }
}

/// Every release manifest, newest first.
pub fn list_releases(releases_dir: &Path) -> Vec<ReleaseManifest> {
    let mut out: Vec<ReleaseManifest> = match std::fs::read_dir(releases_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect(),
        Err(_) => vec![],
    };
    out.sort_by(|a, b| b.run_id.cmp(&a.run_id).then(a.stage.cmp(&b.stage)));
    out
}
