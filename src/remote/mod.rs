//! The remote cache: push and pull objects, trees and run-cache entries to S3 (or any
//! S3-compatible server: `s3.rs`) or a shared folder (`file://`: `folder.rs`).
//!
//! Keys mirror the local cache: `objects/ab/<digest>`, `trees/<digest>.json`,
//! `runs/<fingerprint>.json`, release manifests under `releases/`. Uploads are create-only
//! (`If-None-Match: *`, a hard link in a folder), so a writer never replaces what another
//! wrote; every download is verified with blake3 before use, and a run-cache entry is
//! trusted only as far as its objects verify. A run entry is uploaded after its objects, so a
//! remote entry never points at objects not yet there.
//!
//! Everything is synchronous: `jobs` threads share one [`Store`] (for S3, one HTTP agent
//! and its pool of connections).

mod folder;
mod s3;

use crate::cache::{Cache, CachedOut, Digest, RunEntry, Tree};
use crate::spec::RawRemote;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Objects bigger than this are uploaded in parts.
const MULTIPART: u64 = 64 << 20;

/// Where the remote's files live: the few operations pipe needs, with keys relative to the
/// bucket (S3) or the folder (`file://`). Errors are already worded for the user
/// ([`explain`]), with the remote's url.
trait Store: Send + Sync {
    /// A reader of the file at `key`; `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>>;
    /// Whether there is a file at `key`.
    fn head(&self, key: &str) -> Result<bool>;
    /// Create-only upload of the local file `local` (`size` bytes): `Ok(false)` when `key`
    /// already existed, which is then left as it was.
    fn put_create(&self, key: &str, local: &Path, size: u64) -> Result<bool>;
    /// Upload of a big local file in parts. On S3 this is not create-only (the caller looks
    /// with `head` first; keys are content-addressed, so a racing writer writes the same
    /// bytes).
    fn put_multipart(&self, key: &str, local: &Path, size: u64) -> Result<()>;
    /// The names of the files directly in the folder `dir` (not in its sub-folders), sorted;
    /// empty when there are none.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
}

pub struct Remote {
    url: String,
    store: Box<dyn Store>,
    prefix: String,
}

/// Counts of one transfer.
#[derive(Debug, Default)]
pub struct TransferStats {
    pub sent: usize,
    pub skipped: usize,
    pub bytes: u64,
    pub missing: usize,
    /// Release manifests sent or fetched.
    pub releases: usize,
}

/// The release manifests a push sends: the remote folder they go to (`releases`, or
/// `releases/<pipeline>` for another pipeline file) and each file's name, local path and
/// the outs its artifacts reference.
#[derive(Debug, Default)]
pub struct ReleaseFiles {
    pub prefix: String,
    pub files: Vec<(String, PathBuf, Vec<CachedOut>)>,
}

impl std::fmt::Display for TransferStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files ({:.1} MiB), {} already there",
            self.sent,
            self.bytes as f64 / (1 << 20) as f64,
            self.skipped
        )?;
        if self.missing > 0 {
            write!(f, ", {} not found", self.missing)?;
        }
        if self.releases > 0 {
            write!(f, ", {} release manifests", self.releases)?;
        }
        Ok(())
    }
}

/// What to move: a file of the local cache and its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Object(Digest),
    Tree(Digest),
}

/// `remote cache <url>: <what went wrong>`, with a hint for the two usual causes.
fn explain(url: &str, text: &str) -> String {
    // "HTTP 403", not any "403": an endpoint's port may hold those digits (127.0.0.1:40333).
    let hint = if text.contains("HTTP 403")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("InvalidAccessKeyId")
        || text.contains("AccessDenied")
    {
        " (access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    } else if text.contains("onnect") || text.contains("timed out") || text.contains("timeout") {
        " (cannot reach the server: is it running, and is `endpoint` right?)"
    } else {
        ""
    };
    format!("remote cache {url}: {text}{hint}")
}

