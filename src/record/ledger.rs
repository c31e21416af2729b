//! The ledger: the sink that keeps the books of a build. From the events alone it writes
//! `Pipeline.lock` (coalesced: at most once a second, re-rendering only changed entries),
//! the run manifest with one [`StageRecord`] per stage, gate files, release manifests and
//! running markers.

use super::{Manifest, Recorder, RunStatus, StageRecord, markers};
use crate::event::{Event, Sink};
use crate::fsutil::{atomic_write, marker_name, now_rfc3339};
use crate::graph::Pipeline;
use crate::lockfile::{LockEntry, LockFile, OutRecord, RenderCache};
use crate::stage_state::StageState;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Once a second: every 200 ms was a fifth of the files a 1,001-stage build created
/// besides its logs and objects, and a lost entry costs a restore from the run cache.
pub const LOCK_WRITE_EVERY: Duration = Duration::from_secs(1);

pub struct Ledger<'a> {
    p: &'a Pipeline,
    rec: &'a Recorder,
    journal: &'a markers::Journal,
    lock: LockFile,
    render: RenderCache,
    dirty: bool,
    written: Instant,
    manifest: Manifest,
    /// Inputs of judged stages, written to the lock when they succeed.
    pending: HashMap<String, LockEntry>,
}

impl<'a> Ledger<'a> {
    /// Start the books: the manifest is written at once with status `running`.
    pub fn open(
        p: &'a Pipeline,
        rec: &'a Recorder,
        journal: &'a markers::Journal,
        lock: LockFile,
        manifest: Manifest,
    ) -> Result<Ledger<'a>> {
        rec.write_manifest(&manifest)?;
        Ok(Ledger {
            p,
            rec,
            journal,
            lock,
            render: RenderCache::default(),
            dirty: false,
            written: Instant::now() - LOCK_WRITE_EVERY,
            manifest,
            pending: HashMap::new(),
        })
    }

    /// The manifest as it stands (complete after `run_done`).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Write the lock if it changed, at most once a second unless `now`.
    pub fn flush(&mut self, now: bool) -> Result<()> {
        if self.dirty && (now || self.written.elapsed() >= LOCK_WRITE_EVERY) {
            let text = self.lock.render_cached(&mut self.render);
            atomic_write(&self.p.layout.lockfile(), text.as_bytes())?;
            tracing::debug!(
                entries = self.lock.stages.len(),
                bytes = text.len(),
                "wrote Pipeline.lock"
            );
            self.dirty = false;
            self.written = Instant::now();
        }
        Ok(())
    }

    /// Entries of stages no longer in the pipeline leave the lock.
    fn prune(&mut self) {
        let before = self.lock.stages.len();
        let names: BTreeSet<&str> = self.p.stages.iter().map(|s| s.name.as_str()).collect();
        self.lock.stages.retain(|k, _| names.contains(k.as_str()));
        if self.lock.stages.len() != before {
            self.dirty = true;
        }
    }

    fn record(&mut self, stage: &str) -> &mut StageRecord {
        self.manifest
            .stages
            .entry(stage.to_string())
            .or_insert_with(|| StageRecord::new(StageState::Stale, vec![]))
    }

    fn log_if_any(&mut self, stage: &str, ran: bool) {
        if ran || self.rec.log_path(stage).exists() {
            self.record(stage).log = Some(format!("logs/{}.log", marker_name(stage)));
        }
    }

    fn succeeded(&mut self, stage: &str, outs: BTreeMap<String, OutRecord>) -> Result<()> {
        if let Some(mut entry) = self.pending.remove(stage) {
            entry.outs = outs.clone();
            self.lock.stages.insert(stage.to_string(), entry);
            self.dirty = true;
            self.flush(false)?;
        }
        self.journal.end(stage);
        let metrics = self.read_metrics(stage);
        let r = self.record(stage);
        r.outs = outs;
        r.metrics = metrics;
        Ok(())
    }

    /// The values of a stage's `metrics` files as they are now (it just ran or was
    /// restored). A missing, oversized or unreadable file is left out with a note in the
    /// trace: the record is history, not a check.
    fn read_metrics(&self, stage: &str) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        let Some(s) = self.p.index.get(stage).map(|&i| &self.p.stages[i]) else {
            return out;
        };
        for file in &s.metrics {
            let path = self.p.root.join(file);
            match std::fs::metadata(&path) {
                Ok(md) if md.len() > MAX_METRICS_BYTES => {
                    tracing::warn!(
                        stage,
                        file,
                        bytes = md.len(),
                        "metrics file too large to record"
                    );
                    continue;
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match crate::gate::parse_metrics(&bytes) {
                Ok(v) => {
                    out.insert(file.clone(), v);
                }
                Err(e) => tracing::warn!(stage, file, "metrics file is not JSON: {e}"),
            }
        }
        out
    }
}

