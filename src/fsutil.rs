//! File-system helpers: atomic writes, workspace-relative path checks, the `.pipe/` layout.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: temp file, fsync, rename. For records and the lock,
/// which must survive a power cut whole.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace(path, bytes, true, None)
}

/// Like [`atomic_write`] without the fsync: readers never see a torn file and `kill -9`
/// cannot tear it, but a power cut may lose it. For markers and cache entries, whose loss
/// only costs a rerun.
pub fn quick_write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace(path, bytes, false, None)
}

/// [`quick_write`] with the temporary file in `tmp_dir` (same file system as `path`).
pub fn quick_write_via(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace(path, bytes, false, Some(tmp_dir))
}

/// The bytes of a file pipe keeps for itself ([`read_own`]): read, or mapped when big.
pub enum Bytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Read(Vec::new())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Read(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// Files from this size on are mapped.
const MAP_FROM: u64 = 128 << 10;

/// Read a file only pipe writes, and only ever replaces by renaming a new one over it (the
/// stat cache, the snapshots in `.pipe/state/`): from 128 KiB on it is mapped, sharing the
/// page cache's pages instead of copying into fresh ones (a page fault each, a trap to the
/// hypervisor on a VM). A replaced file keeps its old inode alive while mapped, so the
/// bytes cannot change or shrink under pipe; files a person may rewrite in place
/// (`Pipeline.toml`, `Pipeline.lock`) are always read.
pub fn read_own(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() >= MAP_FROM {
        // SAFETY: see above: pipe replaces the file by renaming a new one over it, so the
        // mapped inode is never truncated or written while mapped.
        if let Ok(m) = unsafe { memmap2::Mmap::map(&file) } {
            return Ok(Bytes::Mapped(m));
        }
    }
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut v)?;
    Ok(Bytes::Read(v))
}

/// Where `rel` really leads, when a symlink on its way (or itself) takes it outside `root`;
/// `None` when it stays inside, or is missing or dangling (nothing to follow). The common
/// case costs one `lstat` per component below `root`: only a symlink met on the way is
/// resolved with `canonicalize` (a `readlink` per component of the whole path, and as
/// many again for `root`: 13 calls per out of a 1,001-stage build).
pub fn escapes(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = root.to_path_buf();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Err(_) => return None,
            Ok(m) if m.file_type().is_symlink() => {
                let real = root.join(rel).canonicalize().ok()?;
                let croot = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
                return (!real.starts_with(&croot)).then_some(real);
            }
            Ok(_) => {}
        }
    }
    None
}

/// Where the temporary file of a write to `dir` goes: for the workspace root and anything
/// inside `.pipe/` (records, state, the workspace lock) it is `.pipe/tmp/`, where a kill
/// never leaves one beside `Pipeline.lock` (visible to git) or in a run folder, and the
/// next command sweeps it; anything else is written beside its target.
fn tmp_dir_for(dir: &Path) -> PathBuf {
    if let Some(dot) = dir
        .ancestors()
        .find(|a| a.file_name() == Some(".pipe".as_ref()))
    {
        return dot.join("tmp");
    }
    let dot = dir.join(".pipe");
    if dot.is_dir() {
        dot.join("tmp")
    } else {
        dir.to_path_buf()
    }
}

/// `create_dir_all`, once per folder and process: a build writes thousands of files into a
/// handful of folders (`.pipe/tmp`, the cache's `tmp` and `runs`), and each needless
/// `mkdir` is a failing system call. A folder removed behind pipe's back is made again by
/// the writers that retry on "not found" ([`write_replace`], the cache's object store).
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::sync::Mutex;
    static MADE: Mutex<Option<std::collections::HashSet<PathBuf>>> = Mutex::new(None);
    let known = |d: &Path| {
        MADE.lock()
            .is_ok_and(|m| m.as_ref().is_some_and(|s| s.contains(d)))
    };
    if known(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    if let Ok(mut m) = MADE.lock() {
        m.get_or_insert_with(Default::default)
            .insert(dir.to_path_buf());
    }
    Ok(())
}

/// Whether an error is (or wraps) "not found".
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::NotFound)
}

