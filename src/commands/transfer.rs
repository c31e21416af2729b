//! `pipe push` / `pipe pull`: move the objects and run-cache entries that `Pipeline.lock`
//! references (or everything, with `--all`) to and from the remote cache.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::TransferArgs;
use crate::error::invalid;
use crate::release::ReleaseManifest;
use crate::remote::{ReleaseFiles, Remote};
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
    let lock = crate::lockfile::LockFile::load_for(&p.layout)?;
    let fps = lock
        .stages
        .values()
        .map(|e| e.fingerprint.clone())
        .collect();
    Ok((p, remote, cache, fps))
}

/// Where this pipeline's release manifests live on the remote: `releases`, or
/// `releases/<NAME>` for another pipeline file `NAME.toml` (whose releases are its own).
fn release_prefix(p: &crate::graph::Pipeline) -> String {
    let own = p.layout.dot.parent().and_then(|d| d.file_name()) == Some("pipelines".as_ref());
    match p.layout.dot.file_name() {
        Some(n) if own => format!("releases/{}", n.to_string_lossy()),
        _ => "releases".into(),
    }
}

/// Every local release manifest (file name, path, the outs it references).
fn release_files(p: &crate::graph::Pipeline) -> ReleaseFiles {
    let dir = p.layout.releases();
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let Some(r) = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<ReleaseManifest>(&b).ok())
            else {
                continue;
            };
            let outs = r.artifacts.into_iter().map(|a| a.out).collect();
            files.push((name, e.path(), outs));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    ReleaseFiles {
        prefix: release_prefix(p),
        files,
    }
}

pub fn push(ctx: &Ctx, rep: &Reporter, a: &TransferArgs) -> Result<i32> {
    let (p, remote, cache, fps) = open(ctx)?;
    let stats = remote.push(
        &cache,
        if a.all { None } else { Some(&fps) },
        &release_files(&p),
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
    let (p, remote, cache, fps) = open(ctx)?;
    let mut stats = remote.pull(
        &cache,
        if a.all { None } else { Some(&fps) },
        a.jobs,
        rep.transfer_bar("Pulling"),
    )?;
    remote.pull_releases(
        &cache,
        &release_prefix(&p),
        &p.layout.releases(),
        &mut stats,
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
        "releases": stats.releases,
    }))
}
