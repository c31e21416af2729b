//! The content-addressed cache: file objects by blake3 digest, folder trees as manifests,
//! and run-cache entries (fingerprint → outs) that let a stale stage be restored instead of run.
//!
//! Layout under `cache_dir`: `objects/ab/<digest>` (read-only files), `trees/<digest>.json`
//! (folder manifests), `runs/<fingerprint>.json` (run-cache entries). Every write is a temp
//! file plus rename, so builds in several clones can share one cache folder safely.

use crate::fsutil::quick_write;
use crate::hash::{self, PathHash};
use crate::state::{Stat, StatCache};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tree {
    pub version: u32,
    pub entries: Vec<TreeEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedOut {
    pub hash: String,
    pub size: u64,
    #[serde(default)]
    pub dir: bool,
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEntry {
    pub version: u32,
    pub stage: String,
    pub fingerprint: String,
    pub created_at: String,
    pub outs: BTreeMap<String, CachedOut>,
}

impl RunEntry {
    /// The entry written after a stage ran: fingerprint → outs.
    pub fn new(stage: &str, fingerprint: &str, outs: BTreeMap<String, CachedOut>) -> RunEntry {
        RunEntry {
            version: VERSION,
            stage: stage.to_string(),
            fingerprint: fingerprint.to_string(),
            created_at: crate::fsutil::now_rfc3339(),
            outs,
        }
    }
}

/// A restore that found an object whose bytes do not match its name.
#[derive(Debug)]
pub struct Corrupt {
    pub object: String,
    pub out: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cache object {} (for `{}`) is corrupted: its content does not match its hash; removed it",
            self.object, self.out
        )
    }
}
impl std::error::Error for Corrupt {}

