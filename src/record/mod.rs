//! Run records: one folder per `pipe build` with `manifest.json`, `events.jsonl`,
//! `logs/<stage>.log`, `gates/<gate>.json` and `release_manifest.json`. Every file but the
//! event log is written atomically; the event log is appended and flushed line by line so a
//! crashed run still shows how far it got.

pub mod events;
pub mod follow;
pub mod history;
pub mod ledger;
pub mod markers;
pub mod release;

use crate::fsutil::atomic_write;
use crate::lockfile::OutRecord;
use crate::plan::Reason;
pub use crate::release::Git;
pub use crate::stage_state::RunStatus;
use crate::stage_state::StageState;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub status: StageState,
    #[serde(default, deserialize_with = "crate::plan::deserialize_reasons")]
    pub reasons: Vec<Reason>,
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub deps: BTreeMap<String, String>,
    #[serde(default)]
    pub outs: BTreeMap<String, OutRecord>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default)]
    pub log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The values of the stage's `metrics` files when it ran or was restored (file → its
    /// JSON; a bare `NaN`/`Infinity` is kept as the string `"NaN"`/`"Infinity"`), so
    /// `pipe metrics --runs` compares runs after the files changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, serde_json::Value>,
}

impl StageRecord {
    pub fn new(status: StageState, reasons: Vec<Reason>) -> StageRecord {
        StageRecord {
            status,
            reasons,
            fingerprint: None,
            deps: BTreeMap::new(),
            outs: BTreeMap::new(),
            attempts: 0,
            exit_code: None,
            duration_s: 0.0,
            log: None,
            error: None,
            gate: None,
            job_id: None,
            metrics: BTreeMap::new(),
        }
    }

    /// A stage judged fresh, so nothing runs: an up-to-date (or frozen) one is recorded as
    /// up to date with its lock entry; one held back after a rollback as it is.
    pub fn fresh(
        state: StageState,
        reasons: Vec<Reason>,
        entry: Option<&crate::lockfile::LockEntry>,
    ) -> StageRecord {
        let mut r = StageRecord::new(state, reasons);
        if state != StageState::RolledBack {
            r.status = StageState::UpToDate;
            if let Some(e) = entry {
                r.fingerprint = Some(e.fingerprint.clone());
                r.deps = e.deps.clone();
                r.outs = e.outs.clone();
            }
        }
        r
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub version: u32,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RunStatus,
    pub pipe_version: String,
    pub command: Vec<String>,
    pub git: Git,
    pub host: String,
    /// The run's `--name`, usable as a RUN reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Every param value the build used (after `--set`), for `pipe params diff`.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub gate_overrides: Vec<String>,
    /// For a `pipe rollback` run: the run whose release was put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
}

impl Manifest {
    pub fn count(&self, status: StageState) -> usize {
        self.stages.values().filter(|s| s.status == status).count()
    }
    pub fn duration_s(&self) -> Option<f64> {
        let a = humantime::parse_rfc3339(&self.started_at).ok()?;
        let b = humantime::parse_rfc3339(self.finished_at.as_deref()?).ok()?;
        Some(b.duration_since(a).ok()?.as_secs_f64())
    }
}

/// What a build did, in pipeline order: for its closing line and `build --json`.
pub struct Summary {
    pub run_id: Option<String>,
    pub status: RunStatus,
    pub exit_code: i32,
    pub stages: Vec<(String, StageRecord)>,
    pub duration_s: f64,
}

/// The open record of the current run: its id and folder.
pub struct Recorder {
    pub run_id: String,
    pub dir: PathBuf,
}

impl Recorder {
    pub fn start(runs_dir: &Path) -> Result<Recorder> {
        std::fs::create_dir_all(runs_dir)
            .with_context(|| format!("cannot create runs folder {}", runs_dir.display()))?;
        let base = new_run_id();
        let mut run_id = base.clone();
        let mut n = 1;
        // create_dir is the atomic claim on the id.
        let dir = loop {
            let dir = runs_dir.join(&run_id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    run_id = format!("{base}-{n}");
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create run folder {}", dir.display()));
                }
            }
        };
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.join("logs").display()))?;
        Ok(Recorder { run_id, dir })
    }

    pub fn log_path(&self, stage: &str) -> PathBuf {
        log_path(&self.dir, stage)
    }

    /// Write the manifest: through a temporary file and a rename always, with an fsync only
    /// once the run has ended. A manifest that says `running` and is lost to a power cut
    /// costs nothing (the run is `crashed` either way); the final one must survive.
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(m)?;
        let path = self.dir.join("manifest.json");
        if m.status == RunStatus::Running {
            crate::fsutil::quick_write(&path, &bytes)
        } else {
            atomic_write(&path, &bytes)
        }
    }

    pub fn write_gate(&self, g: &crate::gate::GateResult) -> Result<()> {
        let name = crate::fsutil::marker_name(&g.gate);
        atomic_write(
            &self.dir.join("gates").join(format!("{name}.json")),
            &serde_json::to_vec_pretty(g)?,
        )
    }
}

