//! `pipe clean [STAGE...] [--dry-run]`: reset stages so the next build starts them from
//! scratch: their outs (also `persist` ones, a training checkpoint) and their lock entries
//! go, with any running marker. The cache is untouched, so a reset stage whose inputs match
//! an earlier run is still restored rather than rerun.

use super::Ctx;
use crate::cli::CleanArgs;
use crate::error::exit;
use crate::report::{Reporter, Tone};
use anyhow::Result;

pub fn run(ctx: &Ctx, rep: &Reporter, a: &CleanArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    // Only the named stages (not their upstream).
    let chosen = if a.stages.is_empty() {
        (0..p.stages.len()).collect()
    } else {
        p.resolve_targets(&a.stages)?
    };
    let _ws = if a.dry_run {
        None
    } else {
        Some(crate::wslock::acquire(
            &p.layout,
            true,
            "pipe clean",
            |m| rep.waiting(m),
        )?)
    };
    let mut lock = crate::lockfile::LockFile::load_for(&p.layout)?;
    let verb = if a.dry_run { "Would remove" } else { "Removed" };
    let (mut outs, mut entries) = (0, 0);
    let mut cleared = Vec::new();
    for &i in &p.order {
        if !chosen.contains(&i) {
            continue;
        }
        let s = &p.stages[i];
        for o in &s.outs {
            let path = p.root.join(&o.path);
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            if !a.dry_run {
                crate::fsutil::remove_path(&path)?;
            }
            rep.status(verb, Tone::Info, &format!("{} ({})", o.path, s.name));
            outs += 1;
        }
        if lock.stages.contains_key(&s.name) {
            entries += 1;
            if !a.dry_run {
                lock.stages.remove(&s.name);
            }
        }
        cleared.push(s.name.clone());
    }
    if !a.dry_run {
        crate::record::markers::clear(&p.layout, &cleared)?;
    }
    if !a.dry_run && entries > 0 {
        crate::fsutil::atomic_write(&p.layout.lockfile(), lock.render().as_bytes())?;
    }
    let what = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    rep.status(
        if a.dry_run { "Dry run" } else { "Cleaned" },
        Tone::Good,
        &format!(
            "{}: {} and {}{}",
            what(chosen.len(), "stage", "stages"),
            what(outs, "out", "outs"),
            what(entries, "lock entry", "lock entries"),
            if a.dry_run {
                " would go; nothing was changed"
            } else {
                " removed; the cache is untouched"
            }
        ),
    );
    Ok(exit::OK)
}
