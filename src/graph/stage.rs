//! Validating one declared stage: matrix / foreach expansion, `${…}` substitution, paths,
//! params, env, resources, durations, gate, metrics.

use super::builder::{Builder, MAX_POOL, key_path};
use super::*;
use crate::error::{did_you_mean, hint};
use crate::fsutil::{self};
use crate::gate::GateSpec;
use crate::params;
use crate::source::Seg;
use crate::spec::{RawPipeline, RawStage};
use globset::Glob;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// The most stages one `matrix` or `foreach` may make.
pub(super) const MAX_MEMBERS: usize = 10_000;
/// The longest `timeout` or `retry_delay`.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most extra attempts of a stage.
pub(super) const MAX_RETRIES: u32 = 100;

impl<'a> Builder<'a> {
    /// The matrix / foreach variable sets of one declared stage (one empty set for a plain stage).
    pub(super) fn expand(&mut self, name: &str, rs: &RawStage) -> Vec<Vec<(String, toml::Value)>> {
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
            // The size first: a matrix of 1000 × 1000 × 1000 must be refused, not built.
            let sizes: Vec<usize> = matrix
                .values()
                .map(|v| v.as_array().map_or(1, Vec::len))
                .collect();
            let total = sizes
                .iter()
                .try_fold(1usize, |acc, &n| acc.checked_mul(n))
                .unwrap_or(usize::MAX);
            if total > MAX_MEMBERS {
                let product = sizes
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(" × ");
                let total = if total == usize::MAX {
                    "more than anyone can count".to_string()
                } else {
                    total.to_string()
                };
                self.err(
                    &key_path(name, "matrix"),
                    Some(name),
                    format!(
                        "`matrix` makes {product} = {total} stages, over the limit of {MAX_MEMBERS}"
                    ),
                );
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
            if sets.len() > MAX_MEMBERS {
                self.err(
                    &key_path(name, "foreach"),
                    Some(name),
                    format!(
                        "`foreach` makes {} stages, over the limit of {MAX_MEMBERS}",
                        sets.len()
                    ),
                );
                return vec![];
            }
            return sets;
        }
        vec![vec![]]
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage(
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
                        let hint = hint(k, params::all_keys(params).iter().map(String::as_str));
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
                    this.err_placeholder(&key_path(n, key), shown.as_deref().or(Some(n)), e);
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
            // An absolute path is an external dep (a shared dataset, a base model): hashed
            // like any dep, never written; outs stay inside the workspace.
            let parsed = if d.starts_with('/') {
                external_dep(&d)
            } else {
                fsutil::normalize_rel(&d)
            };
            match parsed {
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
                    } else if let Err(e) = check_inside(&self.root, &path, &self.stats) {
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
                    let hint =
                        did_you_mean(key, params::all_keys(params).iter().map(String::as_str));
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
            let env_loc = [
                Seg::Key("stages"),
                Seg::Key(n),
                Seg::Key("env"),
                Seg::Key(k),
            ];
            if k.is_empty() || k.contains(['=', '\0']) {
                self.err(
                    &env_loc,
                    Some(&name),
                    format!(
                        "env name `{}` is not usable: a name is not empty and holds no `=` or NUL",
                        k.escape_debug()
                    ),
                );
                continue;
            }
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
            if text.contains('\0') {
                self.err(
                    &env_loc,
                    Some(&name),
                    format!("env `{k}` holds a NUL character, which no environment can carry"),
                );
                continue;
            }
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
                None if r == "cpus" && *amount > MAX_POOL => {
                    self.err(
                        &loc,
                        Some(&name),
                        format!("asks for {amount} `cpus`, over the limit of {MAX_POOL}"),
                    );
                    continue;
                }
                None if r == "cpus" || r == "mem" => {
                    // Slurm-only sizing hints; they take no local pool.
                }
                None => {
                    let hint = did_you_mean(r, raw.resources.keys().map(String::as_str));
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
                Ok(d) if d > MAX_DURATION => {
                    this.err(
                        &key_path(n, key),
                        Some(&name),
                        format!("`{key}` = \"{s}\" is longer than the limit of 1 year"),
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    this.err(&key_path(n, key), Some(&name), format!("`{key}` = \"{s}\" is not a duration ({e}); use e.g. \"30s\", \"90m\", \"2h\""));
                    None
                }
            }
        };
        let retry_delay =
            dur(self, "retry_delay", &rs.retry_delay).unwrap_or(Duration::from_secs(1));
        if rs.retries > MAX_RETRIES {
            self.err(
                &key_path(n, "retries"),
                Some(&name),
                format!(
                    "`retries` = {} is over the limit of {MAX_RETRIES}",
                    rs.retries
                ),
            );
        }
        if cmds.iter().any(|c| c.contains('\0')) {
            self.err(
                &key_path(n, "cmd"),
                Some(&name),
                "`cmd` holds a NUL character (after substitution), which no shell can run",
            );
        }
        let timeout = dur(self, "timeout", &rs.timeout);

        let gate = match &rs.gate {
            Some(g) => {
                let file = subst(self, &g.file, "gate");
                // Point at the check that does not parse, else at the gate table.
                let bad = g
                    .checks
                    .iter()
                    .position(|c| crate::gate::parse_check(c).is_err());
                // A member's gate is its own: `${item}`, `${key}`, `${matrix.K}` are
                // substituted in its name, and a name that uses none of them gets the
                // member's label (`eval_gate@a`), so members never share a record.
                let gname = g.name.as_deref().map(|raw| {
                    let text = subst(self, raw, "gate");
                    let per_member = ["${item", "${key", "${matrix."]
                        .iter()
                        .any(|v| raw.contains(v));
                    match name.split_once('@') {
                        Some((_, label)) if !per_member => format!("{text}@{label}"),
                        _ => text,
                    }
                });
                match GateSpec::parse(&name, gname.as_deref(), &file, &g.checks) {
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
}

/// Refuse an out whose existing parent (or itself) is a symlink leading outside the workspace.
fn check_inside(
    root: &Path,
    rel: &str,
    stats: &crate::fsutil::StatMemo,
) -> std::result::Result<(), String> {
    let mut p = root.join(rel);
    loop {
        if let Ok(meta) = stats.symlink_metadata(&p) {
            // Not a symlink itself: only a symlinked folder on the way could lead out, and
            // folders are checked once each (a thousand outs in one folder: one check).
            let real_dir = if meta.file_type().is_symlink() {
                false
            } else {
                p.parent().is_none_or(|d| real_folder(root, d, stats))
            };
            if real_dir {
                return Ok(());
            }
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

/// Whether `dir` (inside the canonical `root`) is reached without any symlink: each folder
/// is looked at once per load, through `stats` (so a built snapshot knows it was).
fn real_folder(root: &Path, dir: &Path, stats: &crate::fsutil::StatMemo) -> bool {
    if dir == root || !dir.starts_with(root) {
        return dir == root;
    }
    stats
        .symlink_metadata(dir)
        .is_ok_and(|m| !m.file_type().is_symlink())
        && dir.parent().is_some_and(|d| real_folder(root, d, stats))
}

/// Normalize an absolute dep path: no `..`, no empty or `.` parts, no trailing slash; never
/// the file system root.
fn external_dep(raw: &str) -> std::result::Result<(String, bool), String> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("`{raw}`: `..` is not allowed in an external dep")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("`{raw}` names the file system root"));
    }
    if fsutil::is_glob(raw) {
        return Err(format!(
            "`{raw}`: an external (absolute) dep cannot be a glob; name a file or a folder"
        ));
    }
    Ok((format!("/{}", parts.join("/")), raw.ends_with('/')))
}
