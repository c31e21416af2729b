//! Parsed files kept beside their text: `Pipeline.toml` and `Pipeline.lock` as JSON in
//! `.pipe/state/`, each named by the blake3 of the bytes it was parsed from. Parsing a
//! 1,000-stage pipeline and its lock as TOML was most of a no-op `pipe status`; reading the
//! snapshot instead costs a fraction of it.
//!
//! The text stays the only truth: a snapshot is used only when it names the exact bytes
//! (and was written by this build of pipe); a missing, stale or undecodable one is ignored
//! and replaced after the text is parsed. Values JSON cannot carry exactly (TOML datetimes,
//! non-finite floats) are never snapshotted.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// The first line of a snapshot: its format and the pipe binary that wrote it (another
/// build of pipe may parse the same text into other types; a development build is told
/// apart from the last one by its executable's size and modification time).
fn magic() -> &'static str {
    static MAGIC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MAGIC.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let exe = std::env::current_exe()
            .and_then(std::fs::metadata)
            .map(|m| format!("{}.{}.{}", m.size(), m.mtime(), m.mtime_nsec()))
            .unwrap_or_default();
        format!(
            "pipe-snapshot 1 {} {} {exe}",
            env!("CARGO_PKG_VERSION"),
            env!("PIPE_GIT_COMMIT")
        )
    })
}

/// The key of `bytes`: what a snapshot of their parse is named by.
pub fn key(bytes: &[u8]) -> blake3::Hash {
    blake3::hash(bytes)
}

/// Whether the file at `path` still holds the bytes whose key is `hex` (as text).
pub fn same_bytes(path: &Path, hex: &str) -> bool {
    std::fs::read(path).is_ok_and(|b| key(&b).to_hex().as_str() == hex)
}

/// The value in the snapshot at `path`, if it was made from the bytes whose key is `key`.
pub fn read<T: DeserializeOwned>(path: &Path, key: &blake3::Hash) -> Option<T> {
    let bytes = crate::fsutil::read_own(path).ok()?;
    let rest = bytes
        .strip_prefix(magic().as_bytes())?
        .strip_prefix(b"\n")?;
    let rest = rest
        .strip_prefix(key.to_hex().as_bytes())?
        .strip_prefix(b"\n")?;
    serde_json::from_slice(rest).ok()
}

/// Keep `value` as the parse of the bytes whose key is `key` (best effort: a snapshot that
/// cannot be written only costs the next command a parse). Only where pipe already keeps
/// state (the folder above `state/`, e.g. `.pipe/`, exists): `pipe validate` in a fresh
/// checkout writes nothing.
pub fn write<T: Serialize>(path: &Path, key: &blake3::Hash, value: &T) {
    let dot = path.parent().and_then(Path::parent);
    if !dot.is_some_and(Path::is_dir) {
        return;
    }
    let Ok(json) = serde_json::to_vec(value) else {
        return;
    };
    let mut buf = format!("{}\n{}\n", magic(), key.to_hex()).into_bytes();
    buf.extend_from_slice(&json);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = crate::fsutil::quick_write(path, &buf) {
        tracing::debug!(error = %e, path = %path.display(), "cannot write a snapshot");
    }
}

/// A parse through the snapshot at `path`: the snapshot's value when it was made from the
/// bytes whose [`key`] is `key`, else `parse()`'s, kept for next time when `exact` says JSON carries it
/// exactly. A parse error is returned as it is (and nothing is kept).
pub fn cached<T: Serialize + DeserializeOwned, E>(
    path: &Path,
    key: &blake3::Hash,
    parse: impl FnOnce() -> Result<T, E>,
    exact: impl FnOnce(&T) -> bool,
) -> Result<T, E> {
    if let Some(v) = read(path, key) {
        return Ok(v);
    }
    let v = parse()?;
    if exact(&v) {
        write(path, key, &v);
    }
    Ok(v)
}

/// Whether a TOML value comes back from JSON exactly as it went in.
pub fn json_exact(v: &toml::Value) -> bool {
    match v {
        toml::Value::Float(f) => f.is_finite(),
        toml::Value::Datetime(_) => false,
        toml::Value::Array(a) => a.iter().all(json_exact),
        toml::Value::Table(t) => t.values().all(json_exact),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_answers_only_for_its_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/x.json");
        let k = key(b"text one");
        // Nowhere pipe keeps state yet: nothing is written.
        let elsewhere = dir.path().join("nothing/state/x.json");
        write(&elsewhere, &k, &vec![1.0f64]);
        assert!(!dir.path().join("nothing").exists());
        write(&path, &k, &vec![1.5f64, 0.1 + 0.2]);
        assert_eq!(read::<Vec<f64>>(&path, &k), Some(vec![1.5, 0.1 + 0.2]));
        assert_eq!(read::<Vec<f64>>(&path, &key(b"text two")), None);
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(read::<Vec<f64>>(&path, &k), None);
        assert!(!json_exact(&toml::Value::Float(f64::NAN)));
        assert!(json_exact(&toml::Value::Array(vec![toml::Value::Integer(
            3
        )])));
    }
}
