//! Turning the raw file into a `Pipeline`: parse errors with locations, params files,
//! `--set`, the executor table; per-stage work is in `stage.rs`, edges in `link.rs`.

use super::built;
use super::*;
use crate::error::{did_you_mean, invalid};
use crate::fsutil::Layout;
use crate::params;
use crate::source::{Diag, Seg, Source, diags_error};
use crate::spec::{self, RawPipeline};
use anyhow::Result;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most worker threads a pipeline may ask for.
pub(super) const MAX_JOBS: usize = 1024;
/// The most units a resource pool (or a stage's `cpus`) may have.
pub(super) const MAX_POOL: u32 = 1024;

pub(super) struct Builder<'a> {
    pub(super) src: Source,
    pub(super) root: PathBuf,
    pub(super) opts: &'a LoadOptions,
    pub(super) diags: Vec<Diag>,
    /// Paths looked at while loading, handed on to the pipeline (and its hasher).
    pub(super) stats: crate::fsutil::StatMemo,
    /// Params files read, with the blake3 of their bytes (for the built snapshot).
    pub(super) files: Vec<(PathBuf, String)>,
}

/// Litter of dead writers (a killed restore, a kill during a lock write, a full disk) goes
/// before anything else: two small folders, usually empty or missing.
fn sweep(layout: &Layout) {
    crate::fsutil::sweep_once(&layout.tmp());
    crate::fsutil::sweep_once(&layout.cache.join("tmp"));
}

pub(super) fn key_path<'a>(stage: &'a str, key: &'a str) -> [Seg<'a>; 3] {
    [Seg::Key("stages"), Seg::Key(stage), Seg::Key(key)]
}

impl<'a> Builder<'a> {
    pub(super) fn new(src: Source, root: PathBuf, opts: &'a LoadOptions) -> Self {
        Builder {
            src,
            root,
            opts,
            diags: Vec::new(),
            stats: Default::default(),
            files: Vec::new(),
        }
    }

    pub(super) fn err(&mut self, path: &[Seg], stage: Option<&str>, msg: impl Into<String>) {
        let d = self.src.diag(path, stage, msg);
        self.diags.push(d);
    }

    pub(super) fn err_help(
        &mut self,
        path: &[Seg],
        stage: Option<&str>,
        msg: impl Into<String>,
        help: Option<String>,
    ) {
        let d = self.src.diag(path, stage, msg).help(help);
        self.diags.push(d);
    }

    /// Record a problem about a `${…}` placeholder at the placeholder itself (not at the start
    /// of its key): the first `${…}` quoted in `msg` is looked up after the key.
    pub(super) fn err_placeholder(&mut self, path: &[Seg], stage: Option<&str>, msg: String) {
        let needle = msg
            .find("${")
            .and_then(|i| msg[i..].find('}').map(|j| &msg[i..i + j + 1]));
        let key = self.src.span(path).map(|s| s.start);
        let at = match (key, needle) {
            (Some(k), Some(n)) => self.src.text[k..].find(n).map(|i| k + i).or(key),
            _ => key,
        };
        let d = self.src.diag_at(at, stage, msg);
        self.diags.push(d);
    }

    /// Record a problem at item `idx` of a stage's list key (`deps`, `outs`, `after`).
    pub(super) fn err_item(&mut self, s: &Stage, key: &str, idx: usize, msg: impl Into<String>) {
        let path = [
            Seg::Key("stages"),
            Seg::Key(&s.source_name),
            Seg::Key(key),
            Seg::Index(idx),
        ];
        let d = self.src.diag(&path, Some(&s.name), msg);
        self.diags.push(d);
    }

    pub(super) fn bail_if_errors(&mut self) -> Result<()> {
        if self.diags.is_empty() {
            Ok(())
        } else {
            Err(diags_error(std::mem::take(&mut self.diags)))
        }
    }