/// Run `op`, which writes into `dirs` (made once per process with [`ensure_dir`]); if it
/// fails with "not found" because one of them was removed since, make them again and run
/// it once more. The one retry every writer into a remembered folder shares.
pub fn remaking_dirs<T>(dirs: &[&Path], op: impl Fn() -> Result<T>) -> Result<T> {
    match op() {
        Err(e) if is_not_found(&e) => {
            for d in dirs {
                // A folder that cannot be made shows up as the retry's own error.
                let _ = std::fs::create_dir_all(d);
            }
            op()
        }
        r => r,
    }
}

fn write_replace(path: &Path, bytes: &[u8], sync: bool, tmp_dir: Option<&Path>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_dir.map_or_else(|| tmp_dir_for(dir), Path::to_path_buf);
    remaking_dirs(&[dir, &tmp], || {
        write_replace_once(path, bytes, sync, tmp_dir)
    })
}

fn write_replace_once(path: &Path, bytes: &[u8], sync: bool, tmp_dir: Option<&Path>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    let tmp_dir = tmp_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| tmp_dir_for(dir));
    if tmp_dir != dir {
        if ensure_dir(&tmp_dir).is_err() {
            return write_in(dir, path, bytes, sync);
        }
        sweep_once(&tmp_dir);
        return match write_in(&tmp_dir, path, bytes, sync) {
            // Another file system (a mounted `.pipe`): write beside the target instead.
            Err(e) if is_errno(&e, libc::EXDEV) => write_in(dir, path, bytes, sync),
            r => r,
        };
    }
    write_in(dir, path, bytes, sync)
}

fn is_errno(e: &anyhow::Error, errno: i32) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(errno))
}

fn write_in(tmp_dir: &Path, path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".pipe-tmp-{}", tmp_tag()))
        .tempfile_in(tmp_dir)
        .with_context(|| format!("cannot create a temporary file in {}", tmp_dir.display()))?;
    // A file pipe rewrites keeps the mode it has; a new one follows the umask (a temporary
    // file is 0600, which would hide a shared cache's entries from the rest of a team).
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o666 & !umask(),
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| {
            if sync {
                tmp.as_file().sync_all()
            } else {
                Ok(())
            }
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
    // On error the temporary file is removed when `tmp` drops.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// A short id of this machine, so a sweeper never judges another host's process ids.
fn host_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = gethostname::gethostname();
        blake3::hash(host.as_encoded_bytes()).to_hex()[..8].to_string()
    })
}

/// `<pid>.<host>.`: what every temporary file pipe creates carries after its prefix, so a
/// later sweep can tell that its writer is dead (not merely old).
pub fn tmp_tag() -> String {
    format!("{}.{}.", std::process::id(), host_id())
}

/// What is known of the process that wrote a temporary file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmpWriter {
    /// A process of this machine that no longer exists.
    Dead,
    /// A live process of this machine (perhaps writing right now).
    Alive,
    /// No writer tag, or another machine's.
    Unknown,
}

/// The writer of the temporary file `name`: its tag (`<pid>.<host>.`) follows a `-`.
pub fn tmp_writer(name: &str) -> TmpWriter {
    let tag = name.match_indices('-').find_map(|(i, _)| {
        let mut parts = name[i + 1..].splitn(3, '.');
        let pid = parts.next()?.parse::<i32>().ok()?;
        let host = parts.next()?;
        parts.next()?;
        (host.len() == 8).then_some((pid, host))
    });
    let Some((pid, host)) = tag else {
        return TmpWriter::Unknown;
    };
    if pid <= 1 || host != host_id() {
        return TmpWriter::Unknown;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        TmpWriter::Dead
    } else {
        TmpWriter::Alive
    }
}

/// Whether the temporary file `name` was made by a process of this machine that no
/// longer exists.
pub fn tmp_writer_dead(name: &str) -> bool {
    tmp_writer(name) == TmpWriter::Dead
}

/// Whether the writer of the file `name` at `path` (tagged as [`tmp_writer`] reads) is gone:
/// dead on this machine, or (no tag, or another machine's) the file untouched for a day. A
/// live writer's file never is.
pub fn writer_gone(path: &Path, name: &str) -> bool {
    match tmp_writer(name) {
        TmpWriter::Dead => true,
        TmpWriter::Alive => false,
        TmpWriter::Unknown => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() > 24 * 3600)),
    }
}

