//! `pipe releases` and `pipe rollback RUN`.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::{JsonArg, RollbackArgs};
use crate::error::{failed, invalid};
use crate::event::{Event, Sink};
use crate::output::{self, Text};
use crate::record;
use crate::record::RunStatus;
use crate::record::events::EventLog;
use crate::record::release::{ReleaseManifest, ReleaseState};
use crate::report::{Reporter, Tone};
use crate::state::StatCache;
use anyhow::Result;

/// One release as listed: the manifest plus whether it is the stage's current release and
/// whether it was forced (a gate upstream overridden).
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    release: &'a ReleaseManifest,
    current: bool,
    forced: bool,
}

pub fn list(ctx: &Ctx, a: &JsonArg) -> Result<i32> {
    let p = ctx.load(&[])?;
    let all = record::release::list_releases(&p.layout.releases());
    let state = ReleaseState::load(&p.layout.state());
    let listed: Vec<Listed> = all
        .iter()
        .map(|r| Listed {
            release: r,
            current: state.current_of(&r.stage, &all) == Some(r.run_id.as_str()),
            forced: r.overridden,
        })
        .collect();
    if a.json {
        output::print_json(&serde_json::json!({ "releases": listed }))?;
        return Ok(0);
    }
    if listed.is_empty() {
        eprintln!(
            "no releases yet: a stage with `release = true` writes one when it runs successfully"
        );
        return Ok(0);
    }
    let mut out = Text::new();
    out.line(format!(
        "  {:<22} {:<23} {:<14} {:<9} gates",
        "run", "created", "stage", "artifacts"
    ));
    for l in &listed {
        let r = l.release;
        let mut notes = vec![r.gates.join(", ")];
        if l.forced {
            notes.push(format!(
                "FORCED by {}{}",
                r.by.as_deref().unwrap_or("?"),
                r.reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(n) = &r.name {
            notes.push(format!("name {n}"));
        }
        out.line(format!(
            "{} {:<22} {:<23} {:<14} {:<9} {}",
            if l.current { "*" } else { " " },
            r.run_id,
            r.created_at.trim_end_matches('Z').replace('T', " "),
            r.stage,
            r.artifacts.len(),
            notes.join("; ")
        ));
    }
    out.print()?;
    Ok(0)
}

pub fn rollback(ctx: &Ctx, rep: &Reporter, a: &RollbackArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let all = record::release::list_releases(&p.layout.releases());
    // A release's run id, or any RUN reference to the run that made it.
    let id = if all.iter().any(|r| r.run_id == a.run) {
        a.run.clone()
    } else {
        let runs = record::list_runs(&p.layout.runs);
        crate::record::history::resolve(&runs, &a.run)
            .map(|m| m.run_id.clone())
            .unwrap_or_else(|_| a.run.clone())
    };
    let chosen: Vec<_> = all.iter().filter(|r| r.run_id == id).collect();
    if chosen.is_empty() {
        let ids: Vec<&str> = all.iter().map(|r| r.run_id.as_str()).collect();
        let hint = if ids.is_empty() {
            " (there are no releases yet)".to_string()
        } else {
            format!(
                " (releases: {})",
                ids.iter().take(5).copied().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(invalid(format!("no release from run `{}`{hint}", a.run)));
    }
    let _ws = crate::wslock::acquire(&p.layout, true, "pipe rollback", |m| rep.waiting(m))?;
    let cache = Cache::new(&p.layout.cache);
    let stat = StatCache::load(&p.layout.stat_cache());
    // Check every object first so a rollback is all or nothing.
    for r in &chosen {
        for art in &r.artifacts {
            let out = &art.out;
            if !cache.has_out(out) {
                return Err(failed(format!(
                    "cannot roll back to {}: the cache no longer holds `{}` ({}); fetch it with `pipe pull` if a remote cache has it",
                    a.run, art.path, art.out.hash
                )));
            }
            if let Err(e) = cache.verify_out(&art.path, out) {
                return Err(failed(format!(
                    "cannot roll back to {}: {e:#}; nothing was changed (fetch it again with `pipe pull` if a remote cache has it)",
                    a.run
                )));
            }
        }
    }
    let rec = record::Recorder::start(&p.layout.runs)?;
    let mut log = EventLog::open(&rec)?;
    log.on(&Event::RollbackStart { to: a.run.clone() })?;
    for r in &chosen {
        for art in &r.artifacts {
            let out = &art.out;
            cache.restore_out(&p.root, &art.path, out, &stat)?;
            rep.status(
                "Restored",
                Tone::Good,
                &format!("{} from release {}", art.path, r.run_id),
            );
        }
    }
    let _ = stat.save(&p.layout.stat_cache());
    // The rollback sticks: the release moved away from is not released again, and the one
    // put back is current.
    let lock = crate::lockfile::LockFile::load_for(&p.layout)?;
    let mut state = ReleaseState::load(&p.layout.state());
    for r in &chosen {
        // The release moved away from: the stage's current one (in a fresh clone that
        // pulled the team's releases and never built, the newest), whose fingerprint the
        // next build must not release again.
        let previous = state
            .current_of(&r.stage, &all)
            .and_then(|id| all.iter().find(|x| x.run_id == id && x.stage == r.stage))
            .and_then(|x| x.fingerprint.clone());
        let held = state.rolled_back.entry(r.stage.clone()).or_default();
        if let Some(fp) = previous
            && r.fingerprint.as_ref() != Some(&fp)
        {
            held.insert(fp);
        }
        if let Some(e) = lock.stages.get(&r.stage)
            && r.fingerprint.as_ref() != Some(&e.fingerprint)
        {
            held.insert(e.fingerprint.clone());
        }
        if let Some(fp) = &r.fingerprint {
            held.remove(fp);
        }
        state.current.insert(r.stage.clone(), r.run_id.clone());
    }
    state.save(&p.layout.state())?;
    log.on(&Event::Rollback {
        to: a.run.clone(),
        artifacts: chosen.iter().map(|r| r.artifacts.len()).sum(),
    })?;
    let m = record::Manifest {
        version: record::MANIFEST_VERSION,
        run_id: rec.run_id.clone(),
        started_at: crate::fsutil::now_rfc3339(),
        finished_at: Some(crate::fsutil::now_rfc3339()),
        status: RunStatus::Rollback,
        rollback_to: Some(a.run.clone()),
        pipe_version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect(),
        git: record::git_info(&p.root),
        host: record::hostname(),
        pipeline: p.name.clone(),
        ..Default::default()
    };
    rec.write_manifest(&m)?;
    rep.status(
        "Rolled back",
        Tone::Good,
        &format!("to release {} (recorded as run {})", a.run, rec.run_id),
    );
    Ok(0)
}
