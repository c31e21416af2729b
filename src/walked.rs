//! What folder walks saw, for the no-op proof ([`crate::fresh`]): every folder listed, with
//! the signature it had before it was listed, and every file hashed, with the stat its hash
//! was looked up by. A folder's mtime and ctime change whenever a name in it is added,
//! removed or renamed, so an unchanged folder signature stands for listing it again, and an
//! unchanged file signature for hashing the file again (the stat cache's own rule).
//! Checking a walk of 100,000 files is then 100,000 `fstatat` calls and no `getdents`, no
//! stat cache lookup, no digest.
//!
//! Kept as bytes, encoded as the walk goes and checked in place (100,000 files make 5 MB):
//! - `1, u16 len, folder, u8 there, sig`: a folder walked (or a glob's base, `there` = 0
//!   when it was missing);
//! - `2, u16 len, folder, u32 n`, then n times `u16 len, name, sig`: files of one folder.
//!
//! A sig is 36 bytes: mode (with the type bits), size, mtime, ctime (ns) and inode.
//! Folder paths are relative to the workspace.

use crate::fsutil::Sig;
use crate::state::Stat;
use rayon::prelude::*;
use std::os::fd::AsRawFd;
use std::path::Path;

const FOLDER: u8 = 1;
const FILES: u8 = 2;
const SIG: usize = 36;

/// A walk's record, as it is made.
#[derive(Default)]
pub struct Tree {
    bytes: Vec<u8>,
    /// The newest mtime or ctime recorded: a proof needs them all older than the racy window.
    newest: i64,
    /// A symlink was followed: what it leads to can change with no signature recorded here.
    unprovable: bool,
}

/// The signature of a regular file from the stat cache's view of it.
fn file_sig(s: &Stat) -> Sig {
    Sig::new(0o100000 | s.mode, s.size, s.mtime_ns, s.ctime_ns, s.ino)
}

fn put_sig(out: &mut Vec<u8>, s: &Sig) {
    let (mode, size, mtime, ctime, ino) = s.parts();
    out.extend_from_slice(&mode.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&mtime.to_le_bytes());
    out.extend_from_slice(&ctime.to_le_bytes());
    out.extend_from_slice(&ino.to_le_bytes());
}

fn get_sig(b: &[u8]) -> Sig {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Sig::new(
        u32::from_le_bytes(b[0..4].try_into().unwrap_or_default()),
        u64_at(4),
        u64_at(12) as i64,
        u64_at(20) as i64,
        u64_at(28),
    )
}

