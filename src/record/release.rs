//! Release manifests: written into the run folder of the run that made the release, with a
//! copy under `.pipe/releases/` so pruning old runs never forgets a release.

use super::{Git, Recorder};
use crate::fsutil::atomic_write;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One released file or folder: its path and what the cache holds for it (hash, size,
/// folder flag, mode, so an executable stays executable on rollback).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    #[serde(flatten)]
    pub out: crate::cache::CachedOut,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub status: String,
    pub run_id: String,
    pub created_at: String,
    pub stage: String,
    pub artifacts: Vec<Artifact>,
    pub gates: Vec<String>,
    pub git: Git,
    #[serde(default)]
    pub pipeline: Option<String>,
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