/// Remove the entries of `dir` (files or folders) whose writer is dead. Returns how many
/// and how many bytes.
pub fn sweep_tmp(dir: &Path, dry_run: bool) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut n, mut bytes) = (0, 0);
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        // Only pipe's own temporary names, so a user's file is never a candidate.
        let ours = [".tmp-", ".pipe-tmp-", "restore-"]
            .iter()
            .any(|p| name.starts_with(p))
            || (name.starts_with('.') && name.contains(".pipe-restore-"));
        if !ours || !tmp_writer_dead(name) {
            continue;
        }
        let size = size_of(&e.path());
        if dry_run || remove_path(&e.path()).is_ok() {
            tracing::debug!(file = %e.path().display(), "removed a temporary file of a dead process");
            n += 1;
            bytes += size;
        }
    }
    (n, bytes)
}

fn size_of(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// [`sweep_tmp`] once per process and folder: before the first write into a temp folder.
pub fn sweep_once(dir: &Path) {
    use std::sync::Mutex;
    static DONE: Mutex<Option<std::collections::HashSet<PathBuf>>> = Mutex::new(None);
    let first = DONE
        .lock()
        .map(|mut d| {
            d.get_or_insert_with(Default::default)
                .insert(dir.to_path_buf())
        })
        .unwrap_or(false);
    if first {
        sweep_tmp(dir, false);
    }
}

/// Normalise a workspace-relative path as written by a user: strips `./`, doubled and
/// trailing slashes; refuses absolute paths and `..`. Returns the path and whether it
/// ended in `/` (declared as a folder).
pub fn normalize_rel(raw: &str) -> std::result::Result<(String, bool), String> {
    if raw.trim().is_empty() {
        return Err("empty path".into());
    }
    if raw.starts_with('/') || raw.starts_with('~') {
        return Err(format!(
            "`{raw}` is outside the workspace (absolute paths are not allowed)"
        ));
    }
    let is_dir = raw.ends_with('/');
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "`{raw}` is outside the workspace (`..` is not allowed)"
                ));
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("`{raw}` names the workspace root itself"));
    }
    if parts[0] == ".pipe" || parts[0] == ".git" {
        return Err(format!(
            "`{raw}` is inside `{}`, which pipe manages",
            parts[0]
        ));
    }
    Ok((parts.join("/"), is_dir))
}

/// Folders no cache may live in: the root and the system's own trees.
const SYSTEM_ROOTS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr",
];

/// Check a `cache_dir` (or `PIPE_CACHE_DIR`): a folder inside the workspace (relative, no
/// `..`), or an absolute folder that is not `/`, a top-level folder such as `/var` or
/// `/home`, nor inside a system tree (`/etc`, `/usr`, `/dev`, …).
pub fn check_cache_dir(raw: &str) -> std::result::Result<(), String> {
    if raw.contains('\0') {
        return Err("holds a NUL character".into());
    }
    if raw.trim().is_empty() {
        return Err("is empty".into());
    }
    if raw.starts_with('~') {
        return Err(format!(
            "`{raw}`: `~` is not expanded; write the absolute path"
        ));
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "`{raw}` uses `..`; use a folder inside the workspace or an absolute path"
        ));
    }
    if raw.starts_with('/') {
        let norm = format!("/{}", parts.join("/"));
        if parts.len() < 2 {
            return Err(format!(
                "`{raw}` is `/` or a top-level system folder; use a folder of its own, e.g. `/srv/pipe-cache`"
            ));
        }
        if let Some(root) = SYSTEM_ROOTS.iter().find(|r| is_within(&norm, r)) {
            return Err(format!(
                "`{raw}` is inside the system folder `{root}`; use a folder of its own, e.g. `/srv/pipe-cache`"
            ));
        }
        return Ok(());
    }
    if parts.is_empty() {
        return Err(format!("`{raw}` names the workspace root itself"));
    }
    if parts[0] == ".git" {
        return Err(format!("`{raw}` is inside `.git`"));
    }
    Ok(())
}

