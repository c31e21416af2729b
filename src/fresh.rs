//! The no-op proof (`.pipe/state/fresh.json`): what a `status` or `build` that found every
//! selected stage up to date looked at, so the next one can say so again after looking at
//! the same paths, without building the pipeline, reading the lock or judging a stage.
//!
//! A no-op of 1,000 stages made the same 2,000 `stat` calls as `make -q`, then spent twice
//! their time decoding the built pipeline and the lock and recomputing fingerprints. The
//! proof answers from the stats alone; it holds exactly when all of this is unchanged:
//! - the key: the pipeline file's bytes, the workspace, `--set`, `--params-file`,
//!   `PIPE_CACHE_DIR` and the pipe binary (as for the built snapshot), plus the selection;
//! - the lock and every params file read, by the blake3 of their bytes;
//! - every path judging looked at (deps, outs, the checks' paths, the markers' journal),
//!   by its `lstat`: type, size, mtime, ctime and inode. The stat cache trusts the same
//!   signature for a file's content; as there, a signature newer than [`RACY_NS`] before
//!   the proof was made is not trusted (the proof is not kept);
//! - no build holds the workspace.
//!
//! - what folder walks saw (`fresh.tree` beside it, see [`crate::walked`]): every folder's
//!   signature (a name added, removed or renamed changes it) and every file's.
//!
//! It is kept only for the plain case: every selected stage up to date (no frozen, gated,
//! release or running stage, no symlink met). Any
//! other plan takes the full path, which writes a new proof when it finds a no-op again.

use crate::fsutil::{Layout, Sig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The proof as kept.
#[derive(Serialize, Deserialize)]
pub struct Proof {
    /// The blake3 of the lock's bytes.
    lock: String,
    /// Params files read, with the blake3 of their bytes.
    files: Vec<(PathBuf, String)>,
    /// Paths (relative to the workspace when inside it) and what `lstat` saw of them.
    paths: Vec<(PathBuf, Option<Sig>)>,
    /// The id of what the folder walks saw ([`crate::walked`], kept beside the proof and
    /// starting with the same id).
    tree: Option<String>,
    /// Where runs are recorded (a build's first event names it).
    pub runs: PathBuf,
    /// Whether a build of the same selection takes the no-op path too (no lock entry of a
    /// removed stage to prune).
    pub build: bool,
    /// The selected stages in plan order, with their matrix group.
    pub stages: Vec<(String, Option<String>)>,
}

/// Which stages were selected: part of the key.
#[derive(Debug, Hash)]
pub struct Selection<'a> {
    pub names: &'a [String],
    pub downstream: bool,
}

fn path(layout: &Layout) -> PathBuf {
    layout.state().join("fresh.json")
}

/// Old enough to trust: a change after the signature was taken would show in it.
fn settled(sig: &Sig, now_ns: i64) -> bool {
    sig.newest() < now_ns - crate::state::RACY_NS
}

fn tree_path(layout: &Layout) -> PathBuf {
    layout.state().join("fresh.tree")
}

/// The length of the id a tree file starts with (a blake3 hash's bytes).
const TREE_ID: usize = 32;

/// The key of a proof for the pipeline whose built key is `built` and this selection.
fn key(built: &blake3::Hash, sel: &Selection) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(built.as_bytes());
    h.update(format!("{sel:?}").as_bytes());
    h.finalize()
}

/// The proof for this pipeline and selection, when everything it names is unchanged and
/// no build holds the workspace.
pub fn check(file: &Path, load: &crate::graph::LoadOptions, sel: &Selection) -> Option<Proof> {
    if tracing::enabled!(tracing::Level::DEBUG) {
        return None; // the full path logs every stage's verdict
    }
    let (built, root) = crate::graph::Pipeline::built_key(file, load)?;
    let root = root.as_path();
    let layout = Layout::for_file(root, file, None, None);
    let proof: Proof = crate::snapshot::read(&path(&layout), &key(&built, sel))?;
    use crate::snapshot::same_bytes;
    let holds = same_bytes(&layout.lockfile(), &proof.lock)
        && proof.files.iter().all(|(f, hex)| same_bytes(f, hex))
        && proof
            .paths
            .iter()
            .all(|(rel, sig)| Sig::now(&root.join(rel)).is_ok_and(|now| now == *sig))
        && crate::wslock::live_holder(&layout).is_none()
        && proof.tree.as_ref().is_none_or(|hex| {
            crate::fsutil::read_own(&tree_path(&layout)).is_ok_and(|b| {
                b.split_first_chunk::<TREE_ID>().is_some_and(|(id, rest)| {
                    blake3::Hash::from_bytes(*id).to_hex().as_str() == hex
                        && crate::walked::holds(root, rest)
                })
            })
        });
    if holds {
        tracing::info!(
            "nothing changed since the last no-op (the proof in {}): every selected stage is up to date",
            path(&layout).display()
        );
    }
    holds.then_some(proof)
}

