//! The scheduler loop: judge stages as they become ready, start what fits in `-j` and
//! the resource pools, record outcomes, gates and releases. Owns the lock and the records.

use super::pools::Pools;
use super::worker::execute;
use super::{BuildOptions, SIGNALS, Status};
use crate::cache::{Cache, RunEntry};
use crate::gate::GateResult;
use crate::graph::{ExecutorKind, Pipeline, Stage};
use crate::hash::Hasher;
use crate::lockfile::{LockFile, OutRecord};
use crate::plan::{self, Inputs, JudgeOpts, Verdict};
use crate::record::{Recorder, StageRecord};
use crate::report::{Reporter, Tone, secs};
use crate::runner::{Control, Executor, LocalExecutor, RunSpec};
use crate::state::StatCache;
use anyhow::Result;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(super) enum Work {
    Run,
    Restore(RunEntry),
}

pub(super) enum Msg {
    Retry {
        i: usize,
        attempt: u32,
        delay: Duration,
        message: String,
    },
    Done(Done),
}

pub(super) struct Done {
    pub(super) i: usize,
    pub(super) outcome: Outcome,
    pub(super) attempts: u32,
    pub(super) exit_code: Option<i32>,
    pub(super) duration: Duration,
    pub(super) outs: BTreeMap<String, OutRecord>,
    pub(super) job_id: Option<String>,
}

pub(super) enum Outcome {
    Ran,
    Restored,
    Failed(String),
    Interrupted,
    /// The cache object was bad: report it, then run the stage.
    Corrupt(String),
}

pub(super) struct Running {
    pub(super) control: Arc<Control>,
    pub(super) resources: BTreeMap<String, Vec<u32>>,
}

pub(super) const GRACE: Duration = Duration::from_secs(5);
pub(super) const LOCK_WRITE_EVERY: Duration = Duration::from_millis(200);

pub(super) struct Engine<'a> {
    pub(super) p: &'a Pipeline,
    pub(super) opts: &'a BuildOptions,
    pub(super) rep: &'a Reporter,
    pub(super) rec: &'a Recorder,
    pub(super) stat: &'a StatCache,
    pub(super) cache: Cache,
    pub(super) lock: LockFile,
    pub(super) lock_dirty: bool,
    /// Rendered lock sections, so a flush re-renders only the entries that changed.
    pub(super) lock_render: crate::lockfile::RenderCache,
    pub(super) lock_written: Instant,
    pub(super) selected: BTreeSet<usize>,
    pub(super) forced: BTreeSet<usize>,
    pub(super) incomplete: BTreeSet<String>,
    pub(super) status: HashMap<usize, Status>,
    pub(super) records: BTreeMap<String, StageRecord>,
    pub(super) inputs: HashMap<usize, Inputs>,
    pub(super) gates: HashMap<usize, GateResult>,
    /// Stages whose own gate failed (their downstream is blocked).
    pub(super) gate_failed: BTreeSet<usize>,
    pub(super) stop: bool,
    pub(super) interrupted: bool,
    pub(super) no_restore: BTreeSet<usize>,
    pub(super) remote: Option<&'a crate::remote::Remote>,
    /// The workspace's git state, read once per build (manifest and release manifests).
    pub(super) git: crate::record::Git,
}

