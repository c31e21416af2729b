//! Run records: one folder per `pipe build` with `manifest.json`, `events.jsonl`,
//! `logs/<stage>.log`, `gates/<gate>.json` and `release_manifest.json`. Every file but the
//! event log is written atomically; the event log is appended and flushed line by line so a
//! crashed run still shows how far it got.

use crate::fsutil::atomic_write;
use crate::lockfile::OutRecord;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Git {
    pub commit: Option<String>,
    pub dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StageRecord {
    pub status: String,
    #[serde(default)]
    pub reasons: Vec<String>,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub version: u32,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    pub pipe_version: String,
    pub command: Vec<String>,
    pub git: Git,
    pub host: String,
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Every param value the build used (after `--set`), for `pipe params diff`.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub gate_overrides: Vec<String>,
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
}

impl Manifest {
    pub fn count(&self, status: &str) -> usize {
        self.stages.values().filter(|s| s.status == status).count()
    }
    pub fn duration_s(&self) -> Option<f64> {
        let a = humantime::parse_rfc3339(&self.started_at).ok()?;
        let b = humantime::parse_rfc3339(self.finished_at.as_deref()?).ok()?;
        Some(b.duration_since(a).ok()?.as_secs_f64())
    }
}

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

/// The open record of the current run.
pub struct Recorder {
    pub run_id: String,
    pub dir: PathBuf,
    events: Mutex<std::fs::File>,
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
        std::fs::create_dir_all(dir.join("logs"))?;
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("events.jsonl"))
            .with_context(|| format!("cannot create {}", dir.join("events.jsonl").display()))?;
        Ok(Recorder {
            run_id,
            dir,
            events: Mutex::new(events),
        })
    }

    /// Append one event line (`ts`, `event`, `stage`, extra fields) and flush it.
    pub fn event(&self, event: &str, stage: Option<&str>, extra: serde_json::Value) {
        let mut obj = serde_json::Map::new();
        obj.insert("ts".into(), now_rfc3339_ms().into());
        obj.insert("event".into(), event.into());
        if let Some(s) = stage {
            obj.insert("stage".into(), s.into());
        }
        if let serde_json::Value::Object(m) = extra {
            obj.extend(m);
        }
        let mut line = serde_json::Value::Object(obj).to_string();
        line.push('\n');
        if let Ok(mut f) = self.events.lock() {
            let _ = f.write_all(line.as_bytes());
            let _ = f.flush();
        }
    }

    pub fn log_path(&self, stage: &str) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{}.log", crate::fsutil::marker_name(stage)))
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        atomic_write(
            &self.dir.join("manifest.json"),
            &serde_json::to_vec_pretty(m)?,
        )
    }

    pub fn write_gate(&self, g: &crate::gate::GateResult) -> Result<()> {
        let name = crate::fsutil::marker_name(&g.gate);
        atomic_write(
            &self.dir.join("gates").join(format!("{name}.json")),
            &serde_json::to_vec_pretty(g)?,
        )
    }

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

/// Read every run manifest under `runs_dir`, newest first. Unreadable ones are skipped.
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

/// Remove the oldest run folders beyond `keep` (release manifests live on in `.pipe/releases`).
pub fn prune_runs(runs_dir: &Path, keep: usize) {
    let mut ids: Vec<PathBuf> = match std::fs::read_dir(runs_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => return,
    };
    ids.sort();
    if ids.len() > keep {
        for old in &ids[..ids.len() - keep] {
            let _ = std::fs::remove_dir_all(old);
        }
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
    for id in ids.iter().rev().take(3) {
        let Ok(mut m) = read_manifest(&runs_dir.join(id)) else {
            continue;
        };
        if m.status == "running" {
            m.status = "crashed".into();
            if let Ok(bytes) = serde_json::to_vec_pretty(&m) {
                let _ = atomic_write(&runs_dir.join(&m.run_id).join("manifest.json"), &bytes);
            }
        }
    }
}
