//! `Pipeline.lock`: what each stage last ran with. Versioned, sorted, byte-deterministic,
//! written atomically.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use toml_edit::{DocumentMut, InlineTable, Item, Table, value};

pub const VERSION: i64 = 1;

/// The lock's view of an out: what it is (hash, size, folder), not how it is stored. The one
/// out record, with the real file mode, is [`crate::cache::CachedOut`]: what a job produces,
/// the run cache keeps, release artifacts carry, and events report; this is its projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutRecord {
    pub hash: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LockEntry {
    pub fingerprint: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub wdir: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// env name → blake3 of its value (values may be secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub deps: BTreeMap<String, String>,
    #[serde(default)]
    pub outs: BTreeMap<String, OutRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub stages: BTreeMap<String, LockEntry>,
}

#[derive(Deserialize)]
struct Raw {
    version: Option<i64>,
    #[serde(default)]
    stages: BTreeMap<String, LockEntry>,
}

impl LockFile {
    /// The lock of a workspace layout, through its snapshot.
    pub fn load_for(layout: &crate::fsutil::Layout) -> Result<LockFile> {
        Self::load_cached(&layout.lockfile(), &layout.lock_snapshot())
    }

    /// Read and parse the lock at `path` (none there: an empty lock), through a snapshot
    /// ([`crate::snapshot`]): parsing a 1,000-stage lock as TOML was most of a no-op
    /// `pipe status`.
    pub fn load_cached(path: &Path, snapshot: &Path) -> Result<LockFile> {
        Self::load_keyed(path, snapshot).map(|(lock, _)| lock)
    }

    /// [`load_cached`](Self::load_cached), and the blake3 of the bytes read (`None`: no lock).
    pub fn load_keyed(path: &Path, snapshot: &Path) -> Result<(LockFile, Option<blake3::Hash>)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((LockFile::default(), None));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let parse = || {
            let display = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            let text =
                crate::source::utf8(&display, bytes.clone()).map_err(crate::error::invalid)?;
            Self::parse(&text).map_err(|e| crate::error::invalid(format!("{display}:{e}")))
        };
        let key = crate::snapshot::key(&bytes);
        let lock = crate::snapshot::cached(snapshot, &key, parse, |lf: &LockFile| {
            lf.stages
                .values()
                .all(|e| e.params.values().all(crate::snapshot::json_exact))
        })?;
        Ok((lock, Some(key)))
    }

    /// Parse the lock's text. An error starts with `LINE:COL: ` (or `LINE: `) so the
    /// caller can put the file name in front.
    pub fn parse(text: &str) -> std::result::Result<LockFile, String> {
        if let Some((line, marker)) = conflict_marker(text) {
            return Err(format!(
                "{line}: a git conflict marker (`{marker}`): a merge left both sides of Pipeline.lock in it.\n  \
                 help: take either side (`git checkout --ours Pipeline.lock` or `git checkout --theirs Pipeline.lock`) \
                 and run `pipe status`: stages whose inputs differ from the side taken are shown stale and rebuilt \
                 (or restored from the cache); or delete the lock and run `pipe build`"
            ));
        }
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| crate::source::line_col_bytes(text.as_bytes(), s.start))
                .unwrap_or((1, 1));
            format!(
                "{line}:{col}: not a valid lock file: {}; fix it, or delete it and run `pipe build`",
                e.message().trim()
            )
        })?;
        match raw.version {
            Some(VERSION) => Ok(LockFile { stages: raw.stages }),
            Some(v) => Err(format!(
                "{}: lock file format version {v} is not supported by this pipe (it reads version {VERSION}); upgrade pipe",
                line_of(text, "version")
            )),
            None => Err("1: lock file has no `version`; delete it to start afresh".into()),
        }
    }

    /// The deterministic TOML text: stages sorted by name, keys in a fixed order.
    pub fn render(&self) -> String {
        self.render_cached(&mut RenderCache::default())
    }

    /// [`render`](Self::render), re-rendering only the stages whose entry changed since the
    /// cache last saw them (a build rewrites the lock often; most entries stay the same).
    pub fn render_cached(&self, cache: &mut RenderCache) -> String {
        cache.0.retain(|name, _| self.stages.contains_key(name));
        let mut out = format!("version = {VERSION}\n");
        for (name, e) in &self.stages {
            let fresh = matches!(cache.0.get(name), Some((seen, _)) if seen == e);
            if !fresh {
                cache
                    .0
                    .insert(name.clone(), (e.clone(), render_stage(name, e)));
            }
            out.push('\n');
            out.push_str(&cache.0[name].1);
        }
        out
    }
}