impl<'a> Engine<'a> {
    pub(super) fn stage(&self, i: usize) -> &'a Stage {
        &self.p.stages[i]
    }

    pub(super) fn run_loop(&mut self) -> Result<()> {
        let p = self.p;
        let jobs = self
            .opts
            .jobs
            .or(p.jobs)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        let mut pending_up: HashMap<usize, usize> = HashMap::new();
        let mut ready: BTreeSet<(usize, usize)> = BTreeSet::new(); // (topo position, stage)
        let topo_pos: HashMap<usize, usize> =
            p.order.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        for &i in &self.selected {
            let n = self
                .stage(i)
                .upstream
                .iter()
                .filter(|u| self.selected.contains(u))
                .count();
            pending_up.insert(i, n);
            if n == 0 {
                ready.insert((topo_pos[&i], i));
            }
        }
        let mut runnable: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut work_for: HashMap<usize, Work> = HashMap::new();
        let mut running: HashMap<usize, Running> = HashMap::new();
        let mut pools = Pools::new(p);
        let local: Arc<dyn Executor> = Arc::new(LocalExecutor);
        let slurm: Option<Arc<dyn Executor>> =
            if p.stages.iter().any(|s| s.executor == ExecutorKind::Slurm) {
                Some(Arc::new(crate::slurm::SlurmExecutor::new(p.slurm.clone())))
            } else {
                None
            };
        let (tx, rx) = mpsc::channel::<Msg>();

        std::thread::scope(|scope| -> Result<()> {
            loop {
                self.check_signals(&running);
                // Judge everything that became ready.
                while let Some((pos, i)) = ready.pop_first() {
                    let _ = pos;
                    if let Some(next) = self.judge_ready(i)? {
                        work_for.insert(i, next);
                        runnable.insert((topo_pos[&i], i));
                    } else {
                        self.release_downstream(i, &mut pending_up, &mut ready, &topo_pos);
                    }
                }
                // Start what fits.
                if self.stop {
                    for (_, i) in std::mem::take(&mut runnable) {
                        work_for.remove(&i);
                        self.finish_not_started(
                            i,
                            Status::Skipped,
                            if self.interrupted {
                                "build interrupted"
                            } else {
                                "build stopped after a failure"
                            },
                        );
                        self.release_downstream(i, &mut pending_up, &mut ready, &topo_pos);
                    }
                }
                let candidates: Vec<(usize, usize)> = runnable.iter().copied().collect();
                for key in candidates {
                    if running.len() >= jobs {
                        break;
                    }
                    let i = key.1;
                    let is_restore = matches!(work_for.get(&i), Some(Work::Restore(_)));
                    let want = if is_restore {
                        BTreeMap::new()
                    } else {
                        self.stage(i).resources.clone()
                    };
                    let Some(got) = pools.try_take(&want) else {
                        continue;
                    };
                    runnable.remove(&key);
                    let work = work_for.remove(&i).unwrap_or(Work::Run);
                    let control = Arc::new(Control::default());
                    let exec = match (self.stage(i).executor, &slurm) {
                        (ExecutorKind::Slurm, Some(s)) => s.clone(),
                        _ => local.clone(),
                    };
                    let job = self.prepare(i, &work, &got)?;
                    let tx = tx.clone();
                    let c = control.clone();
                    let cache = self.cache.clone();
                    let stat = self.stat;
                    let stage = self.stage(i);
                    let root = &p.root;
                    let remote = if self.opts.push { self.remote } else { None };
                    let fp = self
                        .inputs
                        .get(&i)
                        .map(|x| x.entry.fingerprint.clone())
                        .unwrap_or_default();
                    scope.spawn(move || {
                        let done = execute(
                            i, stage, root, work, job, fp, &*exec, &c, &cache, stat, remote, &tx,
                        );
                        let _ = tx.send(Msg::Done(done));
                    });
                    running.insert(
                        i,
                        Running {
                            control,
                            resources: got,
                        },
                    );
                }
                if running.is_empty() && ready.is_empty() {
                    if runnable.is_empty() {
                        break;
                    }
                    // Nothing running, yet nothing fits: cannot happen (validation caps requests).
                    anyhow::bail!(
                        "internal error: stages wait for resources that no running stage holds"
                    );
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(Msg::Retry {
                        i,
                        attempt,
                        delay,
                        message,
                    }) => {
                        let name = &self.stage(i).name;
                        self.rec.event("stage_retry", Some(name), json!({"attempt": attempt, "delay_s": delay.as_secs_f64(), "error": message}));
                        self.rep.status(
                            "Retrying",
                            Tone::Warn,
                            &format!(
                                "{name} (attempt {attempt}) in {}: {message}",
                                secs(delay.as_secs_f64())
                            ),
                        );
                    }
                    Ok(Msg::Done(done)) => {
                        let i = done.i;
                        if let Some(r) = running.remove(&i) {
                            pools.give_back(r.resources);
                        }
                        if let Outcome::Corrupt(msg) = &done.outcome {
                            self.rep.warn(&format!(
                                "stage `{}`: {msg}; running it instead",
                                self.stage(i).name
                            ));
                            self.rec.event(
                                "cache_corrupt",
                                Some(&self.stage(i).name),
                                json!({"error": msg}),
                            );
                            self.no_restore.insert(i);
                            work_for.insert(i, Work::Run);
                            runnable.insert((topo_pos[&i], i));
                            continue;
                        }
                        self.finish(done)?;
                        self.release_downstream(i, &mut pending_up, &mut ready, &topo_pos);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {}
                }
                for r in running.values() {
                    r.control.tick(GRACE);
                }
                self.flush_lock(false)?;
            }
            Ok(())
        })
    }

    fn check_signals(&mut self, running: &HashMap<usize, Running>) {
        let n = SIGNALS.load(Ordering::SeqCst);
        if n == 0 {
            return;
        }
        if !self.interrupted {
            self.interrupted = true;
            self.stop = true;
            self.rep.status(
                "Interrupted",
                Tone::Bad,
                "stopping running stages (Ctrl-C again to kill them at once)",
            );
            self.rec.event("interrupt", None, json!({}));
        }
        for r in running.values() {
            // Executors watch `cancelled` (Slurm's poll loop runs `scancel`); local process
            // groups are signalled here.
            r.control.cancelled.store(true, Ordering::SeqCst);
            if n >= 2 {
                r.control.kill();
            } else {
                r.control.terminate();
            }
        }
    }

    /// Decide what a ready stage needs. `None`: it is finished already (up to date, frozen,
    /// blocked or skipped).
    fn judge_ready(&mut self, i: usize) -> Result<Option<Work>> {
        let s = self.stage(i);
        for &u in &s.upstream {
            match self.status.get(&u) {
                Some(Status::Failed) | Some(Status::Skipped) => {
                    let why = format!(
                        "upstream {}: {}",
                        if self.status[&u] == Status::Failed {
                            "failed"
                        } else {
                            "not built"
                        },
                        self.stage(u).name
                    );
                    self.finish_not_started(i, Status::Skipped, &why);
                    return Ok(None);
                }
                Some(Status::Blocked) => {
                    self.finish_not_started(
                        i,
                        Status::Blocked,
                        &format!("upstream blocked: {}", self.stage(u).name),
                    );
                    return Ok(None);
                }
                _ if self.gate_failed.contains(&u) => {
                    let g = self
                        .stage(u)
                        .gate
                        .as_ref()
                        .map(|g| g.name.clone())
                        .unwrap_or_default();
                    self.finish_not_started(
                        i,
                        Status::Blocked,
                        &format!("gate failed: {g} (stage {})", self.stage(u).name),
                    );
                    return Ok(None);
                }
                _ => {}
            }
        }
        if self.stop {
            self.finish_not_started(
                i,
                Status::Skipped,
                if self.interrupted {
                    "build interrupted"
                } else {
                    "build stopped after a failure"
                },
            );
            return Ok(None);
        }
        if s.frozen {
            self.finish_simple(i, Status::UpToDate, vec!["frozen".into()])?;
            return Ok(None);
        }
        let hasher = Hasher::new(&self.p.root, self.stat);
        let inputs = plan::inputs(s, &hasher)?;
        let use_cache = self.opts.use_cache && !self.no_restore.contains(&i);
        let opts = JudgeOpts {
            forced: self.forced.contains(&i),
            incomplete: self.incomplete.contains(&s.name),
            use_cache,
        };
        let mut verdict = plan::judge(
            s,
            &inputs,
            self.lock.stages.get(&s.name),
            &hasher,
            &self.cache,
            opts,
        )?;
        if let (
            Verdict::Stale {
                restore: restore @ None,
                ..
            },
            Some(remote),
        ) = (&mut verdict, self.remote)
            && self.opts.pull
            && use_cache
            && s.cacheable()
            && !opts.forced
        {
            match remote.fetch_run(&self.cache, &inputs.entry.fingerprint) {
                Ok(found) => *restore = found,
                Err(e) => self.rep.warn(&format!(
                    "stage `{}`: cannot fetch from the remote cache: {e:#}",
                    s.name
                )),
            }
        }
        let reasons: Vec<String> = verdict.reasons().iter().map(|r| r.to_string()).collect();
        tracing::debug!(
            stage = %s.name,
            fingerprint = %inputs.entry.fingerprint,
            files_read = hasher.files_read.load(Ordering::Relaxed),
            verdict = match &verdict {
                Verdict::UpToDate => "up to date",
                Verdict::Frozen => "frozen",
                Verdict::Stale { restore: Some(_), .. } => "restorable",
                Verdict::Stale { .. } => "stale",
            },
            ?reasons,
            "judged"
        );
        self.inputs.insert(i, inputs);
        match verdict {
            Verdict::UpToDate | Verdict::Frozen => {
                if self.rep.verbose {
                    self.rep.status("Fresh", Tone::Good, &s.name);
                }
                self.finish_simple(i, Status::UpToDate, vec![])?;
                Ok(None)
            }
            Verdict::Stale {
                restore: Some(entry),
                ..
            } => {
                self.records.insert(
                    s.name.clone(),
                    StageRecord {
                        reasons,
                        ..Default::default()
                    },
                );
                Ok(Some(Work::Restore(entry)))
            }
            Verdict::Stale { restore: None, .. } => {
                self.records.insert(
                    s.name.clone(),
                    StageRecord {
                        reasons,
                        ..Default::default()
                    },
                );
                Ok(Some(Work::Run))
            }
        }
    }

    /// Main-thread work before a stage starts: marker, log, events, environment.
    fn prepare(
        &mut self,
        i: usize,
        work: &Work,
        got: &BTreeMap<String, Vec<u32>>,
    ) -> Result<Option<RunSpec>> {
        let s = self.stage(i);
        let reasons = self
            .records
            .get(&s.name)
            .map(|r| r.reasons.clone())
            .unwrap_or_default();
        if let Work::Restore(_) = work {
            return Ok(None);
        }
        let marker = self.p.layout.running_marker(&s.name);
        crate::fsutil::quick_write(&marker, format!("{}\n", self.rec.run_id).as_bytes())?;
        self.rec
            .event("stage_start", Some(&s.name), json!({"reasons": reasons}));
        self.rep.stage_started(&s.name);
        let log = self.rec.log_path(&s.name);
        let mut env: Vec<(String, String)> =
            s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("PIPE_STAGE".into(), s.name.clone()));
        env.push(("PIPE_RUN_ID".into(), self.rec.run_id.clone()));
        env.push(("PIPE_RUN_DIR".into(), self.rec.dir.display().to_string()));
        env.push(("PIPE_ROOT".into(), self.p.root.display().to_string()));
        for (k, v) in &s.params {
            env.push((crate::params::env_name(k), crate::params::value_text(v)));
        }
        for (k, v) in &s.matrix {
            env.push((format!("PIPE_MATRIX_{}", k.to_ascii_uppercase()), v.clone()));
        }
        for (pool, units) in got {
            let list = units
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(",");
            if pool == "gpu" {
                env.push(("CUDA_VISIBLE_DEVICES".into(), list.clone()));
            }
            env.push((format!("PIPE_RESOURCE_{}", pool.to_ascii_uppercase()), list));
        }
        let cwd = match &s.wdir {
            Some(w) => self.p.root.join(w),
            None => self.p.root.clone(),
        };
        Ok(Some(RunSpec {
            stage: s.name.clone(),
            cmds: s.cmds.clone(),
            cwd,
            env,
            log,
            timeout: s.timeout,
            resources: s.resources.clone(),
        }))
    }

    fn release_downstream(
        &mut self,
        i: usize,
        pending: &mut HashMap<usize, usize>,
        ready: &mut BTreeSet<(usize, usize)>,
        pos: &HashMap<usize, usize>,
    ) {
        for &d in &self.stage(i).downstream {
            if let Some(n) = pending.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    ready.insert((pos[&d], d));
                }
            }
        }
    }

    pub(super) fn prune_lock(&mut self) {
        let before = self.lock.stages.len();
        let names: BTreeSet<&str> = self.p.stages.iter().map(|s| s.name.as_str()).collect();
        self.lock.stages.retain(|k, _| names.contains(k.as_str()));
        if self.lock.stages.len() != before {
            self.lock_dirty = true;
        }
    }

    /// Write the lock if it changed, at most every 200 ms unless `now`.
    pub(super) fn flush_lock(&mut self, now: bool) -> Result<()> {
        if self.lock_dirty && (now || self.lock_written.elapsed() >= LOCK_WRITE_EVERY) {
            let text = self.lock.render_cached(&mut self.lock_render);
            crate::fsutil::atomic_write(&self.p.layout.lockfile(), text.as_bytes())?;
            tracing::debug!(
                entries = self.lock.stages.len(),
                bytes = text.len(),
                "wrote Pipeline.lock"
            );
            self.lock_dirty = false;
            self.lock_written = Instant::now();
        }
        Ok(())
    }
}
