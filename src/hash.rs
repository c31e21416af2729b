//! Content hashes of files, folders and globs: blake3, parallel over files (rayon), big
//! files mapped and hashed on all cores (a file cut shorter meanwhile is caught, see
//! [`crate::mapped`]; where mapping fails, read in large blocks), unchanged files answered
//! by the stat cache. Only regular files and folders are hashed; a
//! FIFO, socket or device is an error naming it (it is never opened for reading).

use crate::graph::Dep;
use crate::state::{Stat, StatCache};
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Files at least this big are hashed block by block on all cores.
const BIG_FILE: u64 = 16 << 20;
/// The block a big file is read in (big enough for blake3's parallel mode to pay off).
const BLOCK: usize = 8 << 20;
/// How often a file that changes while it is hashed is hashed again before giving up.
const TRIES: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    pub digest: blake3::Hash,
    pub size: u64,
    pub mode: u32,
}

/// Files a walk found, as runs whose concatenation is in ascending path order (a run per
/// folder, split around its subfolders): hashed in place without a copy or a sort.
type Runs = Vec<Vec<(String, Stat)>>;

/// One file inside a folder or glob, relative to that folder (or the workspace for globs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub rel: String,
    pub hash: FileHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathHash {
    Missing,
    File(FileHash),
    Dir {
        digest: blake3::Hash,
        entries: Vec<Entry>,
    },
}

impl PathHash {
    /// The digest text recorded in the lock (`missing` when absent).
    pub fn text(&self) -> String {
        match self {
            PathHash::Missing => "missing".into(),
            PathHash::File(f) => f.digest.to_hex().to_string(),
            PathHash::Dir { digest, .. } => digest.to_hex().to_string(),
        }
    }
    pub fn size(&self) -> u64 {
        match self {
            PathHash::Missing => 0,
            PathHash::File(f) => f.size,
            PathHash::Dir { entries, .. } => entries.iter().map(|e| e.hash.size).sum(),
        }
    }
}

/// The digest of a folder: over its sorted (relative path, digest) list.
pub fn dir_digest(entries: &[Entry]) -> blake3::Hash {
    // Through a 64 KiB buffer: the same digest as feeding the pieces one by one, without
    // a hasher call per piece, nor a buffer the size of the listing (a folder can list
    // 100,000 files: 6 MB, 1,500 page faults).
    const CHUNK: usize = 64 << 10;
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    for e in entries {
        buf.extend_from_slice(e.rel.as_bytes());
        buf.push(0);
        buf.extend_from_slice(e.hash.digest.as_bytes());
        buf.extend_from_slice(if e.hash.mode & 0o111 != 0 {
            b"x\n"
        } else {
            b"-\n"
        });
        if buf.len() >= CHUNK {
            hasher.update(&buf);
            buf.clear();
        }
    }
    hasher.update(&buf);
    hasher.finalize()
}

/// The dep hash of a file named directly as a dep: its content digest when it is not
/// executable, else blake3 of (content digest, `x`). A folder's digest already covers each
/// file's executable bit, so `chmod +x` makes a stage stale the same way for a file dep
/// and for a file inside a folder dep. (Only deps: an out's recorded hash stays the plain
/// content digest, which is also its cache object's name.)
pub fn exec_marked(f: FileHash) -> FileHash {
    if f.mode & 0o111 == 0 {
        return f;
    }
    let mut buf = [0u8; 34];
    buf[..32].copy_from_slice(f.digest.as_bytes());
    buf[32..].copy_from_slice(b"x\n");
    FileHash {
        digest: blake3::hash(&buf),
        ..f
    }
}

pub struct Hasher<'a> {
    pub root: PathBuf,
    pub stat: &'a StatCache,
    /// Files actually read (not answered by the stat cache): shown with `-v`.
    pub files_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Stats the loader already took: a path named by several stages is looked at once.
    memo: Option<&'a crate::fsutil::StatMemo>,
    /// Whether a folder was walked (its files are not in the memo).
    walked: std::sync::atomic::AtomicBool,
    /// What walks saw, when asked to record it (for a no-op proof).
    tree: Option<std::sync::Mutex<crate::walked::Tree>>,
}

fn skip_name(name: &std::ffi::OsStr) -> bool {
    name == ".git" || name == ".pipe"
}