/// The first line that is a git conflict marker, with the marker.
fn conflict_marker(text: &str) -> Option<(usize, &'static str)> {
    text.lines().enumerate().find_map(|(i, l)| {
        ["<<<<<<<", "=======", ">>>>>>>", "|||||||"]
            .into_iter()
            .find(|m| l.starts_with(m) && (l.len() == m.len() || l.as_bytes()[m.len()] == b' '))
            .map(|m| (i + 1, m))
    })
}

/// The line on which a top-level key is set (1 when it cannot be found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// Rendered `[stages.NAME]` sections by stage, with the entry each was rendered from.
#[derive(Default)]
pub struct RenderCache(std::collections::HashMap<String, (LockEntry, String)>);

/// One stage's section (its table and sub-tables) as TOML text.
fn render_stage(name: &str, e: &LockEntry) -> String {
    let mut doc = DocumentMut::new();
    let mut stages = Table::new();
    stages.set_implicit(true);
    let mut t = Table::new();
    t["fingerprint"] = value(&e.fingerprint);
    if e.cmd.len() == 1 {
        t["cmd"] = value(&e.cmd[0]);
    } else {
        let mut arr = toml_edit::Array::new();
        for c in &e.cmd {
            arr.push(c.as_str());
        }
        t["cmd"] = value(arr);
    }
    if let Some(w) = &e.wdir {
        t["wdir"] = value(w);
    }
    let sub = |map: &mut dyn Iterator<Item = (String, toml_edit::Value)>| {
        let mut st = Table::new();
        for (k, v) in map {
            st.insert(&k, Item::Value(v));
        }
        st
    };
    if !e.params.is_empty() {
        t["params"] = Item::Table(sub(&mut e
            .params
            .iter()
            .map(|(k, v)| (k.clone(), to_edit(v)))));
    }
    if !e.env.is_empty() {
        t["env"] = Item::Table(sub(&mut e
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().into()))));
    }
    if !e.deps.is_empty() {
        t["deps"] = Item::Table(sub(&mut e
            .deps
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().into()))));
    }
    if !e.outs.is_empty() {
        t["outs"] = Item::Table(sub(&mut e.outs.iter().map(|(k, o)| {
            let mut it = InlineTable::new();
            it.insert("hash", o.hash.as_str().into());
            it.insert("size", (o.size as i64).into());
            if o.dir {
                it.insert("dir", true.into());
            }
            (k.clone(), toml_edit::Value::InlineTable(it))
        })));
    }
    stages.insert(name, Item::Table(t));
    doc["stages"] = Item::Table(stages);
    doc.to_string()
}

