//! `pipe build`: the scheduler. Stages become ready when their upstream is done, are judged
//! then (so early cutoff falls out: a rerun with identical outs leaves downstream up to
//! date), and run on worker threads up to `-j`, within resource pools. The main thread owns
//! the lock file, the records and the terminal; workers only run, restore and hash.

use crate::cache::{Cache, Corrupt, RunEntry};
use crate::error::exit;
use crate::gate::{self, GateResult};
use crate::graph::{ExecutorKind, Pipeline, Stage};
use crate::hash::{Hasher, PathHash};
use crate::lockfile::{LockFile, OutRecord};
use crate::plan::{self, Inputs, JudgeOpts, Verdict};
use crate::record::{self, Manifest, Recorder, ReleaseManifest, StageRecord};
use crate::report::{Reporter, Tone, secs};
use crate::runner::{Attempt, Control, Executor, LocalExecutor, RunSpec};
use crate::state::StatCache;
use anyhow::Result;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub targets: Vec<String>,
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub force: bool,
    pub force_all: bool,
    pub downstream: bool,
    pub use_cache: bool,
    pub dry_run: bool,
    pub override_gates: Vec<String>,
    pub pull: bool,
    pub push: bool,
    pub wait: bool,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ran,
    Restored,
    UpToDate,
    Failed,
    Blocked,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ran => "ran",
            Status::Restored => "restored",
            Status::UpToDate => "up_to_date",
            Status::Failed => "failed",
            Status::Blocked => "blocked",
            Status::Skipped => "skipped",
        }
    }
}

pub struct Summary {
    pub run_id: Option<String>,
    pub status: String,
    pub exit_code: i32,
    pub stages: Vec<(String, StageRecord)>,
    pub duration_s: f64,
}

/// Which stages a build covers and which are forced.
pub fn select(p: &Pipeline, opts: &BuildOptions) -> Result<(BTreeSet<usize>, BTreeSet<usize>)> {
    let named = if opts.targets.is_empty() {
        (0..p.stages.len()).collect()
    } else {
        p.resolve_targets(&opts.targets)?
    };
    let mut wanted = named.clone();
    if opts.downstream {
        wanted = p.with_downstream(&wanted);
    }
    let selected = p.with_upstream(&wanted);
    let forced = if opts.force_all {
        p.with_upstream(&named)
    } else if opts.force {
        named
    } else {
        BTreeSet::new()
    };
    Ok((selected, forced))
}

/// Stage names whose last run was cut off (a marker is written before a stage starts and
/// removed once it is recorded).
pub fn incomplete_stages(p: &Pipeline) -> BTreeSet<String> {
    let dir = p.layout.running_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return BTreeSet::new();
    };
    let names: BTreeSet<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    p.stages
        .iter()
        .filter(|s| names.contains(&crate::fsutil::marker_name(&s.name)))
        .map(|s| s.name.clone())
        .collect()
}

/// Resource pools: each unit has an index (GPU device numbers for `gpu`).
struct Pools {
    free: BTreeMap<String, Vec<u32>>,
}

impl Pools {
    fn new(p: &Pipeline) -> Pools {
        Pools {
            free: p
                .resources
                .iter()
                .map(|(k, &n)| (k.clone(), (0..n).collect()))
                .collect(),
        }
    }
    fn try_take(&mut self, want: &BTreeMap<String, u32>) -> Option<BTreeMap<String, Vec<u32>>> {
        for (k, &n) in want {
            if let Some(free) = self.free.get(k)
                && free.len() < n as usize
            {
                return None;
            }
        }
        let mut got = BTreeMap::new();
        for (k, &n) in want {
            if let Some(free) = self.free.get_mut(k) {
                got.insert(k.clone(), free.drain(..n as usize).collect());
            }
        }
        Some(got)
    }
    fn give_back(&mut self, got: BTreeMap<String, Vec<u32>>) {
        for (k, units) in got {
            if let Some(free) = self.free.get_mut(&k) {
                free.extend(units);
                free.sort_unstable();
            }
        }
    }
}

enum Work {
    Run,
    Restore(RunEntry),
}

enum Msg {
    Retry {
        i: usize,
        attempt: u32,
        delay: Duration,
        message: String,
    },
    Done(Done),
}

struct Done {
    i: usize,
    outcome: Outcome,
    attempts: u32,
    exit_code: Option<i32>,
    duration: Duration,
    outs: BTreeMap<String, OutRecord>,
    job_id: Option<String>,
}