impl Remote {
    pub fn open(cfg: &RawRemote, root: &Path) -> Result<Remote> {
        let url = cfg.url.clone();
        let (store, prefix): (Box<dyn Store>, String) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(crate::error::invalid(format!(
                    "[remote] url `{url}` names no bucket (expected s3://bucket/prefix)"
                )));
            }
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let store = s3::S3Store::open(&url, bucket, cfg, &env)?;
            // Empty parts dropped, as object_store did: `a//b/` is the prefix `a/b`.
            let prefix: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
            (Box::new(store), prefix.join("/"))
        } else if let Some(rest) = url.strip_prefix("file://") {
            let path = if Path::new(rest).is_absolute() {
                PathBuf::from(rest)
            } else {
                root.join(rest)
            };
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create remote cache folder {}", path.display()))?;
            (
                Box::new(folder::FolderStore::new(&url, path)),
                String::new(),
            )
        } else {
            return Err(crate::error::invalid(format!(
                "[remote] url `{url}`: expected s3://bucket/prefix or file:///path"
            )));
        };
        Ok(Remote { url, store, prefix })
    }

    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn object_key(digest: &Digest) -> String {
        format!("objects/{}/{}", &digest[..2], &digest[2..])
    }

    /// A read error in the middle of a download, worded like the store's own errors.
    fn read_error(&self, key: &str, e: std::io::Error) -> anyhow::Error {
        anyhow!(explain(&self.url, &format!("cannot read {key}: {e}")))
    }

    /// Fetch a remote file's bytes; `None` when it is not there.
    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(rel);
        let Some(mut r) = self.store.get(&key)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)
            .map_err(|e| self.read_error(&key, e))?;
        Ok(Some(bytes))
    }

    /// Stream an object into the local cache, hashing on the way; it enters the cache only
    /// if its bytes match its name. `None` when the remote lacks it.
    fn download_object(&self, cache: &Cache, digest: &Digest) -> Result<Option<u64>> {
        use std::io::Write;
        let key = self.key(&Self::object_key(digest));
        let Some(mut reader) = self.store.get(&key)? else {
            return Ok(None);
        };
        let dest = cache.object_path(digest);
        let dir = dest.parent().unwrap_or(&cache.dir).to_path_buf();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp_dir = cache.prepare_tmp()?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{}", crate::fsutil::tmp_tag()))
            .tempfile_in(&tmp_dir)
            .with_context(|| format!("cannot create a temporary file in {}", tmp_dir.display()))?;
        let mut hasher = blake3::Hasher::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let got = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(&key, e)),
            };
            hasher.update(&buf[..got]);
            n += got as u64;
            tmp.write_all(&buf[..got])
                .with_context(|| format!("cannot write into {}", dir.display()))?;
        }
        if hasher.finalize().to_hex().as_str() != digest.as_str() {
            return Err(Refused(format!(
                "remote {}: object {digest} does not match its hash",
                self.url
            ))
            .into());
        }
        tmp.as_file().sync_all().ok();
        let _ = std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        );
        if !dest.exists() {
            tmp.persist(&dest)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot store {}", dest.display()))?;
        }
        Ok(Some(n))
    }

    /// Create-only upload of a local file; `Ok(false)` when the key already existed.
    fn put_file(&self, rel: &str, local: &Path) -> Result<(bool, u64)> {
        let size = std::fs::metadata(local)
            .with_context(|| format!("cannot read {}", local.display()))?
            .len();
        let key = self.key(rel);
        if size > MULTIPART {
            // Multipart uploads cannot be create-only: look first, so a big object is not
            // uploaded in vain. Objects are content-addressed, so a racing writer can only
            // write the same bytes.
            if self.store.head(&key)? {
                return Ok((false, 0));
            }
            self.store.put_multipart(&key, local, size)?;
            return Ok((true, size));
        }
        // Small objects go straight to a create-only PUT (the server refuses an existing key).
        if self.store.put_create(&key, local, size)? {
            Ok((true, size))
        } else {
            Ok((false, 0))
        }
    }

    /// Objects and trees some outs need, from the local cache.
    fn items<'a>(
        cache: &Cache,
        outs: impl IntoIterator<Item = &'a CachedOut>,
        out: &mut BTreeSet<Item>,
    ) -> Result<()> {
        for o in outs {
            if o.dir {
                let tree = cache.read_tree(&o.hash)?;
                out.extend(tree.entries.iter().map(|e| Item::Object(e.hash.clone())));
                out.insert(Item::Tree(o.hash.clone()));
            } else {
                out.insert(Item::Object(o.hash.clone()));
            }
        }
        Ok(())
    }

    /// Upload the run-cache entries for `fps` (all local entries when `None`) with their
    /// objects, and the release manifests `releases` with every object they reference.
    pub fn push(
        &self,
        cache: &Cache,
        fps: Option<&Vec<String>>,
        releases: &ReleaseFiles,
        jobs: usize,
        bar: Option<indicatif::ProgressBar>,
    ) -> Result<TransferStats> {
        let mut stats = TransferStats::default();
        let entries: Vec<RunEntry> = match fps {
            Some(fps) => fps
                .iter()
                .filter_map(|fp| {
                    let e = cache.get_run(fp);
                    if e.is_none() {
                        stats.missing += 1;
                    }
                    e
                })
                .collect(),
            None => cache.all_runs(),
        };
        let mut items = BTreeSet::new();
        for e in &entries {
            Self::items(cache, e.outs.values(), &mut items)?;
        }
        let mut shipped = Vec::new();
        for (name, path, outs) in &releases.files {
            // A release whose objects this cache no longer holds cannot travel whole: it
            // stays local (and is counted as not found) rather than point at nothing.
            if !outs.iter().all(|o| cache.has_out(o)) {
                stats.missing += 1;
                continue;
            }
            Self::items(cache, outs, &mut items)?;
            shipped.push((format!("{}/{name}", releases.prefix), path));
        }
        let released = AtomicUsize::new(0);
        let total: u64 = items
            .iter()
            .map(|i| match i {
                Item::Object(d) => std::fs::metadata(cache.object_path(d))
                    .map(|m| m.len())
                    .unwrap_or(0),
                Item::Tree(_) => 0,
            })
            .sum();
        if let Some(b) = &bar {
            b.set_length(total);
        }
        let sent = AtomicUsize::new(0);
        let skipped = AtomicUsize::new(0);
        let bytes = AtomicU64::new(0);
        let items: Vec<Item> = items.into_iter().collect();
        let send = || {
            parallel(&items, jobs, |item| {
                let (rel, local) = match item {
                    Item::Object(d) => (Self::object_key(d), cache.object_path(d)),
                    Item::Tree(d) => (format!("trees/{d}.json"), cache.tree_path(d)),
                };
                let (was_sent, n) = self.put_file(&rel, &local)?;
                let size = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
                if let Some(b) = &bar {
                    b.inc(size);
                }
                if was_sent {
                    sent.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                } else {
                    skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })?;
            // Entries and release manifests last, once every object is there: a remote
            // entry or manifest must never point at objects not yet uploaded.
            let mut last = Vec::new();
            // A packed entry is uploaded from a temporary file of its own bytes: the remote
            // keeps one file per entry.
            let mut unpacked = Vec::new();
            for e in &entries {
                let digest = e.fingerprint.parse::<Digest>().map_err(|e| anyhow!(e))?;
                let loose = cache.run_path(&digest);
                let path = if loose.is_file() {
                    loose
                } else {
                    let (_, bytes) = cache.run_entry_bytes(&digest).ok_or_else(|| {
                        anyhow!("run-cache entry {digest} went away during the push")
                    })?;
                    let mut tmp = tempfile::Builder::new()
                        .prefix(&format!(".pipe-tmp-{}", crate::fsutil::tmp_tag()))
                        .tempfile_in(cache.prepare_tmp()?)?;
                    std::io::Write::write_all(&mut tmp, &bytes)?;
                    let path = tmp.path().to_path_buf();
                    unpacked.push(tmp);
                    path
                };
                last.push((format!("runs/{digest}.json"), path, false));
            }
            for (rel, path) in &shipped {
                last.push((rel.clone(), path.to_path_buf(), true));
            }
            parallel(&last, jobs, |(rel, path, release)| {
                let (was_sent, n) = self.put_file(rel, path)?;
                match (was_sent, release) {
                    (true, false) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    (true, true) => {
                        released.fetch_add(1, Ordering::Relaxed);
                    }
                    (false, _) => {
                        skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })?;
            Ok::<(), anyhow::Error>(())
        };
        let result = send();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        result?;
        stats.sent = sent.into_inner();
        stats.skipped = skipped.into_inner();
        stats.bytes = bytes.into_inner();
        stats.releases = released.into_inner();
        Ok(stats)
    }

    /// Upload one entry and its objects (after a stage ran, with `build --push`).
    pub fn push_entry(&self, cache: &Cache, entry: &RunEntry) -> Result<()> {
        let fps = vec![entry.fingerprint.clone()];
        self.push(cache, Some(&fps), &ReleaseFiles::default(), 4, None)
            .map(|_| ())
    }

    /// Download and verify what a run entry needs; store it in the local cache.
    fn fetch_entry(
        &self,
        cache: &Cache,
        fp: &str,
        stats: &TransferCounters,
    ) -> Result<Option<RunEntry>> {
        if let Some(e) = cache.get_run(fp).filter(|e| cache.has_all(e)) {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(e));
        }
        match self.fetch_entry_checked(cache, fp, stats) {
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                // Hostile or damaged content: reported, never used; the stage runs instead.
                crate::cache::warn_once(
                    &format!("remote {fp}"),
                    &format!("{e}; ignoring it (the stage runs instead)"),
                );
                Ok(None)
            }
            r => r,
        }
    }

    fn fetch_entry_checked(
        &self,
        cache: &Cache,
        fp: &str,
        stats: &TransferCounters,
    ) -> Result<Option<RunEntry>> {
        let Ok(digest) = fp.parse::<Digest>() else {
            return Err(Refused(format!(
                "remote run entry `{}` is not named by a digest",
                fp.escape_debug()
            ))
            .into());
        };
        let Some(bytes) = self.get(&format!("runs/{digest}.json"))? else {
            return Ok(None);
        };
        let entry = RunEntry::parse(&bytes, &digest)
            .map_err(|e| Refused(format!("remote run entry {fp} is not valid: {e}")))?;
        self.fetch_outs(
            cache,
            entry.outs.values(),
            &format!("run entry {fp}"),
            stats,
        )?;
        cache.put_run(&entry)?;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(Some(entry))
    }

    /// Download and verify every tree and object `outs` need that the local cache lacks.
    fn fetch_outs<'a>(
        &self,
        cache: &Cache,
        outs: impl IntoIterator<Item = &'a CachedOut>,
        what: &str,
        stats: &TransferCounters,
    ) -> Result<()> {
        let mut objects = BTreeSet::new();
        for o in outs {
            if !o.dir {
                objects.insert(o.hash.clone());
                continue;
            }
            let tree: Tree = if cache.tree_path(&o.hash).exists() {
                cache.read_tree(&o.hash)?
            } else {
                let Some(b) = self.get(&format!("trees/{}.json", o.hash))? else {
                    bail!("remote cache lacks tree {} of {what}", o.hash)
                };
                let t = Tree::parse(&b, &o.hash)
                    .map_err(|e| Refused(format!("remote tree {}: {e:#}", o.hash)))?;
                cache.put_tree_bytes(&o.hash, &b)?;
                stats.add(b.len() as u64);
                t
            };
            objects.extend(tree.entries.into_iter().map(|e| e.hash));
        }
        for d in objects {
            if cache.object_path(&d).exists() {
                continue;
            }
            let Some(n) = self.download_object(cache, &d)? else {
                bail!("remote cache lacks object {d} of {what}")
            };
            stats.add(n);
        }
        Ok(())
    }

    /// `pipe pull`: fetch the release manifests under `prefix` that `dir` does not hold yet,
    /// after the objects each one references (verified like every object), so a fresh
    /// clone lists the team's releases and can roll back to them. A manifest with an
    /// unsafe name, that does not parse, or whose objects fail their check is reported and
    /// skipped. Counts the manifests added in `stats.releases`.
    pub fn pull_releases(
        &self,
        cache: &Cache,
        prefix: &str,
        dir: &Path,
        stats: &mut TransferStats,
    ) -> Result<()> {
        let c = TransferCounters::default();
        let names = self.store.list(&self.key(prefix))?;
        let mut added = 0usize;
        for name in names {
            if name.contains('/')
                || name.contains("..")
                || name.starts_with('.')
                || !name.ends_with(".json")
            {
                crate::cache::warn_once(
                    &format!("remote release {name}"),
                    &format!(
                        "remote {}: ignoring release manifest `{}` (unsafe name)",
                        self.url,
                        name.escape_debug()
                    ),
                );
                continue;
            }
            let dest = dir.join(&name);
            let have = std::fs::read(&dest)
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::release::ReleaseManifest>(&b).ok());
            let manifest = match have {
                Some(r) => r,
                None => {
                    let Some(bytes) = self.get(&format!("{prefix}/{name}"))? else {
                        continue;
                    };
                    match serde_json::from_slice::<crate::release::ReleaseManifest>(&bytes) {
                        Ok(r) => {
                            let paths_ok = r.artifacts.iter().all(|a| {
                                let p = Path::new(&a.path);
                                !p.is_absolute()
                                    && p.components().all(|c| {
                                        matches!(
                                            c,
                                            std::path::Component::Normal(_)
                                                | std::path::Component::CurDir
                                        )
                                    })
                            });
                            if !paths_ok {
                                crate::cache::warn_once(
                                    &format!("remote release {name}"),
                                    &format!(
                                        "remote {}: ignoring release manifest {name}: an artifact path leads outside the workspace",
                                        self.url
                                    ),
                                );
                                continue;
                            }
                            std::fs::create_dir_all(dir)
                                .with_context(|| format!("cannot create {}", dir.display()))?;
                            crate::fsutil::atomic_write(&dest, &bytes)?;
                            added += 1;
                            r
                        }
                        Err(e) => {
                            crate::cache::warn_once(
                                &format!("remote release {name}"),
                                &format!(
                                    "remote {}: ignoring release manifest {name}: {e}",
                                    self.url
                                ),
                            );
                            continue;
                        }
                    }
                }
            };
            let outs: Vec<&CachedOut> = manifest.artifacts.iter().map(|a| &a.out).collect();
            if outs.iter().all(|o| cache.has_out(o)) {
                continue;
            }
            match self.fetch_outs(cache, outs, &format!("release {name}"), &c) {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<Refused>().is_some() => {
                    crate::cache::warn_once(
                        &format!("remote release objects {name}"),
                        &format!("{e}; release {name} cannot be rolled back to from here"),
                    );
                }
                Err(e) => return Err(e),
            }
        }
        stats.releases += added;
        stats.bytes += c.bytes.into_inner();
        Ok(())
    }

    /// `build --pull`: fetch the entry for one fingerprint if the remote has it.
    pub fn fetch_run(&self, cache: &Cache, fp: &str) -> Result<Option<RunEntry>> {
        let c = TransferCounters::default();
        self.fetch_entry(cache, fp, &c)
    }

    /// Download the entries for `fps` (every remote entry when `None`) and their objects.
    pub fn pull(
        &self,
        cache: &Cache,
        fps: Option<&Vec<String>>,
        jobs: usize,
        bar: Option<indicatif::ProgressBar>,
    ) -> Result<TransferStats> {
        let c = TransferCounters::default();
        let fetch = || {
            let fps: Vec<String> = match fps {
                Some(f) => f.clone(),
                None => self
                    .store
                    .list(&self.key("runs"))?
                    .into_iter()
                    .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
                    .collect(),
            };
            if let Some(b) = &bar {
                b.set_length(fps.len() as u64);
            }
            let found = parallel(&fps, jobs, |fp| {
                let r = self.fetch_entry(cache, fp, &c).map(|e| e.is_some());
                if let Some(b) = &bar {
                    b.inc(1);
                }
                r
            })?;
            Ok::<usize, anyhow::Error>(found.into_iter().filter(|f| !f).count())
        };
        let result = fetch();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let missing = result?;
        Ok(TransferStats {
            sent: c.sent.into_inner(),
            skipped: c.skipped.into_inner(),
            bytes: c.bytes.into_inner(),
            missing,
            releases: 0,
        })
    }
}