impl<'a> Hasher<'a> {
    pub fn new(root: &Path, stat: &'a StatCache) -> Hasher<'a> {
        Hasher {
            root: root.to_path_buf(),
            stat,
            files_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            memo: None,
            walked: Default::default(),
            tree: None,
        }
    }

    /// Answer the stat of a named path from (and into) `memo` (a walk inside a folder
    /// still looks at every file).
    pub fn with_memo(self, memo: &'a crate::fsutil::StatMemo) -> Hasher<'a> {
        Hasher {
            memo: Some(memo),
            ..self
        }
    }

    /// Hash a file given its workspace-relative path and stat.
    fn file_with(&self, rel: &str, stat: Stat, hint: &mut usize) -> Result<FileHash> {
        if let Some(d) = self.stat.get_near(rel, &stat, hint) {
            return Ok(FileHash {
                digest: d,
                size: stat.size,
                mode: stat.mode,
            });
        }
        let path = self.root.join(rel);
        let mut stat = stat;
        for _ in 0..TRIES {
            let digest = match hash_file_contents(&path, stat.size) {
                Ok(d) => Some(d),
                // Cut shorter while it was mapped: look again (below) and hash it again.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            };
            self.files_read.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(file = %rel, size = stat.size, "hashed (stat cache miss)");
            self.bytes_read.fetch_add(stat.size, Ordering::Relaxed);
            // Re-stat: a file that changed while we read it is hashed again (its digest
            // would belong to no version of it) and never cached under the old stat.
            let after = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            check_kind(&path, &after)?;
            let after = Stat::of(&after);
            if let Some(digest) = digest
                && after == stat
            {
                self.stat.put(rel, stat, digest);
                return Ok(FileHash {
                    digest,
                    size: stat.size,
                    mode: stat.mode,
                });
            }
            stat = after;
        }
        anyhow::bail!(
            "{} changed while it was hashed ({TRIES} times); is something still writing it?",
            path.display()
        )
    }

    /// Whether a folder was walked: its files were looked at outside the memo.
    pub fn walked(&self) -> bool {
        self.walked.load(Ordering::Relaxed)
    }

    /// Record what walks see (see [`crate::walked`]).
    pub fn recording(self) -> Hasher<'a> {
        Hasher {
            tree: Some(Default::default()),
            ..self
        }
    }

    /// What walks saw, if recorded.
    pub fn take_tree(&self) -> Option<crate::walked::Tree> {
        let mut t = self.tree.as_ref()?.lock().ok()?;
        Some(std::mem::take(&mut *t))
    }

    fn record(&self, f: impl FnOnce(&mut crate::walked::Tree)) {
        if let Some(t) = &self.tree
            && let Ok(mut t) = t.lock()
        {
            f(&mut t);
        }
    }

    /// Hash a workspace-relative path: a file, a folder (recursively) or nothing.
    pub fn path(&self, rel: &str) -> Result<PathHash> {
        let full = self.root.join(rel);
        let meta = match self
            .memo
            .map_or_else(|| std::fs::metadata(&full), |m| m.metadata(&full))
        {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PathHash::Missing),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", full.display())),
        };
        check_kind(&full, &meta)?;
        if meta.is_dir() {
            let files = self.walk(rel, None)?;
            self.files(files, rel)
        } else {
            Ok(PathHash::File(self.file_with(
                rel,
                Stat::of(&meta),
                &mut 0,
            )?))
        }
    }

    /// Hash a dep: a path or a glob (the sorted list of matching files). A file named as a
    /// dep counts its executable bit as a file inside a folder dep does (see
    /// [`exec_marked`]).
    pub fn dep(&self, dep: &Dep) -> Result<PathHash> {
        match &dep.glob {
            None => Ok(match self.path(&dep.path)? {
                PathHash::File(f) => PathHash::File(exec_marked(f)),
                other => other,
            }),
            Some(g) => {
                self.walked.store(true, Ordering::Relaxed);
                let base = crate::fsutil::glob_base(&dep.path);
                let full = if base.is_empty() {
                    self.root.clone()
                } else {
                    self.root.join(&base)
                };
                let seen = std::fs::symlink_metadata(&full);
                if seen.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
                    self.record(crate::walked::Tree::unprovable);
                }
                if !full.is_dir() {
                    let sig = seen.ok().map(|m| crate::fsutil::Sig::of(&m));
                    self.record(|t| t.folder(&base, sig));
                    return Ok(PathHash::Dir {
                        digest: dir_digest(&[]),
                        entries: vec![],
                    });
                }
                let files = self.walk(&base, Some(g))?;
                self.files(files, "")
            }
        }
    }

