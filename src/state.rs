//! The stat cache: (size, mtime, ctime, inode) → digest, so an unchanged file is never read again.
//!
//! Stored in `.pipe/state/stat.bin` (postcard, versioned). An entry is trusted only when every
//! stat field matches and the file was last modified well before it was hashed (a write in
//! the same clock tick as the hash could otherwise hide behind an identical stat).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

const VERSION: u32 = 1;
/// A file modified less than this before it was hashed is re-read next time.
const RACY_NS: i64 = 100_000_000;

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

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Entry {
    stat: Stat,
    digest: [u8; 32],
    hashed_at_ns: i64,
}

#[derive(Serialize, Deserialize)]
struct StatFile<S> {
    version: u32,
    entries: Vec<(S, Entry)>,
}

/// Entries as loaded: sorted by path (as saved), paths packed into one string. Looked up by
/// binary search, so loading builds no hash map and allocates no string per entry.
#[derive(Default)]
struct Loaded {
    paths: String,
    /// (start, end) of the path in `paths`, and the entry.
    entries: Vec<(usize, usize, Entry)>,
}

impl Loaded {
    fn path(&self, k: usize) -> &str {
        let (a, b, _) = self.entries[k];
        &self.paths[a..b]
    }
    fn find(&self, rel: &str) -> Option<&Entry> {
        let k = self
            .entries
            .binary_search_by(|(a, b, _)| self.paths[*a..*b].cmp(rel))
            .ok()?;
        Some(&self.entries[k].2)
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
        let Ok(bytes) = std::fs::read(path) else {
            return StatCache::default();
        };
        match postcard::from_bytes::<StatFile<&str>>(&bytes) {
            Ok(f) if f.version == VERSION && f.entries.is_sorted_by(|a, b| a.0 < b.0) => {
                let mut loaded = Loaded {
                    paths: String::with_capacity(f.entries.iter().map(|e| e.0.len()).sum()),
                    entries: Vec::with_capacity(f.entries.len()),
                };
                for (p, e) in f.entries {
                    let start = loaded.paths.len();
                    loaded.paths.push_str(p);
                    loaded.entries.push((start, loaded.paths.len(), e));
                }
                StatCache {
                    loaded,
                    ..StatCache::default()
                }
            }
            _ => {
                tracing::warn!("ignoring unreadable stat cache {}", path.display());
                StatCache::default()
            }
        }
    }

    pub fn get(&self, rel: &str, stat: &Stat) -> Option<blake3::Hash> {
        let added;
        let e = if self.has_added.load(Ordering::Acquire) {
            added = self.added.read().ok()?;
            added.get(rel).or_else(|| self.loaded.find(rel))?
        } else {
            self.loaded.find(rel)?
        };
        (e.stat == *stat && e.hashed_at_ns - stat.mtime_ns > RACY_NS)
            .then(|| blake3::Hash::from_bytes(e.digest))
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
        let mut entries: Vec<(&str, Entry)> = (0..self.loaded.entries.len())
            .map(|k| (self.loaded.path(k), self.loaded.entries[k].2))
            .filter(|(p, _)| !added.contains_key(*p))
            .chain(added.iter().map(|(k, v)| (k.as_str(), *v)))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let bytes = postcard::to_allocvec(&StatFile {
            version: VERSION,
            entries,
        })?;
        crate::fsutil::atomic_write(path, &bytes)
    }
}