/// Content from the remote that fails a check (not a digest, a tree or object that does
/// not match its digest): reported and ignored, never an error that stops a transfer.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

#[derive(Default)]
struct TransferCounters {
    sent: AtomicUsize,
    skipped: AtomicUsize,
    bytes: AtomicU64,
}

impl TransferCounters {
    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// Run `f` on every item on up to `jobs` threads; the results in the items' order. After a
/// failure no new item is started, and the first failure (in the items' order) is returned.
fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    // Items never started (after a failure) have no result; the failure comes first or later.
    for slot in slots {
        if let Some(r) = slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
            out.push(r?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_the_order_and_stops_after_a_failure() {
        let items: Vec<u32> = (0..100).collect();
        let doubled = parallel(&items, 8, |i| Ok(i * 2)).unwrap();
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(parallel(&[] as &[u32], 8, |i| Ok(*i)).unwrap().is_empty());
        let started = AtomicUsize::new(0);
        let r = parallel(&items, 2, |i| {
            started.fetch_add(1, Ordering::Relaxed);
            if *i >= 10 {
                bail!("item {i} failed")
            }
            Ok(())
        });
        assert_eq!(r.unwrap_err().to_string(), "item 10 failed");
        assert!(
            started.into_inner() < 20,
            "items kept starting after the failure"
        );
    }

    #[test]
    fn hints_name_the_two_usual_causes() {
        assert!(explain("s3://b", "GET k: HTTP 403 Forbidden").ends_with("AWS_SECRET_ACCESS_KEY)"));
        assert!(
            explain(
                "s3://b",
                "x: connection to h failed: io: Connection refused"
            )
            .ends_with("is `endpoint` right?)")
        );
        assert_eq!(
            explain("s3://b", "HTTP 500"),
            "remote cache s3://b: HTTP 500"
        );
        // A port with 403 in it is no access problem.
        assert!(
            explain(
                "s3://b",
                "LIST p/: connection to 127.0.0.1:40333 failed (3 attempts): io: Connection refused"
            )
            .ends_with("is `endpoint` right?)")
        );
    }
}
