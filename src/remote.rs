//! The remote cache: push and pull objects, trees and run-cache entries to S3 (or any
//! S3-compatible server) or a shared folder (`file://`), through the `object_store` crate.
//!
//! Keys mirror the local cache: `objects/ab/<digest>`, `trees/<digest>.json`,
//! `runs/<fingerprint>.json`. Uploads are create-only (`PutMode::Create`), so a writer
//! never replaces what another wrote; every download is verified with blake3 before use,
//! and a run-cache entry is trusted only as far as its objects verify. A run entry is
//! uploaded after its objects, so a remote entry never points at objects not yet there.

use crate::cache::{Cache, CachedOut, Digest, RunEntry, Tree};
use crate::error::failed;
use crate::spec::RawRemote;
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Objects bigger than this are uploaded in parts.
const MULTIPART: u64 = 64 << 20;

pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
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

fn explain(url: &str, e: &object_store::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("403")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("InvalidAccessKeyId")
        || text.contains("AccessDenied")
    {
        " (access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    } else if text.contains("onnect")
        || text.contains("timed out")
        || text.contains("error sending request")
    {
        " (cannot reach the server: is it running, and is `endpoint` right?)"
    } else {
        ""
    };
    format!("remote cache {url}: {text}{hint}")
}

impl Remote {
    pub fn open(cfg: &RawRemote, root: &Path) -> Result<Remote> {
        let url = cfg.url.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime for the remote cache")?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(crate::error::invalid(format!(
                    "[remote] url `{url}` names no bucket (expected s3://bucket/prefix)"
                )));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(RetryConfig {
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(20),
                    ..Default::default()
                })
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(600))
                        .with_allow_http(
                            cfg.allow_http.unwrap_or(
                                cfg.endpoint
                                    .as_deref()
                                    .is_some_and(|e| e.starts_with("http://")),
                            ),
                        ),
                );
            if let Some(ep) = &cfg.endpoint {
                b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
            }
            if let Some(r) = &cfg.region {
                b = b.with_region(r);
            } else if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                b = b.with_region("us-east-1");
            }
            let store = b
                .build()
                .map_err(|e| failed(format!("remote cache {url}: {e}")))?;
            (Arc::new(store), prefix.trim_matches('/').to_string())
        } else if let Some(rest) = url.strip_prefix("file://") {
            let path = if Path::new(rest).is_absolute() {
                PathBuf::from(rest)
            } else {
                root.join(rest)
            };
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create remote cache folder {}", path.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| failed(format!("remote cache {url}: {e}")))?;
            (Arc::new(store), String::new())
        } else {
            return Err(crate::error::invalid(format!(
                "[remote] url `{url}`: expected s3://bucket/prefix or file:///path"
            )));
        };
        Ok(Remote {
            url,
            store,
            prefix,
            rt,
        })
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn object_key(digest: &Digest) -> String {
        format!("objects/{}/{}", &digest[..2], &digest[2..])
    }

    /// Fetch a remote object's bytes; `None` when it is not there.
    async fn get(&self, rel: &str) -> Result<Option<bytes::Bytes>> {
        match self.store.get(&self.key(rel)).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| anyhow!(explain(&self.url, &e)))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow!(explain(&self.url, &e))),
        }
    }

    /// Stream an object into the local cache, hashing on the way; it enters the cache only
    /// if its bytes match its name. `None` when the remote lacks it.
    async fn download_object(&self, cache: &Cache, digest: &Digest) -> Result<Option<u64>> {
        use std::io::Write;
        let rel = Self::object_key(digest);
        let result = match self.store.get(&self.key(&rel)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(anyhow!(explain(&self.url, &e))),
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
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| anyhow!(explain(&self.url, &e)))?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            tmp.write_all(&chunk)
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

    async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.key(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(anyhow!(explain(&self.url, &e))),
        }
    }

    /// Create-only upload of a local file; `Ok(false)` when the key already existed.
    async fn put_file(&self, rel: &str, local: &Path) -> Result<(bool, u64)> {
        let size = std::fs::metadata(local)
            .with_context(|| format!("cannot read {}", local.display()))?
            .len();
        // Small objects go straight to a create-only PUT (the server refuses an existing key);
        // only big ones are looked up first, so they are not uploaded in vain.
        if size > MULTIPART && self.exists(rel).await? {
            return Ok((false, 0));
        }
        let key = self.key(rel);
        if size > MULTIPART {
            // Multipart uploads cannot be create-only; the key was checked just above and
            // objects are content-addressed, so a racing writer can only write the same bytes.
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| anyhow!(explain(&self.url, &e)))?;
            let mut w = object_store::WriteMultipart::new(upload);
            let mut f = std::fs::File::open(local)
                .with_context(|| format!("cannot read {}", local.display()))?;
            let mut buf = vec![0u8; 8 << 20];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)
                    .with_context(|| format!("cannot read {}", local.display()))?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| anyhow!(explain(&self.url, &e)))?;
                w.write(&buf[..n]);
            }
            w.finish()
                .await
                .map_err(|e| anyhow!(explain(&self.url, &e)))?;
            return Ok((true, size));
        }
        let bytes =
            std::fs::read(local).with_context(|| format!("cannot read {}", local.display()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok((true, size)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok((false, 0)),
            Err(e) => Err(anyhow!(explain(&self.url, &e))),
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
        self.rt.block_on(async {
            let results: Vec<Result<()>> = futures::stream::iter(items.iter())
                .map(|item| async {
                    let (rel, local) = match item {
                        Item::Object(d) => (Self::object_key(d), cache.object_path(d)),
                        Item::Tree(d) => (format!("trees/{d}.json"), cache.tree_path(d)),
                    };
                    let (was_sent, n) = self.put_file(&rel, &local).await?;
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
                })
                .buffer_unordered(jobs.max(1))
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>()?;
            // Entries last: a remote entry must never point at objects not yet uploaded.
            for e in &entries {
                let (was_sent, n) = self
                    .put_file(
                        &format!("runs/{}.json", e.fingerprint),
                        &cache.run_path(&e.fingerprint.parse::<Digest>().map_err(|e| anyhow!(e))?),
                    )
                    .await?;
                if was_sent {
                    sent.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                } else {
                    skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Release manifests too come after their objects (create-only as well).
            for (rel, path) in &shipped {
                let (was_sent, _) = self.put_file(rel, path).await?;
                if was_sent {
                    released.fetch_add(1, Ordering::Relaxed);
                } else {
                    skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), anyhow::Error>(())
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
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
    async fn fetch_entry(
        &self,
        cache: &Cache,
        fp: &str,
        stats: &TransferCounters,
    ) -> Result<Option<RunEntry>> {
        if let Some(e) = cache.get_run(fp).filter(|e| cache.has_all(e)) {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(e));
        }
        match self.fetch_entry_checked(cache, fp, stats).await {
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

    async fn fetch_entry_checked(
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
        let Some(bytes) = self.get(&format!("runs/{digest}.json")).await? else {
            return Ok(None);
        };
        let entry = RunEntry::parse(&bytes, &digest)
            .map_err(|e| Refused(format!("remote run entry {fp} is not valid: {e}")))?;
        self.fetch_outs(
            cache,
            entry.outs.values(),
            &format!("run entry {fp}"),
            stats,
        )
        .await?;
        cache.put_run(&entry)?;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(Some(entry))
    }

    /// Download and verify every tree and object `outs` need that the local cache lacks.
    async fn fetch_outs<'a>(
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
                let Some(b) = self.get(&format!("trees/{}.json", o.hash)).await? else {
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
            let Some(n) = self.download_object(cache, &d).await? else {
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
        let added = self.rt.block_on(async {
            let list: Vec<_> = self
                .store
                .list_with_delimiter(Some(&self.key(prefix)))
                .await
                .map(|l| l.objects)
                .or_else(|e| match e {
                    object_store::Error::NotFound { .. } => Ok(vec![]),
                    e => Err(anyhow!(explain(&self.url, &e))),
                })?;
            let mut added = 0usize;
            for m in list {
                let Some(name) = m.location.filename().map(str::to_string) else {
                    continue;
                };
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
                        let Some(bytes) = self.get(&format!("{prefix}/{name}")).await? else {
                            continue;
                        };
                        match serde_json::from_slice::<crate::release::ReleaseManifest>(&bytes) {
                            Ok(r) => {
                                let paths_ok = r.artifacts.iter().all(|a| {
                                    let p = Path::new(&a.path);
                                    !p.is_absolute()
                                        && p.components()
                                            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
                                });
                                if !paths_ok {
                                    crate::cache::warn_once(
                                        &format!("remote release {name}"),
                                        &format!("remote {}: ignoring release manifest {name}: an artifact path leads outside the workspace", self.url),
                                    );
                                    continue;
                                }
                                std::fs::create_dir_all(dir).with_context(|| {
                                    format!("cannot create {}", dir.display())
                                })?;
                                crate::fsutil::atomic_write(&dest, &bytes)?;
                                added += 1;
                                r
                            }
                            Err(e) => {
                                crate::cache::warn_once(
                                    &format!("remote release {name}"),
                                    &format!("remote {}: ignoring release manifest {name}: {e}", self.url),
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
                match self
                    .fetch_outs(cache, outs, &format!("release {name}"), &c)
                    .await
                {
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
            Ok::<usize, anyhow::Error>(added)
        })?;
        stats.releases += added;
        stats.bytes += c.bytes.into_inner();
        Ok(())
    }

    /// `build --pull`: fetch the entry for one fingerprint if the remote has it.
    pub fn fetch_run(&self, cache: &Cache, fp: &str) -> Result<Option<RunEntry>> {
        let c = TransferCounters::default();
        self.rt.block_on(self.fetch_entry(cache, fp, &c))
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
        let result = self.rt.block_on(async {
            let fps: Vec<String> = match fps {
                Some(f) => f.clone(),
                None => {
                    let prefix = self.key("runs");
                    let list: Vec<_> = self.store.list(Some(&prefix)).collect().await;
                    let mut out = Vec::new();
                    for m in list {
                        let m = m.map_err(|e| anyhow!(explain(&self.url, &e)))?;
                        if let Some(fp) =
                            m.location.filename().and_then(|n| n.strip_suffix(".json"))
                        {
                            out.push(fp.to_string());
                        }
                    }
                    out
                }
            };
            if let Some(b) = &bar {
                b.set_length(fps.len() as u64);
            }
            let results: Vec<Result<bool>> = futures::stream::iter(fps.iter())
                .map(|fp| async {
                    let r = self.fetch_entry(cache, fp, &c).await.map(|e| e.is_some());
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                    r
                })
                .buffer_unordered(jobs.max(1))
                .collect()
                .await;
            let mut missing = 0;
            for r in results {
                if !r? {
                    missing += 1;
                }
            }
            Ok::<usize, anyhow::Error>(missing)
        });
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
