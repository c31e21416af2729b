//! `pipe releases` and `pipe rollback RUN`.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::{JsonArg, RollbackArgs};
use crate::error::{failed, invalid};
use crate::output::{self, Text};
use crate::record;
use crate::report::{Reporter, Tone};
use crate::state::StatCache;
use anyhow::Result;

pub fn list(ctx: &Ctx, a: &JsonArg) -> Result<i32> {
    let p = ctx.load(&[])?;
    let rel = record::list_releases(&p.layout.releases());
    if a.json {
        output::print_json(&serde_json::json!({ "releases": rel }))?;
        return Ok(0);
    }
    if rel.is_empty() {
        eprintln!(
            "no releases yet: a stage with `release = true` writes one when it runs successfully"
        );
        return Ok(0);
    }
    let mut out = Text::new();
    out.line(format!(
        "{:<22} {:<20} {:<14} {:<9} gates",
        "run", "created", "stage", "artifacts"
    ));
    for r in rel {
        out.line(format!(
            "{:<22} {:<20} {:<14} {:<9} {}",
            r.run_id,
            r.created_at.trim_end_matches('Z').replace('T', " "),
            r.stage,
            r.artifacts.len(),
            r.gates.join(", ")
        ));
    }
    out.print()?;
    Ok(0)
}

pub fn rollback(ctx: &Ctx, rep: &Reporter, a: &RollbackArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let all = record::list_releases(&p.layout.releases());
    let chosen: Vec<_> = all.iter().filter(|r| r.run_id == a.run).collect();
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
    let _ws = crate::wslock::acquire(&p.layout, true, "pipe rollback", |m| {
        rep.status("Waiting", Tone::Warn, m)
    })?;
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
    rec.event("rollback_start", None, serde_json::json!({"to": a.run}));
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
    rec.event("rollback", None, serde_json::json!({"to": a.run, "artifacts": chosen.iter().map(|r| r.artifacts.len()).sum::<usize>()}));
    let m = record::Manifest {
        version: record::MANIFEST_VERSION,
        run_id: rec.run_id.clone(),
        started_at: crate::fsutil::now_rfc3339(),
        finished_at: Some(crate::fsutil::now_rfc3339()),
        status: format!("rollback to {}", a.run),
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
