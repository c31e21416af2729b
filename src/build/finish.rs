//! What happens when a stage is done: lock entry, records and events, gates, releases,
//! and the statuses of stages that never start (skipped, blocked).

use super::Status;
use super::engine::{Done, Engine, Outcome};
use crate::gate::{self};
use crate::record::{self, ReleaseManifest, StageRecord};
use crate::report::{Tone, secs};
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeSet;

impl<'a> Engine<'a> {
    pub(super) fn finish(&mut self, done: Done) -> Result<()> {
        let i = done.i;
        let s = self.stage(i);
        let name = s.name.clone();
        let mut rec = self.records.remove(&name).unwrap_or_default();
        rec.attempts = done.attempts;
        rec.exit_code = done.exit_code;
        rec.duration_s = done.duration.as_secs_f64();
        rec.job_id = done.job_id.clone();
        let inputs = self.inputs.get(&i).cloned();
        if let Some(inp) = &inputs {
            rec.fingerprint = Some(inp.entry.fingerprint.clone());
            rec.deps = inp.entry.deps.clone();
        }
        let ran = matches!(done.outcome, Outcome::Ran);
        // A failed stage's log matters most: record it whenever the stage wrote one.
        if ran || self.rec.log_path(&name).exists() {
            rec.log = Some(format!("logs/{}.log", crate::fsutil::marker_name(&name)));
        }
        match done.outcome {
            Outcome::Ran | Outcome::Restored => {
                let status = if ran { Status::Ran } else { Status::Restored };
                rec.status = status.as_str().into();
                rec.outs = done.outs.clone();
                if let Some(inp) = inputs {
                    let mut entry = inp.entry;
                    entry.outs = done.outs;
                    self.lock.stages.insert(name.clone(), entry);
                    self.lock_dirty = true;
                    self.flush_lock(false)?;
                }
                let _ = std::fs::remove_file(self.p.layout.running_marker(&name));
                if ran {
                    self.rec.event(
                        "stage_ok",
                        Some(&name),
                        json!({"duration_s": rec.duration_s, "attempts": rec.attempts}),
                    );
                    self.rep.status(
                        "Finished",
                        Tone::Good,
                        &format!("{name} in {}", secs(rec.duration_s)),
                    );
                } else {
                    self.rec.event(
                        "stage_restored",
                        Some(&name),
                        json!({"duration_s": rec.duration_s}),
                    );
                    self.rep
                        .status("Restored", Tone::Good, &format!("{name} from cache"));
                }
                self.status.insert(i, status);
                self.records.insert(name.clone(), rec);
                self.rep.stage_finished(&name);
                self.after_success(i, status)?;
            }
            Outcome::Failed(msg) | Outcome::Corrupt(msg) => {
                let _ = std::fs::remove_file(self.p.layout.running_marker(&name));
                rec.status = Status::Failed.as_str().into();
                rec.error = Some(msg.clone());
                self.rec.event(
                    "stage_fail",
                    Some(&name),
                    json!({"error": msg, "exit_code": done.exit_code, "attempts": done.attempts}),
                );
                self.rep.stage_finished(&name);
                self.rep
                    .status("Failed", Tone::Bad, &format!("{name}: {msg}"));
                let log = self.rec.log_path(&name);
                let tail = crate::runner::tail(&log, 15);
                if !tail.is_empty() {
                    let mut text = String::new();
                    for l in &tail {
                        text.push_str(&format!("             | {l}\n"));
                    }
                    text.push_str(&format!("             full log: {}", log.display()));
                    self.rep.line(&text);
                }
                self.status.insert(i, Status::Failed);
                self.records.insert(name, rec);
                if !self.opts.keep_going {
                    self.stop = true;
                }
            }
            Outcome::Interrupted => {
                // Keep the marker: the next build reruns this stage.
                rec.status = Status::Failed.as_str().into();
                rec.error = Some("interrupted".into());
                self.rec
                    .event("stage_fail", Some(&name), json!({"error": "interrupted"}));
                self.rep.stage_finished(&name);
                self.status.insert(i, Status::Failed);
                self.records.insert(name, rec);
            }
        }
        Ok(())
    }

