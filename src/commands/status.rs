//! `pipe status`: every selected stage with its verdict and all its reasons.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::StatusArgs;
use crate::error::exit;
use crate::graph::Targets;
use crate::hash::Hasher;
use crate::lockfile::LockFile;
use crate::plan::{self, Planner, Reason};
use crate::report::{Reporter, Tone, paint, state_tone};
use crate::stage_state::StageState;
use crate::state::StatCache;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Write;

pub struct Row {
    pub name: String,
    pub state: StageState,
    pub reasons: Vec<Reason>,
    pub group: Option<String>,
}

/// The plan of the selected stages as table rows, and how many files were read to make it.
pub fn rows(p: &crate::graph::Pipeline, targets: &[String]) -> Result<(Vec<Row>, u64)> {
    let sel = p.select(&Targets {
        names: targets.to_vec(),
        ..Default::default()
    })?;
    let stat = StatCache::load(&p.layout.stat_cache());
    let lock = LockFile::load(&p.layout.lockfile())?;
    let cache = Cache::new(&p.layout.cache);
    let planner = Planner {
        hasher: Hasher::new(&p.root, &stat),
        cache: &cache,
        use_cache: true,
        remote: None,
    };
    let incomplete = crate::record::markers::incomplete(p);
    let planned = plan::upfront(
        p,
        &sel.selected,
        &lock,
        &planner,
        &BTreeSet::new(),
        &incomplete,
    )?;
    let _ = stat.save(&p.layout.stat_cache());
    let rows = planned
        .into_iter()
        .map(|pl| {
            let s = &p.stages[pl.stage];
            Row {
                name: s.name.clone(),
                state: pl.state,
                reasons: pl.reasons,
                group: (s.source_name != s.name).then(|| s.source_name.clone()),
            }
        })
        .collect();
    let read = planner
        .hasher
        .files_read
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok((rows, read))
}

/// `status --json`.
#[derive(Serialize)]
struct StatusJson<'a> {
    version: u32,
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
}

pub fn run(ctx: &Ctx, rep: &Reporter, a: &StatusArgs) -> Result<i32> {
    let p = ctx.load(&a.set)?;
    let (rows, files_read) = rows(&p, &a.stages)?;
    let stale = rows.iter().filter(|r| !r.state.is_fresh()).count();
    if a.json {
        let doc = StatusJson {
            version: 1,
            up_to_date: stale == 0,
            stale,
            stages: rows
                .iter()
                .map(|r| StageJson {
                    name: &r.name,
                    state: r.state,
                    reasons: &r.reasons,
                    group: r.group.as_deref(),
                })
                .collect(),
        };
        crate::report::print_json(&doc)?;
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
            let fresh = members.iter().filter(|m| m.state.is_fresh()).count();
            let state = if fresh == members.len() {
                StageState::UpToDate
            } else {
                members
                    .iter()
                    .find(|m| !m.state.is_fresh())
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
        let reasons = r.reasons.iter().map(|x| x.to_string()).collect();
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
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<w$}  {:<11} reasons", "stage", "state");
    for (name, state, reasons) in lines {
        let st = paint(color, state_tone(state), &format!("{state:<11}"));
        let first = reasons.first().cloned().unwrap_or_default();
        let _ = writeln!(out, "{name:<w$}  {st} {first}");
        for r in reasons.iter().skip(1) {
            let _ = writeln!(out, "{:<w$}  {:<11} {r}", "", "");
        }
    }
}