    /// Files under a workspace-relative folder (never `.git` or `.pipe`), optionally filtered
    /// by a glob over workspace-relative paths, as [`Runs`]. Folders are listed in parallel,
    /// each entry stat'ed relative to its folder (no full-path lookup per file); symlinks are
    /// followed and a link back to a folder being listed is an error.
    fn walk(&self, rel_dir: &str, glob: Option<&globset::GlobMatcher>) -> Result<Runs> {
        self.walked.store(true, Ordering::Relaxed);
        let dir = if rel_dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel_dir)
        };
        let meta =
            std::fs::metadata(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        self.record(|t| t.folder(rel_dir, Some(crate::fsutil::Sig::of(&meta))));
        self.walk_dir(rel_dir, &dir, &[(meta.dev(), meta.ino())], glob)
    }

    fn walk_dir(
        &self,
        rel_dir: &str,
        dir: &Path,
        ancestors: &[(u64, u64)],
        glob: Option<&globset::GlobMatcher>,
    ) -> Result<Runs> {
        let list = || format!("cannot list {}", dir.display());
        let mut files: Vec<(String, Stat)> = Vec::new();
        let mut subdirs: Vec<(String, PathBuf, (u64, u64))> = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(list)? {
            let entry = entry.with_context(list)?;
            let name = entry.file_name();
            if skip_name(&name) {
                continue;
            }
            let name = name.to_string_lossy();
            // Built by hand: `format!` was a tenth of a walk of 100,000 files.
            let mut rel = String::with_capacity(rel_dir.len() + 1 + name.len());
            if !rel_dir.is_empty() {
                rel.push_str(rel_dir);
                rel.push('/');
            }
            rel.push_str(&name);
            let ft = entry.file_type().with_context(list)?;
            if ft.is_symlink() {
                self.record(crate::walked::Tree::unprovable);
            }
            let meta = if ft.is_symlink() {
                std::fs::metadata(entry.path())
            } else {
                entry.metadata()
            }
            .with_context(|| format!("cannot read {}", entry.path().display()))?;
            if !(meta.is_file() || meta.is_dir()) && glob.is_none_or(|g| g.is_match(&rel)) {
                check_kind(&entry.path(), &meta)?;
            }
            if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if ft.is_symlink() && ancestors.contains(&id) {
                    anyhow::bail!(
                        "{}: a symlink loop (it points back to a folder it is inside)",
                        entry.path().display()
                    );
                }
                self.record(|t| t.folder(&rel, Some(crate::fsutil::Sig::of(&meta))));
                // Its files sort as `rel/…`: the key among its siblings is `rel/`.
                rel.push('/');
                subdirs.push((rel, entry.path(), id));
            } else if meta.is_file() && glob.is_none_or(|g| g.is_match(&rel)) {
                files.push((rel, Stat::of(&meta)));
            }
        }
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        subdirs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let nested: Vec<Runs> = subdirs
            .par_iter()
            .map(|(key, path, id)| {
                let mut chain = ancestors.to_vec();
                chain.push(*id);
                self.walk_dir(&key[..key.len() - 1], path, &chain, glob)
            })
            .collect::<Result<_>>()?;
        // Each folder's runs go where `rel/` falls among this folder's files: the runs stay
        // in ascending order, and only a folder holding both files and folders splits its
        // list of files.
        let mut runs = Runs::new();
        let mut rest = files;
        for ((key, _, _), sub) in subdirs.iter().zip(nested) {
            let at = rest.partition_point(|f| f.0.as_str() < key.as_str());
            if at > 0 {
                let tail = rest.split_off(at);
                runs.push(std::mem::replace(&mut rest, tail));
            }
            runs.extend(sub);
        }
        if !rest.is_empty() {
            runs.push(rest);
        }
        Ok(runs)
    }

    /// Hash the files of a walk in parallel into a folder hash, paths made relative to
    /// `strip`. The runs are in ascending order (each worker's stat cache lookups run along
    /// the sorted cache instead of searching it), and each is hashed straight into its place
    /// in one vector of the exact size: no copy of the listing, no sort.
    fn files(&self, runs: Runs, strip: &str) -> Result<PathHash> {
        self.record(|t| {
            t.reserve(runs.iter().map(|r| r.len()).sum());
            runs.iter().for_each(|r| t.files(r))
        });
        let total = runs.iter().map(Vec::len).sum();
        let mut entries: Vec<Entry> = Vec::with_capacity(total);
        entries.resize_with(total, || Entry {
            rel: String::new(),
            hash: FileHash {
                digest: blake3::Hash::from_bytes([0; 32]),
                size: 0,
                mode: 0,
            },
        });
        let mut places: Vec<&mut [Entry]> = Vec::with_capacity(runs.len());
        let mut free = entries.as_mut_slice();
        for r in &runs {
            let (place, after) = free.split_at_mut(r.len());
            places.push(place);
            free = after;
        }
        // The first error is kept aside and returned.
        let failed: std::sync::Mutex<Option<anyhow::Error>> = Default::default();
        runs.into_par_iter().zip(places).for_each(|(run, place)| {
            run.into_par_iter().zip(place.par_iter_mut()).for_each_init(
                || 0usize,
                |hint, ((mut rel, stat), slot)| {
                    match self.file_with(&rel, stat, hint) {
                        Ok(hash) => slot.hash = hash,
                        Err(e) => {
                            if let Ok(mut first) = failed.lock() {
                                first.get_or_insert(e);
                            }
                        }
                    }
                    if !strip.is_empty() {
                        rel.drain(..strip.len() + 1);
                    }
                    slot.rel = rel;
                },
            )
        });
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(e);
        }
        // Still in order: dropping the same prefix from every path keeps it.
        Ok(PathHash::Dir {
            digest: dir_digest(&entries),
            entries,
        })
    }
}

