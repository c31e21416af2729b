//! History: which runs are kept, and how a run is named.
//!
//! - `.pipe/state/last_runs.json` (the index) maps each stage to the newest run in which it
//!   ran (or failed, so its log is there) and how long its last successful run took. The
//!   ledger updates it when a run ends; pruning and `pipe log STAGE` read it instead of
//!   every manifest, and the terminal shows the expected duration from it.
//! - Pruning keeps the newest `keep_runs` runs, every run that made a release, and every run
//!   the index points at.
//! - A RUN reference is a full id, a unique prefix, `latest`, `latest~N`, or a `--name`.

use super::{Manifest, RunStatus};
use crate::fsutil::quick_write;
use crate::stage_state::StageState;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const INDEX_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageHistory {
    /// The newest run in which the stage ran or failed (it has a log there).
    pub run_id: String,
    /// How long its newest successful run took.
    #[serde(default)]
    pub last_ok_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    pub stages: BTreeMap<String, StageHistory>,
}

fn index_path(state_dir: &Path) -> PathBuf {
    state_dir.join("last_runs.json")
}

impl Index {
    pub fn load(state_dir: &Path) -> Index {
        std::fs::read(index_path(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .filter(|i| i.version == INDEX_VERSION)
            .unwrap_or_default()
    }

    /// Take in a finished run's stages.
    pub fn update(&mut self, m: &Manifest) {
        self.version = INDEX_VERSION;
        for (name, r) in &m.stages {
            if matches!(r.status, StageState::Ran | StageState::Failed) {
                let e = self.stages.entry(name.clone()).or_default();
                e.run_id = m.run_id.clone();
                if r.status == StageState::Ran {
                    e.last_ok_s = Some(r.duration_s);
                }
            }
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        quick_write(&index_path(state_dir), &serde_json::to_vec(self)?)
    }

    pub fn expected_s(&self, stage: &str) -> Option<f64> {
        self.stages.get(stage).and_then(|h| h.last_ok_s)
    }
}

/// Remove the oldest run folders beyond `keep`, sparing runs that made a release and the
/// newest run of each stage (the index). Release manifests also live on in `.pipe/releases`.
pub fn prune(runs_dir: &Path, state_dir: &Path, keep: usize) {
    let mut ids: Vec<PathBuf> = match std::fs::read_dir(runs_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => return,
    };
    if ids.len() <= keep {
        return;
    }
    ids.sort();
    let index = Index::load(state_dir);
    let spared: BTreeSet<&str> = index.stages.values().map(|h| h.run_id.as_str()).collect();
    for old in &ids[..ids.len() - keep] {
        let id = old
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if spared.contains(id.as_str()) || old.join("release_manifest.json").exists() {
            continue;
        }
        let _ = std::fs::remove_dir_all(old);
    }
}

/// Resolve a RUN reference among `runs` (newest first) to one manifest.
pub fn resolve<'a>(runs: &'a [Manifest], reference: &str) -> Result<&'a Manifest> {
    let candidates = |ms: Vec<&Manifest>| -> String {
        ms.iter()
            .take(10)
            .map(|m| match &m.name {
                Some(n) => format!("{} ({n})", m.run_id),
                None => m.run_id.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if runs.is_empty() {
        return Err(crate::error::invalid(format!(
            "no run `{reference}`: there are no runs yet (`pipe build` records one per build)"
        )));
    }
    if let Some(rest) = reference.strip_prefix("latest") {
        let n: Option<usize> = match rest {
            "" => Some(0),
            r => r.strip_prefix('~').and_then(|n| n.parse().ok()),
        };
        if let Some(n) = n {
            return runs.get(n).ok_or_else(|| {
                crate::error::invalid(format!(
                    "no run `{reference}`: there are only {} runs",
                    runs.len()
                ))
            });
        }
    }
    if let Some(m) = runs.iter().find(|m| m.run_id == reference) {
        return Ok(m);
    }
    let named: Vec<&Manifest> = runs
        .iter()
        .filter(|m| m.name.as_deref() == Some(reference))
        .collect();
    if let Some(m) = named.first() {
        // The newest run of that name.
        return Ok(m);
    }
    let prefixed: Vec<&Manifest> = runs
        .iter()
        .filter(|m| m.run_id.starts_with(reference))
        .collect();
    match prefixed.len() {
        1 => Ok(prefixed[0]),
        0 => Err(crate::error::invalid(format!(
            "no run `{reference}`; recent runs: {} (also `latest`, `latest~N`, or a --name)",
            candidates(runs.iter().collect())
        ))),
        _ => Err(crate::error::invalid(format!(
            "run `{reference}` is ambiguous: it could be {}",
            candidates(prefixed)
        ))),
    }
}

/// Whether a finished run did nothing at all (a no-op: nothing ran, restored or failed).
pub fn is_noop(m: &Manifest) -> bool {
    m.status == RunStatus::Success
        && !m.stages.values().any(|r| {
            matches!(
                r.status,
                StageState::Ran | StageState::Restored | StageState::Failed
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, name: Option<&str>) -> Manifest {
        Manifest {
            run_id: id.into(),
            name: name.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn references_resolve_by_id_prefix_latest_and_name() {
        let runs = vec![
            run("20261201-120000-003", Some("sweep")),
            run("20261201-110000-002", None),
            run("20261130-100000-001", Some("base")),
        ];
        let id = |r: &str| {
            resolve(&runs, r)
                .map(|m| m.run_id.clone())
                .map_err(|e| e.to_string())
        };
        assert_eq!(id("latest").unwrap(), "20261201-120000-003");
        assert_eq!(id("latest~2").unwrap(), "20261130-100000-001");
        assert_eq!(id("20261130").unwrap(), "20261130-100000-001");
        assert_eq!(id("base").unwrap(), "20261130-100000-001");
        assert_eq!(id("20261201-110000-002").unwrap(), "20261201-110000-002");
        let amb = id("20261201").unwrap_err();
        assert!(
            amb.contains("ambiguous") && amb.contains("20261201-110000-002"),
            "{amb}"
        );
        let unknown = id("nope").unwrap_err();
        assert!(unknown.contains("20261201-120000-003 (sweep)"), "{unknown}");
        assert!(id("latest~9").unwrap_err().contains("only 3 runs"));
    }
}
