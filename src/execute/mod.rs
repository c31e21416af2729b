//! `pipe build` as steps: select the stages, take the workspace, open the books (run folder,
//! ledger, event log), let the dispatcher run the scheduler, close the books, summarise.
//! Stages are judged when their upstream is done, so early cutoff falls out: a rerun with
//! identical outs leaves the downstream up to date.

pub mod control;
mod direct;
mod dispatch;
mod env;
pub mod executor;
mod hooks;
mod job;
pub mod local;
mod pools;
pub mod scheduler;
pub mod slurm;
mod workers;

pub use job::backoff;

use crate::cache::Cache;
use crate::error::exit;
use crate::event::{Bus, Event};
use crate::graph::{Pipeline, Targets};
use crate::hash::Hasher;
use crate::plan::{self, Planner};
use crate::record::events::EventLog;
use crate::record::history::{self, Index};
use crate::record::ledger::Ledger;
use crate::record::{self, Manifest, Recorder, RunStatus, StageRecord, Summary, markers};
use crate::report::{BuildView, Reporter};
use crate::state::StatCache;
use anyhow::Result;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub targets: Targets,
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub use_cache: bool,
    pub dry_run: bool,
    pub override_gates: Vec<String>,
    pub pull: bool,
    pub push: bool,
    pub wait: bool,
    pub command: Vec<String>,
    /// `--name`: a label for the run.
    pub name: Option<String>,
    /// `--follow`: print every line the stages write.
    pub follow: bool,
    /// `--reason`: why gates were overridden.
    pub reason: Option<String>,
}

/// Before anything runs: a stage whose earlier run left processes alive (pipe and its
/// watchdog were both killed) has them stopped first, with one line saying so. Whether
/// any was stopped.
fn stop_leftovers(p: &Pipeline, open: &BTreeMap<String, markers::Marker>, rep: &Reporter) -> bool {
    let mut stopped = false;
    for stage in markers::of_pipeline(p, open) {
        let m = &open[&stage];
        if let Some(g) = m.group
            && g.is_alive()
        {
            rep.warn(&format!(
                "stage `{stage}`: stopping processes its run {} left running (process group {})",
                m.run_id, g.pgid
            ));
            crate::process_group::stop_leftover(g, control::GRACE);
            stopped = true;
        }
    }
    stopped
}

/// A build with nothing to do keeps no books. When every selected stage is fresh, as
/// `status` would say (the same [`plan::Upfront`]), it opens no run folder, event log or manifest and
/// writes nothing but the stat cache: the stages' verdicts go to the terminal and the
/// summary. Whatever could make a build with fresh stages write something takes the full
/// path instead: `--force`, `--pull` / `--push`, gate overrides, gated or release stages,
/// lock entries of stages no longer in the pipeline (the ledger prunes them).
#[allow(clippy::too_many_arguments)]
fn noop(
    p: &Pipeline,
    opts: &BuildOptions,
    sel: &crate::graph::Selection,
    lock: (&crate::lockfile::LockFile, Option<blake3::Hash>),
    incomplete: &std::collections::BTreeSet<String>,
    stat: &StatCache,
    cache: &Cache,
    rep: &mut Reporter,
) -> Result<Option<Summary>> {
    let (lock, lock_key) = lock;
    let plain = sel.forced.is_empty()
        && !opts.pull
        && !opts.push
        && opts.override_gates.is_empty()
        && sel
            .selected
            .iter()
            .all(|&i| p.stages[i].gate.is_none() && !p.stages[i].release)
        && lock.stages.keys().all(|k| p.index.contains_key(k));
    if !plain {
        return Ok(None);
    }
    let planner = Planner {
        hasher: Hasher::new(&p.root, stat).with_memo(&p.stats).recording(),
        cache,
        use_cache: opts.use_cache,
        remote: None,
    };
    let rel = crate::record::release::ReleaseState::load(&p.layout.state());
    let upfront = plan::Upfront {
        lock,
        planner: &planner,
        forced: &sel.forced,
        incomplete,
        releases: &rel,
    };
    let Some(planned) = upfront.until_attention(p, &sel.selected)? else {
        return Ok(None);
    };
    let _ = stat.save(&p.layout.stat_cache());
    crate::fresh::keep(&crate::fresh::Seen {
        p,
        sel: crate::fresh::Selection {
            names: &opts.targets.names,
            downstream: opts.targets.downstream,
        },
        lock: lock_key,
        hasher: &planner.hasher,
        build: true,
        planned: &planned,
    });
    for pl in &planned {
        tracing::debug!(
            stage = %p.stages[pl.stage].name,
            verdict = pl.state.label(),
            reasons = ?pl.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "judged"
        );
    }
    let summary = announce_noop(
        rep,
        opts.follow,
        &p.layout.runs,
        planned.into_iter().map(|pl| {
            let name = &p.stages[pl.stage].name;
            (name.clone(), pl.state, pl.reasons, lock.stages.get(name))
        }),
    )?;
    crate::keep_until_exit(planner);
    Ok(Some(summary))
}

