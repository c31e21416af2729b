//! The dispatcher: the only code with threads. It drives the pure [`Scheduler`], performs
//! its actions (judge a stage, start a worker, skip, block), turns what workers report into
//! [`Event`]s on the bus, evaluates gates and composes releases, and owns the 50 ms tick that
//! enforces timeouts and signals.

use super::BuildOptions;
use super::control::{Control, GRACE, GroupEvent};
use super::env::run_spec;
use super::executor::Executor;
use super::job::{Done, Job, Msg, Outcome, Work as JobWork};
use super::local::LocalExecutor;
use super::scheduler::{Action, Node, Scheduler, Settled, Work};
use crate::cache::{Cache, RunEntry};
use crate::event::{Bus, Event};
use crate::gate::GateResult;
use crate::graph::{ExecutorKind, Pipeline, Selection};
use crate::lockfile::LockFile;
use crate::plan::{self, JudgeOpts, Planner, Reason, Verdict};
use crate::process_group::{Recorded, Watchdog};
use crate::record::follow::Tail;
use crate::record::release::{Artifact, Override, ReleaseManifest, ReleaseState, who};
use crate::record::{Git, Recorder, markers};
use crate::stage_state::StageState;
use crate::state::StatCache;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(50);

/// How the build ended, as far as scheduling goes.
pub struct Ended {
    pub interrupted: bool,
    pub failed: bool,
    pub gate_failed: bool,
}

pub struct Dispatch<'a> {
    pub p: &'a Pipeline,
    pub opts: &'a BuildOptions,
    pub rec: &'a Recorder,
    pub stat: &'a StatCache,
    pub cache: &'a Cache,
    pub planner: Planner<'a>,
    /// The lock as it was when the build started: what each stage last ran with.
    pub lock: &'a LockFile,
    pub sel: &'a Selection,
    pub incomplete: &'a BTreeSet<String>,
    pub push: Option<&'a crate::remote::Remote>,
    pub git: Git,
    pub watchdog: Option<Arc<Watchdog>>,
    /// Read running stages' logs as they grow (`--follow`, spinners' last line).
    pub stream: bool,
    /// Run history: how long each stage's last successful run took.
    pub index: &'a crate::record::history::Index,
    /// The build's running markers.
    pub journal: Arc<markers::Journal>,
}

/// What the dispatcher keeps about stages while they are in flight.
#[derive(Default)]
struct Books {
    fingerprints: HashMap<usize, String>,
    restore: HashMap<usize, RunEntry>,
    reasons: HashMap<usize, Vec<Reason>>,
    gates: HashMap<usize, GateResult>,
    no_restore: BTreeSet<usize>,
    /// Current releases, rolled-back fingerprints, sticky overrides.
    rel: ReleaseState,
    rel_dirty: bool,
}

