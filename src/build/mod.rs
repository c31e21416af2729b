//! `pipe build`: the scheduler. Stages become ready when their upstream is done, are judged
//! then (so early cutoff falls out: a rerun with identical outs leaves downstream up to
//! date), and run on worker threads up to `-j`, within resource pools. The main thread owns
//! the lock file, the records and the terminal; workers only run, restore and hash.

mod engine;
mod finish;
mod pools;
mod worker;

use crate::cache::Cache;
use crate::error::exit;
use crate::graph::Pipeline;
use crate::hash::Hasher;
use crate::lockfile::LockFile;
use crate::plan::{self, Verdict};
use crate::record::{self, Manifest, Recorder, StageRecord};
use crate::report::{Reporter, Tone, secs};
use crate::state::StatCache;
use anyhow::Result;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use engine::{Engine, LOCK_WRITE_EVERY};
pub use worker::backoff;

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
        git: manifest.git.clone(),
        p,
        opts,
        rep,
        rec: &rec,
        stat: &stat,
        cache,
        lock,
        lock_dirty: false,
        lock_render: Default::default(),
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
