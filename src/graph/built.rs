//! A snapshot of the *built* pipeline (`.pipe/state/built.json`): stages templated, checked
//! and linked, in topological order. A no-op `status` or `build` of 1,000 stages spent most
//! of its time building what the last command had built from the same text; reading it back
//! costs a fraction of that.
//!
//! Building depends on more than the pipeline file, and the snapshot is used only when all
//! of it is unchanged:
//! - the key ([`key`]): the file's bytes, the workspace folder, `--set`, `--params-file`'s
//!   path and `PIPE_CACHE_DIR`, plus (through [`crate::snapshot`]) the pipe binary;
//! - `files`: every params file read, by the blake3 of its bytes;
//! - `paths`: every path the checks looked at (dep existence, the out symlink checks),
//!   with what `lstat` / `stat` saw of it. They are looked at again through the pipeline's
//!   [`StatMemo`](crate::fsutil::StatMemo), which the plan asks next anyway, so checking
//!   them costs no extra system call.
//!
//! A pipeline whose checks met a symlink (resolved with `canonicalize`) or whose values JSON
//! cannot carry exactly is not kept: it is built every time, as before.

use super::{ExecutorKind, Pipeline, SlurmConfig, Stage};
use crate::fsutil::{Kind, Layout, Looked, StatMemo};
use crate::source::Source;
use crate::spec;
use globset::Glob;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the snapshot holds: the pipeline's fields (borrowed when written, owned when read).
#[derive(Serialize, Deserialize)]
struct Built<P, St, T> {
    files: Vec<(PathBuf, String)>,
    paths: Vec<Looked>,
    name: Option<String>,
    jobs: Option<usize>,
    keep_runs: usize,
    cache_dir: Option<String>,
    runs_dir: Option<String>,
    resources: IndexMap<String, u32>,
    params: P,
    stages: St,
    groups: IndexMap<String, Vec<usize>>,
    order: Vec<usize>,
    remote: Option<spec::RawRemote>,
    hooks: T,
    executor: ExecutorKind,
    slurm: SlurmConfig,
}

type Owned = Built<toml::Table, Vec<Stage>, spec::RawHooks>;

/// The snapshot's file, beside the other state.
pub(super) fn path(root: &Path, file: &Path) -> PathBuf {
    Layout::for_file(root, file, None, None)
        .state()
        .join("built.json")
}

/// What besides the named files the build depends on.
pub(super) fn key(text: &str, root: &Path, opts: &super::LoadOptions) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(text.as_bytes());
    for part in [
        root.as_os_str().as_encoded_bytes(),
        format!("{:?}", opts.overrides).as_bytes(),
        format!("{:?}", opts.params_file).as_bytes(),
        format!("{:?}", std::env::var_os("PIPE_CACHE_DIR")).as_bytes(),
    ] {
        h.update(b"\0");
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize()
}

/// What is kept at `at` for `key`, if nothing it was built from has changed since.
pub(super) fn read(at: &Path, key: &blake3::Hash, root: &Path, stats: &StatMemo) -> Option<Kept> {
    let b = crate::snapshot::read::<Owned>(at, key)?;
    let same_files = b
        .files
        .iter()
        .all(|(f, hex)| crate::snapshot::same_bytes(f, hex));
    let same_paths = b.paths.iter().all(|(rel, l, s)| {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        stats.still(&(full, *l, *s))
    });
    (same_files && same_paths).then_some(Kept(b))
}

/// A built pipeline read back and checked against the workspace.
pub(super) struct Kept(Owned);

/// The pipeline that was kept, for the pipeline file `src` in `root`.
pub(super) fn pipeline(
    kept: Kept,
    key: blake3::Hash,
    src: Source,
    root: PathBuf,
    stats: StatMemo,
) -> Pipeline {
    let b = kept.0;
    let mut stages = b.stages;
    for s in &mut stages {
        for d in &mut s.deps {
            if crate::fsutil::is_glob(&d.path) {
                d.glob = Glob::new(&d.path).ok().map(|g| g.compile_matcher());
            }
        }
    }
    let index: HashMap<String, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let layout = Layout::for_file(
        &root,
        &src.path,
        b.cache_dir.as_deref(),
        b.runs_dir.as_deref(),
    );
    Pipeline {
        stats,
        file: src.path.clone(),
        root,
        source: src,
        name: b.name,
        jobs: b.jobs,
        keep_runs: b.keep_runs,
        layout,
        resources: b.resources,
        params: b.params,
        stages,
        index,
        groups: b.groups,
        order: b.order,
        remote: b.remote,
        hooks: b.hooks,
        executor: b.executor,
        slurm: b.slurm,
        built: Some(super::BuiltFrom {
            key,
            files: b.files,
        }),
    }
}

/// Keep `p`, built from the files `files` (path, blake3 of the bytes read) and the paths
/// its checks looked at, when a later load can trust it (see the module's text).
pub(super) fn write(
    at: &Path,
    key: &blake3::Hash,
    p: &Pipeline,
    files: &[(PathBuf, String)],
    dirs: (Option<&str>, Option<&str>),
) {
    let mut paths = p.stats.looked();
    if paths.iter().any(|(_, l, _)| *l == Some(Kind::Symlink)) || !exact(p) {
        return;
    }
    // Relative to the workspace (which is in the key): a smaller snapshot.
    for (path, _, _) in &mut paths {
        if let Ok(rel) = path.strip_prefix(&p.root) {
            *path = rel.to_path_buf();
        }
    }
    let b = Built {
        files: files.to_vec(),
        paths,
        name: p.name.clone(),
        jobs: p.jobs,
        keep_runs: p.keep_runs,
        cache_dir: dirs.0.map(str::to_string),
        runs_dir: dirs.1.map(str::to_string),
        resources: p.resources.clone(),
        params: &p.params,
        stages: &p.stages,
        groups: p.groups.clone(),
        order: p.order.clone(),
        remote: p.remote.clone(),
        hooks: &p.hooks,
        executor: p.executor,
        slurm: p.slurm.clone(),
    };
    crate::snapshot::write(at, key, &b);
}

/// Whether every value comes back from JSON as it went in.
fn exact(p: &Pipeline) -> bool {
    use crate::snapshot::json_exact;
    p.params.values().all(json_exact)
        && p.stages.iter().all(|s| {
            s.params.values().all(json_exact)
                && s.gate
                    .as_ref()
                    .is_none_or(|g| g.checks.iter().all(|c| c.expected.is_finite()))
        })
}
