//! `pipe push` / `pipe pull`: move the objects and run-cache entries that `Pipeline.lock`
//! references (or everything, with `--all`) to and from the remote cache.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::TransferArgs;
use crate::error::invalid;
use crate::lockfile::LockFile;
use crate::remote::Remote;
use crate::report::{Reporter, Tone};
use anyhow::Result;

fn open(ctx: &Ctx) -> Result<(crate::graph::Pipeline, Remote, Cache, Vec<String>)> {
    let p = ctx.load(&[])?;
    let Some(cfg) = &p.remote else {
        return Err(invalid(format!(
            "{} has no [remote] table; add one with `url = \"s3://bucket/prefix\"` or `url = \"file:///path\"`",
            p.source.display
        )));
    };
    let remote = Remote::open(cfg, &p.root)?;
    let cache = Cache::new(&p.layout.cache);
    let lock = LockFile::load(&p.layout.lockfile())?;
    let fps = lock
        .stages
        .values()
        .map(|e| e.fingerprint.clone())
        .collect();
    Ok((p, remote, cache, fps))
}

pub fn push(ctx: &Ctx, rep: &Reporter, a: &TransferArgs) -> Result<i32> {
    let (_p, remote, cache, fps) = open(ctx)?;
    let stats = remote.push(
        &cache,
        if a.all { None } else { Some(&fps) },
        a.jobs,
        rep.transfer_bar("Pushing"),
    )?;
    if a.json {
        print_stats(&stats, a.all)?;
    } else {
        rep.status("Pushed", Tone::Good, &stats.to_string());
    }
    Ok(0)
}

pub fn pull(ctx: &Ctx, rep: &Reporter, a: &TransferArgs) -> Result<i32> {
    let (_p, remote, cache, fps) = open(ctx)?;
    let stats = remote.pull(
        &cache,
        if a.all { None } else { Some(&fps) },
        a.jobs,
        rep.transfer_bar("Pulling"),
    )?;
    if a.json {
        print_stats(&stats, a.all)?;
    } else {
        rep.status("Pulled", Tone::Good, &stats.to_string());
    }
    Ok(0)
}

/// The `pipe push --json` / `pipe pull --json` document.
fn print_stats(stats: &crate::remote::TransferStats, all: bool) -> Result<()> {
    crate::output::print_json(&serde_json::json!({
        "all": all,
        "transferred": stats.sent,
        "skipped": stats.skipped,
        "bytes": stats.bytes,
        "missing": stats.missing,
    }))
}
