//! `pipe status`: every selected stage with its verdict and all its reasons.

use super::Ctx;
use crate::build::{self, BuildOptions};
use crate::cache::Cache;
use crate::cli::StatusArgs;
use crate::error::exit;
use crate::hash::Hasher;
use crate::lockfile::LockFile;
use crate::plan::{self, Verdict};
use crate::report::{Reporter, Tone, paint};
use crate::state::StatCache;
use anyhow::Result;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;

pub struct Row {
    pub name: String,
    pub state: &'static str,
    pub reasons: Vec<String>,
    pub group: Option<String>,
}

pub fn rows(p: &crate::graph::Pipeline, targets: &[String]) -> Result<(Vec<Row>, u64)> {
    let opts = BuildOptions {
        targets: targets.to_vec(),
        use_cache: true,
        ..Default::default()
    };
    let (selected, _) = build::select(p, &opts)?;
    let stat = StatCache::load(&p.layout.stat_cache());
    let hasher = Hasher::new(&p.root, &stat);
    let lock = LockFile::load(&p.layout.lockfile())?;
    let cache = Cache::new(&p.layout.cache);
    let incomplete = build::incomplete_stages(p);
    let planned = plan::plan_all(
        p,
        &selected,
        &lock,
        &hasher,
        &cache,
        &BTreeSet::new(),
        &incomplete,
        true,
    )?;
    let _ = stat.save(&p.layout.stat_cache());

    // Gates of up-to-date stages are checked now: a failed one blocks its downstream.
    let mut blocked_by: HashMap<usize, String> = HashMap::new();
    let mut rows = Vec::new();
    for pl in &planned {
        let s = &p.stages[pl.stage];
        let upstream_block = s.upstream.iter().find_map(|u| blocked_by.get(u).cloned());
        let (state, reasons): (&'static str, Vec<String>) = if let Some(g) = &upstream_block {
            blocked_by.insert(pl.stage, g.clone());
            ("blocked", vec![format!("gate failed: {g}")])
        } else {
            match &pl.verdict {
                Verdict::UpToDate => ("up to date", vec![]),
                Verdict::Frozen => ("frozen", vec![]),
                Verdict::Stale { reasons, restore } => (
                    if restore.is_some() {
                        "restorable"
                    } else {
                        "stale"
                    },
                    reasons.iter().map(|r| r.to_string()).collect(),
                ),
            }
        };
        if upstream_block.is_none()
            && pl.verdict.is_up_to_date()
            && let Some(spec) = &s.gate
        {
            let g = crate::gate::evaluate(spec, &s.name, &p.root, false);
            if !g.passed {
                blocked_by.insert(pl.stage, spec.name.clone());
            }
        }
        let group = (s.source_name != s.name).then(|| s.source_name.clone());
        rows.push(Row {
            name: s.name.clone(),
            state,
            reasons,
            group,
        });
    }
    let read = hasher.files_read.load(std::sync::atomic::Ordering::Relaxed);
    Ok((rows, read))
}

pub fn run(ctx: &Ctx, rep: &Reporter, a: &StatusArgs) -> Result<i32> {
    let p = ctx.load(&a.set)?;
    let (rows, files_read) = rows(&p, &a.stages)?;
    let stale = rows
        .iter()
        .filter(|r| !matches!(r.state, "up to date" | "frozen"))
        .count();
    if a.json {
        let stages: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "state": r.state.replace(' ', "_"), "reasons": r.reasons, "group": r.group}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"up_to_date": stale == 0, "stale": stale, "stages": stages})
            )?
        );
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

fn tone(state: &str) -> Tone {
    match state {
        "up to date" => Tone::Good,
        "frozen" | "restorable" => Tone::Info,
        "blocked" => Tone::Bad,
        _ => Tone::Warn,
    }
}

/// The table on stdout; matrix groups fold into one line unless verbose.
fn print_table(rows: &[Row], rep: &Reporter, verbose: bool) {
    let mut lines: Vec<(String, &'static str, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let r = &rows[i];
        if let (Some(g), false) = (&r.group, verbose) {
            let members: Vec<&Row> = rows[i..]
                .iter()
                .take_while(|x| x.group.as_ref() == Some(g))
                .collect();
            let fresh = members
                .iter()
                .filter(|m| matches!(m.state, "up to date" | "frozen"))
                .count();
            let state = if fresh == members.len() {
                "up to date"
            } else {
                members
                    .iter()
                    .find(|m| !matches!(m.state, "up to date" | "frozen"))
                    .map_or("stale", |m| m.state)
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
        lines.push((r.name.clone(), r.state, r.reasons.clone()));
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
        let st = paint(color, tone(state), &format!("{state:<11}"));
        let first = reasons.first().cloned().unwrap_or_default();
        let _ = writeln!(out, "{name:<w$}  {st} {first}");
        for r in reasons.iter().skip(1) {
            let _ = writeln!(out, "{:<w$}  {:<11} {r}", "", "");
        }
    }
}