/// What a build with nothing to do shows: each stage judged fresh (`-v`, `--follow`), then
/// the summary's counts. `stages` in plan order: name, state, reasons, lock entry.
pub fn announce_noop<'a>(
    rep: &mut Reporter,
    follow: bool,
    runs: &std::path::Path,
    stages: impl ExactSizeIterator<
        Item = (
            String,
            crate::stage_state::StageState,
            Vec<crate::plan::Reason>,
            Option<&'a crate::lockfile::LockEntry>,
        ),
    >,
) -> Result<Summary> {
    let mut view = BuildView::new(rep, follow);
    let mut bus = Bus::new().with(&mut view);
    bus.emit(Event::RunStart {
        run_id: String::new(),
        run_dir: runs.to_path_buf(),
        stages: stages.len(),
    })?;
    let mut records = Vec::with_capacity(stages.len());
    for (name, state, reasons, entry) in stages {
        records.push((
            name.clone(),
            StageRecord::fresh(state, reasons.clone(), entry),
        ));
        bus.emit(Event::StageJudged {
            stage: name,
            state,
            reasons,
            fingerprint: None,
            inputs: None,
        })?;
    }
    bus.emit(Event::RunDone {
        status: RunStatus::Success,
        exit_code: exit::OK,
    })?;
    Ok(Summary {
        run_id: None,
        status: RunStatus::Success,
        exit_code: exit::OK,
        stages: records,
        duration_s: 0.0,
    })
}

