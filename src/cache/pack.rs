//! Run-cache packs: the run-cache entries one process stores, appended to one file
//! `runs/pack-<pid>.<host>.<n>.jsonl` instead of one file each.
//!
//! A line is `<fingerprint> <entry JSON>\n`, written with one `write` to a file this process
//! created (`O_EXCL`) and opened with `O_APPEND`; no other process appends to it. Readers
//! index every pack once per process (fingerprint → where its JSON is), read only whole
//! lines (a torn last line, a killed writer's, is skipped), and look again at most once a
//! second on a miss, so entries another build sharing the cache stores meanwhile are found
//! too. What the JSON says is checked by the caller (`RunEntry::parse`), as for a loose
//! entry. `pipe gc` merges the packs of dead writers into one, less the entries nothing
//! references; a live writer's pack is left as it is.
//!
//! Bytes and fingerprints only: the entry type stays in `cache.rs`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PREFIX: &str = "pack-";
const SUFFIX: &str = ".jsonl";
/// On a miss, look for new entries at most this often.
const REFRESH: Duration = Duration::from_secs(1);

/// Whether a file name in `runs/` is a pack.
pub fn is_pack(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX)
}

fn is_fp(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The whole lines of `bytes` that look like entries: (fingerprint, offset of its JSON,
/// length of its JSON), and how many bytes the whole lines take.
pub fn scan(bytes: &[u8]) -> (Vec<(String, u64, u64)>, u64) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while let Some(n) = bytes[at..].iter().position(|&b| b == b'\n') {
        let line = &bytes[at..at + n];
        if line.len() > 65 && line[64] == b' ' && is_fp(&line[..64]) {
            let fp = String::from_utf8_lossy(&line[..64]).into_owned();
            found.push((fp, (at + 65) as u64, (n - 65) as u64));
        }
        at += n + 1;
    }
    (found, at as u64)
}

/// One line of a pack.
pub fn line(fp: &str, json: &[u8]) -> Vec<u8> {
    let mut l = Vec::with_capacity(json.len() + 66);
    l.extend_from_slice(fp.as_bytes());
    l.push(b' ');
    l.extend_from_slice(json);
    l.push(b'\n');
    l
}

#[derive(Default)]
struct Index {
    /// fingerprint → where its JSON is (pack, offset, length): more than one when several
    /// processes stored it; this process's own newest first, then in the packs' order.
    entries: HashMap<String, Vec<(PathBuf, u64, u64)>>,
    /// How far each pack was read (up to its last whole line).
    read: HashMap<PathBuf, u64>,
    refreshed: Option<Instant>,
}

impl Index {
    /// Read what the packs in `dir` gained since the last look.
    fn refresh(&mut self, dir: &Path) {
        self.refreshed = Some(Instant::now());
        for path in packs_in(dir) {
            let from = self.read.get(&path).copied().unwrap_or(0);
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            if f.metadata().is_ok_and(|m| m.len() <= from) {
                continue;
            }
            let mut bytes = Vec::new();
            if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
                continue;
            }
            let (found, whole) = scan(&bytes);
            for (fp, off, len) in found {
                let at = (path.clone(), from + off, len);
                let places = self.entries.entry(fp).or_default();
                if !places.contains(&at) {
                    places.push(at);
                }
            }
            self.read.insert(path, from + whole);
        }
    }
}

/// The packs in `dir`, sorted by name.
pub fn packs_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(is_pack))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Writer {
    file: std::fs::File,
    path: PathBuf,
    len: u64,
}

/// The packs of one cache folder as this process sees them, and the one it appends to.
#[derive(Default)]
pub struct Packs {
    index: Mutex<Option<Index>>,
    writer: Mutex<Option<Writer>>,
}

/// A new pack's name: the writer's tag (see `fsutil::tmp_writer`) and a number.
fn new_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = crate::state::now_ns();
    format!("{PREFIX}{}{t:x}{n}{SUFFIX}", crate::fsutil::tmp_tag())
}

impl std::fmt::Debug for Packs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Packs")
    }
}