/// Fill `buf` from `f` as far as the file goes; returns how much was read.
fn fill(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Hash a big file: one thread reads blocks while the caller hashes the previous block on
/// all cores (reading and hashing overlap; two blocks in memory at most).
fn hash_big(mut f: std::fs::File) -> std::io::Result<blake3::Hash> {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<std::io::Result<(Vec<u8>, usize)>>(1);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    empty_tx.send(vec![0u8; BLOCK]).ok();
    empty_tx.send(vec![0u8; BLOCK]).ok();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Ok(mut buf) = empty_rx.recv() {
                let r = fill(&mut f, &mut buf);
                let end = !matches!(r, Ok(n) if n == BLOCK);
                if full_tx.send(r.map(|n| (buf, n))).is_err() || end {
                    break;
                }
            }
        });
        // Owned here, so an early return drops both ends and the reader stops.
        let (full_rx, empty_tx) = (full_rx, empty_tx);
        let mut h = blake3::Hasher::new();
        while let Ok(r) = full_rx.recv() {
            let (buf, n) = r?;
            h.update_rayon(&buf[..n]);
            if n < BLOCK {
                break;
            }
            // The reader may have stopped (end of file): then this send just fails.
            let _ = empty_tx.send(buf);
        }
        Ok(h.finalize())
    })
}

/// Only regular files and folders can be deps or outs: reading a FIFO blocks forever, a
/// device (`/dev/zero`) never ends.
fn check_kind(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    let kind = if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        return Ok(());
    };
    anyhow::bail!(
        "{} is {kind}, not a file or folder; pipe only hashes regular files and folders (it never reads special files)",
        path.display()
    )
}

