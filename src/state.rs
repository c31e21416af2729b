//! The stat cache: (size, mtime, ctime, inode) → digest, so an unchanged file is never read again.
//!
//! Stored in `.pipe/state/stat.bin` (fixed-size records sorted by path, versioned; loading it
//! is one read). An entry is trusted only when every stat field matches and the file was last
//! modified well before it was hashed (a write in the same clock tick as the hash could
//! otherwise hide behind an identical stat).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

const VERSION: u32 = 2;
/// A file modified less than this before it was hashed is re-read next time.
pub const RACY_NS: i64 = 100_000_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
}

impl Stat {
    pub fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            mode: m.mode() & 0o7777,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    stat: Stat,
    digest: [u8; 32],
    hashed_at_ns: i64,
}

/// File layout (little-endian): a 32-byte header (`MAGIC`, version u32, 0 u32, record count
/// u64, path bytes u64), fixed-size records sorted by path, then the paths back to back.
/// Loading is one read and no per-entry work; lookups binary-search the records.
const MAGIC: &[u8; 8] = b"pipestat";
const HEADER: usize = 32;
/// path start u64, path len u32, mode u32, size u64, mtime i64, ctime i64, ino u64,
/// hashed_at i64, digest [u8; 32].
const RECORD: usize = 88;

/// Entries as loaded: the file's bytes (fixed-size records sorted by path, then the paths
/// packed back to back), used where they are: no copy, no per-entry work. A big cache is
/// mapped ([`crate::fsutil::read_own`]): 100,000 entries are 10 MB, which a read would
/// copy into as many fresh pages (2,600 page faults).
#[derive(Default)]
struct Loaded {
    bytes: crate::fsutil::Bytes,
    /// Where the paths start (the records are `HEADER..paths_at`).
    paths_at: usize,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

impl Loaded {
    fn parse(bytes: crate::fsutil::Bytes) -> Option<Loaded> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() {
            return None;
        }
        let count = usize::try_from(u64_at(&bytes, 16)).ok()?;
        let path_len = usize::try_from(u64_at(&bytes, 24)).ok()?;
        let end = count.checked_mul(RECORD)?.checked_add(HEADER)?;
        if end.checked_add(path_len)? != bytes.len() {
            return None;
        }
        Some(Loaded {
            bytes,
            paths_at: end,
        })
    }
    fn len(&self) -> usize {
        self.paths_at.saturating_sub(HEADER) / RECORD
    }
    fn paths(&self) -> &[u8] {
        self.bytes.get(self.paths_at..).unwrap_or_default()
    }
    fn rec(&self, k: usize) -> &[u8] {
        &self.bytes[HEADER + k * RECORD..HEADER + (k + 1) * RECORD]
    }
    /// The path of record `k` ("" for a damaged record: it then matches nothing).
    fn path(&self, k: usize) -> &str {
        let r = self.rec(k);
        let start = u64_at(r, 0) as usize;
        let len = u32::from_le_bytes(r[8..12].try_into().unwrap_or([0; 4])) as usize;
        self.paths()
            .get(start..start.saturating_add(len))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
    fn entry(&self, k: usize) -> Entry {
        let r = self.rec(k);
        let mut digest = [0; 32];
        digest.copy_from_slice(&r[56..88]);
        Entry {
            stat: Stat {
                size: u64_at(r, 16),
                mtime_ns: u64_at(r, 24) as i64,
                ctime_ns: u64_at(r, 32) as i64,
                ino: u64_at(r, 40),
                mode: u32::from_le_bytes(r[12..16].try_into().unwrap_or([0; 4])),
            },
            digest,
            hashed_at_ns: u64_at(r, 48) as i64,
        }
    }
    fn search(&self, rel: &str) -> std::result::Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.path(mid).cmp(rel) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }
    /// Look `rel` up, trying `*hint` first; leaves `*hint` just past where it was (or would
    /// be), so lookups in ascending order cost one comparison each.
    fn find(&self, rel: &str, hint: &mut usize) -> Option<Entry> {
        let k = if *hint < self.len() && self.path(*hint) == rel {
            *hint
        } else {
            match self.search(rel) {
                Ok(k) => k,
                Err(k) => {
                    *hint = k;
                    return None;
                }
            }
        };
        *hint = k + 1;
        Some(self.entry(k))
    }
}