/// Where a stage's log lives in a run folder.
pub fn log_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir
        .join("logs")
        .join(format!("{}.log", crate::fsutil::marker_name(stage)))
}

/// The last `n` lines of a stage log, for a failure message.
pub fn log_tail(log: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(log) else {
        return vec![];
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A sortable, file-name-safe run id: `20261122-083000-123` (UTC, milliseconds).
pub fn new_run_id() -> String {
    let t = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    // 2026-11-22T08:30:00.123Z
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    format!("{}-{}-{}", &digits[..8], &digits[8..14], &digits[14..17])
}

pub fn now_rfc3339_ms() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Git commit and dirty flag of the workspace, when it is a git repository.
pub fn git_info(root: &Path) -> Git {
    // Outside a git work tree there is nothing to ask: no `git` process (a fork and an exec
    // per build, and a failing exec per folder on PATH before git is found).
    if std::env::var_os("GIT_DIR").is_none() && !root.ancestors().any(|a| a.join(".git").exists()) {
        return Git::default();
    }
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty = commit.is_some()
        && run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Git { commit, dirty }
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Read every run manifest under `runs_dir`, newest first. Unreadable ones are skipped. A run
/// still marked `running` shows as `crashed` unless its build is alive now (`live`: the run
/// id of the live workspace holder).
pub fn list_runs_live(runs_dir: &Path, live: Option<&str>) -> Vec<Manifest> {
    let mut runs = list_runs(runs_dir);
    for m in &mut runs {
        if m.status == RunStatus::Running && live != Some(m.run_id.as_str()) {
            m.status = RunStatus::Crashed;
        }
    }
    runs
}

/// Read every run manifest under `runs_dir`, newest first, as written.
pub fn list_runs(runs_dir: &Path) -> Vec<Manifest> {
    let mut ids: Vec<String> = match std::fs::read_dir(runs_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    };
    ids.sort();
    ids.reverse();
    ids.iter()
        .filter_map(|id| read_manifest(&runs_dir.join(id)).ok())
        .collect()
}

pub fn read_manifest(run_dir: &Path) -> Result<Manifest> {
    let p = run_dir.join("manifest.json");
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid run manifest", p.display()))
}

/// Runs still marked `running` when a new build holds the workspace died without closing
/// their records (kill -9, power loss): mark them `crashed` so `pipe runs` tells the truth.
pub fn mark_crashed(runs_dir: &Path) {
    // Earlier builds already marked older runs: only the newest few can be left open.
    let mut ids: Vec<String> = match std::fs::read_dir(runs_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return,
    };
    ids.sort();
    /// Only the status: a manifest of 1,000 stages is not decoded to read one field.
    #[derive(serde::Deserialize)]
    struct Status {
        status: RunStatus,
    }
    for id in ids.iter().rev().take(3) {
        let Ok(bytes) = std::fs::read(runs_dir.join(id).join("manifest.json")) else {
            continue;
        };
        if !serde_json::from_slice::<Status>(&bytes).is_ok_and(|s| s.status == RunStatus::Running) {
            continue;
        }
        let Ok(mut m) = read_manifest(&runs_dir.join(id)) else {
            continue;
        };
        if m.status == RunStatus::Running {
            m.status = RunStatus::Crashed;
            if let Ok(bytes) = serde_json::to_vec_pretty(&m) {
                let _ = atomic_write(&runs_dir.join(&m.run_id).join("manifest.json"), &bytes);
            }
        }
    }
}
