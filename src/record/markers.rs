//! Running markers, kept as one append-only journal per build in `.pipe/state/journal/`.
//!
//! A build appends a line when a stage starts (or its command's process group starts: the
//! run id, the time, the group and its leader's start time) and when it ends:
//!
//! ```text
//! start <run-id> <unix-ms> <pgid|-> <leader-start|-> "<stage>"
//! end "<stage>"
//! ```
//!
//! (the stage as a JSON string). A stage started and not ended is *open*: its last run was
//! cut off (`incomplete`), and its group is what a later build must stop before running it
//! again. Each line is one `write` to a file opened with `O_APPEND`, never fsynced: a kill
//! cannot tear it, and a torn or garbled line (a power cut) is ignored.
//!
//! Files: `<run-id>.journal` (the build's own, created at its first record) and
//! `carried.journal` (the stages still open after earlier builds). Holding the workspace
//! lock, a build *compacts* when it starts and when it ends: it replays everything into one
//! state, writes the open stages to `carried.journal` (through a temporary file and a
//! rename; removed when none is open) and deletes the journals it replayed. So a stage cut
//! off by a crashed build and ended by a later one is closed however many builds lie
//! between. Readers (`pipe status`, which takes no lock) read the journals before the
//! carried file and replay the carried file first: a compaction racing them can only make
//! them replay a journal twice, which changes nothing.
//!
//! Markers an older pipe wrote (`.pipe/state/running/<stage>`: `RUN_ID [PGID START]`) are
//! read as open stages (named by the file) and folded in by the next compaction.

use crate::fsutil::Layout;
use crate::graph::Pipeline;
use crate::process_group::Recorded;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a marker says.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub run_id: String,
    pub group: Option<Recorded>,
    /// When the marker was last written (the stage, or its current command, started).
    pub since: Option<SystemTime>,
}

const CARRIED: &str = "carried.journal";
const SUFFIX: &str = ".journal";

fn journal_dir(layout: &Layout) -> PathBuf {
    layout.state().join("journal")
}

/// Where an older pipe kept one marker file per stage.
fn legacy_dir(layout: &Layout) -> PathBuf {
    layout.running_dir()
}

/// Where markers are kept: the journal's folder, then the older one-file-per-marker folder.
pub fn dirs(layout: &Layout) -> [PathBuf; 2] {
    [journal_dir(layout), legacy_dir(layout)]
}

/// The `start` line of a marker.
fn start_line(stage: &str, m: &Marker) -> String {
    let ms = m
        .since
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis());
    let (pgid, start) = match m.group {
        Some(g) => (g.pgid.to_string(), g.start.to_string()),
        None => ("-".into(), "-".into()),
    };
    let name = serde_json::to_string(stage).unwrap_or_default();
    format!("start {} {ms} {pgid} {start} {name}\n", m.run_id)
}

fn end_line(stage: &str) -> String {
    format!("end {}\n", serde_json::to_string(stage).unwrap_or_default())
}

/// One record of a journal.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    Start(String, Marker),
    End(String),
}

fn parse_line(line: &str) -> Option<Record> {
    let (kind, rest) = line.split_once(' ')?;
    match kind {
        "end" => Some(Record::End(serde_json::from_str(rest).ok()?)),
        "start" => {
            let mut words = rest.splitn(5, ' ');
            let run_id = words.next().filter(|w| !w.is_empty())?.to_string();
            let ms: u64 = words.next()?.parse().ok()?;
            let (pgid, start) = (words.next()?, words.next()?);
            let group = match (pgid, start) {
                ("-", "-") => None,
                (p, s) => Some(Recorded {
                    pgid: p.parse().ok()?,
                    start: s.parse().ok()?,
                }),
            };
            let stage: String = serde_json::from_str(words.next()?).ok()?;
            let since = (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms));
            Some(Record::Start(
                stage,
                Marker {
                    run_id,
                    group,
                    since,
                },
            ))
        }
        _ => None,
    }
}

/// Apply a journal's records to `state`, in order. Only whole lines count: the bytes after
/// the last newline (a torn write) and lines that do not parse are skipped.
fn replay(state: &mut BTreeMap<String, Marker>, bytes: &[u8]) {
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..i],
        None => return,
    };
    for line in whole.split(|&b| b == b'\n') {
        let Some(rec) = std::str::from_utf8(line).ok().and_then(parse_line) else {
            continue;
        };
        match rec {
            Record::Start(stage, m) => {
                state.insert(stage, m);
            }
            Record::End(stage) => {
                state.remove(&stage);
            }
        }
    }
}

