//! `pipe status`: every selected stage with its verdict and all its reasons.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::StatusArgs;
use crate::error::exit;
use crate::graph::{LoadOptions, Pipeline, Targets};
use crate::hash::Hasher;
use crate::plan::{self, Planner, Reason};
use crate::report::{Reporter, Tone, paint, state_tone};
use crate::stage_state::StageState;
use crate::state::StatCache;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write;

/// A stage a live build is running now.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub run_id: String,
    pub elapsed_s: f64,
    /// The pid of the `pipe build` running it.
    pub pid: u32,
}

pub struct Row {
    pub name: String,
    pub running: Option<Running>,
    /// Stale, or otherwise in need of a build or a fix.
    pub attention: bool,
    pub state: StageState,
    pub reasons: Vec<Reason>,
    pub group: Option<String>,
}

/// The plan of the selected stages as table rows, and how many files were read to make it.
pub fn rows(p: &Pipeline, targets: &[String]) -> Result<(Vec<Row>, u64)> {
    let sel = p.select(&Targets {
        names: targets.to_vec(),
        ..Default::default()
    })?;
    let stat = StatCache::load(&p.layout.stat_cache());
    let (lock, lock_key) =
        crate::lockfile::LockFile::load_keyed(&p.layout.lockfile(), &p.layout.lock_snapshot())?;
    let cache = Cache::new(&p.layout.cache);
    let planner = Planner {
        hasher: Hasher::new(&p.root, &stat).with_memo(&p.stats).recording(),
        cache: &cache,
        use_cache: true,
        remote: None,
    };
    // Stages a live build is running now are `running`, not `incomplete`.
    let live = crate::wslock::live_holder(&p.layout).and_then(|h| h.run_id.map(|r| (r, h.pid)));
    let mut running = std::collections::BTreeMap::new();
    let open = crate::record::markers::all(&p.layout);
    let mut incomplete = crate::record::markers::of_pipeline(p, &open);
    if let Some((run_id, pid)) = &live {
        incomplete.retain(|stage| match open.get(stage) {
            Some(m) if &m.run_id == run_id => {
                let elapsed_s = m
                    .since
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                running.insert(
                    stage.clone(),
                    Running {
                        run_id: run_id.clone(),
                        elapsed_s,
                        pid: *pid,
                    },
                );
                false
            }
            _ => true,
        });
    }
    let rel = crate::record::release::ReleaseState::load(&p.layout.state());
    let planned = plan::Upfront {
        lock: &lock,
        planner: &planner,
        forced: &BTreeSet::new(),
        incomplete: &incomplete,
        releases: &rel,
    }
    .all(p, &sel.selected)?;
    let _ = stat.save(&p.layout.stat_cache());
    if live.is_none() {
        crate::fresh::keep(&crate::fresh::Seen {
            p,
            sel: crate::fresh::Selection {
                names: targets,
                downstream: false,
            },
            lock: lock_key,
            hasher: &planner.hasher,
            build: lock.stages.keys().all(|k| p.index.contains_key(k)),
            planned: &planned,
        });
    }
    let rows = planned
        .into_iter()
        .map(|pl| {
            let s = &p.stages[pl.stage];
            let live = running.remove(&s.name);
            Row {
                name: s.name.clone(),
                attention: pl.needs_attention() || live.is_some(),
                state: if live.is_some() {
                    StageState::Running
                } else {
                    pl.state
                },
                reasons: if live.is_some() { vec![] } else { pl.reasons },
                running: live,
                group: (s.source_name != s.name).then(|| s.source_name.clone()),
            }
        })
        .collect();
    let read = planner
        .hasher
        .files_read
        .load(std::sync::atomic::Ordering::Relaxed);
    crate::keep_until_exit((lock, planner));
    crate::keep_until_exit(stat);
    Ok((rows, read))
}

/// `status --json`.
#[derive(Serialize)]
struct StatusJson<'a> {
    up_to_date: bool,
    stale: usize,
    stages: Vec<StageJson<'a>>,
}

#[derive(Serialize)]
struct StageJson<'a> {
    name: &'a str,
    state: StageState,
    reasons: &'a [Reason],
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    running: Option<&'a Running>,
}