/// What a no-op plan looked at, to keep as its proof.
pub struct Seen<'a> {
    pub p: &'a crate::graph::Pipeline,
    pub sel: Selection<'a>,
    /// The blake3 of the lock's bytes judged against (`None`: no lock).
    pub lock: Option<blake3::Hash>,
    pub hasher: &'a crate::hash::Hasher<'a>,
    pub build: bool,
    /// The plan of the selected stages.
    pub planned: &'a [crate::plan::Planned],
}

/// Keep the proof of a plan if it found every selected stage up to date (best effort: the
/// plain case only, see the module's text).
pub fn keep(seen: &Seen) {
    let p = seen.p;
    let Some(lock) = seen.lock else { return };
    let Some(built) = &p.built else { return };
    let plain = seen.planned.iter().all(|pl| {
        let s = &p.stages[pl.stage];
        pl.state == crate::stage_state::StageState::UpToDate
            && s.gate.is_none()
            && !s.release
            && !s.frozen
            && !s.runs_every_time()
    });
    if !plain {
        return;
    }
    let now = crate::state::now_ns();
    let tree = match (seen.hasher.walked(), seen.hasher.take_tree()) {
        (false, _) => None,
        (true, Some(t)) => match t.into_bytes(now) {
            Some(bytes) => Some(bytes),
            None => return,
        },
        (true, None) => return,
    };
    let layout = &p.layout;
    // The markers' journal: nothing open now, and nothing written there since.
    let mut marks: Vec<PathBuf> = crate::record::markers::dirs(layout).to_vec();
    if let Ok(rd) = std::fs::read_dir(&marks[0]) {
        marks.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let mut paths = Vec::new();
    for m in marks {
        match Sig::now(&m) {
            Ok(sig) => paths.push((m, sig)),
            Err(_) => return,
        }
    }
    if !crate::record::markers::all(layout).is_empty() {
        return;
    }
    let Some(looked) = p.stats.seen() else { return };
    paths.extend(
        looked
            .into_iter()
            .map(|(path, m)| (path, m.as_ref().map(Sig::of))),
    );
    if !paths
        .iter()
        .all(|(_, s)| s.is_none_or(|s| settled(&s, now)))
    {
        return;
    }
    for (path, _) in &mut paths {
        if let Ok(rel) = path.strip_prefix(&p.root) {
            *path = rel.to_path_buf();
        }
    }
    // In path order: a folder's entries are looked up together next time.
    paths.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // The tree file goes first, named by an id the proof holds: a proof never stands on
    // another proof's tree.
    let tree = match tree {
        Some(mut bytes) => {
            let mut h = blake3::Hasher::new();
            h.update(&now.to_le_bytes());
            h.update(&std::process::id().to_le_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            let id = h.finalize();
            bytes.splice(0..0, id.as_bytes().iter().copied());
            if crate::fsutil::quick_write(&tree_path(layout), &bytes).is_err() {
                return;
            }
            Some(id.to_hex().to_string())
        }
        None => None,
    };
    let proof = Proof {
        tree,
        lock: lock.to_hex().to_string(),
        files: built.files.clone(),
        paths,
        runs: layout.runs.clone(),
        build: seen.build,
        stages: seen
            .planned
            .iter()
            .map(|pl| {
                let s = &p.stages[pl.stage];
                (
                    s.name.clone(),
                    (s.source_name != s.name).then(|| s.source_name.clone()),
                )
            })
            .collect(),
    };
    crate::snapshot::write(&path(layout), &key(&built.key, &seen.sel), &proof);
}

#[cfg(test)]
mod tests {
    use super::settled;
    use crate::fsutil::Sig;

    #[test]
    fn only_a_signature_older_than_the_racy_window_is_settled() {
        let now = 10_000_000_000;
        let sig = |mtime, ctime| Sig::new(0o100644, 3, mtime, ctime, 1);
        assert!(settled(&sig(now - 200_000_000, now - 200_000_000), now));
        // Written 50 ms ago: a change in the same tick would not show.
        assert!(!settled(&sig(now - 50_000_000, now - 200_000_000), now));
        // Content as old as it gets, but its inode changed (a rename, a chmod) just now.
        assert!(!settled(&sig(now - 200_000_000, now - 50_000_000), now));
    }
}
