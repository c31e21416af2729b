//! `pipe report [RUN] [-o FILE]`: one self-contained HTML page about a run (see `src/html/`).

use super::Ctx;
use crate::cache::Cache;
use crate::cli::ReportArgs;
use crate::error::invalid;
use crate::html::{self, data::Run};
use anyhow::{Context, Result};

pub fn run(ctx: &Ctx, a: &ReportArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let runs = html::data::load_runs(&p.layout.runs);
    let at = resolve(&runs, a.run.as_deref())?;
    let cache = Cache::new(&p.layout.cache);
    let page = html::page(&html::Input {
        p: &p,
        runs: &runs,
        at,
        cache: &cache,
        releases_dir: &p.layout.releases(),
    });
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| p.layout.dot.join("report.html"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_file(&out, page.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}", out.display());
    Ok(0)
}

/// Write through a temporary file and a rename (a reader never sees half a page). Unlike the
/// records, a report is for people to open and share: a new file follows the umask, and a
/// file being replaced keeps its mode.
fn write_file(out: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    if let Ok(meta) = std::fs::metadata(out) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, out).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A RUN reference → its index in `runs` (oldest first). One place, so richer references
/// (prefixes, `latest~N`, names) slot in here.
pub fn resolve(runs: &[Run], reference: Option<&str>) -> Result<usize> {
    if runs.is_empty() {
        return Err(invalid("no runs yet: `pipe build` records one per build"));
    }
    let Some(r) = reference else {
        return Ok(runs.len() - 1);
    };
    // Any RUN reference (id, prefix, latest, latest~N, name), as everywhere else.
    let newest_first: Vec<crate::record::Manifest> =
        runs.iter().rev().map(|x| x.manifest.clone()).collect();
    let m = crate::record::history::resolve(&newest_first, r)?;
    Ok(runs
        .iter()
        .position(|x| x.id == m.run_id)
        .unwrap_or(runs.len() - 1))
}