/// A name or path with its u16 length; `false` (nothing written) when it is too long.
fn put_name(out: &mut Vec<u8>, name: &str) -> bool {
    let Ok(len) = u16::try_from(name.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    true
}

impl Tree {
    /// A folder about to be listed (`None`: a glob's base that is not there).
    pub fn folder(&mut self, rel: &str, sig: Option<Sig>) {
        self.bytes.push(FOLDER);
        if !put_name(&mut self.bytes, rel) {
            self.unprovable = true;
            return;
        }
        self.bytes.push(u8::from(sig.is_some()));
        let sig = sig.unwrap_or_else(|| Sig::new(0, 0, 0, 0, 0));
        self.newest = self.newest.max(sig.newest());
        put_sig(&mut self.bytes, &sig);
    }

    /// Files of one folder, by their workspace-relative paths and the stats hashed by.
    pub fn files(&mut self, run: &[(String, Stat)]) {
        let Some((first, _)) = run.first() else {
            return;
        };
        let dir = first.rsplit_once('/').map_or("", |(d, _)| d);
        self.bytes.push(FILES);
        if !put_name(&mut self.bytes, dir) {
            self.unprovable = true;
            return;
        }
        self.bytes
            .extend_from_slice(&(run.len() as u32).to_le_bytes());
        for (rel, stat) in run {
            let name = rel
                .get(dir.len() + usize::from(!dir.is_empty())..)
                .unwrap_or("");
            if !put_name(&mut self.bytes, name) {
                self.unprovable = true;
                return;
            }
            let sig = file_sig(stat);
            self.newest = self.newest.max(sig.newest());
            put_sig(&mut self.bytes, &sig);
        }
    }

    /// Room for `files` more files (names of about 16 bytes).
    pub fn reserve(&mut self, files: usize) {
        self.bytes.reserve(files * (2 + 16 + SIG));
    }

    /// A symlink was followed (or a name could not be recorded): no proof of this walk.
    pub fn unprovable(&mut self) {
        self.unprovable = true;
    }

    /// The record, if it can prove anything: nothing followed through a symlink and every
    /// signature older than the racy window before `now_ns`.
    pub fn into_bytes(self, now_ns: i64) -> Option<Vec<u8>> {
        (!self.unprovable && self.newest < now_ns - crate::state::RACY_NS).then_some(self.bytes)
    }
}

/// One item of a record, borrowed from its bytes.
enum Item<'a> {
    Folder(&'a str, Option<Sig>),
    Files {
        dir: &'a str,
        n: usize,
        body: &'a [u8],
    },
}

/// Read a u16-length-prefixed name at `b[*at..]`.
fn take_name<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let len = u16::from_le_bytes(b.get(*at..*at + 2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(b.get(*at + 2..*at + 2 + len)?).ok()?;
    *at += 2 + len;
    Some(name)
}

fn items(b: &[u8]) -> Option<Vec<Item<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let tag = b[at];
        at += 1;
        let name = take_name(b, &mut at)?;
        match tag {
            FOLDER => {
                let there = *b.get(at)? == 1;
                let sig = get_sig(b.get(at + 1..at + 1 + SIG)?);
                at += 1 + SIG;
                out.push(Item::Folder(name, there.then_some(sig)));
            }
            FILES => {
                let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
                at += 4;
                let start = at;
                for _ in 0..n {
                    take_name(b, &mut at)?;
                    b.get(at..at + SIG)?;
                    at += SIG;
                }
                out.push(Item::Files {
                    dir: name,
                    n,
                    body: &b[start..at],
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `lstat` of `name` in the open folder `dir` (`Ok(None)`: not there).
fn lstat_at(dir: &std::fs::File, name: &str, buf: &mut Vec<u8>) -> std::io::Result<Option<Sig>> {
    buf.clear();
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    let c = std::ffi::CStr::from_bytes_with_nul(buf)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is a NUL-terminated name, `st` a buffer fstatat fills when it returns 0.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::NotFound => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: fstatat returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(Some(Sig::new(
        st.st_mode,
        st.st_size as u64,
        st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        st.st_ino,
    )))
}

/// Whether every folder and file the record names is still as recorded, looked at on all
/// cores. A damaged record holds nothing.
pub fn holds(root: &Path, bytes: &[u8]) -> bool {
    let Some(items) = items(bytes) else {
        return false;
    };
    let at = |rel: &str| {
        if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        }
    };
    items.par_iter().all(|item| match item {
        Item::Folder(rel, sig) => Sig::now(&at(rel)).is_ok_and(|now| now == *sig),
        Item::Files { dir, n, body } => {
            let Ok(d) = std::fs::File::open(at(dir)) else {
                return false;
            };
            let mut buf = Vec::with_capacity(64);
            let mut i = 0;
            (0..*n).all(|_| {
                let Some(name) = take_name(body, &mut i) else {
                    return false;
                };
                let sig = get_sig(&body[i..i + SIG]);
                i += SIG;
                lstat_at(&d, name, &mut buf).is_ok_and(|now| now == Some(sig))
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_of(p: &Path) -> Stat {
        Stat::of(&std::fs::metadata(p).unwrap())
    }

    #[test]
    fn a_record_holds_until_a_file_or_a_folder_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        for f in ["data/a.txt", "data/b.txt", "data/sub/c.txt"] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        let record = || {
            let mut t = Tree::default();
            for d in ["data", "data/sub"] {
                t.folder(d, Sig::now(&root.join(d)).unwrap());
            }
            t.folder("gone", None);
            let run = |fs: &[&str]| -> Vec<(String, Stat)> {
                fs.iter()
                    .map(|f| (f.to_string(), stat_of(&root.join(f))))
                    .collect()
            };
            t.files(&run(&["data/a.txt", "data/b.txt"]));
            t.files(&run(&["data/sub/c.txt"]));
            t.into_bytes(i64::MAX).unwrap()
        };
        let bytes = record();
        assert!(holds(root, &bytes));
        // A damaged record holds nothing.
        assert!(!holds(root, &bytes[..bytes.len() - 1]));
        // A file rewritten (same size), a name added, the missing base created.
        std::fs::write(root.join("data/sub/c.txt"), "y").unwrap();
        assert!(!holds(root, &bytes));
        let bytes = record();
        std::fs::write(root.join("data/new.txt"), "n").unwrap();
        assert!(!holds(root, &bytes));
        let bytes = record();
        std::fs::create_dir(root.join("gone")).unwrap();
        assert!(!holds(root, &bytes));
    }

    #[test]
    fn a_symlink_or_a_fresh_signature_proves_nothing() {
        let mut t = Tree::default();
        t.folder("d", Some(Sig::new(0o40755, 1, 5, 5, 1)));
        assert!(t.into_bytes(5).is_none(), "written within the racy window");
        let mut t = Tree::default();
        t.unprovable();
        assert!(t.into_bytes(i64::MAX).is_none());
    }
}
