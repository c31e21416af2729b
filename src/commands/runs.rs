//! `pipe runs` (past runs, `--stats` per stage) and `pipe log` (a stage's log from a run).

use super::Ctx;
use crate::cli::{LogArgs, RunsArgs};
use crate::error::invalid;
use crate::output::{self, Text};
use crate::record::{self, Manifest};
use crate::report::{Reporter, secs};
use anyhow::Result;
use std::collections::BTreeMap;

pub fn runs(ctx: &Ctx, rep: &Reporter, a: &RunsArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let runs = record::list_runs(&p.layout.runs);
    if a.stats {
        return stats(&runs, a.json);
    }
    if a.json {
        let list: Vec<serde_json::Value> = runs
            .iter()
            .map(|m| {
                serde_json::json!({
                    "run_id": m.run_id, "started_at": m.started_at, "finished_at": m.finished_at,
                    "duration_s": m.duration_s(), "status": m.status, "ran": m.count("ran"),
                    "restored": m.count("restored"), "up_to_date": m.count("up_to_date"), "failed": m.count("failed"),
                    "blocked": m.count("blocked"), "command": m.command,
                })
            })
            .collect();
        output::print_json(&serde_json::json!({ "runs": list }))?;
        return Ok(0);
    }
    if runs.is_empty() {
        rep.note("no runs yet: `pipe build` records one per build");
        return Ok(0);
    }
    let mut out = Text::new();
    out.line(format!(
        "{:<22} {:<20} {:>9} {:<12} {:>4} {:>8} {:>6}",
        "run", "started", "duration", "status", "ran", "restored", "failed"
    ));
    for m in &runs {
        let d = m.duration_s().map(secs).unwrap_or_else(|| "-".into());
        out.line(format!(
            "{:<22} {:<20} {:>9} {:<12} {:>4} {:>8} {:>6}",
            m.run_id,
            m.started_at.trim_end_matches('Z').replace('T', " "),
            d,
            m.status,
            m.count("ran"),
            m.count("restored"),
            m.count("failed")
        ));
    }
    out.print()?;
    Ok(0)
}

fn stats(runs: &[Manifest], json: bool) -> Result<i32> {
    #[derive(Default)]
    struct S {
        ran: usize,
        ok: usize,
        total_s: f64,
        last_s: Option<f64>,
    }
    let mut by: BTreeMap<String, S> = BTreeMap::new();
    // Oldest first so `last` ends as the newest.
    for m in runs.iter().rev() {
        for (name, r) in &m.stages {
            if r.status != "ran" && r.status != "failed" {
                continue;
            }
            let s = by.entry(name.clone()).or_default();
            s.ran += 1;
            if r.status == "ran" {
                s.ok += 1;
                s.total_s += r.duration_s;
            }
            s.last_s = Some(r.duration_s);
        }
    }
    if json {
        let v: Vec<serde_json::Value> = by
            .iter()
            .map(|(n, s)| serde_json::json!({"stage": n, "runs": s.ran, "success_rate": s.ok as f64 / s.ran as f64, "mean_s": if s.ok > 0 { s.total_s / s.ok as f64 } else { 0.0 }, "last_s": s.last_s}))
            .collect();
        output::print_json(&serde_json::json!({ "stages": v }))?;
        return Ok(0);
    }
    let w = by
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = Text::new();
    out.line(format!(
        "{:<w$}  {:>5}  {:>8}  {:>8}  {:>8}",
        "stage", "runs", "success", "mean", "last"
    ));
    for (n, s) in &by {
        let mean = if s.ok > 0 {
            secs(s.total_s / s.ok as f64)
        } else {
            "-".into()
        };
        out.line(format!(
            "{n:<w$}  {:>5}  {:>7.0}%  {:>8}  {:>8}",
            s.ran,
            100.0 * s.ok as f64 / s.ran as f64,
            mean,
            s.last_s.map(secs).unwrap_or_default()
        ));
    }
    out.print()?;
    Ok(0)
}

pub fn log(ctx: &Ctx, a: &LogArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let runs = record::list_runs(&p.layout.runs);
    // `pipe log STAGE` is accepted as the latest run's STAGE.
    let (run, stage) = match (&a.run, &a.stage) {
        (Some(r), s) if runs.iter().any(|m| &m.run_id == r) => {
            (runs.iter().find(|m| &m.run_id == r), s.clone())
        }
        (Some(r), None) if p.stage(r).is_some() => (runs.first(), Some(r.clone())),
        (Some(r), _) => return Err(invalid(format!("no run `{r}` (see `pipe runs`)"))),
        (None, s) => (runs.first(), s.clone()),
    };
    let Some(run) = run else {
        return Err(invalid("no runs yet: `pipe build` records one per build"));
    };
    let dir = p.layout.runs.join(&run.run_id);
    let names: Vec<String> = match &stage {
        Some(s) => vec![s.clone()],
        None => run
            .stages
            .iter()
            .filter(|(_, r)| r.log.is_some())
            .map(|(n, _)| n.clone())
            .collect(),
    };
    if names.is_empty() {
        eprintln!("run {} ran no stage, so it has no logs", run.run_id);
    }
    for name in names {
        let path = dir
            .join("logs")
            .join(format!("{}.log", crate::fsutil::marker_name(&name)));
        match std::fs::read(&path) {
            Ok(bytes) => {
                if stage.is_none() {
                    output::write_str(&format!("==> {name} <==\n"))?;
                }
                output::write_bytes(&bytes)?;
            }
            Err(_) => {
                let why = run
                    .stages
                    .get(&name)
                    .map(|r| format!("it was {} in that run", r.status))
                    .unwrap_or_else(|| "it was not part of that run".into());
                return Err(invalid(format!(
                    "no log for stage `{name}` in run {} ({why})",
                    run.run_id
                )));
            }
        }
    }
    Ok(0)
}