    /// Gates and releases after a stage succeeded (or was found up to date).
    fn after_success(&mut self, i: usize, status: Status) -> Result<()> {
        let s = self.stage(i);
        if let Some(spec) = &s.gate {
            let overridden = self.opts.override_gates.iter().any(|g| g == &spec.name);
            let mut result = gate::evaluate(spec, &s.name, &self.p.root, false);
            if !result.passed && overridden {
                result.passed = true;
                result.overridden = true;
            }
            self.rec.write_gate(&result)?;
            if let Some(r) = self.records.get_mut(&s.name) {
                r.gate = Some(spec.name.clone());
            }
            let checks = json!(result.checks);
            if result.passed {
                self.rec.event(
                    "gate_pass",
                    Some(&s.name),
                    json!({"gate": spec.name, "overridden": result.overridden, "checks": checks}),
                );
                let note = if result.overridden {
                    " (overridden with --override-gate)"
                } else {
                    ""
                };
                if status != Status::UpToDate || result.overridden || self.rep.verbose {
                    self.rep.status(
                        "Gate",
                        if result.overridden {
                            Tone::Warn
                        } else {
                            Tone::Good
                        },
                        &format!("{} passed{note}", spec.name),
                    );
                }
            } else {
                self.rec.event(
                    "gate_fail",
                    Some(&s.name),
                    json!({"gate": spec.name, "checks": checks, "error": result.error}),
                );
                self.rep.status(
                    "Gate failed",
                    Tone::Bad,
                    &format!("{} (stage {}):", spec.name, s.name),
                );
                for f in result.failures() {
                    self.rep.line(&format!("             - {f}"));
                }
                self.rep.line(&format!("             downstream stages are blocked; fix the metric or threshold, or pass `--override-gate {}`", spec.name));
                self.gate_failed.insert(i);
            }
            self.gates.insert(i, result);
        }
        if s.release && status == Status::Ran && !self.gate_failed.contains(&i) {
            self.write_release(i)?;
        }
        Ok(())
    }

    fn write_release(&mut self, i: usize) -> Result<()> {
        let s = self.stage(i);
        let Some(entry) = self.lock.stages.get(&s.name) else {
            return Ok(());
        };
        // The run-cache entry has the modes; the lock keeps only hashes and sizes.
        let cached = self.cache.get_run(&entry.fingerprint);
        let artifacts = entry
            .outs
            .iter()
            .filter_map(|(path, o)| {
                let out = cached.as_ref().and_then(|c| c.outs.get(path)).cloned();
                Some(record::Artifact {
                    path: path.clone(),
                    out: out.or_else(|| crate::cache::CachedOut::from_lock(o))?,
                })
            })
            .collect();
        let upstream = self.p.with_upstream(&BTreeSet::from([i]));
        let gates = upstream
            .iter()
            .filter_map(|u| self.gates.get(u))
            .filter(|g| g.passed)
            .map(|g| g.gate.clone())
            .collect();
        let r = ReleaseManifest {
            status: "released".into(),
            run_id: self.rec.run_id.clone(),
            created_at: crate::fsutil::now_rfc3339(),
            stage: s.name.clone(),
            artifacts,
            gates,
            git: self.git.clone(),
            pipeline: self.p.name.clone(),
        };
        self.rec.write_release(&r, &self.p.layout.releases())?;
        self.rec.event(
            "release",
            Some(&s.name),
            json!({"artifacts": r.artifacts.len()}),
        );
        self.rep.status(
            "Released",
            Tone::Good,
            &format!(
                "{} ({} artifacts, run {})",
                s.name,
                r.artifacts.len(),
                r.run_id
            ),
        );
        Ok(())
    }

    pub(super) fn finish_simple(
        &mut self,
        i: usize,
        status: Status,
        reasons: Vec<String>,
    ) -> Result<()> {
        let s = self.stage(i);
        let mut rec = StageRecord {
            status: status.as_str().into(),
            reasons,
            ..Default::default()
        };
        if let Some(e) = self.lock.stages.get(&s.name) {
            rec.fingerprint = Some(e.fingerprint.clone());
            rec.deps = e.deps.clone();
            rec.outs = e.outs.clone();
        }
        self.records.insert(s.name.clone(), rec);
        self.status.insert(i, status);
        self.rep.skip_progress(1);
        if status == Status::UpToDate {
            self.after_success(i, status)?;
        }
        Ok(())
    }

    /// A stage that never starts: `Skipped` (upstream failed, build stopped) or `Blocked`
    /// (a gate upstream failed).
    pub(super) fn finish_not_started(&mut self, i: usize, status: Status, why: &str) {
        let s = self.stage(i);
        let (event, verb, tone) = match status {
            Status::Blocked => ("stage_blocked", "Blocked", Tone::Bad),
            _ => ("stage_skipped", "Skipped", Tone::Warn),
        };
        self.rec.event(event, Some(&s.name), json!({"reason": why}));
        if !(self.interrupted && status == Status::Skipped) {
            self.rep.status(verb, tone, &format!("{} ({why})", s.name));
        }
        let rec = StageRecord {
            status: status.as_str().into(),
            reasons: vec![why.to_string()],
            ..Default::default()
        };
        self.records.insert(s.name.clone(), rec);
        self.status.insert(i, status);
        self.rep.skip_progress(1);
    }
}
