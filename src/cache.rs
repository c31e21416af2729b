//! The content-addressed cache: file objects by blake3 digest, folder trees as manifests,
//! and run-cache entries (fingerprint → outs) that let a stale stage be restored instead of run.
//!
//! Layout under `cache_dir`: `objects/ab/<digest>` (read-only files), `trees/<digest>.json`
//! (folder manifests), run-cache entries in `runs/`: one pack a process (`pack-*.jsonl`, a
//! line an entry; see [`pack`]) and loose `<fingerprint>.json` files (pulled by older pipes,
//! or written by them). Objects and trees are written through a temp file plus rename, and
//! a pack is appended only by the process that made it, so builds in several clones can
//! share one cache folder safely.

mod pack;

use crate::hash::{self, PathHash};
use crate::state::{Stat, StatCache};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub const VERSION: u32 = 1;

/// A blake3 digest as cache files and remotes write it: exactly 64 lowercase hex
/// characters. Parsed at the boundary (serde goes through `TryFrom<String>`), so a digest
/// read from a shared cache or a remote can never be a path such as `xx/tmp/victim`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The two-character fan-out folder and the rest of the name (`objects/ab/cdef…`).
    fn split(&self) -> (&str, &str) {
        self.0.split_at(2)
    }
    pub fn to_blake3(&self) -> blake3::Hash {
        // Cannot fail: the text was checked to be 64 hex characters.
        blake3::Hash::from_hex(&self.0).unwrap_or_else(|_| blake3::hash(b""))
    }
    /// Whether `text` is a well-formed digest.
    pub fn is_valid(text: &str) -> bool {
        text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Digest, String> {
        if Digest::is_valid(&s) {
            Ok(Digest(s))
        } else {
            let shown: String = s.chars().take(80).collect();
            Err(format!(
                "`{}` is not a digest (64 lowercase hex characters)",
                shown.escape_debug()
            ))
        }
    }
}

impl std::str::FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Digest, String> {
        Digest::try_from(s.to_string())
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Digest {
        Digest(h.to_hex().to_string())
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Only the permission bits a restore may set: rwx for user, group and others (never
/// setuid, setgid or sticky), less the process umask.
pub fn restore_mode(mode: u32) -> u32 {
    mode & 0o777 & !crate::fsutil::umask()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    pub hash: Digest,
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
    pub hash: Digest,
    pub size: u64,
    #[serde(default)]
    pub dir: bool,
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// The out was a symlink with this target text (leading inside the workspace): it is
    /// restored as that symlink, not as a copy. `hash` is still its content's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
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
    /// Set once a store found the cache read-only or full: from then on this process only
    /// restores from it.
    restore_only: Arc<AtomicBool>,
    /// Folder outs this process refused to store (a symlink inside leads outside the
    /// workspace): a run entry naming one is not written, so it is never restored.
    unstorable: Arc<std::sync::Mutex<std::collections::HashSet<Digest>>>,
    /// Run-cache packs: the index of every pack, and the one this process appends to.
    packs: Arc<pack::Packs>,
}

/// Why a write into the cache cannot work at all (rather than failed by accident): the
/// cache is read-only (another user's, a read-only mount) or its disk is full.
fn unwritable(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .find_map(|io| match io.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => Some("not writable"),
            Some(libc::ENOSPC | libc::EDQUOT) => Some("full"),
            _ => None,
        })
}

/// Print a warning about the cache once per process (status and build judge a stage more
/// than once; one word about a hostile entry is enough).
pub(crate) fn warn_once(key: &str, msg: &str) {
    use std::sync::Mutex;
    static SEEN: Mutex<Option<std::collections::HashSet<String>>> = Mutex::new(None);
    let Ok(mut seen) = SEEN.lock() else {
        return;
    };
    if seen
        .get_or_insert_with(Default::default)
        .insert(key.to_string())
    {
        tracing::warn!("{msg}");
    }
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
            restore_only: Arc::new(AtomicBool::new(false)),
            unstorable: Default::default(),
            packs: Default::default(),
        }
    }

    /// Whether this process has stopped storing into the cache (read-only or full).
    pub fn restore_only(&self) -> bool {
        self.restore_only.load(Ordering::Relaxed)
    }