enum Outcome {
    Ran,
    Restored,
    Failed(String),
    Interrupted,
    /// The cache object was bad: report it, then run the stage.
    Corrupt(String),
}

struct Running {
    control: Arc<Control>,
    resources: BTreeMap<String, Vec<u32>>,
}

/// Process-wide count of SIGINT/SIGTERM received.
pub static SIGNALS: AtomicUsize = AtomicUsize::new(0);

pub fn install_signal_handlers() {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Safety: the handler only does an atomic increment, which is async-signal-safe.
        let _ = unsafe {
            signal_hook::low_level::register(sig, || {
                SIGNALS.fetch_add(1, Ordering::SeqCst);
            })
        };
    }
}

const GRACE: Duration = Duration::from_secs(5);
const LOCK_WRITE_EVERY: Duration = Duration::from_millis(200);

struct Engine<'a> {
    p: &'a Pipeline,
    opts: &'a BuildOptions,
    rep: &'a Reporter,
    rec: &'a Recorder,
    stat: &'a StatCache,
    cache: Cache,
    lock: LockFile,
    lock_dirty: bool,
    lock_written: Instant,
    selected: BTreeSet<usize>,
    forced: BTreeSet<usize>,
    incomplete: BTreeSet<String>,
    status: HashMap<usize, Status>,
    records: BTreeMap<String, StageRecord>,
    inputs: HashMap<usize, Inputs>,
    gates: HashMap<usize, GateResult>,
    /// Stages whose own gate failed (their downstream is blocked).
    gate_failed: BTreeSet<usize>,
    stop: bool,
    interrupted: bool,
    no_restore: BTreeSet<usize>,
    remote: Option<&'a crate::remote::Remote>,
}