/// A marker file of an older pipe: `RUN_ID [PGID START]`, its time the file's.
fn legacy_marker(path: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let run_id = words.next().unwrap_or_default().to_string();
    let group = match (
        words.next().and_then(|w| w.parse().ok()),
        words.next().and_then(|w| w.parse().ok()),
    ) {
        (Some(pgid), Some(start)) => Some(Recorded { pgid, start }),
        _ => None,
    };
    let since = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Some(Marker {
        run_id,
        group,
        since,
    })
}

/// Everything on disk, replayed: the open stages, and the files (build journals and
/// legacy markers) a compaction may fold into the carried file.
struct Loaded {
    open: BTreeMap<String, Marker>,
    sources: Vec<PathBuf>,
    carried: Option<Vec<u8>>,
}

fn load(layout: &Layout) -> Loaded {
    let dir = journal_dir(layout);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(SUFFIX) && n != CARRIED && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    // Run ids sort by time: older builds' records first.
    names.sort();
    // Journals before the carried file (see the module comment).
    let mut journals = Vec::new();
    let mut sources = Vec::new();
    for n in names {
        let path = dir.join(&n);
        if let Ok(bytes) = std::fs::read(&path) {
            journals.push(bytes);
            sources.push(path);
        }
    }
    let carried = std::fs::read(dir.join(CARRIED)).ok();
    let mut open = BTreeMap::new();
    // Legacy markers are older than any journal.
    if let Ok(rd) = std::fs::read_dir(legacy_dir(layout)) {
        for e in rd.filter_map(|e| e.ok()) {
            let path = e.path();
            if let (Some(name), Some(m)) = (e.file_name().to_str(), legacy_marker(&path)) {
                open.insert(name.to_string(), m);
            }
            sources.push(path);
        }
    }
    if let Some(c) = &carried {
        replay(&mut open, c);
    }
    for j in &journals {
        replay(&mut open, j);
    }
    Loaded {
        open,
        sources,
        carried,
    }
}

/// Every open stage's marker (the stages whose last run was cut off, or is running now).
pub fn all(layout: &Layout) -> BTreeMap<String, Marker> {
    load(layout).open
}

pub fn read(layout: &Layout, stage: &str) -> Option<Marker> {
    all(layout).remove(stage)
}

/// Stage names whose last run was cut off (or is running in a live build).
pub fn incomplete(p: &Pipeline) -> BTreeSet<String> {
    of_pipeline(p, &all(&p.layout))
}

