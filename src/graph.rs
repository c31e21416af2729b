//! The validated pipeline: stages with normalised paths, substituted commands, the graph
//! from outs → deps (plus `after`), topological order and target selection.
//!
//! Everything that can be checked without running a command is checked here, once;
//! later steps never re-check.

use crate::error::{invalid, suggest};
use crate::fsutil::{self, Layout};
use crate::gate::GateSpec;
use crate::params;
use crate::source::{Diag, Seg, Source, diags_error};
use crate::spec::{self, RawPipeline, RawStage};
use anyhow::Result;
use globset::{Glob, GlobMatcher};
use indexmap::IndexMap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A dependency as declared: a path (file or folder) or a glob.
#[derive(Debug, Clone)]
pub struct Dep {
    /// The normalised text (folders keep no trailing slash; globs as written).
    pub path: String,
    pub glob: Option<GlobMatcher>,
}

/// A declared output: a file or a folder.
#[derive(Debug, Clone)]
pub struct Out {
    pub path: String,
    pub dir_hint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Default)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub extra_args: Vec<String>,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    /// The `[stages.NAME]` table this stage came from (differs for matrix members).
    pub source_name: String,
    /// Matrix values of a matrix member, in declaration order.
    pub matrix: Vec<(String, String)>,
    /// The commands as written (before `${…}` substitution): "command changed" compares these.
    pub cmd_template: Vec<String>,
    /// The commands as run.
    pub cmds: Vec<String>,
    pub deps: Vec<Dep>,
    pub outs: Vec<Out>,
    pub params: BTreeMap<String, toml::Value>,
    pub env: BTreeMap<String, String>,
    pub wdir: Option<String>,
    pub after: Vec<String>,
    pub resources: BTreeMap<String, u32>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub timeout: Option<Duration>,
    pub gate: Option<GateSpec>,
    pub release: bool,
    pub cache: bool,
    pub always: bool,
    pub frozen: bool,
    pub persist: bool,
    pub metrics: Vec<String>,
    pub executor: ExecutorKind,
    pub upstream: Vec<usize>,
    pub downstream: Vec<usize>,
}

impl Stage {
    /// A stage with neither deps nor outs runs on every build.
    pub fn runs_every_time(&self) -> bool {
        self.always || (self.deps.is_empty() && self.outs.is_empty())
    }
    /// Whether a successful run is stored in / restored from the cache.
    pub fn cacheable(&self) -> bool {
        self.cache && !self.outs.is_empty() && !self.runs_every_time()
    }
}

pub struct Pipeline {
    pub file: PathBuf,
    pub root: PathBuf,
    pub source: Source,
    pub name: Option<String>,
    pub jobs: Option<usize>,
    pub keep_runs: usize,
    pub layout: Layout,
    pub resources: IndexMap<String, u32>,
    pub params: toml::Table,
    pub stages: Vec<Stage>,
    pub index: HashMap<String, usize>,
    /// Matrix groups: source name → members.
    pub groups: IndexMap<String, Vec<usize>>,
    /// Stage indices in a topological order (declaration order where free).
    pub order: Vec<usize>,
    pub remote: Option<spec::RawRemote>,
    pub executor: ExecutorKind,
    pub slurm: SlurmConfig,
}

/// What the loader needs beyond the file: `--set` overrides.
#[derive(Default, Clone)]
pub struct LoadOptions {
    pub overrides: Vec<(String, toml::Value)>,
}