/// blake3 of a file's bytes, read (never memory-mapped); big files in blocks hashed on all
/// cores. The file is opened without blocking and must be a regular file once open.
pub fn hash_file_contents(path: &Path, size: u64) -> std::io::Result<blake3::Hash> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if size >= BIG_FILE {
        if let Some(hashed) = crate::mapped::hash(&f) {
            return hashed;
        }
        return hash_big(f);
    }
    // Read through `Take`, not `File::read_to_end`, which asks the size and position again
    // (a `statx` and an `lseek` per file): the capacity already fits the size seen, and
    // the one byte more still finds a file that grew.
    let mut buf = Vec::with_capacity(size as usize + 1);
    (&f).take(u64::MAX).read_to_end(&mut buf)?;
    Ok(blake3::hash(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_digest_is_the_blake3_of_its_listing_however_long() {
        // Across many 64 KiB chunks: the same digest as the listing hashed in one piece.
        let entries: Vec<Entry> = (0..5000u32)
            .map(|i| Entry {
                rel: format!("sub{}/file-{i:05}.txt", i % 7),
                hash: FileHash {
                    digest: blake3::hash(&i.to_le_bytes()),
                    size: u64::from(i),
                    mode: if i % 3 == 0 { 0o755 } else { 0o644 },
                },
            })
            .collect();
        let mut whole = Vec::new();
        for e in &entries {
            whole.extend_from_slice(e.rel.as_bytes());
            whole.push(0);
            whole.extend_from_slice(e.hash.digest.as_bytes());
            whole.extend_from_slice(if e.hash.mode & 0o111 != 0 {
                b"x\n"
            } else {
                b"-\n"
            });
        }
        assert!(whole.len() > 4 * (64 << 10));
        assert_eq!(dir_digest(&entries), blake3::hash(&whole));
        assert_eq!(dir_digest(&[]), blake3::hash(b""));
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn names(h: &PathHash) -> Vec<String> {
        match h {
            PathHash::Dir { entries, .. } => entries.iter().map(|e| e.rel.clone()).collect(),
            other => panic!("not a folder: {other:?}"),
        }
    }

    #[test]
    fn a_walk_lists_in_byte_order_however_files_and_folders_interleave() {
        // Names around `/` in byte order (` `, `-`, `.` sort before it; `0`, `A`, `_`, `~`
        // after), as files and as folders, two levels deep: the runs must come out in the
        // order a sort of the whole list gives, or folder digests would change.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stems = ["a", "a b", "a-b", "a.b", "a0", "aA", "a_", "a~", "b"];
        let mut all = Vec::new();
        for (i, s1) in stems.iter().enumerate() {
            // Even: a file `s1` beside the folder `s1.d`; odd: folders `s1` and `s1.d`.
            if i % 2 == 0 {
                all.push(format!("t/{s1}"));
            }
            for s2 in &stems[i % 3..] {
                all.push(format!("t/{s1}.d/{s2}"));
                if i % 2 == 1 {
                    all.push(format!("t/{s1}/{s2}"));
                }
            }
        }
        for rel in &all {
            write(root, rel, rel);
        }
        let stat = StatCache::default();
        let listed = names(&Hasher::new(root, &stat).path("t").unwrap());
        let mut sorted: Vec<String> = all.iter().map(|r| r["t/".len()..].to_string()).collect();
        sorted.sort();
        assert_eq!(listed, sorted);
    }

    #[test]
    fn folders_list_nested_files_sorted_and_skip_git_and_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "d/b.txt",
            "d/a/z.txt",
            "d/a.txt",
            "d/a-b/y",
            "d/.git/x",
            "d/s/.pipe/y",
        ] {
            write(root, rel, rel);
        }
        let stat = StatCache::default();
        let h = Hasher::new(root, &stat);
        let first = h.path("d").unwrap();
        assert_eq!(names(&first), ["a-b/y", "a.txt", "a/z.txt", "b.txt"]);
        // Answered from the stat cache the second time: same digest, nothing re-read.
        let h2 = Hasher::new(root, &stat);
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(h2.path("d").unwrap().text(), first.text());
        write(root, "d/a/z.txt", "changed");
        assert_ne!(
            Hasher::new(root, &stat).path("d").unwrap().text(),
            first.text()
        );

        let g = Dep {
            path: "d/**/*.txt".into(),
            glob: Some(globset::Glob::new("d/**/*.txt").unwrap().compile_matcher()),
        };
        assert_eq!(
            names(&h.dep(&g).unwrap()),
            ["d/a.txt", "d/a/z.txt", "d/b.txt"]
        );
    }

    #[test]
    fn big_files_hash_the_same_as_in_one_piece() {
        let dir = tempfile::tempdir().unwrap();
        for size in [BIG_FILE as usize, 2 * BLOCK + 7, 3 * BLOCK] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join("big");
            std::fs::write(&p, &bytes).unwrap();
            let h = hash_file_contents(&p, size as u64).unwrap();
            assert_eq!(h, blake3::hash(&bytes), "size {size}");
        }
    }

    #[test]
    fn special_files_are_refused_without_being_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let fifo = root.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        std::os::unix::fs::symlink("/dev/null", root.join("null")).unwrap();
        let stat = StatCache::default();
        let h = Hasher::new(root, &stat);
        let e = h.path("fifo").unwrap_err();
        assert!(format!("{e:#}").contains("FIFO"), "{e:#}");
        let e = h.path("null").unwrap_err();
        assert!(format!("{e:#}").contains("character device"), "{e:#}");
        assert!(hash_file_contents(&fifo, 0).is_err());
    }

    #[test]
    fn symlinks_are_followed_and_a_loop_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "real/f.txt", "x");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("d/link")).unwrap();
        std::os::unix::fs::symlink(root.join("real/f.txt"), root.join("d/file")).unwrap();
        let stat = StatCache::default();
        let h = Hasher::new(root, &stat);
        assert_eq!(names(&h.path("d").unwrap()), ["file", "link/f.txt"]);
        std::os::unix::fs::symlink(root.join("d"), root.join("d/again")).unwrap();
        let err = h.path("d").unwrap_err();
        assert!(format!("{err:#}").contains("symlink loop"), "{err:#}");
    }
}