impl Packs {
    /// Append an entry to this process's pack in `dir`, made at the first one.
    pub fn append(&self, dir: &Path, fp: &str, json: &[u8]) -> std::io::Result<()> {
        let line = line(fp, json);
        let mut w = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("pack writer poisoned"))?;
        if w.is_none() {
            let path = dir.join(new_name());
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            *w = Some(Writer { file, path, len: 0 });
        }
        let wr = w.as_mut().expect("made above");
        if let Err(e) = wr.file.write_all(&line) {
            // Whatever part was written is a torn line: later entries go to a new pack.
            *w = None;
            return Err(e);
        }
        let (path, off) = (wr.path.clone(), wr.len);
        wr.len += line.len() as u64;
        let end = wr.len;
        drop(w);
        if let Ok(mut ix) = self.index.lock()
            && let Some(ix) = ix.as_mut()
        {
            ix.entries
                .entry(fp.to_string())
                .or_default()
                .insert(0, (path.clone(), off + 65, json.len() as u64));
            let read = ix.read.entry(path).or_insert(0);
            *read = (*read).max(end);
        }
        Ok(())
    }

    /// Every copy of the JSON of `fp` (the caller takes the first that checks out): each
    /// pack's path and its bytes. Loads the index at the first call; looks again on a miss
    /// at most once a second.
    pub fn get(&self, dir: &Path, fp: &str) -> Vec<(PathBuf, std::io::Result<Vec<u8>>)> {
        let places = {
            let Ok(mut ix) = self.index.lock() else {
                return vec![];
            };
            let ix = ix.get_or_insert_with(|| {
                let mut i = Index::default();
                i.refresh(dir);
                i
            });
            if !ix.entries.contains_key(fp) && ix.refreshed.is_none_or(|t| t.elapsed() >= REFRESH) {
                ix.refresh(dir);
            }
            ix.entries.get(fp).cloned().unwrap_or_default()
        };
        places
            .into_iter()
            .map(|(path, off, len)| {
                let read = std::fs::File::open(&path).and_then(|f| {
                    let mut buf = vec![0; len as usize];
                    f.read_exact_at(&mut buf, off)?;
                    Ok(buf)
                });
                (path, read)
            })
            .collect()
    }

    /// Every fingerprint in the packs of `dir` (looked at now).
    pub fn fingerprints(&self, dir: &Path) -> Vec<String> {
        let Ok(mut ix) = self.index.lock() else {
            return vec![];
        };
        let ix = ix.get_or_insert_with(Index::default);
        ix.refresh(dir);
        let mut v: Vec<String> = ix.entries.keys().cloned().collect();
        v.sort();
        v
    }
}

/// What a gc of the packs did (or would do).
#[derive(Debug, Default, PartialEq)]
pub struct Swept {
    /// Entries dropped (as many as loose entry files would have been removed).
    pub entries: usize,
    /// Bytes of the dropped lines.
    pub bytes: u64,
}