/// Check a `runs_dir`: a folder inside the workspace (relative, no `..`, not the root).
pub fn check_runs_dir(raw: &str) -> std::result::Result<(), String> {
    if raw.starts_with('/') || raw.starts_with('~') {
        return Err(format!(
            "`{raw}` is outside the workspace (write a path relative to the workspace, e.g. `.pipe/runs`)"
        ));
    }
    check_cache_dir(raw)
}

/// True when `inner` is `outer` or lies inside the folder `outer` (both normalised).
pub fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer
        || (inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/')
}

/// Whether a dep string is a glob pattern.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// The literal folder prefix of a glob (`data/raw/**/*.json` → `data/raw`).
pub fn glob_base(pattern: &str) -> String {
    let mut base = Vec::new();
    for part in pattern.split('/') {
        if is_glob(part) {
            break;
        }
        base.push(part);
    }
    base.join("/")
}

/// The `.pipe/` layout of one workspace.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    /// `.pipe/` for `Pipeline.toml`; `.pipe/pipelines/<NAME>/` for another file `NAME.toml`,
    /// so two pipeline files in one folder keep their runs, releases and state apart.
    pub dot: PathBuf,
    pub cache: PathBuf,
    pub runs: PathBuf,
    /// `Pipeline.lock`, or `NAME.lock` beside `NAME.toml`.
    pub lock: PathBuf,
}

impl Layout {
    /// The layout for the pipeline file `file` in `root`.
    pub fn for_file(
        root: &Path,
        file: &Path,
        cache_dir: Option<&str>,
        runs_dir: Option<&str>,
    ) -> Layout {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Pipeline".into());
        let mut l = Layout::new(root, cache_dir, runs_dir);
        if stem != "Pipeline" {
            let own = root
                .join(".pipe")
                .join("pipelines")
                .join(marker_name(&stem));
            if runs_dir.is_none() {
                l.runs = own.join("runs");
            }
            l.dot = own;
            l.lock = root.join(format!("{stem}.lock"));
        }
        l
    }

    pub fn new(root: &Path, cache_dir: Option<&str>, runs_dir: Option<&str>) -> Layout {
        let dot = root.join(".pipe");
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            }
        };
        let cache = std::env::var("PIPE_CACHE_DIR")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| resolve(&s))
            .or_else(|| cache_dir.map(resolve))
            .unwrap_or_else(|| dot.join("cache"));
        let runs = runs_dir.map(resolve).unwrap_or_else(|| dot.join("runs"));
        Layout {
            root: root.to_path_buf(),
            lock: root.join("Pipeline.lock"),
            dot,
            cache,
            runs,
        }
    }
    pub fn state(&self) -> PathBuf {
        self.dot.join("state")
    }
    /// The parsed `Pipeline.lock`, named by its hash (see [`crate::lockfile::LockFile::load_cached`]).
    pub fn lock_snapshot(&self) -> PathBuf {
        self.state().join("lock.json")
    }
    pub fn stat_cache(&self) -> PathBuf {
        self.state().join("stat.bin")
    }
    /// Where an older pipe kept one running marker per stage (see `record::markers`).
    pub fn running_dir(&self) -> PathBuf {
        self.state().join("running")
    }
    pub fn build_lock(&self) -> PathBuf {
        self.dot.join("build.lock")
    }
    pub fn releases(&self) -> PathBuf {
        self.dot.join("releases")
    }
    /// Temporary files of restores and root-level writes (swept when their writer is dead).
    pub fn tmp(&self) -> PathBuf {
        self.dot.join("tmp")
    }
    pub fn lockfile(&self) -> PathBuf {
        self.lock.clone()
    }
}

/// What `lstat` saw of a path: mode (with the type bits), size, mtime and ctime in ns, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sig(u32, u64, i64, i64, u64);

impl Sig {
    pub fn new(mode: u32, size: u64, mtime_ns: i64, ctime_ns: i64, ino: u64) -> Sig {
        Sig(mode, size, mtime_ns, ctime_ns, ino)
    }

    /// Mode, size, mtime, ctime, inode.
    pub fn parts(&self) -> (u32, u64, i64, i64, u64) {
        (self.0, self.1, self.2, self.3, self.4)
    }

    /// The later of mtime and ctime.
    pub fn newest(&self) -> i64 {
        self.2.max(self.3)
    }
}

