//! `pipe gc`: remove cache objects, trees and run-cache entries that nothing references.
//! References: `Pipeline.lock`, the newest N runs, and every release.

use super::Ctx;
use crate::cache::{Cache, Digest, RunEntry};
use crate::cli::GcArgs;
use crate::error::failed;
use crate::lockfile::OutRecord;
use crate::record;
use crate::report::{Reporter, Tone};
use anyhow::Result;
use std::collections::HashSet;
use std::path::Path;

#[derive(Default)]
struct Keep {
    objects: HashSet<String>,
    trees: HashSet<String>,
    runs: HashSet<String>,
}

impl Keep {
    fn out(&mut self, cache: &Cache, hash: &str, dir: bool) -> Result<()> {
        if !dir {
            self.objects.insert(hash.to_string());
            return Ok(());
        }
        self.trees.insert(hash.to_string());
        // A reference that is not a digest names nothing in the cache.
        let Ok(digest) = hash.parse::<Digest>() else {
            return Ok(());
        };
        if cache.tree_path(&digest).exists() {
            let t = cache.read_tree(&digest).map_err(|e| {
                failed(format!(
                    "refusing to gc: cannot read a referenced tree: {e:#}"
                ))
            })?;
            self.objects
                .extend(t.entries.into_iter().map(|e| String::from(e.hash)));
        }
        Ok(())
    }
    fn record(&mut self, cache: &Cache, o: &OutRecord) -> Result<()> {
        self.out(cache, &o.hash, o.dir)
    }
    fn entry(&mut self, cache: &Cache, e: &RunEntry) -> Result<()> {
        self.runs.insert(e.fingerprint.clone());
        for o in e.outs.values() {
            self.out(cache, &o.hash, o.dir)?;
        }
        Ok(())
    }
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

pub fn run(ctx: &Ctx, rep: &Reporter, a: &GcArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let cache = Cache::new(&p.layout.cache);
    let _ws = if a.dry_run {
        None
    } else {
        Some(crate::wslock::acquire(&p.layout, true, "pipe gc", |m| {
            rep.waiting(m)
        })?)
    };
    let lock = crate::lockfile::LockFile::load_for(&p.layout)
        .map_err(|e| failed(format!("refusing to gc: cannot read Pipeline.lock: {e:#}")))?;
    let mut keep = Keep::default();
    let mut fingerprints: Vec<String> = Vec::new();
    for e in lock.stages.values() {
        fingerprints.push(e.fingerprint.clone());
        for o in e.outs.values() {
            keep.record(&cache, o)?;
        }
    }
    // Kept runs: the newest N run folders; an unreadable manifest stops gc.
    let mut run_dirs: Vec<_> = std::fs::read_dir(&p.layout.runs)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    run_dirs.sort();
    run_dirs.reverse();
    for dir in run_dirs.iter().take(a.keep_runs) {
        if !dir.join("manifest.json").exists() {
            continue; // a run that never wrote its manifest references nothing
        }
        let m = record::read_manifest(dir).map_err(|e| failed(format!("refusing to gc: {e:#}")))?;
        for r in m.stages.values() {
            if let Some(f) = &r.fingerprint {
                fingerprints.push(f.clone());
            }
            for o in r.outs.values() {
                keep.record(&cache, o)?;
            }
        }
    }
    let rel_dir = p.layout.releases();
    for f in files_in(&rel_dir) {
        let bytes = std::fs::read(&f)?;
        let r: record::release::ReleaseManifest = serde_json::from_slice(&bytes).map_err(|e| {
            failed(format!(
                "refusing to gc: cannot read release {}: {e}",
                f.display()
            ))
        })?;
        for art in &r.artifacts {
            keep.out(&cache, &art.out.hash, art.out.dir)?;
        }
    }
    for fp in &fingerprints {
        if let Some(e) = cache.get_run(fp) {
            keep.entry(&cache, &e)?;
        }
    }

    let mut removed = 0usize;
    let mut bytes = 0u64;
    // Temporary files whose writer is dead (a kill, a full disk): in the cache's and the
    // workspace's temp folders. A live writer's are kept, however old.
    // Also the folders pipe writes records and state into, the workspace root (a lock
    // written before `.pipe/` existed), and beside each out (a restore onto another file
    // system writes its temporary copy there).
    let mut dirs: std::collections::BTreeSet<std::path::PathBuf> = [
        cache.tmp_dir(),
        p.layout.tmp(),
        p.layout.dot.clone(),
        p.layout.state(),
        p.layout.releases(),
        p.root.clone(),
    ]
    .into_iter()
    .collect();
    for s in &p.stages {
        for o in &s.outs {
            if let Some(parent) = p.root.join(&o.path).parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
    }
    for dir in dirs {
        let (n, b) = crate::fsutil::sweep_tmp(&dir, a.dry_run);
        removed += n;
        bytes += b;
    }
    let mut remove = |path: &Path| {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if a.dry_run || std::fs::remove_file(path).is_ok() {
            removed += 1;
            bytes += size;
            if a.dry_run && rep.verbose {
                rep.line(&format!("would remove {}", path.display()));
            }
        }
    };
    for f in files_in(&cache.dir.join("objects")) {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = f
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            if crate::fsutil::writer_gone(&f, &name) {
                remove(&f);
            }
        } else if !keep.objects.contains(&format!("{prefix}{name}")) {
            remove(&f);
        }
    }
    for (sub, set) in [("trees", &keep.trees), ("runs", &keep.runs)] {
        for f in files_in(&cache.dir.join(sub)) {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                if crate::fsutil::writer_gone(&f, &name) {
                    remove(&f);
                }
                continue;
            }
            if sub == "runs" && Cache::is_pack(&name) {
                continue;
            }
            let stem = name.trim_end_matches(".json");
            if !set.contains(stem) {
                remove(&f);
            }
        }
    }
    // Packed run-cache entries: the packs of finished processes are merged into one
    // without the entries nothing references (a live build's pack is left alone).
    let (n, b) = cache.gc_packs(&|fp| keep.runs.contains(fp), a.dry_run)?;
    removed += n;
    bytes += b;
    if a.json {
        crate::output::print_json(&serde_json::json!({
            "dry_run": a.dry_run,
            "removed_files": removed,
            "removed_bytes": bytes,
            "kept_objects": keep.objects.len(),
            "keep_runs": a.keep_runs,
        }))?;
        return Ok(0);
    }
    // One line, one unit: indicatif's binary byte formatter (2.5 KiB, 1.3 GiB).
    let size = indicatif::BinaryBytes(bytes);
    let files = if removed == 1 { "file" } else { "files" };
    if a.dry_run {
        rep.status(
            "Would remove",
            Tone::Info,
            &format!("{removed} {files}, {size} (dry run: nothing removed)"),
        );
    } else {
        rep.status(
            "Removed",
            Tone::Good,
            &format!(
                "{removed} {files}, {size}; kept {} objects",
                keep.objects.len()
            ),
        );
    }
    Ok(0)
}