impl Dispatch<'_> {
    pub fn run(&self, bus: &mut Bus) -> Result<Ended> {
        let p = self.p;
        let jobs = self
            .opts
            .jobs
            .or(p.jobs)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let nodes: HashMap<usize, Node> = self
            .sel
            .selected
            .iter()
            .map(|&i| {
                let s = &p.stages[i];
                let node = Node {
                    name: s.name.clone(),
                    upstream: s.upstream.clone(),
                    downstream: s.downstream.clone(),
                    resources: s.resources.clone(),
                    gate: s.gate.as_ref().map(|g| g.name.clone()),
                };
                (i, node)
            })
            .collect();
        let pools: BTreeMap<String, u32> =
            p.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut sched = Scheduler::new(nodes, &p.order, jobs, self.opts.keep_going, &pools);
        let local: Arc<dyn Executor> = Arc::new(LocalExecutor);
        let slurm: Option<Arc<dyn Executor>> = p
            .stages
            .iter()
            .any(|s| s.executor == ExecutorKind::Slurm)
            .then(|| {
                Arc::new(super::slurm::SlurmExecutor::new(p.slurm.clone())) as Arc<dyn Executor>
            });
        let state_dir = p.layout.state();
        let mut books = Books {
            rel: ReleaseState::load(&state_dir),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let (cache, stat, root, push) = (self.cache, self.stat, &p.root, self.push);

        let scoped = std::thread::scope(|scope| -> Result<()> {
            let mut workers = super::workers::Workers::new(scope, tx.clone());
            let mut running: HashMap<usize, Arc<Control>> = HashMap::new();
            let mut tails: BTreeMap<usize, Tail> = BTreeMap::new();
            let mut tailed = std::time::Instant::now();
            loop {
                self.check_signals(&mut sched, &running, bus)?;
                loop {
                    let actions = sched.poll();
                    if actions.is_empty() {
                        break;
                    }
                    for action in actions {
                        match action {
                            Action::Judge(i) => self.judge(i, &mut sched, &mut books, bus)?,
                            Action::Skip { stage, reason } => bus.emit(Event::StageSkipped {
                                stage: p.stages[stage].name.clone(),
                                reason,
                            })?,
                            Action::Block { stage, reason } => bus.emit(Event::StageBlocked {
                                stage: p.stages[stage].name.clone(),
                                reason,
                            })?,
                            Action::Start {
                                stage: i,
                                work,
                                units,
                            } => {
                                let s = &p.stages[i];
                                // Its outs change now: later judges must look at them again.
                                for o in &s.outs {
                                    p.stats.forget(&root.join(&o.path));
                                }
                                let work = match (work, books.restore.remove(&i)) {
                                    (Work::Restore, Some(entry)) => JobWork::Restore(entry),
                                    _ => {
                                        bus.emit(Event::StageStart {
                                            stage: s.name.clone(),
                                            reasons: books
                                                .reasons
                                                .get(&i)
                                                .cloned()
                                                .unwrap_or_default(),
                                            expected_s: self.index.expected_s(&s.name),
                                        })?;
                                        let spec = run_spec(p, s, self.rec, &units);
                                        if self.stream {
                                            tails.insert(i, Tail::new(spec.log.clone()));
                                        }
                                        JobWork::Run(spec)
                                    }
                                };
                                let control = Arc::new(self.control(&s.name));
                                running.insert(i, control.clone());
                                let exec = match (s.executor, &slurm) {
                                    (ExecutorKind::Slurm, Some(x)) => x.clone(),
                                    _ => local.clone(),
                                };
                                let fingerprint =
                                    books.fingerprints.get(&i).cloned().unwrap_or_default();
                                let tx = tx.clone();
                                workers.run(move || {
                                    let job = Job {
                                        index: i,
                                        stage: s,
                                        root,
                                        fingerprint,
                                        exec: &*exec,
                                        control: &control,
                                        cache,
                                        stat,
                                        push,
                                    };
                                    Msg::Done(job.execute(work, &tx))
                                });
                            }
                        }
                    }
                }
                if sched.is_done() {
                    break;
                }
                if sched.is_stuck() {
                    anyhow::bail!(
                        "internal error: stages wait for resources that no running stage holds"
                    );
                }
                match rx.recv_timeout(TICK) {
                    Ok(Msg::Retry {
                        stage,
                        attempt,
                        delay,
                        failure,
                    }) => bus.emit(Event::StageRetry {
                        stage: p.stages[stage].name.clone(),
                        attempt,
                        delay_s: delay.as_secs_f64(),
                        error: failure.to_string(),
                    })?,
                    Ok(Msg::Done(done)) => {
                        running.remove(&done.stage);
                        if let Some(mut t) = tails.remove(&done.stage) {
                            emit_output(bus, &p.stages[done.stage].name, t.finish())?;
                        }
                        self.finish(done, &mut sched, &mut books, bus)?;
                    }
                    Err(_) => {}
                }
                for c in running.values() {
                    c.tick(GRACE);
                }
                // Running stages' logs are looked at once a tick, not after every message
                // (a wide build sends two a stage); a stage's last lines come with its end.
                if !tails.is_empty() && tailed.elapsed() >= TICK {
                    tailed = std::time::Instant::now();
                    for (&i, t) in &mut tails {
                        emit_output(bus, &p.stages[i].name, t.lines())?;
                    }
                }
                bus.tick()?;
            }
            Ok(())
        });
        if books.rel_dirty {
            books.rel.save(&state_dir)?;
        }
        scoped?;
        let failed = self
            .sel
            .selected
            .iter()
            .any(|&i| sched.settled(i) == Some(Settled::Failed));
        Ok(Ended {
            interrupted: sched.interrupted(),
            failed,
            gate_failed: sched.gate_failed(),
        })
    }

    /// A stage's control: its process groups are registered with the watchdog and written
    /// into its running marker as they start.
    fn control(&self, stage: &str) -> Control {
        let wd = self.watchdog.clone();
        let journal = self.journal.clone();
        let stage = stage.to_string();
        Control {
            on_group: Some(Box::new(move |e| match e {
                GroupEvent::Started(pg) => {
                    if let Some(w) = &wd {
                        w.register(pg);
                    }
                    if let Err(e) = journal.start(&stage, Some(Recorded::of(pg))) {
                        tracing::warn!("{e:#}");
                    }
                }
                GroupEvent::Ended(pg) => {
                    if let Some(w) = &wd {
                        w.unregister(pg);
                    }
                }
            })),
            ..Default::default()
        }
    }

    fn check_signals(
        &self,
        sched: &mut Scheduler,
        running: &HashMap<usize, Arc<Control>>,
        bus: &mut Bus,
    ) -> Result<()> {
        let n = crate::signal::received();
        if n == 0 {
            return Ok(());
        }
        if !sched.interrupted() {
            sched.interrupt();
            bus.emit(Event::Interrupt)?;
        }
        for c in running.values() {
            // Executors watch `cancelled` (Slurm's poll loop runs `scancel`); local process
            // groups are signalled here.
            c.cancelled.store(true, Ordering::SeqCst);
            if n >= 2 {
                c.kill();
            } else {
                c.terminate();
            }
        }
        Ok(())
    }

    /// Observe and judge a ready stage; tell the scheduler what it needs.
    fn judge(
        &self,
        i: usize,
        sched: &mut Scheduler,
        books: &mut Books,
        bus: &mut Bus,
    ) -> Result<()> {
        let s = &self.p.stages[i];
        let opts = JudgeOpts {
            forced: self.sel.forced.contains(&i),
            incomplete: self.incomplete.contains(&s.name),
        };
        let restore_ok = !books.no_restore.contains(&i);
        let j = self
            .planner
            .judge(s, self.lock.stages.get(&s.name), opts, restore_ok)?;
        if let Some(w) = j.warning.clone() {
            bus.emit(Event::Warning {
                stage: Some(s.name.clone()),
                message: w,
            })?;
        }
        let held = plan::held_back(s, &j, &books.rel);
        let state = if held.is_some() {
            StageState::RolledBack
        } else {
            j.verdict.state()
        };
        tracing::debug!(
            stage = %s.name,
            fingerprint = j.inputs.as_ref().map(|x| x.entry.fingerprint.as_str()).unwrap_or("-"),
            files_read = self.planner.hasher.files_read.load(Ordering::Relaxed),
            verdict = state.label(),
            reasons = ?j.verdict.reasons().iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "judged"
        );
        let fingerprint = j.inputs.as_ref().map(|x| x.entry.fingerprint.clone());
        let mut reasons = j.verdict.reasons().to_vec();
        if state == StageState::Frozen {
            reasons = vec![Reason::Frozen];
        }
        if let Some(why) = held {
            reasons = vec![why];
        }
        let work = match j.verdict {
            _ if state == StageState::RolledBack => None,
            Verdict::UpToDate | Verdict::Frozen => None,
            Verdict::Stale { restore, .. } => Some(match restore {
                Some(entry) => {
                    books.restore.insert(i, entry);
                    Work::Restore
                }
                None => Work::Run,
            }),
        };
        bus.emit(Event::StageJudged {
            stage: s.name.clone(),
            state,
            reasons: reasons.clone(),
            fingerprint: fingerprint.clone(),
            inputs: j.inputs.map(|x| Box::new(x.entry)),
        })?;
        match work {
            None if state == StageState::RolledBack => sched.finished(i, Settled::Ok),
            None => {
                let how = self.gate(i, true, books, bus)?;
                sched.finished(i, how);
            }
            Some(w) => {
                if let Some(fp) = fingerprint {
                    books.fingerprints.insert(i, fp);
                }
                books.reasons.insert(i, reasons);
                sched.judged(i, w);
            }
        }
        Ok(())
    }

    /// A worker is done: say so, check the gate, release.
    fn finish(
        &self,
        done: Done,
        sched: &mut Scheduler,
        books: &mut Books,
        bus: &mut Bus,
    ) -> Result<()> {
        let i = done.stage;
        let s = &self.p.stages[i];
        let name = s.name.clone();
        let duration_s = done.duration.as_secs_f64();
        match done.outcome {
            Outcome::Corrupt(error) => {
                bus.emit(Event::CacheCorrupt { stage: name, error })?;
                books.no_restore.insert(i);
                books.restore.remove(&i);
                // The scheduler starts it again, as a run this time.
                sched.retry_as_run(i);
            }
            Outcome::Ran | Outcome::Restored => {
                let ran = matches!(done.outcome, Outcome::Ran);
                let outs = done.outs;
                if ran {
                    bus.emit(Event::StageOk {
                        stage: name,
                        duration_s,
                        attempts: done.attempts,
                        job_id: done.job_id,
                        outs: outs.clone(),
                    })?;
                } else {
                    bus.emit(Event::StageRestored {
                        stage: name,
                        duration_s,
                        outs: outs.clone(),
                    })?;
                }
                let how = self.gate(i, false, books, bus)?;
                if ran && s.release && how == Settled::Ok {
                    self.release(i, &outs, books, bus)?;
                }
                sched.finished(i, how);
            }
            Outcome::Failed(failure) => {
                bus.emit(Event::StageFail {
                    stage: name,
                    error: failure.to_string(),
                    failure: Some(failure),
                    exit_code: done.exit_code,
                    attempts: done.attempts,
                    duration_s,
                    job_id: done.job_id,
                    interrupted: false,
                })?;
                sched.finished(i, Settled::Failed);
            }
            Outcome::Interrupted => {
                bus.emit(Event::StageFail {
                    stage: name,
                    error: "interrupted".into(),
                    failure: None,
                    exit_code: done.exit_code,
                    attempts: done.attempts,
                    duration_s,
                    job_id: done.job_id,
                    interrupted: true,
                })?;
                sched.finished(i, Settled::Failed);
            }
        }
        Ok(())
    }

    /// Check the stage's gate after it succeeded (or was found up to date). A failing gate
    /// passes when a person overrides it now (`--override-gate`, kept against the gate
    /// file's hash) or overrode it earlier for the same file content.
    fn gate(&self, i: usize, fresh: bool, books: &mut Books, bus: &mut Bus) -> Result<Settled> {
        let s = &self.p.stages[i];
        let Some(spec) = &s.gate else {
            return Ok(Settled::Ok);
        };
        let mut result = crate::gate::evaluate(spec, &s.name, &self.p.root, false);
        if !result.passed {
            let now = self.opts.override_gates.iter().any(|g| g == &spec.name);
            let kept = books
                .rel
                .sticky_override(&spec.name, result.file_hash.as_deref())
                .cloned();
            let held = match (now, kept) {
                (true, _) => {
                    let o = Override {
                        file_hash: result.file_hash.clone().unwrap_or_default(),
                        reason: self.opts.reason.clone(),
                        by: who(),
                        at: crate::fsutil::now_rfc3339(),
                    };
                    if result.file_hash.is_some() {
                        books.rel.overrides.insert(spec.name.clone(), o.clone());
                        books.rel_dirty = true;
                    }
                    Some(o)
                }
                (false, kept) => kept,
            };
            if let Some(o) = held {
                result.passed = true;
                result.overridden = true;
                result.reason = o.reason;
                result.by = Some(o.by);
                result.at = Some(o.at);
            }
        }
        let passed = result.passed;
        books.gates.insert(i, result.clone());
        if passed {
            bus.emit(Event::GatePass { result, fresh })?;
            Ok(Settled::Ok)
        } else {
            bus.emit(Event::GateFail { result })?;
            Ok(Settled::GateFailed)
        }
    }

    /// A release stage ran and its gate passed: write its release manifest, which tells the
    /// story (the run's name, the params upstream ran with, the metric values its gates
    /// checked, whether a gate was overridden), and make it the current release.
    fn release(
        &self,
        i: usize,
        outs: &BTreeMap<String, crate::cache::CachedOut>,
        books: &mut Books,
        bus: &mut Bus,
    ) -> Result<()> {
        let s = &self.p.stages[i];
        let artifacts: Vec<Artifact> = outs
            .iter()
            .map(|(path, out)| Artifact {
                path: path.clone(),
                out: out.clone(),
            })
            .collect();
        let upstream = self.p.with_upstream(&BTreeSet::from([i]));
        let results: Vec<&GateResult> = upstream
            .iter()
            .filter_map(|u| books.gates.get(u))
            .filter(|g| g.passed)
            .collect();
        let mut params = BTreeMap::new();
        for &u in &upstream {
            for (k, v) in &self.p.stages[u].params {
                params.insert(k.clone(), v.clone());
            }
        }
        let metrics = results
            .iter()
            .map(|g| {
                let values = g.checks.iter().map(|c| (c.key.clone(), c.actual)).collect();
                (g.gate.clone(), values)
            })
            .collect();
        let forced = results.iter().find(|g| g.overridden);
        let manifest = ReleaseManifest {
            status: "released".into(),
            run_id: self.rec.run_id.clone(),
            created_at: crate::fsutil::now_rfc3339(),
            stage: s.name.clone(),
            artifacts,
            gates: results.iter().map(|g| g.gate.clone()).collect(),
            git: self.git.clone(),
            pipeline: self.p.name.clone(),
            name: self.opts.name.clone(),
            fingerprint: books.fingerprints.get(&i).cloned(),
            params,
            metrics,
            overridden: forced.is_some(),
            reason: forced.and_then(|g| g.reason.clone()),
            by: forced.and_then(|g| g.by.clone()),
            at: forced.and_then(|g| g.at.clone()),
        };
        books
            .rel
            .current
            .insert(s.name.clone(), self.rec.run_id.clone());
        books.rel_dirty = true;
        bus.emit(Event::Release {
            stage: s.name.clone(),
            artifacts: manifest.artifacts.len(),
            manifest: Box::new(manifest),
        })
    }
}

/// The lines a running stage wrote, one event each.
fn emit_output(bus: &mut Bus, stage: &str, lines: Vec<String>) -> Result<()> {
    for line in lines {
        bus.emit(Event::StageOutput {
            stage: stage.to_string(),
            line,
        })?;
    }
    Ok(())
}
