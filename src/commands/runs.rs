//! `pipe runs` (past runs, `--stats` per stage) and `pipe log` (a stage's log from a run).

use super::Ctx;
use crate::cli::{LogArgs, RunsArgs};
use crate::error::invalid;
use crate::output::{self, Text};
use crate::record::follow::Tail;
use crate::record::{self, Manifest, history};
use crate::report::{Reporter, secs};
use crate::stage_state::StageState;
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Write;

pub fn runs(ctx: &Ctx, rep: &Reporter, a: &RunsArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let live = crate::wslock::live_holder(&p.layout).and_then(|h| h.run_id);
    let runs = record::list_runs_live(&p.layout.runs, live.as_deref());
    if a.stats {
        return stats(&runs, a.json);
    }
    if let Some(reference) = &a.run {
        let m = history::resolve(&runs, reference)?;
        return one_run(&p, m, a.json);
    }
    if a.json {
        let list: Vec<serde_json::Value> = runs
            .iter()
            .map(|m| {
                serde_json::json!({
                    "run_id": m.run_id, "started_at": m.started_at, "finished_at": m.finished_at,
                    "duration_s": m.duration_s(), "status": m.status, "ran": m.count(StageState::Ran),
                    "restored": m.count(StageState::Restored), "up_to_date": m.count(StageState::UpToDate), "failed": m.count(StageState::Failed),
                    "blocked": m.count(StageState::Blocked), "command": m.command,
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
            m.count(StageState::Ran),
            m.count(StageState::Restored),
            m.count(StageState::Failed)
        ));
    }
    out.print()?;
    Ok(0)
}

/// `pipe runs RUN`: the run's stages in pipeline order with status, reasons, attempts, exit
/// code, duration and gate results.
fn one_run(p: &crate::graph::Pipeline, m: &Manifest, json: bool) -> Result<i32> {
    let dir = p.layout.runs.join(&m.run_id);
    let gate = |name: &str| -> Option<serde_json::Value> {
        let file = dir
            .join("gates")
            .join(format!("{}.json", crate::fsutil::marker_name(name)));
        serde_json::from_slice(&std::fs::read(file).ok()?).ok()
    };
    // Pipeline order first, then stages the pipeline no longer has.
    let mut names: Vec<&String> = p
        .order
        .iter()
        .map(|&i| &p.stages[i].name)
        .filter(|n| m.stages.contains_key(*n))
        .collect();
    names.extend(m.stages.keys().filter(|n| p.stage(n).is_none()));
    if json {
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            run_id: &'a str,
            name: Option<&'a str>,
            status: record::RunStatus,
            started_at: &'a str,
            finished_at: Option<&'a str>,
            duration_s: Option<f64>,
            stages: Vec<serde_json::Value>,
        }
        let stages = names
            .iter()
            .map(|n| {
                let r = &m.stages[*n];
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["name"] = serde_json::Value::String((*n).clone());
                if let Some(g) = r.gate.as_deref().and_then(gate) {
                    v["gate_result"] = g;
                }
                v
            })
            .collect();
        let doc = Doc {
            run_id: &m.run_id,
            name: m.name.as_deref(),
            status: m.status,
            started_at: &m.started_at,
            finished_at: m.finished_at.as_deref(),
            duration_s: m.duration_s(),
            stages,
        };
        crate::output::print_json(&doc)?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let title = match &m.name {
        Some(n) => format!("run {} ({n})", m.run_id),
        None => format!("run {}", m.run_id),
    };
    writeln!(
        out,
        "{title}: {}, started {}{}",
        m.status,
        m.started_at,
        m.duration_s()
            .map(|d| format!(", took {}", secs(d)))
            .unwrap_or_default()
    )?;
    let w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:<w$}  {:<10} {:>8} {:>8} {:>4}  reasons",
        "stage", "status", "duration", "attempts", "exit"
    )?;
    for n in names {
        let r = &m.stages[n];
        let mut notes: Vec<String> = r.reasons.iter().map(|x| x.to_string()).collect();
        if let Some(e) = &r.error {
            notes.push(format!("error: {e}"));
        }
        if let Some(g) = r.gate.as_deref().and_then(gate) {
            let passed = g["passed"].as_bool().unwrap_or(false);
            let checks: Vec<String> = g["checks"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            let actual = c["actual"]
                                .as_f64()
                                .map_or("missing".into(), |a| a.to_string());
                            format!("{} (actual {actual})", c["check"].as_str().unwrap_or(""))
                        })
                        .collect()
                })
                .unwrap_or_default();
            notes.push(format!(
                "gate {} {}: {}",
                g["gate"].as_str().unwrap_or(""),
                if passed { "passed" } else { "failed" },
                checks.join(", ")
            ));
        }
        let dur = if matches!(
            r.status,
            StageState::Ran | StageState::Restored | StageState::Failed
        ) {
            secs(r.duration_s)
        } else {
            "-".into()
        };
        let exit = r.exit_code.map_or("-".into(), |c| c.to_string());
        writeln!(
            out,
            "{n:<w$}  {:<10} {dur:>8} {:>8} {exit:>4}  {}",
            r.status.as_str(),
            r.attempts,
            notes.join("; ")
        )?;
    }
    out.flush()?;
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
            if r.status != StageState::Ran && r.status != StageState::Failed {
                continue;
            }
            let s = by.entry(name.clone()).or_default();
            s.ran += 1;
            if r.status == StageState::Ran {
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
    let live = crate::wslock::live_holder(&p.layout).and_then(|h| h.run_id);
    let runs = record::list_runs_live(&p.layout.runs, live.as_deref());
    // `pipe log STAGE` is accepted for `pipe log <its newest run> STAGE`.
    let (run_ref, stage) = match (&a.run, &a.stage) {
        (Some(r), None) if p.stage(r).is_some() => (None, Some(r.clone())),
        (r, s) => (r.clone(), s.clone()),
    };
    if let Some(s) = &stage
        && p.stage(s).is_none()
    {
        let names = p.stages.iter().map(|x| x.name.as_str());
        return Err(crate::error::unknown("stage", s, "", names));
    }
    let run = match (&run_ref, &stage) {
        (Some(r), _) => history::resolve(&runs, r)?,
        (None, Some(s)) => newest_with_log(&p, &runs, live.as_deref(), s, a.follow)?,
        (None, None) => runs
            .first()
            .ok_or_else(|| invalid("no runs yet: `pipe build` records one per build"))?,
    };
    let dir = p.layout.runs.join(&run.run_id);
    if a.follow {
        let Some(s) = &stage else {
            return Err(invalid("`pipe log --follow` needs a STAGE"));
        };
        return follow(&p, &dir, &run.run_id, s);
    }
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
    let mut out = std::io::stdout().lock();
    for name in names {
        let path = record::log_path(&dir, &name);
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
    out.flush()?;
    Ok(0)
}

/// The run whose log of `stage` to show: the live build's when it runs (or, following,
/// will run) the stage, else the newest run in which the stage ran.
fn newest_with_log<'a>(
    p: &crate::graph::Pipeline,
    runs: &'a [Manifest],
    live: Option<&str>,
    stage: &str,
    follow: bool,
) -> Result<&'a Manifest> {
    if let Some(l) = live
        && let Some(m) = runs.iter().find(|m| m.run_id == l)
        && (follow || record::log_path(&p.layout.runs.join(l), stage).exists())
    {
        return Ok(m);
    }
    let index = history::Index::load(&p.layout.state());
    let from_index = index
        .stages
        .get(stage)
        .and_then(|h| runs.iter().find(|m| m.run_id == h.run_id));
    from_index
        .or_else(|| {
            runs.iter()
                .find(|m| m.stages.get(stage).is_some_and(|r| r.log.is_some()))
        })
        .ok_or_else(|| invalid(format!("stage `{stage}` has not run in any kept run")))
}

/// `pipe log --follow`: print the stage's log as it grows until the stage ends in that run
/// (or the build is gone).
fn follow(
    p: &crate::graph::Pipeline,
    dir: &std::path::Path,
    run_id: &str,
    stage: &str,
) -> Result<i32> {
    let mut tail = Tail::new(record::log_path(dir, stage));
    let mut out = std::io::stdout().lock();
    loop {
        let ended = stage_ended(dir, stage)
            || crate::wslock::live_holder(&p.layout)
                .and_then(|h| h.run_id)
                .as_deref()
                != Some(run_id);
        let lines = if ended { tail.finish() } else { tail.lines() };
        for l in lines {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        if ended {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether the run's event log says the stage finished (ran, failed, restored, skipped).
fn stage_ended(dir: &std::path::Path, stage: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("events.jsonl")) else {
        return false;
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| {
            v["stage"] == stage
                && matches!(
                    v["event"].as_str(),
                    Some(
                        "stage_ok"
                            | "stage_fail"
                            | "stage_restored"
                            | "stage_skipped"
                            | "stage_blocked"
                    )
                )
        })
}