/// Metrics files larger than this are not copied into the run manifest.
const MAX_METRICS_BYTES: u64 = 1 << 20;

fn lock_outs(outs: &BTreeMap<String, crate::cache::CachedOut>) -> BTreeMap<String, OutRecord> {
    outs.iter()
        .map(|(k, o)| {
            (
                k.clone(),
                OutRecord {
                    hash: o.hash.to_string(),
                    size: o.size,
                    dir: o.dir,
                },
            )
        })
        .collect()
}

impl Sink for Ledger<'_> {
    fn on(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::StageJudged {
                stage,
                state,
                reasons,
                fingerprint,
                inputs,
            } => {
                let r = if state.is_fresh() {
                    StageRecord::fresh(*state, reasons.clone(), self.lock.stages.get(stage))
                } else {
                    let mut r = StageRecord::new(*state, reasons.clone());
                    r.fingerprint = fingerprint.clone();
                    if let Some(e) = inputs {
                        r.deps = e.deps.clone();
                        self.pending.insert(stage.clone(), (**e).clone());
                    }
                    r
                };
                self.manifest.stages.insert(stage.clone(), r);
            }
            Event::StageStart { stage, .. } => {
                // Before anything starts: a kill from here on leaves the stage incomplete,
                // even in the instant between a local command's start and the line naming
                // its process group (written by the dispatcher once the group exists; the
                // last `start` line of a stage wins). A Slurm job has no local group.
                self.journal.start(stage, None)?;
            }
            Event::StageOk {
                stage,
                duration_s,
                attempts,
                job_id,
                outs,
            } => {
                self.succeeded(stage, lock_outs(outs))?;
                self.log_if_any(stage, true);
                let r = self.record(stage);
                r.status = StageState::Ran;
                r.duration_s = *duration_s;
                r.attempts = *attempts;
                r.exit_code = Some(0);
                r.job_id = job_id.clone();
            }
            Event::StageRestored {
                stage,
                duration_s,
                outs,
            } => {
                self.succeeded(stage, lock_outs(outs))?;
                let r = self.record(stage);
                r.status = StageState::Restored;
                r.duration_s = *duration_s;
            }
            Event::StageFail {
                stage,
                error,
                exit_code,
                attempts,
                duration_s,
                job_id,
                interrupted,
                ..
            } => {
                // An interrupted stage keeps its marker: the next build reruns it.
                if !interrupted {
                    self.journal.end(stage);
                }
                self.pending.remove(stage);
                self.log_if_any(stage, false);
                let r = self.record(stage);
                r.status = StageState::Failed;
                r.error = Some(error.clone());
                r.exit_code = *exit_code;
                r.attempts = *attempts;
                r.duration_s = *duration_s;
                r.job_id = job_id.clone();
            }
            Event::StageSkipped { stage, reason } => {
                let r = StageRecord::new(StageState::Skipped, vec![reason.clone()]);
                self.manifest.stages.insert(stage.clone(), r);
            }
            Event::StageBlocked { stage, reason } => {
                let r = StageRecord::new(StageState::Blocked, vec![reason.clone()]);
                self.manifest.stages.insert(stage.clone(), r);
            }
            Event::GatePass { result, .. } | Event::GateFail { result } => {
                self.rec.write_gate(result)?;
                self.record(&result.stage).gate = Some(result.gate.clone());
            }
            Event::Release { manifest, .. } => {
                self.rec
                    .write_release(manifest, &self.p.layout.releases())?;
            }
            Event::RunDone { status, .. } => {
                self.prune();
                let lock = self.flush(true);
                self.manifest.status = *status;
                self.manifest.finished_at = Some(now_rfc3339());
                // A no-op leaves no run folder (the build removes it): no final manifest to
                // render and fsync for it.
                if !super::history::is_noop(&self.manifest) {
                    self.rec.write_manifest(&self.manifest)?;
                }
                lock?;
            }
            Event::RunStart { .. }
            | Event::StageOutput { .. }
            | Event::StageRetry { .. }
            | Event::CacheCorrupt { .. }
            | Event::Warning { .. }
            | Event::Interrupt
            | Event::RollbackStart { .. }
            | Event::Rollback { .. } => {}
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.flush(false)
    }
}

/// The status a finished run had, and its exit code.
pub fn run_status(m: &Manifest, interrupted: bool, gate_failed: bool) -> (RunStatus, i32) {
    use crate::error::exit;
    if interrupted {
        (RunStatus::Interrupted, exit::INTERRUPTED)
    } else if m.count(StageState::Failed) > 0 {
        (RunStatus::Failed, exit::FAILED)
    } else if gate_failed {
        (RunStatus::GateFailed, exit::GATE)
    } else {
        (RunStatus::Success, exit::OK)
    }
}