/// `cmd` is written as a string when it is one command, as a list otherwise.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn to_edit(v: &toml::Value) -> toml_edit::Value {
    match v {
        toml::Value::String(s) => s.as_str().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => toml_edit::Value::Array(a.iter().map(to_edit).collect()),
        toml::Value::Table(t) => {
            let mut it = InlineTable::new();
            for (k, v) in t {
                it.insert(k, to_edit(v));
            }
            toml_edit::Value::InlineTable(it)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_deterministic() {
        let mut lf = LockFile::default();
        let mut e = LockEntry {
            fingerprint: "f".into(),
            cmd: vec!["echo hi".into()],
            ..Default::default()
        };
        e.params
            .insert("train.lr".into(), toml::Value::Float(0.001));
        e.deps.insert("a.txt".into(), "h1".into());
        e.outs.insert(
            "out/x".into(),
            OutRecord {
                hash: "h2".into(),
                size: 3,
                dir: true,
            },
        );
        lf.stages.insert("b".into(), e.clone());
        lf.stages.insert("a".into(), e);
        let text = lf.render();
        assert!(text.starts_with("version = 1\n"), "{text}");
        assert!(text.find("[stages.a]").unwrap() < text.find("[stages.b]").unwrap());
        assert_eq!(LockFile::parse(&text).unwrap(), lf);
        assert_eq!(LockFile::parse(&text).unwrap().render(), text);
    }

    #[test]
    fn every_parse_error_names_a_line() {
        let e = LockFile::parse("version = 1\n\n[stages.a]\nfingerprint = 3\n").unwrap_err();
        assert!(e.starts_with("4:"), "{e}");
        let e = LockFile::parse("version = 1\n[stages.a\n").unwrap_err();
        assert!(e.starts_with("2:"), "{e}");
        let e = LockFile::parse(
            "version = 1\n<<<<<<< HEAD\n[stages.a]\n=======\n[stages.b]\n>>>>>>> x\n",
        )
        .unwrap_err();
        assert!(e.starts_with("2: a git conflict marker (`<<<<<<<`)"), "{e}");
        assert!(
            e.contains("--theirs") && e.contains("delete the lock"),
            "{e}"
        );
        assert!(
            LockFile::parse("version = 2\n")
                .unwrap_err()
                .starts_with("1:")
        );
    }

    #[test]
    fn a_snapshot_is_used_only_for_the_exact_lock_it_was_made_from() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, snap) = (
            dir.path().join("Pipeline.lock"),
            dir.path().join("s/lock.json"),
        );
        let mut lf = LockFile::default();
        let mut e = LockEntry {
            fingerprint: "f".into(),
            cmd: vec!["echo hi".into()],
            ..Default::default()
        };
        e.params.insert("lr".into(), toml::Value::Float(0.1 + 0.2));
        e.params.insert("n".into(), toml::Value::Integer(3));
        lf.stages.insert("a".into(), e);
        std::fs::write(&lock, lf.render()).unwrap();
        assert!(!snap.exists());
        assert_eq!(LockFile::load_cached(&lock, &snap).unwrap(), lf);
        assert!(snap.exists(), "the first load writes the snapshot");
        // Read back from the snapshot: the same lock, floats bit for bit.
        assert_eq!(LockFile::load_cached(&lock, &snap).unwrap(), lf);
        // The lock changes: the snapshot no longer names it and is not used.
        lf.stages.get_mut("a").unwrap().fingerprint = "g".into();
        std::fs::write(&lock, lf.render()).unwrap();
        assert_eq!(LockFile::load_cached(&lock, &snap).unwrap(), lf);
        // A damaged snapshot is ignored (and replaced).
        std::fs::write(&snap, b"garbage").unwrap();
        assert_eq!(LockFile::load_cached(&lock, &snap).unwrap(), lf);
        // A bad lock is an error even when a snapshot exists.
        std::fs::write(&lock, "version = 1\n[stages.a\n").unwrap();
        assert!(LockFile::load_cached(&lock, &snap).is_err());
        // A value JSON cannot carry (NaN) never goes through a snapshot.
        let mut lf = LockFile::default();
        let mut e = LockEntry::default();
        e.params.insert("x".into(), toml::Value::Float(f64::NAN));
        lf.stages.insert("a".into(), e);
        std::fs::remove_file(&snap).unwrap();
        std::fs::write(&lock, lf.render()).unwrap();
        LockFile::load_cached(&lock, &snap).unwrap();
        assert!(!snap.exists());
    }

    #[test]
    fn refuses_unknown_versions() {
        assert!(
            LockFile::parse("version = 9\n")
                .unwrap_err()
                .contains("version 9")
        );
    }
}