impl Pipeline {
    pub fn load(file: &Path, display: String, opts: &LoadOptions) -> Result<Pipeline> {
        let source = Source::read(file, display)?;
        let root = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let root = if root.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            root
        };
        let root = root
            .canonicalize()
            .map_err(|e| invalid(format!("cannot open workspace {}: {e}", root.display())))?;
        Builder::new(source, root, opts).build()
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.index.get(name).map(|&i| &self.stages[i])
    }

    /// Resolve names (stages or matrix groups) to stage indices; unknown names are an error.
    pub fn resolve_targets(&self, names: &[String]) -> Result<BTreeSet<usize>> {
        let mut set = BTreeSet::new();
        for name in names {
            if let Some(&i) = self.index.get(name) {
                set.insert(i);
            } else if let Some(members) = self.groups.get(name) {
                set.extend(members.iter().copied());
            } else {
                let hint = suggest(
                    name,
                    self.index
                        .keys()
                        .map(String::as_str)
                        .chain(self.groups.keys().map(String::as_str)),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                return Err(invalid(format!(
                    "no stage named `{name}` in {}{hint}",
                    self.source.display
                )));
            }
        }
        Ok(set)
    }

    /// The given stages plus everything upstream of them.
    pub fn with_upstream(&self, set: &BTreeSet<usize>) -> BTreeSet<usize> {
        self.closure(set, |s| &s.upstream)
    }

    /// The given stages plus everything downstream of them.
    pub fn with_downstream(&self, set: &BTreeSet<usize>) -> BTreeSet<usize> {
        self.closure(set, |s| &s.downstream)
    }

    fn closure(
        &self,
        set: &BTreeSet<usize>,
        next: impl Fn(&Stage) -> &Vec<usize>,
    ) -> BTreeSet<usize> {
        let mut out = set.clone();
        let mut stack: Vec<usize> = set.iter().copied().collect();
        while let Some(i) = stack.pop() {
            for &j in next(&self.stages[i]) {
                if out.insert(j) {
                    stack.push(j);
                }
            }
        }
        out
    }
}

struct Builder<'a> {
    src: Source,
    root: PathBuf,
    opts: &'a LoadOptions,
    diags: Vec<Diag>,
}

fn key_path<'a>(stage: &'a str, key: &'a str) -> [Seg<'a>; 3] {
    [Seg::Key("stages"), Seg::Key(stage), Seg::Key(key)]
}

impl<'a> Builder<'a> {
    fn new(src: Source, root: PathBuf, opts: &'a LoadOptions) -> Self {
        Builder {
            src,
            root,
            opts,
            diags: Vec::new(),
        }
    }

    fn err(&mut self, path: &[Seg], stage: Option<&str>, msg: impl Into<String>) {
        let d = self.src.diag(path, stage, msg);
        self.diags.push(d);
    }

    fn err_help(
        &mut self,
        path: &[Seg],
        stage: Option<&str>,
        msg: impl Into<String>,
        help: Option<String>,
    ) {
        let d = self.src.diag(path, stage, msg).help(help);
        self.diags.push(d);
    }

    fn bail_if_errors(&mut self) -> Result<()> {
        if self.diags.is_empty() {
            Ok(())
        } else {
            Err(diags_error(std::mem::take(&mut self.diags)))
        }
    }

    fn parse_error(&self, e: toml::de::Error) -> anyhow::Error {
        let offset = e.span().map(|s| s.start);
        let mut message = e.message().trim().to_string();
        let mut help = None;
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((field, tail)) = rest.split_once('`')
        {
            let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
            help = suggest(field, expected.iter().copied()).map(|s| format!("did you mean `{s}`?"));
            if help.is_none() && !expected.is_empty() {
                help = Some(format!("known keys: {}", expected.join(", ")));
            }
            message = format!("unknown key `{field}`");
        }
        let stage = offset.and_then(|off| self.stage_at(off));
        let d = self
            .src
            .diag_at(offset, stage.as_deref(), message)
            .help(help);
        diags_error(vec![d])
    }