/// The stages of `p` among `open`.
pub fn of_pipeline(p: &Pipeline, open: &BTreeMap<String, Marker>) -> BTreeSet<String> {
    p.stages
        .iter()
        .filter(|s| open.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect()
}

/// The text of a carried file holding `open`.
fn carried_text(open: &BTreeMap<String, Marker>) -> String {
    open.iter().map(|(s, m)| start_line(s, m)).collect()
}

/// Fold every journal into the carried file, less the stages `drop`; returns what stays
/// open. Only under the workspace lock (no build is appending meanwhile).
fn fold(layout: &Layout, drop: &[String]) -> Result<BTreeMap<String, Marker>> {
    let Loaded {
        mut open,
        sources,
        carried,
    } = load(layout);
    let mut dropped = false;
    for s in drop {
        dropped |= open.remove(s).is_some();
    }
    if sources.is_empty() && !dropped {
        return Ok(open);
    }
    let path = journal_dir(layout).join(CARRIED);
    let text = carried_text(&open);
    if open.is_empty() {
        if carried.is_some() {
            std::fs::remove_file(&path)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    } else if carried.as_deref() != Some(text.as_bytes()) {
        crate::fsutil::quick_write(&path, text.as_bytes())?;
    }
    // The carried file holds what they said; a crash before this point replays them again,
    // which changes nothing.
    for s in sources {
        let _ = std::fs::remove_file(s);
    }
    Ok(open)
}

/// At the start of a build, holding the workspace lock: fold earlier builds' journals into
/// the carried file. Returns every open marker.
pub fn compact(layout: &Layout) -> Result<BTreeMap<String, Marker>> {
    fold(layout, &[])
}

/// `pipe clean`, holding the workspace lock: the stages are no longer cut off.
pub fn clear(layout: &Layout, stages: &[String]) -> Result<()> {
    fold(layout, stages).map(drop)
}

/// One build's journal: created at its first record, appended line by line.
pub struct Journal {
    layout: Layout,
    run_id: String,
    file: Mutex<Option<std::fs::File>>,
    /// Stages open now: carried over (`compact`'s answer) or started by this build. Only
    /// their end is written.
    open: Mutex<HashSet<String>>,
}

impl Journal {
    pub fn new(layout: &Layout, run_id: &str, open: impl IntoIterator<Item = String>) -> Journal {
        Journal {
            layout: layout.clone(),
            run_id: run_id.to_string(),
            file: Mutex::new(None),
            open: Mutex::new(open.into_iter().collect()),
        }
    }

    fn path(&self) -> PathBuf {
        journal_dir(&self.layout).join(format!("{}{SUFFIX}", self.run_id))
    }

    fn append(&self, line: &str) -> Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("journal lock poisoned"))?;
        if file.is_none() {
            let dir = journal_dir(&self.layout);
            let path = self.path();
            let f = crate::fsutil::remaking_dirs(&[&dir], || {
                crate::fsutil::ensure_dir(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))
            })?;
            *file = Some(f);
        }
        let f = file.as_mut().expect("opened above");
        // One write a line: with O_APPEND it lands whole at the end.
        f.write_all(line.as_bytes())
            .with_context(|| format!("cannot write {}", self.path().display()))
    }

    /// The stage started, or its command's process group did (`group`).
    pub fn start(&self, stage: &str, group: Option<Recorded>) -> Result<()> {
        if let Ok(mut open) = self.open.lock() {
            open.insert(stage.to_string());
        }
        let m = Marker {
            run_id: self.run_id.clone(),
            group,
            since: Some(SystemTime::now()),
        };
        self.append(&start_line(stage, &m))
    }

    /// The stage ended (ran, was restored or failed): it is no longer cut off.
    pub fn end(&self, stage: &str) {
        let was_open = self.open.lock().is_ok_and(|mut o| o.remove(stage));
        if was_open && let Err(e) = self.append(&end_line(stage)) {
            tracing::warn!("{e:#}");
        }
    }

    /// The build is over (still holding the workspace lock): fold its journal into the
    /// carried file. A build that wrote nothing has nothing to fold.
    pub fn close(&self) -> Result<()> {
        let wrote = self.file.lock().is_ok_and(|mut f| f.take().is_some());
        if wrote {
            compact(&self.layout)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(run: &str, ms: u64, group: Option<(i32, u64)>) -> Marker {
        Marker {
            run_id: run.into(),
            group: group.map(|(pgid, start)| Recorded { pgid, start }),
            since: Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    #[test]
    fn lines_round_trip_with_any_stage_name() {
        for stage in ["train", "train@lr=0.01,seed=1", "a b\n\"c\"", ""] {
            let m = marker("20260101-000000-000", 1_700_000_000_123, Some((42, 99)));
            assert_eq!(
                parse_line(start_line(stage, &m).trim_end_matches('\n')),
                Some(Record::Start(stage.into(), m.clone()))
            );
            let m = marker("r", 5, None);
            assert_eq!(
                parse_line(start_line(stage, &m).trim_end_matches('\n')),
                Some(Record::Start(stage.into(), m))
            );
            assert_eq!(
                parse_line(end_line(stage).trim_end_matches('\n')),
                Some(Record::End(stage.into()))
            );
        }
    }

    #[test]
    fn replay_keeps_started_stages_that_did_not_end_and_the_last_start_wins() {
        let mut text = String::new();
        text += &start_line("a", &marker("r1", 1, None));
        text += &start_line("b", &marker("r1", 2, None));
        text += &start_line("a", &marker("r1", 3, Some((7, 8))));
        text += &end_line("b");
        text += &start_line("c", &marker("r1", 4, None));
        text += &end_line("c");
        let mut state = BTreeMap::new();
        replay(&mut state, text.as_bytes());
        assert_eq!(state.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(state["a"], marker("r1", 3, Some((7, 8))));
        // Replaying again changes nothing (a compaction racing a reader).
        let before = state.clone();
        replay(&mut state, text.as_bytes());
        assert_eq!(state, before);
    }

    #[test]
    fn a_torn_last_line_and_garbage_are_ignored() {
        let whole = start_line("a", &marker("r1", 1, None));
        let next = end_line("a");
        for cut in 0..next.len() {
            let mut state = BTreeMap::new();
            let text = format!("{whole}\0\0garbage\nstart x\n{}", &next[..cut]);
            replay(&mut state, text.as_bytes());
            assert_eq!(state.keys().collect::<Vec<_>>(), ["a"], "cut at {cut}");
        }
        // A torn start (no newline) is no marker, however much of it was written.
        let line = start_line("long-stage-name", &marker("r1", 1, Some((3, 4))));
        for cut in 0..line.len() {
            let mut state = BTreeMap::new();
            replay(&mut state, &line.as_bytes()[..cut]);
            assert!(state.is_empty(), "cut at {cut}");
        }
    }

    fn layout() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path(), None, None);
        (t, l)
    }

    fn files(l: &Layout) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(journal_dir(l))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_stage_cut_off_by_one_build_is_ended_by_a_later_one() {
        let (_t, l) = layout();
        // Build 1 is cut off while `a` and `b` run: its journal stays.
        let j1 = Journal::new(&l, "20260101-000000-001", []);
        j1.start("a", Some(Recorded { pgid: 10, start: 1 }))
            .unwrap();
        j1.start("b", None).unwrap();
        j1.start("c", None).unwrap();
        j1.end("c");
        drop(j1);
        assert_eq!(files(&l), ["20260101-000000-001.journal"]);
        // Build 2 compacts: a and b are carried over.
        let open = compact(&l).unwrap();
        assert_eq!(open.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(open["a"].group, Some(Recorded { pgid: 10, start: 1 }));
        assert_eq!(files(&l), [CARRIED]);
        // Build 2 reruns `a` and ends it; `b` is restored (ended without a start).
        let j2 = Journal::new(&l, "20260101-000000-002", open.into_keys());
        j2.start("a", Some(Recorded { pgid: 20, start: 2 }))
            .unwrap();
        assert_eq!(read(&l, "a").unwrap().run_id, "20260101-000000-002");
        j2.end("a");
        j2.end("b");
        j2.end("never-started");
        assert!(all(&l).is_empty());
        j2.close().unwrap();
        assert!(files(&l).is_empty(), "{:?}", files(&l));
    }

    #[test]
    fn a_crashed_build_after_a_carried_file_and_clear_for_clean() {
        let (_t, l) = layout();
        let j1 = Journal::new(&l, "r1", []);
        j1.start("a", None).unwrap();
        j1.start("b", None).unwrap();
        drop(j1);
        let open = compact(&l).unwrap();
        // Build 2 ends `a` and is cut off while `d` runs: no close.
        let j2 = Journal::new(&l, "r2", open.into_keys());
        j2.end("a");
        j2.start("d", None).unwrap();
        drop(j2);
        assert_eq!(all(&l).keys().collect::<Vec<_>>(), ["b", "d"]);
        // A compaction that wrote the carried file but did not delete the journal (a crash
        // in between) replays it again: same answer.
        let r2 = std::fs::read(journal_dir(&l).join("r2.journal")).unwrap();
        compact(&l).unwrap();
        std::fs::write(journal_dir(&l).join("r2.journal"), r2).unwrap();
        assert_eq!(all(&l).keys().collect::<Vec<_>>(), ["b", "d"]);
        clear(&l, &["b".into()]).unwrap();
        assert_eq!(all(&l).keys().collect::<Vec<_>>(), ["d"]);
        assert_eq!(files(&l), [CARRIED]);
        clear(&l, &["d".into()]).unwrap();
        assert!(files(&l).is_empty());
    }

    #[test]
    fn markers_of_an_older_pipe_are_read_and_folded_in() {
        let (_t, l) = layout();
        std::fs::create_dir_all(legacy_dir(&l)).unwrap();
        std::fs::write(legacy_dir(&l).join("train"), "20250101-000000-000 12 34\n").unwrap();
        let m = read(&l, "train").unwrap();
        assert_eq!(m.run_id, "20250101-000000-000");
        assert_eq!(
            m.group,
            Some(Recorded {
                pgid: 12,
                start: 34
            })
        );
        let open = compact(&l).unwrap();
        assert_eq!(open["train"].group, m.group);
        assert!(!legacy_dir(&l).join("train").exists());
        assert_eq!(read(&l, "train").unwrap().group, m.group);
    }
}