impl Sig {
    pub fn of(m: &std::fs::Metadata) -> Sig {
        use std::os::unix::fs::MetadataExt;
        Sig(
            m.mode(),
            m.len(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            m.ino(),
        )
    }

    /// What `lstat` sees at `path` now (`Ok(None)`: nothing there).
    pub fn now(path: &Path) -> std::io::Result<Option<Sig>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(Sig::of(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A file-name-safe form of a stage name (matrix names hold `@`, `=` and `,`).
pub fn marker_name(stage: &str) -> String {
    const KEEP: usize = 100;
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.@=,".contains(c);
    let plain = !stage.is_empty()
        && stage.len() <= KEEP
        && stage.chars().all(safe)
        && !stage.starts_with('.');
    if plain {
        return stage.to_string();
    }
    // Anything else keeps a readable part and gets a short hash of the whole name, so two
    // names never share a file (`a/b`, `a_b`, `a b`, `a:b`) and no name is too long.
    let readable: String = stage
        .chars()
        .take(KEEP)
        .map(|c| if safe(c) { c } else { '_' })
        .collect();
    let hash = blake3::hash(stage.as_bytes()).to_hex();
    format!("{readable}-{}", &hash[..12])
}

#[cfg(test)]
mod marker_name_tests {
    use super::marker_name;

    #[test]
    fn file_names_for_stage_names_are_plain_when_they_can_be_and_never_collide() {
        assert_eq!(marker_name("train@lr=0.01,seed=1"), "train@lr=0.01,seed=1");
        let odd = ["a/b", "a_b", "a b", "a:b", ".hidden", ""];
        let names: std::collections::BTreeSet<String> =
            odd.iter().map(|s| marker_name(s)).collect();
        assert_eq!(names.len(), odd.len(), "{names:?}");
        let long = marker_name(&"x".repeat(300));
        assert!(long.len() < 120, "{long}");
        assert_ne!(long, marker_name(&"x".repeat(301)));
    }
}

/// Remove a file, symlink or folder if it exists.
pub fn remove_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)
            .with_context(|| format!("cannot remove folder {}", path.display())),
        Ok(_) => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

/// The process umask (read once: from /proc where available, else by setting and
/// restoring it before any other thread creates files).
pub fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        if let Ok(s) = std::fs::read_to_string("/proc/self/status")
            && let Some(v) = s
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        {
            return v & 0o777;
        }
        // SAFETY: umask only swaps the process mask; it is put back at once.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old as u32 & 0o777
        }
    })
}