/// The file being written: records, then the paths they point into.
struct Writer {
    records: Vec<u8>,
    paths: Vec<u8>,
}

impl Writer {
    fn push_raw(&mut self, path: &str, record: &[u8]) {
        let start = self.paths.len() as u64;
        self.records.extend_from_slice(&start.to_le_bytes());
        self.records.extend_from_slice(&record[8..]);
        self.paths.extend_from_slice(path.as_bytes());
    }
    fn push(&mut self, path: &str, e: &Entry) {
        let mut r = [0u8; RECORD];
        r[8..12].copy_from_slice(&(path.len() as u32).to_le_bytes());
        r[12..16].copy_from_slice(&e.stat.mode.to_le_bytes());
        r[16..24].copy_from_slice(&e.stat.size.to_le_bytes());
        r[24..32].copy_from_slice(&e.stat.mtime_ns.to_le_bytes());
        r[32..40].copy_from_slice(&e.stat.ctime_ns.to_le_bytes());
        r[40..48].copy_from_slice(&e.stat.ino.to_le_bytes());
        r[48..56].copy_from_slice(&e.hashed_at_ns.to_le_bytes());
        r[56..88].copy_from_slice(&e.digest);
        self.push_raw(path, &r);
    }
    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.records.len() + self.paths.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&((self.records.len() / RECORD) as u64).to_le_bytes());
        out.extend_from_slice(&(self.paths.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.records);
        out.extend_from_slice(&self.paths);
        out
    }
}

/// Loaded entries (read-only) plus the ones added since (`put`), which win.
#[derive(Default)]
pub struct StatCache {
    loaded: Loaded,
    added: RwLock<HashMap<String, Entry>>,
    has_added: AtomicBool,
    dirty: AtomicBool,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl StatCache {
    /// Load the cache; a missing, unreadable or foreign-version file starts empty (it is only a cache).
    pub fn load(path: &Path) -> StatCache {
        let Ok(bytes) = crate::fsutil::read_own(path) else {
            return StatCache::default();
        };
        let ours =
            bytes.len() >= 12 && bytes[..8] == MAGIC[..] && bytes[8..12] == VERSION.to_le_bytes();
        match Loaded::parse(bytes) {
            Some(loaded) => StatCache {
                loaded,
                ..StatCache::default()
            },
            None => {
                // A file from another version is replaced silently; a damaged one is worth a word.
                if ours {
                    tracing::warn!("ignoring unreadable stat cache {}", path.display());
                }
                StatCache::default()
            }
        }
    }

    pub fn get(&self, rel: &str, stat: &Stat) -> Option<blake3::Hash> {
        self.get_near(rel, stat, &mut 0)
    }

    /// `get` for callers that look paths up in ascending order: `hint` (start at 0) makes
    /// each lookup after the first a single comparison.
    pub fn get_near(&self, rel: &str, stat: &Stat, hint: &mut usize) -> Option<blake3::Hash> {
        let trusted = |e: Entry| {
            (e.stat == *stat && e.hashed_at_ns - stat.mtime_ns > RACY_NS)
                .then(|| blake3::Hash::from_bytes(e.digest))
        };
        // Either entry is right when it is trusted for this very stat; the loaded one first,
        // so the common case takes no lock.
        if let Some(d) = self.loaded.find(rel, hint).and_then(trusted) {
            return Some(d);
        }
        if !self.has_added.load(Ordering::Acquire) {
            return None;
        }
        let e = self.added.read().ok()?.get(rel).copied()?;
        trusted(e)
    }

    pub fn put(&self, rel: &str, stat: Stat, digest: blake3::Hash) {
        if let Ok(mut map) = self.added.write() {
            map.insert(
                rel.to_string(),
                Entry {
                    stat,
                    digest: *digest.as_bytes(),
                    hashed_at_ns: now_ns(),
                },
            );
            self.has_added.store(true, Ordering::Release);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Write the cache atomically if anything changed.
    pub fn save(&self, path: &Path) -> Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let added = self
            .added
            .read()
            .map_err(|_| anyhow::anyhow!("stat cache lock poisoned"))?;
        // Merge the sorted loaded records (copied as they are) with the sorted new entries,
        // which win: no per-entry decoding, so one changed file costs a copy of the file.
        let mut new: Vec<(&str, &Entry)> = added.iter().map(|(k, v)| (k.as_str(), v)).collect();
        new.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let old = &self.loaded;
        let mut w = Writer {
            records: Vec::with_capacity((old.len() + new.len()) * RECORD),
            paths: Vec::with_capacity(
                old.paths().len() + new.iter().map(|e| e.0.len()).sum::<usize>(),
            ),
        };
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let from_old = match (i < old.len(), new.get(j)) {
                (true, None) => true,
                (false, _) => false,
                (true, Some((p, _))) => match old.path(i).cmp(p) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        i += 1; // replaced by the new entry
                        false
                    }
                },
            };
            if from_old {
                if !old.path(i).is_empty() {
                    w.push_raw(old.path(i), old.rec(i));
                }
                i += 1;
            } else {
                w.push(new[j].0, new[j].1);
                j += 1;
            }
        }
        // Replaced atomically but not fsync'd: it is only a cache (a torn or zeroed file
        // after a power cut is refused or matches nothing, and files are hashed again).
        crate::fsutil::quick_write(path, &w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: u64, mtime_ns: i64) -> Stat {
        Stat {
            size,
            mtime_ns,
            ctime_ns: mtime_ns,
            ino: 7,
            mode: 0o644,
        }
    }

