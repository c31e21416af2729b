//! A remote cache in a shared folder (`file:///mnt/shared/pipe-cache`): plain files, written
//! create-only. A file is copied to a temporary name in its destination folder, then linked
//! to its key with `hard_link` (or `renameat2(RENAME_NOREPLACE)` where the file system has no
//! hard links), which fails when the key exists: a writer never replaces what another wrote,
//! and a reader never sees half a file.

use super::{Store, explain};
use anyhow::{Result, anyhow};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

/// Temporary files of writers start with this; listings skip them.
const TMP: &str = ".pipe-tmp-";

pub(super) struct FolderStore {
    url: String,
    root: PathBuf,
}

impl FolderStore {
    pub(super) fn new(url: &str, root: PathBuf) -> FolderStore {
        FolderStore {
            url: url.to_string(),
            root,
        }
    }

    fn fail(&self, what: String, e: std::io::Error) -> anyhow::Error {
        anyhow!(explain(&self.url, &format!("{what}: {e}")))
    }

    /// Write `local` under a temporary name in `dir` (removed when dropped).
    fn stage(&self, dir: &Path, local: &Path) -> Result<tempfile::NamedTempFile> {
        use std::os::unix::fs::PermissionsExt;
        let mut src = std::fs::File::open(local)
            .map_err(|e| anyhow!("cannot read {}: {e}", local.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP}{}", crate::fsutil::tmp_tag()))
            // Readable by the team like any file they write (the umask applies), not 0600.
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| self.fail(format!("cannot create a file in {}", dir.display()), e))?;
        std::io::copy(&mut src, tmp.as_file_mut())
            .map_err(|e| self.fail(format!("cannot write into {}", dir.display()), e))?;
        Ok(tmp)
    }
}

/// Move `from` to `to` unless `to` exists (Linux's `renameat2` with `RENAME_NOREPLACE`).
#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(ErrorKind::Unsupported.into())
}

impl Store for FolderStore {
    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>> {
        let path = self.root.join(key);
        match std::fs::File::open(&path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Ok(Some(Box::new(f))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(format!("cannot read {key}"), e)),
        }
    }

    fn head(&self, key: &str) -> Result<bool> {
        match std::fs::metadata(self.root.join(key)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.fail(format!("cannot look at {key}"), e)),
        }
    }

    fn put_create(&self, key: &str, local: &Path, _size: u64) -> Result<bool> {
        let dest = self.root.join(key);
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)
            .map_err(|e| self.fail(format!("cannot create {}", dir.display()), e))?;
        if dest.exists() {
            return Ok(false);
        }
        let tmp = self.stage(dir, local)?;
        let linked = match std::fs::hard_link(tmp.path(), &dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            // No hard links here (some network or FUSE file systems): an atomic rename that
            // refuses an existing name does the same.
            Err(link) => match rename_noreplace(tmp.path(), &dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(_) => Err(self.fail(format!("cannot create {key}"), link)),
            },
        };
        // The temporary name goes (if the rename took it, there is nothing left to remove).
        let _ = tmp.close();
        linked
    }

    fn put_multipart(&self, key: &str, local: &Path, size: u64) -> Result<()> {
        // A folder needs no parts: the same create-only copy.
        self.put_create(key, local, size).map(|_| ())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.root.join(dir);
        let entries = match std::fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(format!("cannot list {dir}"), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.fail(format!("cannot list {dir}"), e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(TMP) || !entry.path().metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FolderStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FolderStore::new("file:///test", dir.path().to_path_buf());
        (dir, s)
    }

    fn local(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn put_is_create_only_and_leaves_no_temporary_file() {
        let (_d, s) = store();
        let src = tempfile::tempdir().unwrap();
        let a = local(src.path(), "a", "first");
        let b = local(src.path(), "b", "second");
        assert!(s.put_create("objects/ab/cd", &a, 5).unwrap());
        assert!(!s.put_create("objects/ab/cd", &b, 6).unwrap());
        let mut text = String::new();
        s.get("objects/ab/cd")
            .unwrap()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "first", "the second writer replaced the first");
        assert!(s.head("objects/ab/cd").unwrap());
        let names: Vec<_> = std::fs::read_dir(s.root.join("objects/ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cd"], "a temporary file was left behind");
    }

    #[test]
    fn racing_writers_of_one_key_one_wins() {
        let (_d, s) = store();
        let src = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..8)
            .map(|i| local(src.path(), &format!("f{i}"), &format!("v{i}")))
            .collect();
        let won: Vec<bool> = std::thread::scope(|sc| {
            let hs: Vec<_> = files
                .iter()
                .map(|f| sc.spawn(|| s.put_create("runs/x.json", f, 2).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    }

    #[test]
    fn files_are_readable_by_others_and_missing_ones_are_none() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = store();
        let src = tempfile::tempdir().unwrap();
        let a = local(src.path(), "a", "x");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        s.put_create("trees/t.json", &a, 1).unwrap();
        let mode = std::fs::metadata(s.root.join("trees/t.json"))
            .unwrap()
            .permissions()
            .mode();
        // What the umask allows, as for any file the user writes; not a temp file's 0600.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(mode & 0o777, 0o666 & !umask, "{mode:o}");
        assert!(s.get("trees/none.json").unwrap().is_none());
        assert!(!s.head("trees/none.json").unwrap());
        assert!(s.get("trees").unwrap().is_none(), "a folder is no file");
    }

    #[test]
    fn list_names_the_files_of_one_folder_only() {
        let (_d, s) = store();
        assert!(s.list("releases").unwrap().is_empty());
        let src = tempfile::tempdir().unwrap();
        let a = local(src.path(), "a", "x");
        for k in [
            "releases/b.json",
            "releases/a.json",
            "releases/other/c.json",
        ] {
            s.put_create(k, &a, 1).unwrap();
        }
        std::fs::write(s.root.join("releases/.pipe-tmp-123"), "half").unwrap();
        std::fs::write(s.root.join("releases/.hidden.json"), "x").unwrap();
        assert_eq!(
            s.list("releases").unwrap(),
            [".hidden.json", "a.json", "b.json"]
        );
    }
}