/// `pipe gc`: merge the packs of `dir` whose writer is dead (or unknown: another machine's
/// once a day old, as for temporary files) into one, keeping the entries `keep` names (the
/// first of each fingerprint). The merged pack is written through a temporary file and a
/// rename before the old ones go, so a kill leaves at worst an entry twice.
pub fn gc(
    dir: &Path,
    tmp: &Path,
    keep: &dyn Fn(&str) -> bool,
    dry_run: bool,
) -> std::io::Result<Swept> {
    let mut swept = Swept::default();
    let mut merged: Vec<u8> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut done = Vec::new();
    let mut changed = false;
    for path in packs_in(dir) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !crate::fsutil::writer_gone(&path, &name) {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let (found, whole) = scan(&bytes);
        // A torn tail or lines that are not entries go too (not counted as entries).
        let mut kept_bytes = 0u64;
        for (fp, off, len) in found {
            let l = &bytes[(off - 65) as usize..(off + len + 1) as usize];
            if keep(&fp) && seen.insert(fp) {
                merged.extend_from_slice(l);
                kept_bytes += l.len() as u64;
            } else {
                swept.entries += 1;
                swept.bytes += l.len() as u64;
            }
        }
        changed |= kept_bytes != bytes.len() as u64 || whole != bytes.len() as u64;
        done.push(path);
    }
    // One pack whose every line stays: nothing to do.
    if dry_run || !(changed || done.len() > 1) {
        return Ok(swept);
    }
    if !merged.is_empty() {
        let target = dir.join(new_name());
        crate::fsutil::quick_write_via(tmp, &target, &merged).map_err(std::io::Error::other)?;
    }
    for p in done {
        std::fs::remove_file(p)?;
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn scan_finds_whole_lines_and_skips_a_torn_tail_and_garbage() {
        let mut bytes = line(&fp('a'), b"{\"x\":1}");
        bytes.extend_from_slice(b"not an entry\n\n");
        bytes.extend(line(&fp('b'), b"{}"));
        let whole = bytes.len() as u64;
        let torn = line(&fp('c'), b"{\"y\":2}");
        for cut in 0..torn.len() {
            let mut b = bytes.clone();
            b.extend_from_slice(&torn[..cut]);
            let (found, read) = scan(&b);
            let fps: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
            assert_eq!(fps, [fp('a'), fp('b')], "cut at {cut}");
            assert_eq!(read, whole);
            let (_, off, len) = &found[0];
            assert_eq!(&b[*off as usize..(*off + *len) as usize], b"{\"x\":1}");
        }
    }

    fn bytes(got: Vec<(PathBuf, std::io::Result<Vec<u8>>)>) -> Vec<Vec<u8>> {
        got.into_iter().map(|(_, b)| b.unwrap()).collect()
    }

    #[test]
    fn entries_appended_are_found_by_this_process_and_by_a_fresh_one() {
        let t = tempfile::tempdir().unwrap();
        let a = Packs::default();
        // A miss loads the index; an append afterwards is found without looking again.
        assert!(a.get(t.path(), &fp('a')).is_empty());
        a.append(t.path(), &fp('a'), b"{\"a\":1}").unwrap();
        a.append(t.path(), &fp('b'), b"{\"b\":2}").unwrap();
        assert_eq!(bytes(a.get(t.path(), &fp('a'))), [b"{\"a\":1}"]);
        assert_eq!(packs_in(t.path()).len(), 1, "one pack per process");
        // Another process's view, with a torn line at the end of a second pack.
        let mut torn = line(&fp('d'), b"{}");
        torn.pop();
        let other = t.path().join("pack-other.jsonl");
        let mut text = line(&fp('c'), b"{\"c\":3}");
        text.extend(torn);
        std::fs::write(&other, text).unwrap();
        let b = Packs::default();
        assert_eq!(bytes(b.get(t.path(), &fp('b'))), [b"{\"b\":2}"]);
        assert_eq!(bytes(b.get(t.path(), &fp('c'))), [b"{\"c\":3}"]);
        assert!(b.get(t.path(), &fp('d')).is_empty());
        assert_eq!(b.fingerprints(t.path()), [fp('a'), fp('b'), fp('c')]);
        // Stored again by this process: its newest copy first, the other one still there.
        b.append(t.path(), &fp('c'), b"{\"c\":4}").unwrap();
        assert_eq!(
            bytes(b.get(t.path(), &fp('c'))),
            [b"{\"c\":4}".as_slice(), b"{\"c\":3}"]
        );
    }

    #[test]
    fn gc_merges_dead_packs_keeping_only_what_is_referenced() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("runs")).unwrap();
        let dir = t.path().join("runs");
        // Packs of a process of this machine that is gone (no such pid).
        let tag = crate::fsutil::tmp_tag();
        let host = tag.split_once('.').unwrap().1;
        let dead = |n: u32| dir.join(format!("pack-999999999.{host}{n}.jsonl"));
        let mut one = line(&fp('a'), b"{}");
        one.extend(line(&fp('b'), b"{}"));
        std::fs::write(dead(1), &one).unwrap();
        let mut two = line(&fp('c'), b"{}");
        two.extend_from_slice(b"torn");
        std::fs::write(dead(2), &two).unwrap();
        // This process's pack is live: left alone.
        let live = Packs::default();
        live.append(&dir, &fp('e'), b"{}").unwrap();
        let keep = |f: &str| f != fp('b');
        let dry = gc(&dir, &t.path().join("tmp"), &keep, true).unwrap();
        assert_eq!(dry.entries, 1);
        assert_eq!(packs_in(&dir).len(), 3, "a dry run changes nothing");
        assert_eq!(gc(&dir, &t.path().join("tmp"), &keep, false).unwrap(), dry);
        assert_eq!(packs_in(&dir).len(), 2, "the two dead packs became one");
        let fresh = Packs::default();
        assert_eq!(fresh.fingerprints(&dir), [fp('a'), fp('c'), fp('e')]);
        // Again: one dead pack, every line kept, nothing to do.
        assert_eq!(
            gc(&dir, &t.path().join("tmp"), &keep, false).unwrap(),
            Swept::default()
        );
        assert_eq!(packs_in(&dir).len(), 2);
    }
}