    #[test]
    fn saved_entries_load_back_and_later_puts_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stat.bin");
        let old = stat(3, 1_000);
        let c = StatCache::default();
        for p in ["b/2", "a", "b/1", "c"] {
            c.put(p, old, blake3::hash(p.as_bytes()));
        }
        c.save(&file).unwrap();

        let c = StatCache::load(&file);
        for p in ["a", "b/1", "b/2", "c"] {
            assert_eq!(c.get(p, &old), Some(blake3::hash(p.as_bytes())), "{p}");
        }
        assert_eq!(c.get("b", &old), None);
        assert_eq!(c.get("a", &stat(4, 1_000)), None, "a changed stat misses");
        // Ascending lookups with a hint find the same answers.
        let mut hint = 0;
        for p in ["a", "b/1", "b/2", "b/3", "c"] {
            let want = (p != "b/3").then(|| blake3::hash(p.as_bytes()));
            assert_eq!(c.get_near(p, &old, &mut hint), want, "{p}");
        }
        c.put("b/1", stat(5, 2_000), blake3::hash(b"new"));
        c.put("d", old, blake3::hash(b"d"));
        assert_eq!(c.get("b/1", &stat(5, 2_000)), Some(blake3::hash(b"new")));
        c.save(&file).unwrap();

        let c = StatCache::load(&file);
        assert_eq!(c.get("b/1", &stat(5, 2_000)), Some(blake3::hash(b"new")));
        assert_eq!(c.get("b/1", &old), None);
        assert_eq!(c.get("d", &old), Some(blake3::hash(b"d")));
        assert_eq!(c.get("c", &old), Some(blake3::hash(b"c")));
    }

    #[test]
    fn a_file_modified_just_before_it_was_hashed_is_not_trusted() {
        let c = StatCache::default();
        let s = stat(1, now_ns());
        c.put("racy", s, blake3::hash(b"x"));
        assert_eq!(c.get("racy", &s), None);
    }

    #[test]
    fn damaged_or_foreign_files_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stat.bin");
        let c = StatCache::default();
        c.put("a", stat(1, 0), blake3::hash(b"a"));
        c.save(&file).unwrap();
        let good = std::fs::read(&file).unwrap();
        for bad in [
            good[..good.len() - 1].to_vec(),
            b"\x01\x02garbage".to_vec(),
            Vec::new(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            assert_eq!(StatCache::load(&file).get("a", &stat(1, 0)), None);
        }
    }
}