/// The rows of a no-op a [`crate::fresh`] proof still holds for.
fn proven(file: &std::path::Path, opts: &LoadOptions, targets: &[String]) -> Option<Vec<Row>> {
    let sel = crate::fresh::Selection {
        names: targets,
        downstream: false,
    };
    let proof = crate::fresh::check(file, opts, &sel)?;
    let rows = proof.stages.into_iter().map(|(name, group)| Row {
        name,
        running: None,
        attention: false,
        state: StageState::UpToDate,
        reasons: Vec::new(),
        group,
    });
    Some(rows.collect())
}

pub fn run(ctx: &Ctx, rep: &Reporter, a: &StatusArgs) -> Result<i32> {
    let (file, display, opts) = ctx.load_options(&a.set, a.params_file.as_deref())?;
    let (rows, files_read, p) = match proven(&file, &opts, &a.stages) {
        Some(rows) => (rows, 0, None),
        None => {
            let p = Pipeline::load(&file, display, &opts)?;
            let (rows, read) = rows(&p, &a.stages)?;
            (rows, read, Some(p))
        }
    };
    let stale = rows.iter().filter(|r| r.attention).count();
    if a.json {
        let doc = StatusJson {
            up_to_date: stale == 0,
            stale,
            stages: rows
                .iter()
                .map(|r| StageJson {
                    name: &r.name,
                    state: r.state,
                    reasons: &r.reasons,
                    group: r.group.as_deref(),
                    running: r.running.as_ref(),
                })
                .collect(),
        };
        // A closed pipe (`| head -c 10`) ends quietly with status's own exit code.
        if let Err(e) = crate::output::print_json(&doc)
            && !crate::output::is_closed_pipe(&e)
        {
            return Err(e);
        }
    } else {
        print_table(&rows, rep, ctx.verbose > 0);
        if ctx.verbose > 0 {
            rep.note(&format!(
                "hashed {files_read} changed files (the rest came from the stat cache)"
            ));
        }
        if !rep.quiet {
            let msg = if stale == 0 {
                format!("all {} stages up to date", rows.len())
            } else {
                format!("{stale} of {} stages need a build", rows.len())
            };
            rep.status(
                "Status",
                if stale == 0 { Tone::Good } else { Tone::Warn },
                &msg,
            );
        }
    }
    crate::keep_until_exit((p, rows));
    Ok(if stale > 0 && !a.exit_zero {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// The table on stdout; matrix groups fold into one line unless verbose.
fn print_table(rows: &[Row], rep: &Reporter, verbose: bool) {
    let mut lines: Vec<(String, StageState, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let r = &rows[i];
        if let (Some(g), false) = (&r.group, verbose) {
            let members: Vec<&Row> = rows[i..]
                .iter()
                .take_while(|x| x.group.as_ref() == Some(g))
                .collect();
            let fresh = members.iter().filter(|m| !m.attention).count();
            let state = if fresh == members.len() {
                StageState::UpToDate
            } else {
                members
                    .iter()
                    .find(|m| m.attention)
                    .map_or(StageState::Stale, |m| m.state)
            };
            let mut reasons = Vec::new();
            if fresh < members.len() {
                reasons.push(format!(
                    "{} of {} members need a build (-v lists them)",
                    members.len() - fresh,
                    members.len()
                ));
            }
            lines.push((format!("{g} [{} members]", members.len()), state, reasons));
            i += members.len();
            continue;
        }
        let mut reasons: Vec<String> = r.reasons.iter().map(|x| x.to_string()).collect();
        if let Some(live) = &r.running {
            reasons.insert(
                0,
                format!(
                    "run {} for {} (pid {})",
                    live.run_id,
                    crate::report::secs(live.elapsed_s),
                    live.pid
                ),
            );
        }
        lines.push((r.name.clone(), r.state, reasons));
        i += 1;
    }
    let w = lines
        .iter()
        .map(|l| l.0.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let color = rep.color() && std::io::IsTerminal::is_terminal(&std::io::stdout());
    // One buffer, one write: a 1,000-stage table is not 1,000 system calls.
    let mut out = String::new();
    let _ = writeln!(out, "{:<w$}  {:<11} reasons", "stage", "state");
    for (name, state, reasons) in lines {
        let st = paint(color, state_tone(state), &format!("{state:<11}"));
        let first = reasons.first().cloned().unwrap_or_default();
        let _ = writeln!(out, "{name:<w$}  {st} {first}");
        for r in reasons.iter().skip(1) {
            let _ = writeln!(out, "{:<w$}  {:<11} {r}", "", "");
        }
    }
    // A closed pipe (`| head`) ends quietly; status keeps its exit code.
    let _ = crate::output::write_str(&out);
}