    /// A store that failed because the cache is read-only or full turns the cache into
    /// "restore only" with one warning; the stage's success stands. Other errors stand.
    fn store_failed(&self, e: anyhow::Error) -> Result<()> {
        let Some(why) = unwritable(&e) else {
            return Err(e);
        };
        self.restore_only.store(true, Ordering::Relaxed);
        warn_once(
            &format!("unwritable {}", self.dir.display()),
            &format!(
                "the cache folder {} is {why}: restoring from it, not storing into it ({e:#})",
                self.dir.display()
            ),
        );
        Ok(())
    }

    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        let (a, b) = digest.split();
        self.dir.join("objects").join(a).join(b)
    }
    pub fn tree_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("trees").join(format!("{digest}.json"))
    }
    /// Where a loose run-cache entry is (see [`Cache::get_run`] for packed ones).
    pub fn run_path(&self, fingerprint: &Digest) -> PathBuf {
        self.runs_dir().join(format!("{fingerprint}.json"))
    }
    fn runs_dir(&self) -> PathBuf {
        self.dir.join("runs")
    }
    /// Where writers put temporary files (named after their pid, swept once it is dead).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The temp folder, made, with the litter of dead writers gone.
    pub fn prepare_tmp(&self) -> Result<PathBuf> {
        let t = self.tmp_dir();
        crate::fsutil::ensure_dir(&t).with_context(|| format!("cannot create {}", t.display()))?;
        crate::fsutil::sweep_once(&t);
        Ok(t)
    }

    /// Write a cache file (entry, manifest) through the temp folder.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let t = self.prepare_tmp()?;
        if let Some(p) = path.parent() {
            crate::fsutil::ensure_dir(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
        }
        crate::fsutil::quick_write_via(&t, path, bytes)
    }

    /// Store a folder manifest fetched from a remote (already checked against its digest).
    pub fn put_tree_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.write_file(&self.tree_path(digest), bytes)
    }

    /// Store one workspace file under its digest (no-op when present). Copy-on-write where
    /// the file system allows, else a copy: never a hard link, so editing the workspace
    /// file can never change the object.
    pub fn store_file(&self, src: &Path, digest: &Digest) -> Result<()> {
        // A cache folder made earlier in this process may have been removed since (a `gc`
        // of a shared cache).
        let dest = self.object_path(digest);
        let parent = dest.parent().unwrap_or(&self.dir);
        crate::fsutil::remaking_dirs(&[parent, &self.tmp_dir()], || {
            self.store_file_once(src, digest)
        })
    }

    fn store_file_once(&self, src: &Path, digest: &Digest) -> Result<()> {
        let dest = self.object_path(digest);
        if dest.exists() {
            return Ok(());
        }
        let parent = dest.parent().unwrap_or(&self.dir);
        crate::fsutil::ensure_dir(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        if store_unnamed(src, &dest)
            .with_context(|| format!("cannot store {} in the cache", src.display()))?
        {
            return Ok(());
        }
        let tmp =
            self.prepare_tmp()?
                .join(format!(".tmp-{}{}", crate::fsutil::tmp_tag(), unique()));
        let result = clone_or_copy(src, &tmp)
            .with_context(|| format!("cannot copy {} into the cache", src.display()))
            .and_then(|_| {
                let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444));
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("cannot store {}", dest.display()))
            });
        if result.is_err() {
            // A full disk must not keep the partial copy.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Store a stage's out (file or folder) and describe it for the run cache. A symlink
    /// inside the out that leads outside the workspace is refused: its target's bytes
    /// would otherwise go into the cache (and a remote).
    pub fn store_out(&self, root: &Path, rel: &str, h: &PathHash) -> Result<CachedOut> {
        match h {
            PathHash::Missing => bail!("out `{rel}` is missing"),
            PathHash::File(f) => {
                no_escape(root, rel)?;
                let digest = Digest::from(f.digest);
                if !self.restore_only() {
                    self.store_file(&root.join(rel), &digest)
                        .or_else(|e| self.store_failed(e))?;
                }
                Ok(CachedOut {
                    hash: digest,
                    size: f.size,
                    dir: false,
                    mode: f.mode & 0o777,
                    link: link_of(root, rel)?,
                })
            }
            PathHash::Dir { digest, entries } => {
                no_escape(root, rel)?;
                if let Err(e) = no_escape_inside(root, rel) {
                    // The stage's result stands; only the cache (and a remote) must never
                    // hold a copy of a file from outside the workspace.
                    warn_once(
                        &format!("unstorable {rel}"),
                        &format!(
                            "{e:#}: not storing it in the cache (the stage runs again rather than being restored)"
                        ),
                    );
                    let digest = Digest::from(*digest);
                    if let Ok(mut set) = self.unstorable.lock() {
                        set.insert(digest.clone());
                    }
                    return Ok(CachedOut {
                        hash: digest,
                        size: h.size(),
                        dir: true,
                        mode: 0o755,
                        link: None,
                    });
                }
                let mut tree = Vec::with_capacity(entries.len());
                for e in entries {
                    let d = Digest::from(e.hash.digest);
                    if !self.restore_only() {
                        self.store_file(&root.join(rel).join(&e.rel), &d)
                            .or_else(|e| self.store_failed(e))?;
                    }
                    tree.push(TreeEntry {
                        path: e.rel.clone(),
                        hash: d,
                        size: e.hash.size,
                        mode: e.hash.mode & 0o777,
                    });
                }
                let digest = Digest::from(*digest);
                let tp = self.tree_path(&digest);
                if !self.restore_only() && !tp.exists() {
                    self.write_file(
                        &tp,
                        &serde_json::to_vec_pretty(&Tree {
                            version: VERSION,
                            entries: tree,
                        })?,
                    )
                    .or_else(|e| self.store_failed(e))?;
                }
                Ok(CachedOut {
                    hash: digest,
                    size: h.size(),
                    dir: true,
                    mode: 0o755,
                    link: link_of(root, rel)?,
                })
            }
        }
    }

    /// Read a folder manifest and check it against its digest: a manifest with a file
    /// added, removed or changed is refused before anything uses it.
    pub fn read_tree(&self, digest: &Digest) -> Result<Tree> {
        let p = self.tree_path(digest);
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let t = Tree::parse(&bytes, digest).with_context(|| format!("{}", p.display()))?;
        Ok(t)
    }

    pub fn put_run(&self, entry: &RunEntry) -> Result<()> {
        let fp: Digest = entry
            .fingerprint
            .parse()
            .map_err(|e| anyhow::anyhow!("run-cache entry of `{}`: {e}", entry.stage))?;
        if self.restore_only() {
            return Ok(());
        }
        let refused = self
            .unstorable
            .lock()
            .is_ok_and(|set| entry.outs.values().any(|o| o.dir && set.contains(&o.hash)));
        if refused {
            return Ok(());
        }
        let json = serde_json::to_vec(entry)?;
        let dir = self.runs_dir();
        crate::fsutil::remaking_dirs(&[&dir], || {
            crate::fsutil::ensure_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            self.packs
                .append(&dir, fp.as_str(), &json)
                .with_context(|| format!("cannot store a run-cache entry in {}", dir.display()))
        })
        .or_else(|e| self.store_failed(e))
    }

    /// The stored copies of the run-cache entry for `fp` (not checked), and where each was
    /// read: the loose file, or else every packed copy.
    fn run_bytes(&self, fp: &Digest) -> Vec<(PathBuf, std::io::Result<Vec<u8>>)> {
        let path = self.run_path(fp);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.packs.get(&self.runs_dir(), fp.as_str())
            }
            r => vec![(path, r)],
        }
    }

    /// The bytes of a run-cache entry as stored, for a push (the first copy that checks out).
    pub fn run_entry_bytes(&self, fp: &Digest) -> Option<(RunEntry, Vec<u8>)> {
        self.run_bytes(fp).into_iter().find_map(|(_, bytes)| {
            let bytes = bytes.ok()?;
            RunEntry::parse(&bytes, fp).ok().map(|e| (e, bytes))
        })
    }

    /// The run-cache entry for a fingerprint. A missing one is `None`; an unreadable or
    /// hostile one (a hash that is not a digest, an unknown version, another fingerprint)
    /// is reported once and ignored, so the stage runs.
    pub fn get_run(&self, fingerprint: &str) -> Option<RunEntry> {
        let fp: Digest = fingerprint.parse().ok()?;
        // Several copies only in packs (several processes stored it): the first that checks
        // out wins; the refusals are reported when none does.
        let mut refused = Vec::new();
        for (path, bytes) in self.run_bytes(&fp) {
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    refused.push((
                        path.to_string_lossy().into_owned(),
                        format!("cannot read run-cache entry {}: {e}", path.display()),
                    ));
                    continue;
                }
            };
            match RunEntry::parse(&bytes, &fp) {
                Ok(e) => return Some(e),
                Err(why) => refused.push((
                    format!("{} {fp}", path.display()),
                    format!(
                        "ignoring run-cache entry {fp} in {}{}: {why}; running it instead",
                        path.display(),
                        stage_of(&bytes)
                            .map(|s| format!(" (stage `{s}`)"))
                            .unwrap_or_default()
                    ),
                )),
            }
        }
        for (key, msg) in refused {
            warn_once(&key, &msg);
        }
        None
    }

    /// Whether every object an out needs is present (not verified: that happens on
    /// restore). A tree that fails its digest check is reported and counts as absent.
    pub fn has_out(&self, out: &CachedOut) -> bool {
        if !out.dir {
            return self.object_path(&out.hash).exists();
        }
        if !self.tree_path(&out.hash).exists() {
            return false;
        }
        match self.read_tree(&out.hash) {
            Ok(t) => t.entries.iter().all(|e| self.object_path(&e.hash).exists()),
            Err(e) => {
                warn_once(
                    &format!("tree {}", out.hash),
                    &format!("ignoring cached folder: {e:#}"),
                );
                false
            }
        }
    }

    /// Hash every object an out needs; a mismatching object is removed and reported as
    /// `Corrupt`. Lets a multi-out restore (rollback) check everything before it changes
    /// anything.
    pub fn verify_out(&self, rel: &str, out: &CachedOut) -> Result<()> {
        let objects: Vec<(Digest, u64)> = if out.dir {
            let t = self.read_tree(&out.hash)?;
            t.entries.into_iter().map(|e| (e.hash, e.size)).collect()
        } else {
            vec![(out.hash.clone(), out.size)]
        };
        for (digest, size) in objects {
            let obj = self.object_path(&digest);
            let actual = hash::hash_file_contents(&obj, size)
                .with_context(|| format!("cannot read {}", obj.display()))?;
            if actual.to_hex().as_str() != digest.as_str() {
                let _ = std::fs::remove_file(&obj);
                return Err(Corrupt {
                    object: digest.to_string(),
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

    /// Put one out back into the workspace from the cache, verifying every byte. Never
    /// writes through a symlink that leads out of the workspace.
    pub fn restore_out(
        &self,
        root: &Path,
        rel: &str,
        out: &CachedOut,
        stat: &StatCache,
    ) -> Result<()> {
        inside(rel)?;
        parents_inside(root, rel)?;
        let dest = root.join(rel);
        if let Some(target) = &out.link {
            // A symlink out comes back as the same symlink, never one leading outside.
            link_inside(root, rel, target)?;
            let tmp = restore_tmp(root, &dest)?;
            let _ = std::fs::remove_file(&tmp);
            if let Err(e) = std::os::unix::fs::symlink(target, &tmp)
                .with_context(|| format!("cannot create symlink {}", dest.display()))
                .and_then(|_| crate::fsutil::remove_path(&dest))
                .and_then(|_| {
                    std::fs::rename(&tmp, &dest)
                        .with_context(|| format!("cannot write {}", dest.display()))
                })
            {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            return Ok(());
        }
        if out.dir {
            let tree = self.read_tree(&out.hash)?;
            for e in &tree.entries {
                inside(&e.path)?;
            }
            let tmp_dir = restore_tmp(root, &dest)?;
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
            let tmp = restore_tmp(root, &dest)?;
            if let Err(e) = self
                .restore_file(&tmp, &out.hash, out.mode, rel)
                .and_then(|_| crate::fsutil::remove_path(&dest))
                .and_then(|_| {
                    std::fs::rename(&tmp, &dest)
                        .with_context(|| format!("cannot write {}", dest.display()))
                })
            {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            record_stat(stat, root, rel, &out.hash);
        }
        Ok(())
    }

    /// Copy one object to `dest`, hash the copy, and refuse (removing the object) on mismatch.
    fn restore_file(&self, dest: &Path, digest: &Digest, mode: u32, out: &str) -> Result<()> {
        let obj = self.object_path(digest);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let _ = std::fs::remove_file(dest);
        let meta = std::fs::symlink_metadata(&obj)
            .with_context(|| format!("cannot read cache object {}", obj.display()))?;
        if !meta.is_file() {
            bail!(
                "cache object {} is not a regular file; refusing to restore it",
                obj.display()
            );
        }
        reflink_copy::reflink_or_copy(&obj, dest).with_context(|| {
            format!(
                "cannot restore {} from cache object {}",
                dest.display(),
                obj.display()
            )
        })?;
        let result = (|| {
            let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
            let actual = hash::hash_file_contents(dest, size)
                .with_context(|| format!("cannot read {}", dest.display()))?;
            if actual.to_hex().as_str() != digest.as_str() {
                let _ = std::fs::remove_file(&obj);
                return Err(Corrupt {
                    object: digest.to_string(),
                    out: out.to_string(),
                }
                .into());
            }
            std::fs::set_permissions(
                dest,
                std::fs::Permissions::from_mode(restore_mode(mode) | 0o200),
            )
            .with_context(|| format!("cannot set mode of {}", dest.display()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
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

impl RunEntry {
    /// Parse a run-cache entry read from a cache or remote and check it belongs under `fp`.
    pub fn parse(bytes: &[u8], fp: &Digest) -> std::result::Result<RunEntry, String> {
        let e: RunEntry = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if e.version != VERSION {
            return Err(format!("unknown format version {}", e.version));
        }
        if e.fingerprint != fp.as_str() {
            return Err("its fingerprint does not match its name".into());
        }
        for rel in e.outs.keys() {
            inside(rel).map_err(|e| e.to_string())?;
        }
        Ok(e)
    }
}

/// The `stage` an entry names, for messages about an entry that does not parse.
fn stage_of(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let s = v.get("stage")?.as_str()?;
    Some(s.chars().take(100).collect())
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

fn canonical_root(root: &Path) -> PathBuf {
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// Every existing parent folder of `rel` must resolve inside the workspace: a symlink
/// (made by a stage, or planted) that leads outside is never written through.
fn parents_inside(root: &Path, rel: &str) -> Result<()> {
    let croot = canonical_root(root);
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Err(_) => break, // missing: the restore creates real folders from here on
            Ok(m) if m.file_type().is_symlink() => {
                let real = p.canonicalize().ok();
                if !real.as_ref().is_some_and(|r| r.starts_with(&croot)) {
                    bail!(
                        "`{}` is a symlink leading outside the workspace ({}); refusing to restore `{rel}` through it",
                        p.strip_prefix(root).unwrap_or(&p).display(),
                        real.map(|r| r.display().to_string())
                            .unwrap_or_else(|| "dangling".into())
                    );
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The target text of an out that is itself a symlink (one leading inside the workspace;
/// `no_escape` has refused the others).
fn link_of(root: &Path, rel: &str) -> Result<Option<String>> {
    let full = root.join(rel);
    match std::fs::symlink_metadata(&full) {
        Ok(m) if m.file_type().is_symlink() => {
            let t = std::fs::read_link(&full)
                .with_context(|| format!("cannot read symlink {}", full.display()))?;
            let t = t
                .to_str()
                .ok_or_else(|| {
                    anyhow::anyhow!("out `{rel}` is a symlink whose target is not UTF-8")
                })?
                .to_string();
            link_inside(root, rel, &t)?;
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// A symlink at `rel` with target text `target` must lead inside the workspace, judged on
/// the text alone (a relative target resolved from the link's folder, `..` included; an
/// absolute one only under the workspace root).
fn link_inside(root: &Path, rel: &str, target: &str) -> Result<()> {
    let escape = || {
        anyhow::anyhow!(
            "out `{rel}` is a symlink to `{target}`, outside the workspace; refusing it"
        )
    };
    if target.is_empty() {
        return Err(escape());
    }
    if Path::new(target).is_absolute() {
        let t = Path::new(target);
        if t.starts_with(root) || t.starts_with(canonical_root(root)) {
            return Ok(());
        }
        return Err(escape());
    }
    let mut parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(escape());
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(escape());
    }
    Ok(())
}

/// An out that is (or sits under) a symlink leading outside the workspace is refused.
fn no_escape(root: &Path, rel: &str) -> Result<()> {
    if let Some(real) = crate::fsutil::escapes(root, rel) {
        bail!(
            "out `{rel}` resolves to {} through a symlink, outside the workspace; refusing to store it",
            real.display()
        );
    }
    Ok(())
}

/// No symlink inside the out folder `rel` may lead outside the workspace.
fn no_escape_inside(root: &Path, rel: &str) -> Result<()> {
    let croot = canonical_root(root);
    for e in walkdir::WalkDir::new(root.join(rel)).min_depth(1) {
        let Ok(e) = e else { continue };
        if !e.path_is_symlink() {
            continue;
        }
        let real = e.path().canonicalize().ok();
        if !real.as_ref().is_some_and(|r| r.starts_with(&croot)) {
            let inner = e.path().strip_prefix(root).unwrap_or(e.path());
            bail!(
                "out `{rel}` holds `{}`, a symlink to {} outside the workspace",
                inner.display(),
                real.map(|r| r.display().to_string())
                    .unwrap_or_else(|| "nothing".into())
            );
        }
    }
    Ok(())
}

/// After a verified restore, remember the file's stat so the next status does not re-read it.
fn record_stat(stat: &StatCache, root: &Path, rel: &str, digest: &Digest) {
    if let Ok(m) = std::fs::metadata(root.join(rel)) {
        stat.put(rel, Stat::of(&m), digest.to_blake3());
    }
}

/// Copy-on-write where the file system allows, else a copy. Once a clone has failed, the
/// rest of the process copies at once: each failed attempt creates and removes a file.
/// Set once a reflink failed: the cache's file system cannot clone, so copy at once.
static NO_CLONE: AtomicBool = AtomicBool::new(false);

fn clone_or_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    if NO_CLONE.load(Ordering::Relaxed) {
        return std::fs::copy(src, dest).map(drop);
    }
    if reflink_copy::reflink_or_copy(src, dest)?.is_some() {
        NO_CLONE.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Store `src` as `dest` through an unnamed file in `dest`'s folder (`O_TMPFILE`, read-only
/// from birth), filled by a reflink or a copy and then linked under its name: one new inode
/// and one folder entry, where a named temp file takes a second entry, its removal, a
/// rename and two mode changes. A file killed halfway was never named, so it leaves no
/// litter. Another writer that stored the same object first wins (same bytes).
/// `Ok(false)` where the file system has no `O_TMPFILE` or `/proc` is missing: the caller
/// takes the named temp file.
fn store_unnamed(src: &Path, dest: &Path) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let to = match std::fs::OpenOptions::new()
        .write(true)
        .mode(0o444)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    // The mode a named object gets too, whatever the umask (a shared cache is read by all).
    to.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    let from = std::fs::File::open(src)?;
    if NO_CLONE.load(Ordering::Relaxed) || reflink_copy::reflink_file(&from, &to).is_err() {
        NO_CLONE.store(true, Ordering::Relaxed);
        std::io::copy(&mut &from, &mut &to)?;
    }
    let name = |p: &[u8]| std::ffi::CString::new(p).map_err(std::io::Error::other);
    let fd_path = name(format!("/proc/self/fd/{}", to.as_raw_fd()).as_bytes())?;
    let dest_c = name(dest.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            fd_path.as_ptr(),
            libc::AT_FDCWD,
            dest_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(true),
        // No `/proc` (a bare chroot): name a temp file instead, from now on.
        Some(libc::ENOENT) if !Path::new("/proc/self/fd").exists() => {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            Ok(false)
        }
        _ => Err(e),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) ^ (crate::state::now_ns() as u64)
}

/// Where a restore writes before renaming onto `dest`: `.pipe/tmp/` when it is on the same
/// file system as `dest` (a sweep finds it there), else beside `dest`. Either name carries
/// the writer's pid, so the litter of a killed restore is swept once its writer is dead.
fn restore_tmp(root: &Path, dest: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let parent = dest.parent().unwrap_or(root);
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = format!("restore-{}{}", crate::fsutil::tmp_tag(), unique());
    let tmp = root.join(".pipe").join("tmp");
    if std::fs::create_dir_all(&tmp).is_ok() {
        crate::fsutil::sweep_once(&tmp);
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if dev(&tmp).is_some() && dev(&tmp) == dev(parent) {
            return Ok(tmp.join(name));
        }
    }
    let base = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(parent.join(format!(".{base}.pipe-{name}")))
}

impl Tree {
    /// The digest this tree must be stored under (the folder digest of its entries).
    pub fn digest(&self) -> Digest {
        let entries: Vec<hash::Entry> = self
            .entries
            .iter()
            .map(|e| hash::Entry {
                rel: e.path.clone(),
                hash: hash::FileHash {
                    digest: e.hash.to_blake3(),
                    size: e.size,
                    mode: e.mode,
                },
            })
            .collect();
        Digest::from(hash::dir_digest(&entries))
    }

    /// Parse a manifest (from the cache or a remote) and check it against `digest`.
    pub fn parse(bytes: &[u8], digest: &Digest) -> Result<Tree> {
        let t: Tree = serde_json::from_slice(bytes).context("not a valid tree")?;
        if t.version != VERSION {
            bail!("unknown tree format version {}", t.version);
        }
        if t.digest() != *digest {
            bail!(
                "tree {digest} does not match its digest (a file was added, removed or changed in it); refused"
            );
        }
        Ok(t)
    }
}

impl Cache {
    /// Every run-cache entry in the local cache.
    pub fn all_runs(&self) -> Vec<RunEntry> {
        let mut fps: std::collections::BTreeSet<String> = std::fs::read_dir(self.runs_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        fps.extend(self.packs.fingerprints(&self.runs_dir()));
        fps.iter().filter_map(|fp| self.get_run(fp)).collect()
    }

    /// `pipe gc`: drop the packed entries `keep` does not name, merging the packs of
    /// processes that are gone into one (see [`pack::gc`]). Returns the entries and bytes
    /// dropped.
    pub fn gc_packs(&self, keep: &dyn Fn(&str) -> bool, dry_run: bool) -> Result<(usize, u64)> {
        let swept = pack::gc(&self.runs_dir(), &self.tmp_dir(), keep, dry_run)
            .with_context(|| format!("cannot compact {}", self.runs_dir().display()))?;
        Ok((swept.entries, swept.bytes))
    }

    /// Whether a file name in `runs/` is a pack (not a loose entry).
    pub fn is_pack(name: &str) -> bool {
        pack::is_pack(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_stored_even_after_its_folders_were_removed_behind_our_back() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(&dir.path().join("cache"));
        let src = dir.path().join("a.txt");
        std::fs::write(&src, "one").unwrap();
        let d = Digest::from(blake3::hash(b"one"));
        cache.store_file(&src, &d).unwrap();
        // A gc of a shared cache (another workspace) removes the object and its folders,
        // which this process remembers having made.
        std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
        cache.store_file(&src, &d).unwrap();
        assert_eq!(std::fs::read(cache.object_path(&d)).unwrap(), b"one");
    }

    #[test]
    fn digests_are_64_lowercase_hex_and_nothing_else() {
        let good = blake3::hash(b"x").to_hex().to_string();
        assert_eq!(good.parse::<Digest>().unwrap().to_string(), good);
        for bad in [
            "",
            "xx/tmp/victim",
            &good[..63],
            &format!("{good}0"),
            &good.to_uppercase(),
            &format!("../{}", &good[3..]),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let json = r#"{"hash":"xx/tmp/victim","size":1,"mode":420}"#;
        assert!(serde_json::from_str::<CachedOut>(json).is_err());
    }

    #[test]
    fn restored_modes_keep_only_rwx_bits() {
        assert_eq!(restore_mode(0o6777) & !0o777, 0);
        assert_eq!(restore_mode(0o4755) & 0o7000, 0);
    }
}