pub fn build(p: &Pipeline, opts: &BuildOptions, rep: &mut Reporter) -> Result<Summary> {
    let started = Instant::now();
    let (selected, forced) = select(p, opts)?;
    let stat = StatCache::load(&p.layout.stat_cache());
    let cache = Cache::new(&p.layout.cache);
    let lock = LockFile::load(&p.layout.lockfile())?;
    let incomplete = incomplete_stages(p);

    if opts.dry_run {
        return dry_run(
            p,
            opts,
            rep,
            &selected,
            &forced,
            &incomplete,
            &lock,
            &stat,
            &cache,
            started,
        );
    }

    let command = opts.command.join(" ");
    let _ws = crate::wslock::acquire(&p.layout, opts.wait, &command, |m| {
        rep.status("Waiting", Tone::Warn, m)
    })?;
    // Re-read the lock now that we hold the workspace: a build we waited for may have changed it.
    let lock = LockFile::load(&p.layout.lockfile())?;
    let incomplete = if incomplete.is_empty() {
        incomplete_stages(p)
    } else {
        incomplete
    };

    let remote = match (&p.remote, opts.pull || opts.push) {
        (Some(r), true) => Some(crate::remote::Remote::open(r, &p.root)?),
        (None, true) => {
            return Err(crate::error::invalid(
                "--pull / --push need a [remote] table in the pipeline",
            ));
        }
        _ => None,
    };

    record::mark_crashed(&p.layout.runs);
    let rec = Recorder::start(&p.layout.runs)?;
    let mut manifest = Manifest {
        version: record::MANIFEST_VERSION,
        run_id: rec.run_id.clone(),
        started_at: crate::fsutil::now_rfc3339(),
        finished_at: None,
        status: "running".into(),
        pipe_version: env!("CARGO_PKG_VERSION").into(),
        command: opts.command.clone(),
        git: record::git_info(&p.root),
        host: record::hostname(),
        pipeline: p.name.clone(),
        params: crate::spec::flatten_params(&p.params),
        gate_overrides: opts.override_gates.clone(),
        stages: BTreeMap::new(),
    };
    rec.write_manifest(&manifest)?;
    rec.event(
        "run_start",
        None,
        json!({"run_id": rec.run_id, "stages": selected.len()}),
    );
    rep.begin(selected.len() as u64);

    let mut engine = Engine {
        p,
        opts,
        rep,
        rec: &rec,
        stat: &stat,
        cache,
        lock,
        lock_dirty: false,
        lock_written: Instant::now() - LOCK_WRITE_EVERY,
        selected,
        forced,
        incomplete,
        status: HashMap::new(),
        records: BTreeMap::new(),
        inputs: HashMap::new(),
        gates: HashMap::new(),
        gate_failed: BTreeSet::new(),
        stop: false,
        interrupted: false,
        no_restore: BTreeSet::new(),
        remote: remote.as_ref(),
    };
    let loop_result = engine.run_loop();
    // Whatever happened, keep what was learnt.
    engine.prune_lock();
    let lock_result = engine.flush_lock(true);
    let _ = stat.save(&p.layout.stat_cache());
    rep.end();
    loop_result?;
    lock_result?;

    let failed = engine.status.values().any(|s| *s == Status::Failed);
    let gate_failed = !engine.gate_failed.is_empty();
    let (status, code) = if engine.interrupted {
        ("interrupted", exit::INTERRUPTED)
    } else if failed {
        ("failed", exit::FAILED)
    } else if gate_failed {
        ("gate_failed", exit::GATE)
    } else {
        ("success", exit::OK)
    };
    manifest.status = status.into();
    manifest.finished_at = Some(crate::fsutil::now_rfc3339());
    manifest.stages = engine.records.clone();
    rec.write_manifest(&manifest)?;
    rec.event(
        "run_done",
        None,
        json!({"status": status, "exit_code": code}),
    );
    record::prune_runs(&p.layout.runs, p.keep_runs.max(1));

    let order: Vec<(String, StageRecord)> = p
        .order
        .iter()
        .filter_map(|&i| {
            engine
                .records
                .get(&p.stages[i].name)
                .map(|r| (p.stages[i].name.clone(), r.clone()))
        })
        .collect();
    let summary = Summary {
        run_id: Some(rec.run_id.clone()),
        status: status.into(),
        exit_code: code,
        stages: order,
        duration_s: started.elapsed().as_secs_f64(),
    };
    print_summary(rep, &summary);
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn dry_run(
    p: &Pipeline,
    opts: &BuildOptions,
    rep: &Reporter,
    selected: &BTreeSet<usize>,
    forced: &BTreeSet<usize>,
    incomplete: &BTreeSet<String>,
    lock: &LockFile,
    stat: &StatCache,
    cache: &Cache,
    started: Instant,
) -> Result<Summary> {
    let hasher = Hasher::new(&p.root, stat);
    let planned = plan::plan_all(
        p,
        selected,
        lock,
        &hasher,
        cache,
        forced,
        incomplete,
        opts.use_cache,
    )?;
    let mut stages = Vec::new();
    let mut would = 0;
    for pl in &planned {
        let s = &p.stages[pl.stage];
        let (state, tone) = match &pl.verdict {
            Verdict::UpToDate => ("up to date", Tone::Good),
            Verdict::Frozen => ("frozen", Tone::Info),
            Verdict::Stale {
                restore: Some(_), ..
            } => ("would restore", Tone::Info),
            Verdict::Stale { .. } => ("would run", Tone::Warn),
        };
        if !pl.verdict.is_up_to_date() {
            would += 1;
        }
        let reasons: Vec<String> = pl.verdict.reasons().iter().map(|r| r.to_string()).collect();
        if !rep.quiet {
            let detail = if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            };
            rep.status(state, tone, &format!("{}{detail}", s.name));
        }
        stages.push((
            s.name.clone(),
            StageRecord {
                status: state.replace(' ', "_"),
                reasons,
                ..Default::default()
            },
        ));
    }
    rep.note(&format!(
        "dry run: {would} of {} stages would run or be restored; nothing was changed",
        planned.len()
    ));
    let _ = stat.save(&p.layout.stat_cache());
    Ok(Summary {
        run_id: None,
        status: "dry_run".into(),
        exit_code: exit::OK,
        stages,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

fn print_summary(rep: &Reporter, s: &Summary) {
    let count = |st: &str| s.stages.iter().filter(|(_, r)| r.status == st).count();
    let (ran, restored, up, failed, blocked, skipped) = (
        count("ran"),
        count("restored"),
        count("up_to_date"),
        count("failed"),
        count("blocked"),
        count("skipped"),
    );
    let mut parts = vec![
        format!("{ran} ran"),
        format!("{restored} restored"),
        format!("{up} up to date"),
    ];
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if blocked > 0 {
        parts.push(format!("{blocked} blocked"));
    }
    if skipped > 0 {
        parts.push(format!("{skipped} skipped"));
    }
    let (verb, tone) = match s.status.as_str() {
        "success" => ("Finished", Tone::Good),
        "interrupted" => ("Interrupted", Tone::Bad),
        "gate_failed" => ("Gate failed", Tone::Bad),
        _ => ("Failed", Tone::Bad),
    };
    let run = s
        .run_id
        .as_deref()
        .map(|r| format!(" (run {r})"))
        .unwrap_or_default();
    rep.status(
        verb,
        tone,
        &format!("{} in {}{run}", parts.join(", "), secs(s.duration_s)),
    );
}

impl<'a> Engine<'a> {
    fn stage(&self, i: usize) -> &'a Stage {
        &self.p.stages[i]
    }

    fn run_loop(&mut self) -> Result<()> {
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
                        self.finish_skipped(
                            i,
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
            r.control.cancelled.store(true, Ordering::SeqCst);
            if let Ok(mut job) = r.control.job_id.lock()
                && let Some(id) = job.take()
            {
                crate::slurm::cancel(&id);
            }
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
                    self.finish_skipped(i, &why);
                    return Ok(None);
                }
                Some(Status::Blocked) => {
                    self.finish_blocked(i, &format!("upstream blocked: {}", self.stage(u).name));
                    return Ok(None);
                }
                _ if self.gate_failed.contains(&u) => {
                    let g = self
                        .stage(u)
                        .gate
                        .as_ref()
                        .map(|g| g.name.clone())
                        .unwrap_or_default();
                    self.finish_blocked(
                        i,
                        &format!("gate failed: {g} (stage {})", self.stage(u).name),
                    );
                    return Ok(None);
                }
                _ => {}
            }
        }
        if self.stop {
            self.finish_skipped(
                i,
                if self.interrupted {
                    "build interrupted"
                } else {
                    "build stopped after a failure"
                },
            );
            return Ok(None);
        }
        if s.frozen {
            self.finish_simple(i, Status::UpToDate, vec!["frozen".into()]);
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
        self.inputs.insert(i, inputs);
        match verdict {
            Verdict::UpToDate | Verdict::Frozen => {
                if self.rep.verbose {
                    self.rep.status("Fresh", Tone::Good, &s.name);
                }
                self.finish_simple(i, Status::UpToDate, vec![]);
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

    fn finish(&mut self, done: Done) -> Result<()> {
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
        // Modes come from the run-cache entry (the lock keeps only hashes and sizes).
        let cached = self.cache.get_run(&entry.fingerprint);
        let artifacts = entry
            .outs
            .iter()
            .map(|(path, o)| record::Artifact {
                path: path.clone(),
                hash: o.hash.clone(),
                size: o.size,
                dir: o.dir,
                mode: cached
                    .as_ref()
                    .and_then(|c| c.outs.get(path))
                    .map_or(0o644, |c| c.mode),
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
            git: record::git_info(&self.p.root),
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

    fn finish_simple(&mut self, i: usize, status: Status, reasons: Vec<String>) {
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
            let _ = self.after_success(i, status);
        }
    }

    fn finish_skipped(&mut self, i: usize, why: &str) {
        let s = self.stage(i);
        self.rec
            .event("stage_skipped", Some(&s.name), json!({"reason": why}));
        if !self.interrupted {
            self.rep
                .status("Skipped", Tone::Warn, &format!("{} ({why})", s.name));
        }
        let rec = StageRecord {
            status: Status::Skipped.as_str().into(),
            reasons: vec![why.to_string()],
            ..Default::default()
        };
        self.records.insert(s.name.clone(), rec);
        self.status.insert(i, Status::Skipped);
        self.rep.skip_progress(1);
    }

    fn finish_blocked(&mut self, i: usize, why: &str) {
        let s = self.stage(i);
        self.rec
            .event("stage_blocked", Some(&s.name), json!({"reason": why}));
        self.rep
            .status("Blocked", Tone::Bad, &format!("{} ({why})", s.name));
        let rec = StageRecord {
            status: Status::Blocked.as_str().into(),
            reasons: vec![why.to_string()],
            ..Default::default()
        };
        self.records.insert(s.name.clone(), rec);
        self.status.insert(i, Status::Blocked);
        self.rep.skip_progress(1);
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

    fn prune_lock(&mut self) {
        let before = self.lock.stages.len();
        let names: BTreeSet<&str> = self.p.stages.iter().map(|s| s.name.as_str()).collect();
        self.lock.stages.retain(|k, _| names.contains(k.as_str()));
        if self.lock.stages.len() != before {
            self.lock_dirty = true;
        }
    }

    /// Write the lock if it changed, at most every 200 ms unless `now`.
    fn flush_lock(&mut self, now: bool) -> Result<()> {
        if self.lock_dirty && (now || self.lock_written.elapsed() >= LOCK_WRITE_EVERY) {
            self.lock.save(&self.p.layout.lockfile())?;
            self.lock_dirty = false;
            self.lock_written = Instant::now();
        }
        Ok(())
    }
}

/// Worker: run or restore one stage, then hash and store its outs.
#[allow(clippy::too_many_arguments)]
fn execute(
    i: usize,
    s: &Stage,
    root: &std::path::Path,
    work: Work,
    spec: Option<RunSpec>,
    fingerprint: String,
    exec: &dyn Executor,
    control: &Control,
    cache: &Cache,
    stat: &StatCache,
    remote: Option<&crate::remote::Remote>,
    tx: &mpsc::Sender<Msg>,
) -> Done {
    let started = Instant::now();
    let mut done = Done {
        i,
        outcome: Outcome::Ran,
        attempts: 0,
        exit_code: None,
        duration: Duration::ZERO,
        outs: BTreeMap::new(),
        job_id: None,
    };
    match work {
        Work::Restore(entry) => {
            // A cache entry (shared, maybe pulled) may only write the stage's declared outs.
            let declared: BTreeSet<&str> = s.outs.iter().map(|o| o.path.as_str()).collect();
            let matches = entry
                .outs
                .keys()
                .map(String::as_str)
                .eq(declared.iter().copied());
            done.outcome = match if matches {
                cache.restore(root, &entry, stat)
            } else {
                Err(anyhow::anyhow!(
                    "its cache entry lists other outs than the stage declares; not restoring it"
                ))
            } {
                Ok(()) => {
                    done.outs = entry
                        .outs
                        .iter()
                        .map(|(k, o)| {
                            (
                                k.clone(),
                                OutRecord {
                                    hash: o.hash.clone(),
                                    size: o.size,
                                    dir: o.dir,
                                },
                            )
                        })
                        .collect();
                    Outcome::Restored
                }
                Err(e) if e.downcast_ref::<Corrupt>().is_some() => {
                    Outcome::Corrupt(format!("{e:#}"))
                }
                Err(e) => Outcome::Corrupt(format!("restore failed: {e:#}")),
            };
        }
        Work::Run => {
            let Some(spec) = spec else {
                done.outcome = Outcome::Failed("internal error: no run spec".into());
                return done;
            };
            done.outcome = run_with_retries(i, s, root, &spec, exec, control, tx, &mut done);
            if let Outcome::Ran = done.outcome {
                match collect_outs(s, root, cache, stat, remote, &fingerprint) {
                    Ok(outs) => done.outs = outs,
                    Err(e) => {
                        crate::runner::log_note(&spec.log, &format!("{e:#}"));
                        done.outcome = Outcome::Failed(format!("{e:#}"));
                    }
                }
            }
            if !matches!(done.outcome, Outcome::Ran) && !s.persist {
                for o in &s.outs {
                    let _ = crate::fsutil::remove_path(&root.join(&o.path));
                }
            }
        }
    }
    done.duration = started.elapsed();
    done
}

#[allow(clippy::too_many_arguments)]
fn run_with_retries(
    i: usize,
    s: &Stage,
    root: &std::path::Path,
    spec: &RunSpec,
    exec: &dyn Executor,
    control: &Control,
    tx: &mpsc::Sender<Msg>,
    done: &mut Done,
) -> Outcome {
    // Old outs must never pass as new output.
    if !s.persist {
        for o in &s.outs {
            if let Err(e) = crate::fsutil::remove_path(&root.join(&o.path)) {
                return Outcome::Failed(format!("cannot remove old out: {e:#}"));
            }
        }
    }
    for o in &s.outs {
        let full = root.join(&o.path);
        let dir = if o.dir_hint {
            Some(full.as_path())
        } else {
            full.parent()
        };
        if let Some(d) = dir
            && let Err(e) = std::fs::create_dir_all(d)
        {
            return Outcome::Failed(format!("cannot create folder {}: {e}", d.display()));
        }
    }
    let total = s.retries + 1;
    let mut attempt = 1;
    loop {
        done.attempts = attempt;
        if total > 1 {
            crate::runner::log_note(
                &spec.log,
                &format!(
                    "attempt {attempt} of {total} at {}",
                    crate::fsutil::now_rfc3339()
                ),
            );
        }
        // Slurm enforces a Slurm stage's limit itself (it checks every 30 s); pipe only steps
        // in if the job outlives its limit by far.
        let limit = match s.executor {
            ExecutorKind::Slurm => s.timeout.map(|t| t + Duration::from_secs(150)),
            ExecutorKind::Local => s.timeout,
        };
        *control.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            limit.map(|t| Instant::now() + t);
        control.timed_out.store(false, Ordering::SeqCst);
        *control.term_sent.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let result = exec.run(spec, control);
        if let Ok(j) = control.job_id.lock()
            && j.is_some()
        {
            done.job_id = j.clone();
        }
        match result {
            Attempt::Ok => {
                done.exit_code = Some(0);
                return Outcome::Ran;
            }
            Attempt::Interrupted => return Outcome::Interrupted,
            Attempt::Failed { exit_code, message } => {
                done.exit_code = exit_code;
                crate::runner::log_note(&spec.log, &format!("attempt {attempt} failed: {message}"));
                if attempt >= total || control.cancelled.load(Ordering::SeqCst) {
                    let msg = if total > 1 {
                        format!("{message} (after {attempt} attempts)")
                    } else {
                        message
                    };
                    return Outcome::Failed(msg);
                }
                let delay = backoff(s.retry_delay, attempt);
                let _ = tx.send(Msg::Retry {
                    i,
                    attempt: attempt + 1,
                    delay,
                    message,
                });
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if control.cancelled.load(Ordering::SeqCst) {
                        return Outcome::Interrupted;
                    }
                    std::thread::sleep(
                        Duration::from_millis(20)
                            .min(until.saturating_duration_since(Instant::now())),
                    );
                }
                attempt += 1;
            }
        }
    }
}

/// Exponential backoff: `base`, doubled per attempt, capped at 10 minutes.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(Duration::from_secs(600))
}

/// After a successful run: every declared out must exist; hash them, store them in the cache.
fn collect_outs(
    s: &Stage,
    root: &std::path::Path,
    cache: &Cache,
    stat: &StatCache,
    remote: Option<&crate::remote::Remote>,
    fingerprint: &str,
) -> Result<BTreeMap<String, OutRecord>> {
    let hasher = Hasher::new(root, stat);
    let mut outs = BTreeMap::new();
    let mut cached = BTreeMap::new();
    let mut missing = Vec::new();
    for o in &s.outs {
        let h = hasher.path(&o.path)?;
        if h == PathHash::Missing {
            missing.push(o.path.clone());
            continue;
        }
        if let Err(e) = check_no_escape(root, &o.path) {
            anyhow::bail!("{e}");
        }
        if s.cacheable() {
            cached.insert(o.path.clone(), cache.store_out(root, &o.path, &h)?);
        }
        outs.insert(
            o.path.clone(),
            OutRecord {
                hash: h.text(),
                size: h.size(),
                dir: matches!(h, PathHash::Dir { .. }),
            },
        );
    }
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ");
        anyhow::bail!("the command succeeded but did not create declared out {list}");
    }
    if s.cacheable() {
        let entry = run_entry(&s.name, fingerprint, cached);
        cache.put_run(&entry)?;
        if let Some(r) = remote {
            r.push_entry(cache, &entry)?;
        }
    }
    Ok(outs)
}

/// An out that is (or sits under) a symlink leading outside the workspace is refused.
fn check_no_escape(root: &std::path::Path, rel: &str) -> Result<()> {
    let full = root.join(rel);
    if let Ok(real) = full.canonicalize()
        && !real.starts_with(root)
    {
        anyhow::bail!(
            "out `{rel}` resolves to {} through a symlink, outside the workspace; refusing it",
            real.display()
        );
    }
    Ok(())
}

/// The run-cache entry written after a stage ran: fingerprint → outs.
pub fn run_entry(
    stage: &str,
    fingerprint: &str,
    cached: BTreeMap<String, crate::cache::CachedOut>,
) -> RunEntry {
    RunEntry {
        version: crate::cache::VERSION,
        stage: stage.to_string(),
        fingerprint: fingerprint.to_string(),
        created_at: crate::fsutil::now_rfc3339(),
        outs: cached,
    }
}