    pub(super) fn parse_error(&self, e: toml::de::Error) -> anyhow::Error {
        let offset = e.span().map(|s| s.start);
        let mut message = e.message().trim().to_string();
        let mut help = None;
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((field, tail)) = rest.split_once('`')
        {
            let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
            help = did_you_mean(field, expected.iter().copied());
            if help.is_none() && !expected.is_empty() {
                help = Some(format!("known keys: {}", expected.join(", ")));
            }
            message = format!("unknown key `{field}`");
        }
        if let Some(rest) = message.split("duplicate key `").nth(1)
            && let Some((key, _)) = rest.split_once('`')
            && message.contains("in table `stages`")
        {
            message = format!("stage `{key}` is defined twice");
            help = Some("rename one of the two, or merge them into one table".into());
        }
        let stage = offset.and_then(|off| self.stage_at(off));
        let d = self
            .src
            .diag_at(offset, stage.as_deref(), message)
            .help(help);
        diags_error(vec![d])
    }

    /// The stage whose table encloses a byte offset (the last stage header up to the end of
    /// its line, so an error on a header names that header's stage).
    pub(super) fn stage_at(&self, offset: usize) -> Option<String> {
        let all = &self.src.text;
        let start = offset.min(all.len());
        let end = all[start..].find('\n').map_or(all.len(), |i| start + i);
        let text = &all[..end];
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("[stages."))?;
        let inner = line.trim().trim_start_matches('[').trim_end_matches(']');
        let name = inner.strip_prefix("stages.")?;
        let name = name.split('.').next()?.trim_matches('"');
        Some(name.to_string())
    }

    /// The pipeline from its built snapshot when nothing it was built from changed, else
    /// built (and kept for next time).
    pub(super) fn build(self) -> Result<Pipeline> {
        let at = built::path(&self.root, &self.src.path);
        let key = built::key(&self.src.text, &self.root, self.opts);
        if let Some(kept) = built::read(&at, &key, &self.root, &self.stats) {
            let p = built::pipeline(kept, key, self.src, self.root, self.stats);
            sweep(&p.layout);
            return Ok(p);
        }
        let (mut p, files, dirs) = self.build_fresh()?;
        built::write(
            &at,
            &key,
            &p,
            &files,
            (dirs.0.as_deref(), dirs.1.as_deref()),
        );
        p.built = Some(super::BuiltFrom { key, files });
        Ok(p)
    }

    /// Parse, template, check and link; also the params files read and the `cache_dir` and
    /// `runs_dir` as written.
    #[allow(clippy::type_complexity)]
    fn build_fresh(
        mut self,
    ) -> Result<(
        Pipeline,
        Vec<(PathBuf, String)>,
        (Option<String>, Option<String>),
    )> {
        let snapshot = Layout::for_file(&self.root, &self.src.path, None, None)
            .state()
            .join("pipeline.json");
        let raw: RawPipeline =
            spec::parse_cached(&self.src.text, &snapshot).map_err(|e| self.parse_error(e))?;
        let mut params = raw.params.clone();
        if let Some(pf) = &raw.params_file {
            self.merge_params_file(pf, &mut params);
            self.bail_if_errors()?;
        }
        // `--params-file`, then `--set` (which wins): each value overrides a param that
        // exists, keeping its type.
        if let Some(f) = &self.opts.params_file {
            let shown = f.display();
            let table = self
                .read_params(f)
                .map_err(|e| invalid(format!("--params-file {shown}: {e}")))?;
            for (key, value) in spec::flatten_params(&table) {
                params::override_param(&mut params, &key, value, false)
                    .map_err(|e| invalid(format!("--params-file {shown}: {e}")))?;
            }
        }
        for (key, value) in &self.opts.overrides {
            params::override_param(&mut params, key, value.clone(), true)
                .map_err(|e| invalid(format!("--set {key}: {e}")))?;
        }
        match raw.pipeline.jobs {
            Some(0) => self.err(
                &[Seg::Key("pipeline"), Seg::Key("jobs")],
                None,
                "`jobs` must be at least 1",
            ),
            Some(j) if j > MAX_JOBS => self.err(
                &[Seg::Key("pipeline"), Seg::Key("jobs")],
                None,
                format!("`jobs` = {j} is over the limit of {MAX_JOBS}"),
            ),
            _ => {}
        }
        self.check_values(&raw);
        let (executor, slurm) = self.executor(&raw);

        // Expand matrix / foreach stages into concrete stages.
        let mut stages = Vec::new();
        let mut groups: IndexMap<String, Vec<usize>> = IndexMap::new();
        for (name, rs) in &raw.stages {
            if !valid_stage_name(name) {
                self.err(
                    &[Seg::Key("stages"), Seg::Key(name)],
                    Some(name),
                    "stage names may hold only letters, digits, `_`, `-` and `.`",
                );
                continue;
            }
            let members = self.expand(name, rs);
            let is_group = rs.matrix.is_some() || rs.foreach.is_some();
            for vars in members {
                if let Some(stage) = self.stage(name, rs, vars, &params, &raw, executor) {
                    if is_group {
                        groups.entry(name.clone()).or_default().push(stages.len());
                    }
                    stages.push(stage);
                }
            }
        }
        self.bail_if_errors()?;
        if let Ok(c) = std::env::var("PIPE_CACHE_DIR")
            && !c.is_empty()
            && let Err(e) = crate::fsutil::check_cache_dir(&c)
        {
            return Err(invalid(format!(
                "PIPE_CACHE_DIR {e} (it names the cache folder)"
            )));
        }

        let mut index = HashMap::new();
        for (i, s) in stages.iter().enumerate() {
            if index.insert(s.name.clone(), i).is_some() {
                let src = s.source_name.clone();
                self.err(
                    &[Seg::Key("stages"), Seg::Key(&src)],
                    Some(&s.name),
                    format!("two matrix members are both named `{}`", s.name),
                );
            }
        }
        self.bail_if_errors()?;
        self.link(&mut stages, &index);
        self.bail_if_errors()?;
        let order = self.toposort(&stages)?;

        let layout = Layout::for_file(
            &self.root,
            &self.src.path,
            raw.pipeline.cache_dir.as_deref(),
            raw.pipeline.runs_dir.as_deref(),
        );
        sweep(&layout);
        let dirs = (
            raw.pipeline.cache_dir.clone(),
            raw.pipeline.runs_dir.clone(),
        );
        let p = Pipeline {
            stats: self.stats,
            file: self.src.path.clone(),
            root: self.root,
            name: raw.pipeline.name.clone(),
            jobs: raw.pipeline.jobs,
            keep_runs: raw.pipeline.keep_runs.unwrap_or(100),
            layout,
            resources: raw.resources.clone(),
            params,
            stages,
            index,
            groups,
            order,
            remote: raw.remote.clone(),
            hooks: raw.hooks.clone().unwrap_or_default(),
            executor,
            slurm,
            source: self.src,
            built: None,
        };
        Ok((p, self.files, dirs))
    }

    /// Bounds on pipeline-level values that would otherwise pass and hurt later: pool
    /// sizes, the cache and runs folders (and `PIPE_CACHE_DIR`), the remote's url.
    fn check_values(&mut self, raw: &RawPipeline) {
        for (name, &size) in &raw.resources {
            if size > MAX_POOL {
                self.err(
                    &[Seg::Key("resources"), Seg::Key(name)],
                    None,
                    format!(
                        "resource pool `{name}` = {size} is over the limit of {MAX_POOL} units"
                    ),
                );
            }
        }
        if let Some(c) = &raw.pipeline.cache_dir
            && let Err(e) = crate::fsutil::check_cache_dir(c)
        {
            self.err(
                &[Seg::Key("pipeline"), Seg::Key("cache_dir")],
                None,
                format!("`cache_dir` {e}"),
            );
        }
        if let Some(r) = &raw.pipeline.runs_dir
            && let Err(e) = crate::fsutil::check_runs_dir(r)
        {
            self.err(
                &[Seg::Key("pipeline"), Seg::Key("runs_dir")],
                None,
                format!("`runs_dir` {e}"),
            );
        }
        if let Some(r) = &raw.remote {
            if let Err(e) = check_url(&r.url) {
                self.err(
                    &[Seg::Key("remote"), Seg::Key("url")],
                    None,
                    format!("`url` {e}"),
                );
            }
            if let Some(ep) = &r.endpoint
                && !(ep.starts_with("http://") || ep.starts_with("https://"))
            {
                self.err(
                    &[Seg::Key("remote"), Seg::Key("endpoint")],
                    None,
                    format!("`endpoint` `{ep}` must start with http:// or https://"),
                );
            }
        }
        if let Some(poll) = raw
            .executor
            .as_ref()
            .and_then(|e| e.slurm.as_ref()?.poll_interval)
            && !(poll.is_finite() && poll > 0.0)
        {
            self.err(
                &[
                    Seg::Key("executor"),
                    Seg::Key("slurm"),
                    Seg::Key("poll_interval"),
                ],
                None,
                format!("`poll_interval` = {poll} must be a positive number of seconds"),
            );
        }
    }

    pub(super) fn executor(&mut self, raw: &RawPipeline) -> (ExecutorKind, SlurmConfig) {
        let ex = raw.executor.clone().unwrap_or_default();
        let kind = match ex.kind.as_deref() {
            None | Some("local") => ExecutorKind::Local,
            Some("slurm") => ExecutorKind::Slurm,
            Some(other) => {
                self.err(
                    &[Seg::Key("executor"), Seg::Key("kind")],
                    None,
                    format!("unknown executor `{other}` (expected `local` or `slurm`)"),
                );
                ExecutorKind::Local
            }
        };
        let s = ex.slurm.unwrap_or_default();
        let slurm = SlurmConfig {
            partition: s.partition,
            extra_args: s.extra_args,
            poll_interval: Duration::from_secs_f64(
                s.poll_interval
                    .filter(|p| p.is_finite())
                    .unwrap_or(1.0)
                    .clamp(0.05, 60.0),
            ),
        };
        (kind, slurm)
    }

    /// Read a params file, keeping the blake3 of its bytes for the built snapshot.
    fn read_params(&mut self, path: &Path) -> std::result::Result<toml::Table, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        self.files.push((
            path.to_path_buf(),
            blake3::hash(text.as_bytes()).to_hex().to_string(),
        ));
        params::parse_file_text(path, &text)
    }

    pub(super) fn merge_params_file(&mut self, file: &str, params: &mut toml::Table) {
        let loaded = match self.read_params(&self.root.join(file)) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    &[Seg::Key("params_file")],
                    None,
                    format!("params file `{file}`: {e}"),
                );
                return;
            }
        };
        let existing = spec::flatten_params(params);
        let existing_keys = params::all_keys(params);
        for key in params::all_keys(&loaded) {
            let is_leaf = !matches!(params::lookup(&loaded, &key), Some(toml::Value::Table(_)));
            if is_leaf && (existing.contains_key(&key) || existing_keys.contains(&key)) {
                let mut path = vec![Seg::Key("params")];
                path.extend(key.split('.').map(Seg::Key));
                self.err(
                    &path,
                    None,
                    format!("param `{key}` is defined twice: here and in params file `{file}`"),
                );
            }
        }
        deep_merge(params, loaded);
    }
}

/// Check a `[remote] url`: `s3://bucket[/prefix]` with a bucket name, or
/// `file:///absolute/folder` (not a system folder). Anything else is refused.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "`{url}` names no bucket (expected s3://bucket or s3://bucket/prefix)"
            ));
        }
        if !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            || bucket.len() > 255
        {
            return Err(format!(
                "`{url}`: `{}` is not a bucket name (letters, digits, `-`, `.`, `_`)",
                bucket.escape_debug()
            ));
        }
        if prefix.split('/').any(|p| p == ".." || p == ".")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(format!(
                "`{url}`: the prefix may not hold `.`, `..` or control characters"
            ));
        }
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "`{url}` is not an absolute folder (expected file:///absolute/path, three slashes)"
            ));
        }
        return crate::fsutil::check_cache_dir(rest).map_err(|e| format!("`{url}`: {e}"));
    }
    Err(format!(
        "`{url}` is not a remote pipe can use (expected s3://bucket/prefix or file:///absolute/path)"
    ))
}

/// A declared stage name: letters, digits, `_`, `-`, `.`.
fn valid_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn deep_merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}