pub fn build(p: &Pipeline, opts: &BuildOptions, rep: &mut Reporter) -> Result<Summary> {
    let started = Instant::now();
    let sel = p.select(&opts.targets)?;
    let stat = StatCache::load(&p.layout.stat_cache());
    let cache = Cache::new(&p.layout.cache);
    if opts.dry_run {
        let lock = crate::lockfile::LockFile::load_for(&p.layout)?;
        let planner = Planner {
            hasher: Hasher::new(&p.root, &stat).with_memo(&p.stats),
            cache: &cache,
            use_cache: opts.use_cache,
            remote: None,
        };
        let rel = crate::record::release::ReleaseState::load(&p.layout.state());
        let planned = plan::Upfront {
            lock: &lock,
            planner: &planner,
            forced: &sel.forced,
            incomplete: &markers::incomplete(p),
            releases: &rel,
        }
        .all(p, &sel.selected)?;
        let _ = stat.save(&p.layout.stat_cache());
        rep.dry_run(p, &planned);
        return Ok(Summary {
            run_id: None,
            status: RunStatus::DryRun,
            exit_code: exit::OK,
            stages: planned
                .into_iter()
                .map(|pl| {
                    (
                        p.stages[pl.stage].name.clone(),
                        StageRecord::new(pl.state, pl.reasons),
                    )
                })
                .collect(),
            duration_s: started.elapsed().as_secs_f64(),
        });
    }

    for &i in &sel.selected {
        let s = &p.stages[i];
        if let Some(out) = plan::frozen_missing(p, s).first() {
            return Err(crate::error::failed(format!(
                "stage `{}` is frozen but its out `{out}` is missing; nothing was run. Put the file back (e.g. `git checkout -- {out}`) or remove `frozen = true`",
                s.name
            )));
        }
    }
    // Forked while pipe still has one thread: it stops every stage's processes if pipe dies.
    let watchdog = crate::process_group::Watchdog::start().map(std::sync::Arc::new);
    let mut waited = false;
    let mut ws = crate::wslock::acquire(&p.layout, opts.wait, &opts.command.join(" "), |m| {
        waited = true;
        rep.waiting(m)
    })?;
    // Read the lock now that we hold the workspace: a build we waited for may have changed it.
    let (lock, lock_key) =
        crate::lockfile::LockFile::load_keyed(&p.layout.lockfile(), &p.layout.lock_snapshot())?;
    // Earlier builds' journals fold into one file of the stages they left cut off.
    let open = markers::compact(&p.layout)?;
    let incomplete = markers::of_pipeline(p, &open);
    if stop_leftovers(p, &open, rep) || waited {
        // Another build, or what a dead one left running, may have written the workspace
        // since the pipeline was loaded.
        p.stats.forget_all();
    }
    let remote = match (&p.remote, opts.pull || opts.push) {
        (Some(r), true) => Some(crate::remote::Remote::open(r, &p.root)?),
        (None, true) => {
            return Err(crate::error::invalid(
                "--pull / --push need a [remote] table in the pipeline",
            ));
        }
        _ => None,
    };

    if let Some(summary) = noop(
        p,
        opts,
        &sel,
        (&lock, lock_key),
        &incomplete,
        &stat,
        &cache,
        rep,
    )? {
        if let Some(w) = watchdog.and_then(std::sync::Arc::into_inner) {
            w.dismiss();
        }
        drop(ws);
        let summary = Summary {
            duration_s: started.elapsed().as_secs_f64(),
            ..summary
        };
        rep.summary(&summary);
        crate::keep_until_exit((lock, stat));
        return Ok(summary);
    }

    record::mark_crashed(&p.layout.runs);
    let rec = Recorder::start(&p.layout.runs)?;
    ws.set_run(&rec.run_id)?;
    let journal = std::sync::Arc::new(markers::Journal::new(
        &p.layout,
        &rec.run_id,
        open.into_keys(),
    ));
    let git = record::git_info(&p.root);
    let manifest = Manifest {
        version: record::MANIFEST_VERSION,
        run_id: rec.run_id.clone(),
        started_at: crate::fsutil::now_rfc3339(),
        finished_at: None,
        status: RunStatus::Running,
        pipe_version: env!("CARGO_PKG_VERSION").into(),
        command: opts.command.clone(),
        git: git.clone(),
        host: record::hostname(),
        name: opts.name.clone(),
        pipeline: p.name.clone(),
        params: crate::spec::flatten_params(&p.params),
        gate_overrides: opts.override_gates.clone(),
        rollback_to: None,
        stages: BTreeMap::new(),
    };
    let mut index = Index::load(&p.layout.state());
    let mut ledger = Ledger::open(p, &rec, &journal, lock.clone(), manifest)?;
    let mut events = EventLog::open(&rec)?;
    let live = rep.live();
    let ended = {
        let mut view = BuildView::new(rep, opts.follow);
        let mut bus = Bus::new()
            .with(&mut events)
            .with(&mut ledger)
            .with(&mut view);
        bus.emit(Event::RunStart {
            run_id: rec.run_id.clone(),
            run_dir: rec.dir.clone(),
            stages: sel.selected.len(),
        })?;
        let dispatch = dispatch::Dispatch {
            p,
            opts,
            rec: &rec,
            stat: &stat,
            cache: &cache,
            planner: Planner {
                hasher: Hasher::new(&p.root, &stat).with_memo(&p.stats),
                cache: &cache,
                use_cache: opts.use_cache,
                remote: if opts.pull { remote.as_ref() } else { None },
            },
            lock: &lock,
            sel: &sel,
            incomplete: &incomplete,
            push: if opts.push { remote.as_ref() } else { None },
            git,
            watchdog: watchdog.clone(),
            index: &index,
            stream: opts.follow || live,
            journal: journal.clone(),
        };
        let ended = dispatch.run(&mut bus);
        let (status, code) = match &ended {
            Ok(e) if e.interrupted => (RunStatus::Interrupted, exit::INTERRUPTED),
            Ok(e) if e.failed => (RunStatus::Failed, exit::FAILED),
            Ok(e) if e.gate_failed => (RunStatus::GateFailed, exit::GATE),
            Ok(_) => (RunStatus::Success, exit::OK),
            Err(_) => (RunStatus::Failed, exit::FAILED),
        };
        // Whatever happened, keep what was learnt: the lock and the manifest are written.
        let done = bus.emit(Event::RunDone {
            status,
            exit_code: code,
        });
        let _ = stat.save(&p.layout.stat_cache());
        ended?;
        done?;
        (status, code)
    };
    // A no-op (nothing ran, restored or failed) leaves no run folder; any other run joins
    // the history, and the oldest beyond `keep_runs` go (see record::history).
    let noop = history::is_noop(ledger.manifest());
    if noop {
        let _ = std::fs::remove_dir_all(&rec.dir);
    } else {
        index.update(ledger.manifest());
        let _ = index.save(&p.layout.state());
        history::prune(&p.layout.runs, &p.layout.state(), p.keep_runs.max(1));
    }
    // Still holding the workspace: what this build ended leaves the carried markers.
    if let Err(e) = journal.close() {
        rep.warn(&format!("{e:#}"));
    }
    if let Some(w) = watchdog.and_then(std::sync::Arc::into_inner) {
        w.dismiss();
    }

    let records = &ledger.manifest().stages;
    let stages: Vec<(String, StageRecord)> = p
        .order
        .iter()
        .filter_map(|&i| {
            let name = &p.stages[i].name;
            records.get(name).map(|r| (name.clone(), r.clone()))
        })
        .collect();
    let released = rec.dir.join("release_manifest.json").exists();
    let summary = Summary {
        run_id: (!noop).then(|| rec.run_id.clone()),
        status: ended.0,
        exit_code: ended.1,
        stages,
        duration_s: started.elapsed().as_secs_f64(),
    };
    rep.summary(&summary);
    if !noop {
        hooks::run(p, ledger.manifest(), &rec.dir, released, rep);
    }
    Ok(summary)
}