    /// The stage whose table encloses a byte offset (the last stage header before it).
    fn stage_at(&self, offset: usize) -> Option<String> {
        let text = &self.src.text[..offset.min(self.src.text.len())];
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("[stages."))?;
        let inner = line.trim().trim_start_matches('[').trim_end_matches(']');
        let name = inner.strip_prefix("stages.")?;
        let name = name.split('.').next()?.trim_matches('"');
        Some(name.to_string())
    }

    fn build(mut self) -> Result<Pipeline> {
        let raw: RawPipeline = spec::parse(&self.src.text).map_err(|e| self.parse_error(e))?;
        let mut params = raw.params.clone();
        if let Some(pf) = &raw.params_file {
            self.merge_params_file(pf, &mut params);
            self.bail_if_errors()?;
        }
        for (key, value) in &self.opts.overrides {
            params::set_existing(&mut params, key, value.clone())
                .map_err(|e| invalid(format!("--set {key}: {e}")))?;
        }
        if let Some(0) = raw.pipeline.jobs {
            self.err(
                &[Seg::Key("pipeline"), Seg::Key("jobs")],
                None,
                "`jobs` must be at least 1",
            );
        }
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

        let layout = Layout::new(
            &self.root,
            raw.pipeline.cache_dir.as_deref(),
            raw.pipeline.runs_dir.as_deref(),
        );
        Ok(Pipeline {
            file: self.src.path.clone(),
            root: self.root,
            name: raw.pipeline.name.clone(),
            jobs: raw.pipeline.jobs,
            keep_runs: raw.pipeline.keep_runs.unwrap_or(20),
            layout,
            resources: raw.resources.clone(),
            params,
            stages,
            index,
            groups,
            order,
            remote: raw.remote.clone(),
            executor,
            slurm,
            source: self.src,
        })
    }

    fn executor(&mut self, raw: &RawPipeline) -> (ExecutorKind, SlurmConfig) {
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
                s.poll_interval.unwrap_or(1.0).clamp(0.05, 60.0),
            ),
        };
        (kind, slurm)
    }

    fn merge_params_file(&mut self, file: &str, params: &mut toml::Table) {
        let path = self.root.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    &[Seg::Key("params_file")],
                    None,
                    format!("cannot read params file `{file}`: {e}"),
                );
                return;
            }
        };
        let loaded: Result<toml::Table, String> = if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    json_to_toml(&v).and_then(|t| {
                        t.as_table()
                            .cloned()
                            .ok_or_else(|| "the top level must be an object".into())
                    })
                })
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let loaded = match loaded {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    &[Seg::Key("params_file")],
                    None,
                    format!("params file `{file}` is invalid: {e}"),
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

    /// The matrix / foreach variable sets of one declared stage (one empty set for a plain stage).
    fn expand(&mut self, name: &str, rs: &RawStage) -> Vec<Vec<(String, toml::Value)>> {
        if let Some(matrix) = &rs.matrix {
            if rs.foreach.is_some() {
                self.err(
                    &key_path(name, "foreach"),
                    Some(name),
                    "a stage has either `matrix` or `foreach`, not both",
                );
                return vec![];
            }
            if matrix.is_empty() {
                self.err(&key_path(name, "matrix"), Some(name), "`matrix` is empty");
                return vec![];
            }
            let mut combos: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
            for (key, values) in matrix {
                let loc = [
                    Seg::Key("stages"),
                    Seg::Key(name),
                    Seg::Key("matrix"),
                    Seg::Key(key),
                ];
                let Some(list) = values.as_array() else {
                    self.err(
                        &loc,
                        Some(name),
                        format!("matrix `{key}` must be a list of values"),
                    );
                    return vec![];
                };
                if list.is_empty() {
                    self.err(&loc, Some(name), format!("matrix `{key}` has no values"));
                    return vec![];
                }
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        list.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push((key.clone(), v.clone()));
                            c
                        })
                    })
                    .collect();
            }
            return combos;
        }
        if let Some(fe) = &rs.foreach {
            let sets: Vec<Vec<(String, toml::Value)>> = match fe {
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| vec![("item".to_string(), v.clone())])
                    .collect(),
                toml::Value::Table(t) => t
                    .iter()
                    .map(|(k, v)| {
                        vec![
                            ("key".to_string(), toml::Value::String(k.clone())),
                            ("item".to_string(), v.clone()),
                        ]
                    })
                    .collect(),
                _ => {
                    self.err(
                        &key_path(name, "foreach"),
                        Some(name),
                        "`foreach` must be a list or a table",
                    );
                    return vec![];
                }
            };
            if sets.is_empty() {
                self.err(
                    &key_path(name, "foreach"),
                    Some(name),
                    "`foreach` has no values",
                );
            }
            return sets;
        }
        vec![vec![]]
    }

    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        src_name: &str,
        rs: &RawStage,
        vars: Vec<(String, toml::Value)>,
        params: &toml::Table,
        raw: &RawPipeline,
        default_exec: ExecutorKind,
    ) -> Option<Stage> {
        let n = src_name;
        let before = self.diags.len();
        let is_foreach = rs.foreach.is_some();
        let name = if vars.is_empty() {
            n.to_string()
        } else if is_foreach {
            let label = vars
                .iter()
                .find(|(k, _)| k == "key")
                .or(vars.first())
                .map(|(_, v)| params::value_text(v))
                .unwrap_or_default();
            format!("{n}@{label}")
        } else {
            let parts: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{k}={}", params::value_text(v)))
                .collect();
            format!("{n}@{}", parts.join(","))
        };
        let shown = if vars.is_empty() {
            None
        } else {
            Some(name.clone())
        };
        let used_params: std::cell::RefCell<BTreeSet<String>> = Default::default();

        // Substitution of ${params.*}, ${matrix.*}, ${item}, ${key}.
        let subst = |this: &mut Self, text: &str, key: &str| -> String {
            let r = params::substitute(text, |ns, k| {
                match ns {
                "params" => match params::lookup(params, k) {
                    Some(v) => {
                        used_params.borrow_mut().insert(k.to_string());
                        Ok(params::value_text(v))
                    }
                    None => {
                        let hint = suggest(k, params::all_keys(params).iter().map(String::as_str))
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        Err(format!("unknown param `{k}` in `${{params.{k}}}`{hint}"))
                    }
                },
                "matrix" => vars
                    .iter()
                    .find(|(mk, _)| mk == k)
                    .map(|(_, v)| params::value_text(v))
                    .ok_or_else(|| {
                        if rs.matrix.is_none() {
                            format!("`${{matrix.{k}}}` is used but the stage has no `matrix`")
                        } else {
                            format!("`${{matrix.{k}}}` is used but `{k}` is not a key of the stage's `matrix`")
                        }
                    }),
                "item" | "key" => {
                    let v = vars.iter().find(|(mk, _)| mk == ns).map(|(_, v)| v).ok_or_else(|| format!("`${{{ns}}}` is used but the stage has no `foreach`"))?;
                    if k.is_empty() {
                        Ok(params::value_text(v))
                    } else {
                        v.as_table()
                            .and_then(|t| params::lookup(t, k))
                            .map(params::value_text)
                            .ok_or_else(|| format!("`${{{ns}.{k}}}`: the foreach value has no `{k}`"))
                    }
                }
                _ => unreachable!("substitute only passes pipe's namespaces"),
            }
            });
            match r {
                Ok(s) => s,
                Err(e) => {
                    this.err(&key_path(n, key), shown.as_deref().or(Some(n)), e);
                    String::new()
                }
            }
        };

        let cmds: Vec<String> = match &rs.cmd {
            Some(toml::Value::String(s)) => vec![s.clone()],
            Some(toml::Value::Array(items))
                if !items.is_empty() && items.iter().all(|v| v.is_str()) =>
            {
                items
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect()
            }
            Some(_) => {
                self.err(
                    &key_path(n, "cmd"),
                    Some(n),
                    "`cmd` must be a string or a non-empty list of strings",
                );
                vec![]
            }
            None => {
                if !rs.frozen {
                    self.err(&[Seg::Key("stages"), Seg::Key(n)], Some(n), "missing `cmd`");
                }
                vec![]
            }
        };
        let cmd_template = cmds.clone();
        let diags_before = self.diags.len();
        let cmds: Vec<String> = cmds.iter().map(|c| subst(self, c, "cmd")).collect();
        // A failed substitution is already reported; do not add "`cmd` is empty" on top.
        if self.diags.len() == diags_before
            && cmds.iter().any(|c| c.trim().is_empty())
            && !rs.frozen
        {
            self.err(&key_path(n, "cmd"), Some(n), "`cmd` is empty");
        }

        let mut deps = Vec::new();
        for (i, d) in rs.deps.iter().enumerate() {
            let d = subst(self, d, "deps");
            let loc = [
                Seg::Key("stages"),
                Seg::Key(n),
                Seg::Key("deps"),
                Seg::Index(i),
            ];
            match fsutil::normalize_rel(&d) {
                Ok((path, _)) => {
                    let glob = if fsutil::is_glob(&path) {
                        match Glob::new(&path) {
                            Ok(g) => Some(g.compile_matcher()),
                            Err(e) => {
                                self.err(
                                    &loc,
                                    Some(&name),
                                    format!("dep `{d}` is not a valid glob: {e}"),
                                );
                                None
                            }
                        }
                    } else {
                        None
                    };
                    if deps.iter().any(|x: &Dep| x.path == path) {
                        self.err(&loc, Some(&name), format!("dep `{d}` is listed twice"));
                    }
                    deps.push(Dep { path, glob });
                }
                Err(e) => self.err(&loc, Some(&name), format!("dep {e}")),
            }
        }
        let mut outs = Vec::new();
        for (i, o) in rs.outs.iter().enumerate() {
            let o = subst(self, o, "outs");
            let loc = [
                Seg::Key("stages"),
                Seg::Key(n),
                Seg::Key("outs"),
                Seg::Index(i),
            ];
            match fsutil::normalize_rel(&o) {
                Ok((path, dir_hint)) => {
                    if fsutil::is_glob(&path) {
                        self.err(
                            &loc,
                            Some(&name),
                            format!("out `{o}` is a glob; outs must be plain files or folders"),
                        );
                    } else if path == "Pipeline.toml" || path == "Pipeline.lock" {
                        self.err(
                            &loc,
                            Some(&name),
                            format!("out `{o}` would overwrite pipe's own file"),
                        );
                    } else if let Err(e) = check_inside(&self.root, &path) {
                        self.err(&loc, Some(&name), format!("out `{o}` {e}"));
                    } else {
                        outs.push(Out { path, dir_hint });
                    }
                }
                Err(e) => self.err(&loc, Some(&name), format!("out {e}")),
            }
        }

        // Params: listed keys (a table takes all leaves) plus ${params.*} used in the text.
        let mut stage_params = BTreeMap::new();
        for (i, key) in rs.params.iter().enumerate() {
            match params::leaves(params, key) {
                Some(l) => stage_params.extend(l),
                None => {
                    let hint = suggest(key, params::all_keys(params).iter().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"));
                    self.err_help(
                        &[
                            Seg::Key("stages"),
                            Seg::Key(n),
                            Seg::Key("params"),
                            Seg::Index(i),
                        ],
                        Some(&name),
                        format!("unknown param `{key}` (not in [params])"),
                        hint,
                    );
                }
            }
        }

        let mut env = BTreeMap::new();
        for (k, v) in &rs.env {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    v.to_string()
                }
                _ => {
                    self.err(
                        &[
                            Seg::Key("stages"),
                            Seg::Key(n),
                            Seg::Key("env"),
                            Seg::Key(k),
                        ],
                        Some(&name),
                        format!("env `{k}` must be a string, number or boolean"),
                    );
                    continue;
                }
            };
            let text = subst(self, &text, "env");
            env.insert(k.clone(), text);
        }
        let wdir = match &rs.wdir {
            Some(w) => {
                let w = subst(self, w, "wdir");
                match fsutil::normalize_rel(&w) {
                    Ok((p, _)) => Some(p),
                    Err(e) if w == "." => {
                        let _ = e;
                        None
                    }
                    Err(e) => {
                        self.err(&key_path(n, "wdir"), Some(&name), format!("wdir {e}"));
                        None
                    }
                }
            }
            None => None,
        };
        for key in used_params.borrow().iter() {
            if let Some(l) = params::leaves(params, key) {
                stage_params.extend(l);
            }
        }

        let mut resources = BTreeMap::new();
        for (r, amount) in &rs.resources {
            let loc = [
                Seg::Key("stages"),
                Seg::Key(n),
                Seg::Key("resources"),
                Seg::Key(r),
            ];
            match raw.resources.get(r) {
                None if r == "cpus" || r == "mem" => {
                    // Slurm-only sizing hints; they take no local pool.
                }
                None => {
                    let hint = suggest(r, raw.resources.keys().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"));
                    self.err_help(
                        &loc,
                        Some(&name),
                        format!("resource `{r}` is not declared in [resources]"),
                        hint.or(Some(format!("add `{r} = N` under [resources]"))),
                    );
                    continue;
                }
                Some(cap) if amount > cap => {
                    self.err(&loc, Some(&name), format!("asks for {amount} `{r}` but the pool has only {cap}: it could never run"));
                    continue;
                }
                Some(_) => {}
            }
            resources.insert(r.clone(), *amount);
        }

        let dur = |this: &mut Self, key: &str, v: &Option<String>| -> Option<Duration> {
            let s = v.as_ref()?;
            match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(d),
                Err(e) => {
                    this.err(&key_path(n, key), Some(&name), format!("`{key}` = \"{s}\" is not a duration ({e}); use e.g. \"30s\", \"90m\", \"2h\""));
                    None
                }
            }
        };
        let retry_delay =
            dur(self, "retry_delay", &rs.retry_delay).unwrap_or(Duration::from_secs(1));
        let timeout = dur(self, "timeout", &rs.timeout);

        let gate = match &rs.gate {
            Some(g) => {
                let file = subst(self, &g.file, "gate");
                // Point at the check that does not parse, else at the gate table.
                let bad = g
                    .checks
                    .iter()
                    .position(|c| crate::gate::parse_check(c).is_err());
                match GateSpec::parse(&name, g.name.as_deref(), &file, &g.checks) {
                    Ok(spec) => Some(spec),
                    Err(e) => {
                        let mut path = vec![Seg::Key("stages"), Seg::Key(n), Seg::Key("gate")];
                        if let Some(i) = bad {
                            path.extend([Seg::Key("checks"), Seg::Index(i)]);
                        }
                        self.err(&path, Some(&name), e);
                        None
                    }
                }
            }
            None => None,
        };

        let mut metrics = Vec::new();
        for (i, m) in rs.metrics.iter().enumerate() {
            let m = subst(self, m, "metrics");
            match fsutil::normalize_rel(&m) {
                Ok((p, _)) if outs.iter().any(|o: &Out| o.path == p) => metrics.push(p),
                Ok((p, _)) => self.err(
                    &[
                        Seg::Key("stages"),
                        Seg::Key(n),
                        Seg::Key("metrics"),
                        Seg::Index(i),
                    ],
                    Some(&name),
                    format!("metrics file `{p}` must also be listed in `outs`"),
                ),
                Err(e) => self.err(
                    &[
                        Seg::Key("stages"),
                        Seg::Key(n),
                        Seg::Key("metrics"),
                        Seg::Index(i),
                    ],
                    Some(&name),
                    format!("metrics {e}"),
                ),
            }
        }
        let executor = match rs.executor.as_deref() {
            None => default_exec,
            Some("local") => ExecutorKind::Local,
            Some("slurm") => ExecutorKind::Slurm,
            Some(other) => {
                self.err(
                    &key_path(n, "executor"),
                    Some(&name),
                    format!("unknown executor `{other}` (expected `local` or `slurm`)"),
                );
                default_exec
            }
        };
        if rs.frozen && rs.always {
            self.err(
                &key_path(n, "frozen"),
                Some(&name),
                "a stage cannot be both `frozen` and `always`",
            );
        }
        if self.diags.len() > before {
            return None;
        }
        Some(Stage {
            name,
            source_name: n.to_string(),
            matrix: if is_foreach {
                vec![]
            } else {
                vars.iter()
                    .map(|(k, v)| (k.clone(), params::value_text(v)))
                    .collect()
            },
            cmd_template,
            cmds,
            deps,
            outs,
            params: stage_params,
            env,
            wdir,
            after: rs.after.clone(),
            resources,
            retries: rs.retries,
            retry_delay,
            timeout,
            gate,
            release: rs.release,
            cache: rs.cache.unwrap_or(true),
            always: rs.always,
            frozen: rs.frozen,
            persist: rs.persist,
            metrics,
            executor,
            upstream: vec![],
            downstream: vec![],
        })
    }

    /// Edges from outs → deps and `after`; overlapping outs; deps nobody makes.
    fn link(&mut self, stages: &mut [Stage], index: &HashMap<String, usize>) {
        // Every out, by path.
        let mut outs: BTreeMap<String, usize> = BTreeMap::new();
        for (i, s) in stages.iter().enumerate() {
            for (oi, o) in s.outs.iter().enumerate() {
                if let Some(&j) = outs.get(&o.path) {
                    let other = stages[j].name.clone();
                    let msg = if j == i {
                        format!("out `{}` is listed twice", o.path)
                    } else {
                        format!(
                            "out `{}` is also an out of stage `{other}`; two stages cannot write the same path",
                            o.path
                        )
                    };
                    let d = self.src.diag(
                        &[
                            Seg::Key("stages"),
                            Seg::Key(&s.source_name),
                            Seg::Key("outs"),
                            Seg::Index(oi),
                        ],
                        Some(&s.name),
                        msg,
                    );
                    self.diags.push(d);
                } else {
                    outs.insert(o.path.clone(), i);
                }
            }
        }
        // An out inside another out's folder.
        for (path, &i) in &outs {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if let Some(&j) = outs.get(parent) {
                    let s = &stages[i];
                    let oi = s.outs.iter().position(|o| &o.path == path).unwrap_or(0);
                    let msg = format!(
                        "out `{path}` is inside out folder `{parent}` of stage `{}`",
                        stages[j].name
                    );
                    let d = self.src.diag(
                        &[
                            Seg::Key("stages"),
                            Seg::Key(&s.source_name),
                            Seg::Key("outs"),
                            Seg::Index(oi),
                        ],
                        Some(&s.name),
                        msg,
                    );
                    self.diags.push(d);
                }
                p = parent;
            }
        }

        let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); stages.len()];
        for (i, s) in stages.iter().enumerate() {
            for (di, dep) in s.deps.iter().enumerate() {
                let mut producers = BTreeSet::new();
                if let Some(g) = &dep.glob {
                    for (path, &j) in &outs {
                        if g.is_match(path) {
                            producers.insert(j);
                        }
                    }
                } else {
                    // The dep is an out, inside an out folder, or a folder holding outs.
                    let mut p = dep.path.as_str();
                    loop {
                        if let Some(&j) = outs.get(p) {
                            producers.insert(j);
                        }
                        match p.rsplit_once('/') {
                            Some((parent, _)) => p = parent,
                            None => break,
                        }
                    }
                    let prefix = format!("{}/", dep.path);
                    for (path, &j) in outs.range(prefix.clone()..) {
                        if !path.starts_with(&prefix) {
                            break;
                        }
                        producers.insert(j);
                    }
                }
                let loc = [
                    Seg::Key("stages"),
                    Seg::Key(&s.source_name),
                    Seg::Key("deps"),
                    Seg::Index(di),
                ];
                if producers.contains(&i) {
                    let d = self.src.diag(
                        &loc,
                        Some(&s.name),
                        format!("dep `{}` is one of the stage's own outs", dep.path),
                    );
                    self.diags.push(d);
                    continue;
                }
                if producers.is_empty() && dep.glob.is_none() && !self.root.join(&dep.path).exists()
                {
                    let d = self
                        .src
                        .diag(
                            &loc,
                            Some(&s.name),
                            format!("dep `{}` does not exist and no stage produces it", dep.path),
                        )
                        .help(Some(
                            "create the file, fix the path, or add it to another stage's `outs`"
                                .into(),
                        ));
                    self.diags.push(d);
                }
                edges[i].extend(producers);
            }
            for (ai, a) in s.after.iter().enumerate() {
                let loc = [
                    Seg::Key("stages"),
                    Seg::Key(&s.source_name),
                    Seg::Key("after"),
                    Seg::Index(ai),
                ];
                match index.get(a) {
                    Some(&j) if j == i => {
                        let d =
                            self.src
                                .diag(&loc, Some(&s.name), "`after` names the stage itself");
                        self.diags.push(d);
                    }
                    Some(&j) => {
                        edges[i].insert(j);
                    }
                    None => {
                        // `after` may name a whole matrix group.
                        let members: Vec<usize> = stages
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| t.source_name == *a && t.name != t.source_name)
                            .map(|(j, _)| j)
                            .collect();
                        if members.is_empty() {
                            let hint = suggest(a, index.keys().map(String::as_str))
                                .map(|s| format!("did you mean `{s}`?"));
                            let d = self
                                .src
                                .diag(
                                    &loc,
                                    Some(&s.name),
                                    format!("`after` names unknown stage `{a}`"),
                                )
                                .help(hint);
                            self.diags.push(d);
                        } else {
                            edges[i].extend(members);
                        }
                    }
                }
            }
        }
        for (i, up) in edges.into_iter().enumerate() {
            for &j in &up {
                stages[j].downstream.push(i);
            }
            stages[i].upstream = up.into_iter().collect();
        }
    }

    /// Kahn's algorithm in declaration order; a cycle is reported with the stages around it.
    fn toposort(&mut self, stages: &[Stage]) -> Result<Vec<usize>> {
        let mut indeg: Vec<usize> = stages.iter().map(|s| s.upstream.len()).collect();
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..stages.len())
            .filter(|&i| indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(stages.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &d in &stages[i].downstream {
                indeg[d] -= 1;
                if indeg[d] == 0 {
                    ready.push(std::cmp::Reverse(d));
                }
            }
        }
        if order.len() == stages.len() {
            return Ok(order);
        }
        // Find one cycle among the stages left: follow upstream edges until a repeat.
        let left: BTreeSet<usize> = (0..stages.len()).filter(|i| indeg[*i] > 0).collect();
        let start = *left.iter().next().unwrap_or(&0);
        let mut path = vec![start];
        let mut seen = HashMap::from([(start, 0usize)]);
        let mut cur = start;
        let cycle = loop {
            let Some(&next) = stages[cur].upstream.iter().find(|u| left.contains(u)) else {
                break vec![start];
            };
            if let Some(&pos) = seen.get(&next) {
                break path[pos..].to_vec();
            }
            seen.insert(next, path.len());
            path.push(next);
            cur = next;
        };
        // `cycle` follows upstream edges; print it in data-flow order.
        let mut names: Vec<&str> = cycle
            .iter()
            .rev()
            .map(|&i| stages[i].name.as_str())
            .collect();
        names.push(names[0]);
        let first = &stages[cycle[0]];
        let d = self.src.diag(
            &[Seg::Key("stages"), Seg::Key(&first.source_name)],
            Some(&first.name),
            format!("dependency cycle: {}", names.join(" → ")),
        );
        Err(diags_error(vec![d]))
    }
}

fn valid_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Refuse an out whose existing parent (or itself) is a symlink leading outside the workspace.
fn check_inside(root: &Path, rel: &str) -> std::result::Result<(), String> {
    let mut p = root.join(rel);
    loop {
        if std::fs::symlink_metadata(&p).is_ok() {
            let real = p
                .canonicalize()
                .map_err(|e| format!("cannot be resolved: {e}"))?;
            if !real.starts_with(root) {
                return Err(format!(
                    "resolves to {} through a symlink, outside the workspace",
                    real.display()
                ));
            }
            return Ok(());
        }
        if !p.pop() || p == root {
            return Ok(());
        }
    }
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

fn json_to_toml(v: &serde_json::Value) -> std::result::Result<toml::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err("null values are not allowed in params".into()),
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(
            a.iter()
                .map(json_to_toml)
                .collect::<std::result::Result<_, _>>()?,
        ),
        J::Object(o) => {
            let mut t = toml::Table::new();
            for (k, v) in o {
                t.insert(k.clone(), json_to_toml(v)?);
            }
            toml::Value::Table(t)
        }
    })
}