/// Now, as RFC 3339 UTC with second precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_escapes() {
        assert_eq!(
            normalize_rel("./data//x/").unwrap(),
            ("data/x".into(), true)
        );
        assert!(normalize_rel("../x").is_err());
        assert!(normalize_rel("/etc/passwd").is_err());
        assert!(normalize_rel("a/../../b").is_err());
        assert!(normalize_rel(".pipe/cache").is_err());
    }

    #[test]
    fn temp_files_of_dead_writers_are_recognised() {
        let me = format!(".tmp-{}x", tmp_tag());
        assert!(!tmp_writer_dead(&me), "a live writer is dead?");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = format!(".pipe-tmp-{pid}.{}.abc", host_id());
        assert!(tmp_writer_dead(&dead), "{dead}");
        assert!(tmp_writer_dead(&format!("restore-{pid}.{}.7", host_id())));
        assert!(
            !tmp_writer_dead(&format!(".tmp-{pid}.0badbeef.7")),
            "other host"
        );
        assert!(!tmp_writer_dead(".tmp-0.x.y"));
        assert!(!tmp_writer_dead(".tmp--1.x.y"));
        assert!(!tmp_writer_dead("plain.txt"));
    }

    #[test]
    fn cache_and_runs_dirs_stay_out_of_system_folders() {
        for ok in [
            ".pipe/cache",
            "cache",
            "/srv/pipe-cache",
            "/var/cache/pipe",
            "/tmp/x",
        ] {
            assert!(check_cache_dir(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/",
            "//",
            "/etc",
            "/usr/lib/x",
            "/dev/shm/c",
            "/proc/1",
            "/var",
            "/home",
            "../x",
            "a/../../x",
            "",
            ".",
            "~/c",
            "/tmp/../etc",
        ] {
            assert!(check_cache_dir(bad).is_err(), "{bad}");
        }
        assert!(check_runs_dir(".pipe/runs").is_ok());
        for bad in ["/tmp/runs", "../runs", ".", ""] {
            assert!(check_runs_dir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn within_is_component_wise() {
        assert!(is_within("data/a", "data"));
        assert!(is_within("data", "data"));
        assert!(!is_within("database", "data"));
        assert_eq!(glob_base("data/raw/**/*.json"), "data/raw");
        assert_eq!(glob_base("*.txt"), "");
    }
}

/// What this process saw when it looked at paths: each path is `stat`ed once, however many
/// stages name it (1,001 stages sharing folders: 2 calls per stage instead of 5).
///
/// Filled while the pipeline is loaded (dep existence, the out symlink checks) and read by
/// the hasher, so a no-op `status` or `build` looks at each distinct path once. It holds only
/// while nothing else writes the workspace: a build forgets the outs of a stage before that
/// stage runs or is restored, and forgets everything after it waited for another build or
/// stopped a leftover process.
#[derive(Default)]
pub struct StatMemo {
    inner: std::sync::Mutex<Memo>,
}

/// Keyed by the path's bytes (hashing a `Path` goes component by component).
#[derive(Default)]
struct Memo {
    seen: std::collections::HashMap<std::ffi::OsString, Box<Seen>>,
    /// Every folder above a remembered path: forgetting a path scans for what is under it
    /// only when something is.
    parents: std::collections::HashSet<std::ffi::OsString>,
}

/// What was seen of one path: its `stat` (`None` inside: not there) and its `lstat`, each
/// once asked. A path that `lstat` shows is no symlink has both answered by one call and
/// one `Metadata` (boxed in the map: 2,000 paths used to make a megabyte of rehashing).
#[derive(Clone, Default)]
struct Seen {
    stat: Option<Option<std::fs::Metadata>>,
    lstat: Lstat,
}

#[derive(Clone, Default)]
enum Lstat {
    #[default]
    Unasked,
    /// No symlink (or not there): what `stat` says.
    SameAsStat,
    /// A symlink: what `lstat` says of the link itself.
    Link(Box<std::fs::Metadata>),
}

fn not_found() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotFound)
}

fn answer(seen: Option<std::fs::Metadata>) -> std::io::Result<std::fs::Metadata> {
    seen.ok_or_else(not_found)
}

/// What a path was when it was looked at: all a check of the pipeline's paths depends on
/// (see [`StatMemo::looked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Missing,
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    fn of(seen: &Option<std::fs::Metadata>) -> Kind {
        match seen {
            None => Kind::Missing,
            Some(m) if m.file_type().is_symlink() => Kind::Symlink,
            Some(m) if m.is_dir() => Kind::Dir,
            Some(m) if m.is_file() => Kind::File,
            Some(_) => Kind::Other,
        }
    }

    fn of_result(r: std::io::Result<std::fs::Metadata>) -> Option<Kind> {
        match r {
            Ok(m) => Some(Kind::of(&Some(m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Kind::Missing),
            Err(_) => None,
        }
    }
}

/// One path as [`StatMemo::looked`] reports it: what `lstat` and `stat` saw (`None`: not
/// asked).
pub type Looked = (PathBuf, Option<Kind>, Option<Kind>);

impl StatMemo {
    fn get(&self, path: &Path) -> Option<Seen> {
        self.inner
            .lock()
            .ok()?
            .seen
            .get(path.as_os_str())
            .map(|s| Seen::clone(s))
    }

    fn put(&self, path: &Path, seen: Seen) {
        if let Ok(mut m) = self.inner.lock() {
            m.seen.insert(path.as_os_str().to_owned(), Box::new(seen));
            for a in path.ancestors().skip(1) {
                if m.parents.contains(a.as_os_str()) {
                    break; // and so are its own parents
                }
                m.parents.insert(a.as_os_str().to_owned());
            }
        }
    }

    /// `std::fs::metadata` (follows symlinks), remembered.
    pub fn metadata(&self, path: &Path) -> std::io::Result<std::fs::Metadata> {
        let mut seen = self.get(path).unwrap_or_default();
        if let Some(s) = seen.stat {
            return answer(s);
        }
        let now = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        seen.stat = Some(now.clone());
        self.put(path, seen);
        answer(now)
    }

    /// `std::fs::symlink_metadata` (does not follow), remembered.
    pub fn symlink_metadata(&self, path: &Path) -> std::io::Result<std::fs::Metadata> {
        let mut seen = self.get(path).unwrap_or_default();
        match (&seen.lstat, &seen.stat) {
            (Lstat::Link(m), _) => return Ok(std::fs::Metadata::clone(m)),
            (Lstat::SameAsStat, Some(s)) => return answer(s.clone()),
            _ => {}
        }
        let now = match std::fs::symlink_metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match &now {
            Some(m) if m.file_type().is_symlink() => seen.lstat = Lstat::Link(Box::new(m.clone())),
            // Not a symlink (or not there): following it would see the same.
            _ => {
                seen.stat = Some(now.clone());
                seen.lstat = Lstat::SameAsStat;
            }
        }
        self.put(path, seen);
        answer(now)
    }

    /// Every path looked at so far, with the kind `lstat` and `stat` saw, in path order.
    pub fn looked(&self) -> Vec<Looked> {
        let Ok(m) = self.inner.lock() else {
            return Vec::new();
        };
        let mut all: Vec<Looked> = m
            .seen
            .iter()
            .map(|(p, s)| {
                let lstat = match &s.lstat {
                    Lstat::Unasked => None,
                    Lstat::SameAsStat => s.stat.as_ref().map(Kind::of),
                    Lstat::Link(_) => Some(Kind::Symlink),
                };
                (PathBuf::from(p), lstat, s.stat.as_ref().map(Kind::of))
            })
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every path looked at with what was seen of it (`None`: not there): `stat`'s answer,
    /// which is `lstat`'s for anything but a symlink. `None` when a symlink was met.
    pub fn seen(&self) -> Option<Vec<(PathBuf, Option<std::fs::Metadata>)>> {
        let m = self.inner.lock().ok()?;
        m.seen
            .iter()
            .map(|(p, s)| match (&s.lstat, &s.stat) {
                (Lstat::Link(_), _) | (_, None) => None,
                (_, Some(m)) => Some((PathBuf::from(p), m.clone())),
            })
            .collect()
    }

    /// Whether a path is still what [`looked`](Self::looked) said. It is looked at again
    /// through the memo, which keeps the answers for whoever asks next.
    pub fn still(&self, (path, lstat, stat): &Looked) -> bool {
        lstat.is_none_or(|k| Kind::of_result(self.symlink_metadata(path)) == Some(k))
            && stat.is_none_or(|k| Kind::of_result(self.metadata(path)) == Some(k))
    }

    /// Forget `path`, everything under it and the folders above it (a stage is about to
    /// write it, making its parent folders if they are missing).
    pub fn forget(&self, path: &Path) {
        if let Ok(mut m) = self.inner.lock() {
            for a in path.ancestors() {
                m.seen.remove(a.as_os_str());
            }
            if m.parents.contains(path.as_os_str()) {
                m.seen.retain(|k, _| !Path::new(k).starts_with(path));
            }
        }
    }

    /// Forget everything (someone else may have written the workspace).
    pub fn forget_all(&self) {
        if let Ok(mut m) = self.inner.lock() {
            *m = Memo::default();
        }
    }
}

#[cfg(test)]
mod escapes_tests {
    use super::escapes;

    #[test]
    fn only_a_symlink_on_the_way_can_lead_outside() {
        let (ws, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = ws.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("out/sub")).unwrap();
        std::fs::write(root.join("out/sub/a.txt"), "a").unwrap();
        assert_eq!(escapes(&root, "out/sub/a.txt"), None);
        assert_eq!(escapes(&root, "out/missing/b.txt"), None);
        // A folder symlink inside the workspace stays inside; one to elsewhere does not.
        std::os::unix::fs::symlink(root.join("out/sub"), root.join("inner")).unwrap();
        assert_eq!(escapes(&root, "inner/a.txt"), None);
        std::fs::write(outside.path().join("x.txt"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("away")).unwrap();
        let real = escapes(&root, "away/x.txt").expect("leads outside");
        assert!(real.ends_with("x.txt") && !real.starts_with(&root));
        // The leaf itself a symlink leading outside; a dangling one leads nowhere.
        std::os::unix::fs::symlink(outside.path().join("x.txt"), root.join("out/l")).unwrap();
        assert!(escapes(&root, "out/l").is_some());
        std::os::unix::fs::symlink(root.join("nope"), root.join("out/d")).unwrap();
        assert_eq!(escapes(&root, "out/d"), None);
    }
}

#[cfg(test)]
mod stat_memo_tests {
    use super::StatMemo;

    #[test]
    fn remembers_until_told_to_forget() {
        let dir = tempfile::tempdir().unwrap();
        let (a, sub) = (dir.path().join("a"), dir.path().join("d"));
        std::fs::write(&a, "1").unwrap();
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x"), "1").unwrap();
        let memo = StatMemo::default();
        assert_eq!(memo.symlink_metadata(&a).unwrap().len(), 1);
        assert_eq!(memo.metadata(&sub.join("x")).unwrap().len(), 1);
        assert!(memo.metadata(&dir.path().join("nope")).is_err());
        std::fs::write(&a, "22").unwrap();
        std::fs::write(sub.join("x"), "22").unwrap();
        std::fs::write(dir.path().join("nope"), "").unwrap();
        // Remembered: the lstat answers the stat of a plain file too.
        assert_eq!(memo.metadata(&a).unwrap().len(), 1);
        assert!(memo.metadata(&dir.path().join("nope")).is_err());
        // Forgetting a folder forgets what is under it, and nothing beside it.
        memo.forget(&sub);
        assert_eq!(memo.metadata(&sub.join("x")).unwrap().len(), 2);
        assert_eq!(memo.metadata(&a).unwrap().len(), 1);
        // Forgetting a path forgets the folders above it (a stage makes its outs' parents).
        let (parent, out) = (dir.path().join("p"), dir.path().join("p/q/out"));
        assert!(memo.symlink_metadata(&out).is_err());
        assert!(memo.symlink_metadata(&parent).is_err());
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        assert!(
            memo.metadata(&parent).is_err(),
            "still remembered as missing"
        );
        memo.forget(&out);
        assert!(memo.metadata(&parent).unwrap().is_dir());
        memo.forget_all();
        assert_eq!(memo.metadata(&a).unwrap().len(), 2);
        assert!(memo.metadata(&dir.path().join("nope")).is_ok());
    }

    #[test]
    fn a_folder_made_once_and_removed_behind_our_back_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        super::ensure_dir(&sub).unwrap();
        super::quick_write(&sub.join("x"), b"1").unwrap();
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        // `ensure_dir` remembers it was made and does not look again ...
        super::ensure_dir(&sub).unwrap();
        assert!(!sub.exists());
        // ... and a write into it still lands.
        super::quick_write(&sub.join("x"), b"2").unwrap();
        assert_eq!(std::fs::read(sub.join("x")).unwrap(), b"2");
    }

    #[test]
    fn a_symlink_is_followed_by_metadata_only() {
        let dir = tempfile::tempdir().unwrap();
        let (t, l) = (dir.path().join("t"), dir.path().join("l"));
        std::fs::write(&t, "abc").unwrap();
        std::os::unix::fs::symlink(&t, &l).unwrap();
        let memo = StatMemo::default();
        assert!(memo.symlink_metadata(&l).unwrap().file_type().is_symlink());
        let m = memo.metadata(&l).unwrap();
        assert!(m.is_file() && m.len() == 3);
        // Asked the other way round: a followed stat never passes for the link's own.
        let memo = StatMemo::default();
        assert!(memo.metadata(&l).unwrap().is_file());
        assert!(memo.symlink_metadata(&l).unwrap().file_type().is_symlink());
        // A dangling link: missing when followed, there when not.
        std::fs::remove_file(&t).unwrap();
        let memo = StatMemo::default();
        assert!(memo.metadata(&l).is_err());
        assert!(memo.symlink_metadata(&l).is_ok());
    }
}