#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    pub fn object_path(&self, digest: &str) -> PathBuf {
        let (a, b) = digest.split_at(2.min(digest.len()));
        self.dir.join("objects").join(a).join(b)
    }
    pub fn tree_path(&self, digest: &str) -> PathBuf {
        self.dir.join("trees").join(format!("{digest}.json"))
    }
    pub fn run_path(&self, fingerprint: &str) -> PathBuf {
        self.dir.join("runs").join(format!("{fingerprint}.json"))
    }

    /// Store one workspace file under its digest (no-op when present). Copy-on-write where
    /// the file system allows, else a copy: never a hard link, so editing the workspace
    /// file can never change the object.
    pub fn store_file(&self, src: &Path, digest: &str) -> Result<()> {
        let dest = self.object_path(digest);
        if dest.exists() {
            return Ok(());
        }
        let parent = dest.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        reflink_copy::reflink_or_copy(src, &tmp)
            .with_context(|| format!("cannot copy {} into the cache", src.display()))?;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444));
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot store {}", dest.display()))?;
        Ok(())
    }

    /// Store a stage's out (file or folder) and describe it for the run cache.
    pub fn store_out(&self, root: &Path, rel: &str, h: &PathHash) -> Result<CachedOut> {
        match h {
            PathHash::Missing => bail!("out `{rel}` is missing"),
            PathHash::File(f) => {
                let digest = f.digest.to_hex().to_string();
                self.store_file(&root.join(rel), &digest)?;
                Ok(CachedOut {
                    hash: digest,
                    size: f.size,
                    dir: false,
                    mode: f.mode,
                })
            }
            PathHash::Dir { digest, entries } => {
                let mut tree = Vec::with_capacity(entries.len());
                for e in entries {
                    let d = e.hash.digest.to_hex().to_string();
                    self.store_file(&root.join(rel).join(&e.rel), &d)?;
                    tree.push(TreeEntry {
                        path: e.rel.clone(),
                        hash: d,
                        size: e.hash.size,
                        mode: e.hash.mode,
                    });
                }
                let digest = digest.to_hex().to_string();
                let tp = self.tree_path(&digest);
                if !tp.exists() {
                    quick_write(
                        &tp,
                        &serde_json::to_vec_pretty(&Tree {
                            version: VERSION,
                            entries: tree,
                        })?,
                    )?;
                }
                Ok(CachedOut {
                    hash: digest,
                    size: h.size(),
                    dir: true,
                    mode: 0o755,
                })
            }
        }
    }

    pub fn read_tree(&self, digest: &str) -> Result<Tree> {
        let p = self.tree_path(digest);
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let t: Tree = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid tree", p.display()))?;
        if t.version != VERSION {
            bail!("{} has unknown format version {}", p.display(), t.version);
        }
        Ok(t)
    }

    pub fn put_run(&self, entry: &RunEntry) -> Result<()> {
        quick_write(
            &self.run_path(&entry.fingerprint),
            &serde_json::to_vec_pretty(entry)?,
        )
    }

    pub fn get_run(&self, fingerprint: &str) -> Option<RunEntry> {
        let bytes = std::fs::read(self.run_path(fingerprint)).ok()?;
        let e: RunEntry = serde_json::from_slice(&bytes).ok()?;
        (e.version == VERSION && e.fingerprint == fingerprint).then_some(e)
    }

    /// Whether every object an out needs is present (not verified: that happens on restore).
    pub fn has_out(&self, out: &CachedOut) -> bool {
        if !out.dir {
            return self.object_path(&out.hash).exists();
        }
        match self.read_tree(&out.hash) {
            Ok(t) => t.entries.iter().all(|e| self.object_path(&e.hash).exists()),
            Err(_) => false,
        }
    }

    /// Hash every object an out needs; a mismatching object is removed and reported as
    /// `Corrupt`. Lets a multi-out restore (rollback) check everything before it changes
    /// anything.
    pub fn verify_out(&self, rel: &str, out: &CachedOut) -> Result<()> {
        let objects: Vec<(String, u64)> = if out.dir {
            let t = self.read_tree(&out.hash)?;
            t.entries.into_iter().map(|e| (e.hash, e.size)).collect()
        } else {
            vec![(out.hash.clone(), out.size)]
        };
        for (digest, size) in objects {
            let obj = self.object_path(&digest);
            let actual = hash::hash_file_contents(&obj, size)
                .with_context(|| format!("cannot read {}", obj.display()))?;
            if actual.to_hex().as_str() != digest {
                let _ = std::fs::remove_file(&obj);
                return Err(Corrupt {
                    object: digest,
                    out: rel.to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    pub fn has_all(&self, entry: &RunEntry) -> bool {
        entry.outs.values().all(|o| self.has_out(o))
    }

    /// Put one out back into the workspace from the cache, verifying every byte.
    pub fn restore_out(
        &self,
        root: &Path,
        rel: &str,
        out: &CachedOut,
        stat: &StatCache,
    ) -> Result<()> {
        inside(rel)?;
        let dest = root.join(rel);
        if out.dir {
            let tree = self.read_tree(&out.hash)?;
            for e in &tree.entries {
                inside(&e.path)?;
            }
            let tmp_dir = sibling_tmp(&dest);
            std::fs::create_dir_all(&tmp_dir)
                .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
            let result = (|| {
                for e in &tree.entries {
                    self.restore_file(&tmp_dir.join(&e.path), &e.hash, e.mode, rel)?;
                }
                crate::fsutil::remove_path(&dest)?;
                std::fs::rename(&tmp_dir, &dest)
                    .with_context(|| format!("cannot move restored folder to {}", dest.display()))
            })();
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&tmp_dir);
            }
            result?;
            for e in &tree.entries {
                record_stat(stat, root, &format!("{rel}/{}", e.path), &e.hash);
            }
        } else {
            let tmp = sibling_tmp(&dest);
            self.restore_file(&tmp, &out.hash, out.mode, rel)?;
            if let Err(e) = crate::fsutil::remove_path(&dest).and_then(|_| {
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("cannot write {}", dest.display()))
            }) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            record_stat(stat, root, rel, &out.hash);
        }
        Ok(())
    }

    /// Copy one object to `dest`, hash the copy, and refuse (removing the object) on mismatch.
    fn restore_file(&self, dest: &Path, digest: &str, mode: u32, out: &str) -> Result<()> {
        let obj = self.object_path(digest);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let _ = std::fs::remove_file(dest);
        reflink_copy::reflink_or_copy(&obj, dest).with_context(|| {
            format!(
                "cannot restore {} from cache object {}",
                dest.display(),
                obj.display()
            )
        })?;
        let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        let actual = hash::hash_file_contents(dest, size)
            .with_context(|| format!("cannot read {}", dest.display()))?;
        if actual.to_hex().as_str() != digest {
            let _ = std::fs::remove_file(dest);
            let _ = std::fs::remove_file(&obj);
            return Err(Corrupt {
                object: digest.to_string(),
                out: out.to_string(),
            }
            .into());
        }
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode & 0o7777 | 0o200))
            .with_context(|| format!("cannot set mode of {}", dest.display()))?;
        Ok(())
    }

    /// Restore every out of a run-cache entry.
    pub fn restore(&self, root: &Path, entry: &RunEntry, stat: &StatCache) -> Result<()> {
        for (rel, out) in &entry.outs {
            tracing::debug!(stage = %entry.stage, out = %rel, hash = %out.hash, "restoring from cache");
            self.restore_out(root, rel, out, stat)?;
        }
        Ok(())
    }
}

/// A path read from the cache (shared, maybe tampered with) must be plain and relative: no
/// `..`, not absolute, so a restore can never write outside the workspace.
fn inside(rel: &str) -> Result<()> {
    match crate::fsutil::normalize_rel(rel) {
        Ok((norm, _)) if norm == rel => Ok(()),
        _ => bail!(
            "the cache names `{rel}`, which is not a path inside the workspace; refusing to restore it"
        ),
    }
}

/// After a verified restore, remember the file's stat so the next status does not re-read it.
fn record_stat(stat: &StatCache, root: &Path, rel: &str, digest: &str) {
    if let (Ok(m), Ok(h)) = (
        std::fs::metadata(root.join(rel)),
        blake3::Hash::from_hex(digest),
    ) {
        stat.put(rel, Stat::of(&m), h);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) ^ (crate::state::now_ns() as u64)
}

fn sibling_tmp(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.pipe-restore-{}", unique()))
}

impl Tree {
    /// The digest this tree must be stored under (the folder digest of its entries).
    pub fn digest(&self) -> Option<String> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let digest = blake3::Hash::from_hex(&e.hash).ok()?;
            entries.push(hash::Entry {
                rel: e.path.clone(),
                hash: hash::FileHash {
                    digest,
                    size: e.size,
                    mode: e.mode,
                },
            });
        }
        Some(hash::dir_digest(&entries).to_hex().to_string())
    }
}

impl Cache {
    /// Every run-cache entry in the local cache.
    pub fn all_runs(&self) -> Vec<RunEntry> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("runs")) else {
            return vec![];
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .filter_map(|fp| self.get_run(&fp))
            .collect()
    }
}
