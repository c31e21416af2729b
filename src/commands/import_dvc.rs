//! `pipe import dvc [DIR]`: write `DIR/Pipeline.toml` from a DVC project's `dvc.yaml`
//! (+ `params.yaml`, other params files and `vars`), never overwriting one.
//!
//! What maps: stages with `cmd` (string or list), `deps`, `outs` (`cache: false`,
//! `persist: true`), `params` (keys of params.yaml, `{file: [keys]}` from other files),
//! `metrics`, `wdir` (paths are rebased: pipe's paths are relative to the workspace root),
//! `frozen`, `always_changed` (`always`), `foreach`/`do` and `matrix` with `${item}`,
//! `${key}`, `${item.x}`, `vars`, and `${name}` interpolation (`${params.name}`). Data that
//! DVC tracks with a `.dvc` file and a stage reads becomes a `dvc pull` stage, so the
//! graph is complete. Everything else (plots, dvc.lock hashes, unknown keys) is listed
//! on stderr as not converted.

use crate::cli::{ImportArgs, ImportCommand};
use crate::error::invalid;
use crate::report::{Reporter, Tone};
use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde_yaml_ng::Value as Y;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::Value as T;

pub fn run(rep: &Reporter, a: &ImportArgs) -> Result<i32> {
    let ImportCommand::Dvc { project } = &a.command;
    let dir = project.clone().unwrap_or_else(|| PathBuf::from("."));
    let shown = |name: &str| {
        if dir == Path::new(".") {
            name.to_string()
        } else {
            dir.join(name).display().to_string()
        }
    };
    let target = dir.join("Pipeline.toml");
    if target.exists() {
        return Err(invalid(format!(
            "{} already exists; not overwriting it (move it away, or import into another folder)",
            shown("Pipeline.toml")
        )));
    }
    let yaml_path = dir.join("dvc.yaml");
    let text = std::fs::read_to_string(&yaml_path).map_err(|e| {
        invalid(format!(
            "cannot read {}: {e} (`pipe import dvc DIR` reads DIR/dvc.yaml)",
            shown("dvc.yaml")
        ))
    })?;
    let mut imp = Importer::new(&dir);
    let out = imp.convert(&text)?;
    {
        use std::io::Write;
        // create_new: never replace a Pipeline.toml that appeared meanwhile.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .with_context(|| format!("cannot write {}", shown("Pipeline.toml")))?;
        f.write_all(out.as_bytes())
            .with_context(|| format!("cannot write {}", shown("Pipeline.toml")))?;
    }
    rep.status(
        "Imported",
        Tone::Good,
        &format!(
            "{} from {}: {} stage{}{}",
            shown("Pipeline.toml"),
            shown("dvc.yaml"),
            imp.stage_count,
            if imp.stage_count == 1 { "" } else { "s" },
            if imp.params_files.is_empty() {
                String::new()
            } else {
                format!(", params from {}", imp.params_files.join(", "))
            }
        ),
    );
    if !imp.notes.is_empty() {
        // Always shown, also with -q: the user must know what did not come over.
        eprintln!("Not converted (or converted with a change):");
        for n in &imp.notes {
            eprintln!("  - {n}");
        }
    }
    // Check the result as `pipe validate` would.
    let display = shown("Pipeline.toml");
    if let Err(e) = crate::graph::Pipeline::load(
        &target,
        display.clone(),
        &crate::graph::LoadOptions::default(),
    ) {
        eprintln!(
            "warning: {display} does not pass `pipe validate` yet (fix this, then run `pipe validate`):\n{e:#}"
        );
    } else {
        rep.status(
            "Valid",
            Tone::Good,
            &format!("{display} (next: `pipe status`, then `pipe build`)"),
        );
    }
    Ok(0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Foreach,
    Matrix,
}

/// What `${...}` may refer to inside one stage.
struct Scope<'a> {
    kind: Kind,
    stage: &'a str,
    /// Stage-level `vars`: inlined as literal text.
    local: toml::Table,
    /// In a stage expanded from a DVC matrix into a foreach table: `${item.K}` stays.
    matrix_keys: Vec<String>,
}

pub struct Importer {
    root: PathBuf,
    pub notes: Vec<String>,
    /// The values `${name}` resolves to: params.yaml and top-level `vars` (DVC's context),
    /// written under [params].
    params: toml::Table,
    pub params_files: Vec<String>,
    /// Other params files already merged: file -> prefix their keys got ("" or "stem.").
    merged: IndexMap<String, String>,
    pub stage_count: usize,
    descs: IndexMap<String, String>,
}

fn y_to_t(v: &Y) -> Option<T> {
    Some(match v {
        Y::Null => return None,
        Y::Bool(b) => T::Boolean(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                T::Integer(i)
            } else if let Some(f) = n.as_f64() {
                T::Float(f)
            } else {
                T::String(n.to_string())
            }
        }
        Y::String(s) => T::String(s.clone()),
        Y::Sequence(items) => T::Array(items.iter().filter_map(y_to_t).collect()),
        Y::Mapping(m) => {
            let mut t = toml::Table::new();
            for (k, v) in m {
                if let Some(v) = y_to_t(v) {
                    t.insert(key_text(k), v);
                }
            }
            T::Table(t)
        }
        Y::Tagged(tagged) => return y_to_t(&tagged.value),
    })
}

fn key_text(k: &Y) -> String {
    match k {
        Y::String(s) => s.clone(),
        Y::Number(n) => n.to_string(),
        Y::Bool(b) => b.to_string(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn text_of(v: &T) -> String {
    crate::params::value_text(v)
}

fn is_scalar(v: &T) -> bool {
    !matches!(v, T::Array(_) | T::Table(_))
}

/// A value by dotted path; numbers index arrays (`lst.0`); `a[0]` is read as `a.0`.
fn lookup<'a>(t: &'a toml::Table, path: &str) -> Option<&'a T> {
    let path = path.replace('[', ".").replace(']', "");
    let mut parts = path.split('.').filter(|s| !s.is_empty());
    let mut cur = t.get(parts.next()?)?;
    for p in parts {
        cur = match cur {
            T::Table(t) => t.get(p)?,
            T::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Merge `from` into `into`; keys already there keep their value. Returns the dotted leaf
/// keys that clashed with a different value.
fn merge(into: &mut toml::Table, from: &toml::Table, prefix: &str) -> Vec<String> {
    let mut clashes = Vec::new();
    for (k, v) in from {
        let key = format!("{prefix}{k}");
        match (into.get_mut(k), v) {
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
            (Some(T::Table(a)), T::Table(b)) => {
                clashes.extend(merge(a, b, &format!("{key}.")));
            }
            (Some(old), new) if old != new => clashes.push(key),
            _ => {}
        }
    }
    clashes
}

/// Lexically join `wdir` and `path` and drop `.` and `..` segments.
fn rebase(wdir: Option<&str>, path: &str) -> String {
    let joined = match wdir {
        Some(w) if !path.starts_with('/') => format!("{w}/{path}"),
        _ => path.to_string(),
    };
    let trailing = joined.ends_with('/');
    let mut parts: Vec<&str> = Vec::new();
    let abs = joined.starts_with('/');
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut s = parts.join("/");
    if abs {
        s.insert(0, '/');
    }
    if s.is_empty() {
        s.push('.');
    }
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    s
}

fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `(path, options)` of a `deps` / `outs` / `metrics` / `plots` entry: a string, or a
/// one-key mapping `{path: {options}}`.
fn entry(v: &Y) -> Option<(String, Option<&serde_yaml_ng::Mapping>)> {
    match v {
        Y::String(s) => Some((s.clone(), None)),
        Y::Mapping(m) if m.len() == 1 => {
            let (k, opts) = m.iter().next()?;
            Some((key_text(k), opts.as_mapping()))
        }
        _ => None,
    }
}

fn list(v: Option<&Y>) -> Vec<Y> {
    match v {
        Some(Y::Sequence(s)) => s.clone(),
        Some(Y::Null) | None => vec![],
        Some(other) => vec![other.clone()],
    }
}

impl Importer {
    pub fn new(root: &Path) -> Importer {
        Importer {
            root: root.to_path_buf(),
            notes: Vec::new(),
            params: toml::Table::new(),
            params_files: Vec::new(),
            merged: IndexMap::new(),
            stage_count: 0,
            descs: IndexMap::new(),
        }
    }

    fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// Read a YAML, JSON or TOML params file (relative to the project root).
    fn load_file(&mut self, file: &str) -> Option<toml::Table> {
        let path = self.root.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.note(format!("params file `{file}`: cannot read it ({e})"));
                return None;
            }
        };
        let value: Result<T, String> = if file.ends_with(".toml") {
            toml::from_str::<toml::Table>(&text)
                .map(T::Table)
                .map_err(|e| e.to_string())
        } else if file.ends_with(".py") {
            Err("Python params files are not supported; copy the values into [params]".into())
        } else {
            // YAML is a superset of JSON.
            serde_yaml_ng::from_str::<Y>(&text)
                .map_err(|e| e.to_string())
                .and_then(|mut y| {
                    y.apply_merge().map_err(|e| e.to_string())?;
                    Ok(y_to_t(&y).unwrap_or(T::Table(Default::default())))
                })
        };
        match value {
            Ok(T::Table(t)) => Some(t),
            Ok(_) => {
                self.note(format!(
                    "params file `{file}`: the top level is not a mapping; skipped"
                ));
                None
            }
            Err(e) => {
                self.note(format!("params file `{file}`: {e}"));
                None
            }
        }
    }

    /// Merge another params file under [params]; returns the prefix its keys got: ""
    /// when they fit beside the others, else "STEM." (the file's values go under
    /// [params.STEM] so nothing is overwritten).
    fn merge_params_file(&mut self, file: &str) -> Option<String> {
        if let Some(p) = self.merged.get(file) {
            return Some(p.clone());
        }
        let t = self.load_file(file)?;
        let mut trial = self.params.clone();
        let prefix = if merge(&mut trial, &t, "").is_empty() {
            self.params = trial;
            String::new()
        } else {
            let stem = Path::new(file)
                .file_stem()
                .map(|s| sanitize_name(&s.to_string_lossy()))
                .unwrap_or_else(|| "file".into());
            let mut wrapped = toml::Table::new();
            wrapped.insert(stem.clone(), T::Table(t));
            let clashes = merge(&mut self.params, &wrapped, "");
            if !clashes.is_empty() {
                self.note(format!(
                    "params file `{file}`: keys {} clash with other params; the first value was kept",
                    clashes.join(", ")
                ));
            }
            self.note(format!(
                "params file `{file}`: its keys clash with params.yaml, so they are under [params.{stem}] (e.g. `{stem}.KEY`)"
            ));
            format!("{stem}.")
        };
        self.merged.insert(file.to_string(), prefix.clone());
        self.params_files.push(file.to_string());
        Some(prefix)
    }

    /// DVC `vars` entries: mappings of values, or params files (`file.yaml`,
    /// `file.yaml:key1,key2`).
    fn vars(&mut self, v: Option<&Y>, stage: Option<&str>) -> toml::Table {
        let mut out = toml::Table::new();
        for item in list(v) {
            match &item {
                Y::Mapping(_) => {
                    if let Some(T::Table(t)) = y_to_t(&item) {
                        merge(&mut out, &t, "");
                    }
                }
                Y::String(s) => {
                    let (file, keys) = match s.split_once(':') {
                        Some((f, k)) => (f, Some(k)),
                        None => (s.as_str(), None),
                    };
                    if let Some(t) = self.load_file(file) {
                        match keys {
                            None => {
                                merge(&mut out, &t, "");
                            }
                            Some(keys) => {
                                for k in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                                    if let Some(v) = t.get(k) {
                                        out.insert(k.to_string(), v.clone());
                                    }
                                }
                            }
                        }
                    }
                }
                _ => self.note(format!(
                    "{}`vars` entry {} is neither a mapping nor a file name; skipped",
                    stage.map(|s| format!("stage `{s}`: ")).unwrap_or_default(),
                    serde_yaml_ng::to_string(&item).unwrap_or_default().trim()
                )),
            }
        }
        out
    }

    /// Rewrite DVC's `${...}` for pipe: `${name}` -> `${params.name}`, stage vars inlined,
    /// `${item.K}` -> `${matrix.K}` in a matrix stage; `${item}` / `${key}` stay.
    fn rewrite(&mut self, text: &str, scope: &Scope, in_cmd: bool) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let inner = after[..end].trim();
            let original = &rest[start..start + 2 + end + 1];
            rest = &after[end + 1..];
            let head = inner.split(['.', '[']).next().unwrap_or("");
            match head {
                "item" | "key" => match scope.kind {
                    Kind::Foreach => out.push_str(&format!("${{{inner}}}")),
                    Kind::Matrix => match inner.strip_prefix("item.") {
                        Some(k) if scope.matrix_keys.iter().any(|m| m == k) => {
                            out.push_str(&format!("${{matrix.{k}}}"))
                        }
                        _ => {
                            self.note(format!(
                                "stage `{}`: `{original}` has no pipe equivalent in a matrix; left as is",
                                scope.stage
                            ));
                            out.push_str(original);
                        }
                    },
                    Kind::Plain => {
                        self.note(format!(
                            "stage `{}`: `{original}` is used outside foreach/matrix; left as is",
                            scope.stage
                        ));
                        out.push_str(original);
                    }
                },
                _ if lookup(&scope.local, inner).is_some() => {
                    let v = lookup(&scope.local, inner)
                        .cloned()
                        .unwrap_or(T::Boolean(false));
                    out.push_str(&text_of(&v));
                }
                _ => match lookup(&self.params, inner).cloned() {
                    Some(T::Table(t)) if in_cmd => {
                        out.push_str(&unpack(inner, &t));
                    }
                    Some(T::Array(items)) if in_cmd => {
                        let parts: Vec<String> = items.iter().map(text_of).collect();
                        out.push_str(&parts.join(" "));
                        self.note(format!(
                            "stage `{}`: the list `{original}` was written out in the command (pipe substitutes single values only)",
                            scope.stage
                        ));
                    }
                    Some(v) if is_scalar(&v) => {
                        let key = inner.replace('[', ".").replace(']', "");
                        out.push_str(&format!("${{params.{key}}}"));
                    }
                    Some(_) => {
                        self.note(format!(
                            "stage `{}`: `{original}` is a list or mapping; left as is",
                            scope.stage
                        ));
                        out.push_str(original);
                    }
                    None => {
                        self.note(format!(
                            "stage `{}`: `{original}` is not defined in params.yaml or vars; left as is",
                            scope.stage
                        ));
                        out.push_str(original);
                    }
                },
            }
        }
        out.push_str(rest);
        out
    }

    /// Resolve a `foreach` / matrix value written as `${name}` to the value it names.
    fn resolve(&mut self, v: &Y, stage: &str) -> Option<T> {
        if let Y::String(s) = v {
            let s = s.trim();
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                let found = lookup(&self.params, name.trim()).cloned();
                if found.is_none() {
                    self.note(format!(
                        "stage `{stage}`: `{s}` is not defined in params.yaml or vars; stage skipped"
                    ));
                }
                return found;
            }
        }
        y_to_t(v)
    }

    pub fn convert(&mut self, text: &str) -> Result<String> {
        let mut doc: Y = serde_yaml_ng::from_str(text)
            .map_err(|e| invalid(format!("dvc.yaml is not valid YAML: {e}")))?;
        doc.apply_merge()
            .map_err(|e| invalid(format!("dvc.yaml: {e}")))?;
        let Y::Mapping(top) = &doc else {
            return Err(invalid("dvc.yaml: the top level is not a mapping"));
        };
        if self.root.join("params.yaml").is_file()
            && let Some(t) = self.load_file("params.yaml")
        {
            self.params = t;
            self.params_files.push("params.yaml".into());
            self.merged.insert("params.yaml".into(), String::new());
        }
        let mut stages_y = None;
        let mut vars_y = None;
        for (k, v) in top {
            match key_text(k).as_str() {
                "stages" => stages_y = Some(v),
                "vars" => vars_y = Some(v),
                "plots" => self.note(
                    "top-level `plots`: pipe draws no plot definitions (its report charts metrics); the plot files stay outs of their stages",
                ),
                "metrics" => self.note(
                    "top-level `metrics`: only metrics declared on a stage are imported (as `metrics` of that stage)",
                ),
                "params" => self.note(
                    "top-level `params` (files for `dvc params diff`): pipe compares the params of runs with `pipe params diff`",
                ),
                "artifacts" | "datasets" => self.note(format!(
                    "top-level `{}`: DVC model registry / dataset entries have no pipe equivalent",
                    key_text(k)
                )),
                other => self.note(format!("top-level `{other}`: unknown to pipe; skipped")),
            }
        }
        let globals = self.vars(vars_y, None);
        let clashes = merge(&mut self.params, &globals, "");
        if !clashes.is_empty() {
            self.note(format!(
                "`vars` {} also defined in params.yaml; params.yaml's value was kept",
                clashes.join(", ")
            ));
        }
        if self.root.join("dvc.lock").exists() {
            self.note(
                "dvc.lock: its hashes are not imported; pipe hashes everything itself, so the first `pipe build` runs every stage once",
            );
        }
        let mut stages: IndexMap<String, toml::Table> = IndexMap::new();
        match stages_y {
            Some(Y::Mapping(m)) => {
                for (k, def) in m {
                    let name = key_text(k);
                    if let Some((n, t)) = self.stage(&name, def) {
                        if stages.contains_key(&n) {
                            self.note(format!(
                                "stage `{name}`: its pipe name `{n}` is taken; skipped"
                            ));
                            continue;
                        }
                        stages.insert(n, t);
                    }
                }
            }
            Some(Y::Null) | None => self.note("dvc.yaml has no `stages`"),
            Some(_) => return Err(invalid("dvc.yaml: `stages` is not a mapping")),
        }
        let pulls = self.pull_stages(&stages);
        self.stage_count = stages.len() + pulls.len();
        self.nested_dvc_yaml();

        let mut root = toml::Table::new();
        let mut meta = toml::Table::new();
        let name = std::fs::canonicalize(&self.root)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "imported".into());
        meta.insert("name".into(), T::String(name));
        root.insert("pipeline".into(), T::Table(meta));
        if !self.params.is_empty() {
            root.insert("params".into(), T::Table(self.params.clone()));
        }
        let mut st = toml::Table::new();
        for (n, t) in pulls.into_iter().chain(stages) {
            st.insert(n, T::Table(t));
        }
        root.insert("stages".into(), T::Table(st));
        let body = toml::to_string_pretty(&root)
            .map_err(|e| anyhow::anyhow!("cannot write the pipeline as TOML: {e}"))?;
        let mut doc: toml_edit::DocumentMut = body
            .parse()
            .map_err(|e| anyhow::anyhow!("generated TOML does not parse: {e}"))?;
        if let Some(stages) = doc.get_mut("stages").and_then(|s| s.as_table_mut()) {
            for (name, desc) in &self.descs {
                if let Some(t) = stages.get_mut(name).and_then(|t| t.as_table_mut()) {
                    let comment: String = desc
                        .lines()
                        .map(|l| format!("# {}\n", l.trim_end()))
                        .collect();
                    t.decor_mut().set_prefix(format!("\n{comment}"));
                }
            }
        }
        let mut header = String::from(
            "# Imported from dvc.yaml by `pipe import dvc`. Params were copied from the params\n\
             # files below into [params]: edit them here (pipe does not read params.yaml).\n\
             # Keys: docs/pipeline-toml.md; check with `pipe validate`, then `pipe status`.\n",
        );
        if !self.params_files.is_empty() {
            header.push_str(&format!(
                "# Params files: {}\n",
                self.params_files.join(", ")
            ));
        }
        header.push('\n');
        Ok(format!("{header}{doc}"))
    }

    /// One DVC stage (maybe a foreach / matrix) as a pipe stage table.
    fn stage(&mut self, dvc_name: &str, def: &Y) -> Option<(String, toml::Table)> {
        let name = sanitize_name(dvc_name);
        if name != dvc_name {
            self.note(format!(
                "stage `{dvc_name}` is named `{name}` (pipe stage names use letters, digits, `_`, `-`, `.`)"
            ));
        }
        let Y::Mapping(m) = def else {
            self.note(format!("stage `{dvc_name}`: not a mapping; skipped"));
            return None;
        };
        let get = |k: &str| m.get(Y::String(k.into()));
        let mut t = toml::Table::new();
        let mut scope = Scope {
            kind: Kind::Plain,
            stage: dvc_name,
            local: toml::Table::new(),
            matrix_keys: vec![],
        };
        let mut body = m;
        if let Some(fe) = get("foreach") {
            let fe = self.resolve(fe, dvc_name)?;
            let value = match fe {
                T::Array(items) if items.iter().all(is_scalar) => T::Array(items),
                T::Array(items) => {
                    // DVC names non-scalar list members by index: stage@0, stage@1.
                    let t: toml::Table = items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v))
                        .collect();
                    T::Table(t)
                }
                T::Table(t) => T::Table(t),
                other => {
                    self.note(format!(
                        "stage `{dvc_name}`: `foreach` over {other} is not a list or mapping; skipped"
                    ));
                    return None;
                }
            };
            t.insert("__foreach".into(), value);
            scope.kind = Kind::Foreach;
            match get("do") {
                Some(Y::Mapping(d)) => body = d,
                _ => {
                    self.note(format!(
                        "stage `{dvc_name}`: `foreach` without a `do` mapping; skipped"
                    ));
                    return None;
                }
            }
        } else if let Some(mx) = get("matrix") {
            let Y::Mapping(mm) = mx else {
                self.note(format!(
                    "stage `{dvc_name}`: `matrix` is not a mapping of lists; skipped"
                ));
                return None;
            };
            let mut axes: Vec<(String, Vec<T>)> = Vec::new();
            for (k, v) in mm {
                match self.resolve(v, dvc_name)? {
                    T::Array(items) if !items.is_empty() => axes.push((key_text(k), items)),
                    _ => {
                        self.note(format!(
                            "stage `{dvc_name}`: matrix `{}` is not a non-empty list; stage skipped",
                            key_text(k)
                        ));
                        return None;
                    }
                }
            }
            // pipe's own matrix when every value is plain and `${key}` / `${item.K.x}` are
            // not used; else one foreach member per combination, named as DVC names it.
            let raw = serde_yaml_ng::to_string(def).unwrap_or_default();
            let keys: Vec<String> = axes.iter().map(|(k, _)| k.clone()).collect();
            let deep = keys.iter().any(|k| {
                raw.contains(&format!("${{item.{k}.")) || raw.contains(&format!("${{item.{k}["))
            });
            let plain = axes.iter().all(|(_, v)| v.iter().all(is_scalar))
                && !raw.contains("${key}")
                && !deep;
            if plain {
                let mt: toml::Table = axes.into_iter().map(|(k, v)| (k, T::Array(v))).collect();
                t.insert("__matrix".into(), T::Table(mt));
                scope.kind = Kind::Matrix;
                scope.matrix_keys = keys;
            } else {
                let mut combos: Vec<(Vec<String>, toml::Table)> =
                    vec![(vec![], toml::Table::new())];
                for (k, values) in &axes {
                    let mut next = Vec::new();
                    for (label, item) in &combos {
                        for (i, v) in values.iter().enumerate() {
                            let mut label = label.clone();
                            label.push(if is_scalar(v) {
                                text_of(v)
                            } else {
                                format!("{k}{i}")
                            });
                            let mut item = item.clone();
                            item.insert(k.clone(), v.clone());
                            next.push((label, item));
                        }
                    }
                    combos = next;
                }
                let fe: toml::Table = combos
                    .into_iter()
                    .map(|(label, item)| (label.join("-"), T::Table(item)))
                    .collect();
                t.insert("__foreach".into(), T::Table(fe));
                scope.kind = Kind::Foreach;
                self.note(format!(
                    "stage `{dvc_name}`: its matrix became a `foreach` table (one member per combination, named as DVC names them) because it uses `${{key}}` or values that are lists or mappings"
                ));
            }
        }
        let get = |k: &str| body.get(Y::String(k.into()));
        scope.local = self.vars(get("vars"), Some(dvc_name));

        let wdir = match get("wdir").and_then(Y::as_str) {
            Some(w) => {
                let w = rebase(None, &self.rewrite(w, &scope, false));
                (w != ".").then_some(w)
            }
            None => None,
        };
        let wd = wdir.as_deref();

        // cmd
        match get("cmd") {
            Some(Y::String(s)) => {
                let c = self.rewrite(s, &scope, true);
                t.insert(
                    "cmd".into(),
                    T::String(c.trim_end_matches('\n').to_string()),
                );
            }
            Some(Y::Sequence(items)) => {
                let mut cmds = Vec::new();
                for i in items {
                    if let Some(s) = i.as_str() {
                        cmds.push(T::String(self.rewrite(s, &scope, true)));
                    }
                }
                t.insert("cmd".into(), T::Array(cmds));
            }
            _ => {
                if get("frozen").and_then(Y::as_bool) != Some(true) {
                    self.note(format!("stage `{dvc_name}`: no `cmd`; skipped"));
                    return None;
                }
            }
        }
        if let Some(w) = &wdir {
            t.insert("wdir".into(), T::String(w.clone()));
        }

        // deps
        let mut deps: Vec<String> = Vec::new();
        for d in list(get("deps")) {
            match entry(&d) {
                Some((p, _)) => {
                    let p = rebase(wd, &self.rewrite(&p, &scope, false));
                    if !deps.contains(&p) {
                        deps.push(p);
                    }
                }
                None => self.note(format!(
                    "stage `{dvc_name}`: a dep that is not a path; skipped"
                )),
            }
        }

        // outs, metrics, plots
        let mut outs: Vec<String> = Vec::new();
        let mut metrics: Vec<String> = Vec::new();
        let (mut uncached, mut persisted, mut n_outs) = (0usize, 0usize, 0usize);
        for (field, list_v) in [
            ("outs", get("outs")),
            ("metrics", get("metrics")),
            ("plots", get("plots")),
        ] {
            for o in list(list_v) {
                let Some((p, opts)) = entry(&o) else {
                    self.note(format!(
                        "stage `{dvc_name}`: an entry of `{field}` is not a path; skipped"
                    ));
                    continue;
                };
                let path = rebase(wd, &self.rewrite(&p, &scope, false));
                let mut cache = true;
                if let Some(opts) = opts {
                    for (k, v) in opts {
                        match (key_text(k).as_str(), v) {
                            ("cache", Y::Bool(b)) => cache = *b,
                            ("persist", Y::Bool(true)) if field == "outs" => persisted += 1,
                            ("persist", _) => {}
                            ("desc" | "type" | "labels" | "meta", _) => {}
                            ("x" | "y" | "template" | "title" | "x_label" | "y_label" | "header", _)
                                if field == "plots" => {}
                            (other, _) => self.note(format!(
                                "stage `{dvc_name}`: option `{other}` of {field} `{p}` has no pipe equivalent; dropped"
                            )),
                        }
                    }
                }
                if field == "outs" {
                    n_outs += 1;
                    if !cache {
                        uncached += 1;
                    }
                }
                if field == "metrics" {
                    if path.ends_with(".json") {
                        metrics.push(path.clone());
                    } else {
                        self.note(format!(
                            "stage `{dvc_name}`: metrics file `{p}` is not JSON; kept as an out, not shown by `pipe metrics`"
                        ));
                    }
                }
                if field == "plots" {
                    self.note(format!(
                        "stage `{dvc_name}`: plots `{p}` kept as an out; pipe draws no plots"
                    ));
                }
                if !outs.contains(&path) {
                    outs.push(path);
                }
            }
        }
        if !deps.is_empty() {
            t.insert(
                "deps".into(),
                T::Array(deps.into_iter().map(T::String).collect()),
            );
        }
        if !outs.is_empty() {
            t.insert(
                "outs".into(),
                T::Array(outs.into_iter().map(T::String).collect()),
            );
        }
        if !metrics.is_empty() {
            t.insert(
                "metrics".into(),
                T::Array(metrics.into_iter().map(T::String).collect()),
            );
        }

        // params
        let mut params: Vec<String> = Vec::new();
        for p in list(get("params")) {
            match &p {
                Y::String(key) => {
                    let key = self.rewrite(key, &scope, false);
                    // With a wdir, DVC reads WDIR/params.yaml.
                    let own = rebase(wd, "params.yaml");
                    if own != "params.yaml" && self.root.join(&own).is_file() {
                        if let Some(prefix) = self.merge_params_file(&own) {
                            let full = format!("{prefix}{key}");
                            if lookup(&self.params, &full).is_some() {
                                params.push(full);
                            } else {
                                self.note(format!(
                                    "stage `{dvc_name}`: param `{key}` is not in `{own}`; dropped"
                                ));
                            }
                        }
                        continue;
                    }
                    if lookup(&self.params, &key).is_some() {
                        params.push(key);
                    } else {
                        self.note(format!(
                            "stage `{dvc_name}`: param `{key}` is not in params.yaml; dropped"
                        ));
                    }
                }
                Y::Mapping(files) => {
                    for (f, keys) in files {
                        let file = rebase(wd, &key_text(f));
                        let Some(prefix) = self.merge_params_file(&file) else {
                            continue;
                        };
                        let wanted: Vec<String> = match keys {
                            Y::Sequence(ks) => ks.iter().filter_map(|k| k.as_str().map(String::from)).collect(),
                            // `file.yaml:` alone: every key of the file.
                            _ => self
                                .load_file(&file)
                                .map(|t| t.keys().cloned().collect())
                                .unwrap_or_default(),
                        };
                        for k in wanted {
                            let full = format!("{prefix}{k}");
                            if lookup(&self.params, &full).is_some() {
                                if !params.contains(&full) {
                                    params.push(full);
                                }
                            } else {
                                self.note(format!(
                                    "stage `{dvc_name}`: param `{k}` is not in `{file}`; dropped"
                                ));
                            }
                        }
                    }
                }
                _ => self.note(format!("stage `{dvc_name}`: a `params` entry that is neither a key nor a file mapping; skipped")),
            }
        }
        if !params.is_empty() {
            t.insert(
                "params".into(),
                T::Array(params.into_iter().map(T::String).collect()),
            );
        }

        if n_outs > 0 && uncached == n_outs {
            t.insert("cache".into(), T::Boolean(false));
        } else if uncached > 0 {
            self.note(format!(
                "stage `{dvc_name}`: `cache: false` on some outs only; pipe's `cache` is per stage, so it stays on"
            ));
        }
        if persisted > 0 {
            t.insert("persist".into(), T::Boolean(true));
            if persisted < n_outs {
                self.note(format!(
                    "stage `{dvc_name}`: `persist: true` on some outs only; pipe's `persist` is per stage, so it applies to all of them"
                ));
            }
        }
        let frozen = get("frozen").and_then(Y::as_bool) == Some(true);
        let always = get("always_changed").and_then(Y::as_bool) == Some(true);
        if frozen {
            t.insert("frozen".into(), T::Boolean(true));
        }
        if always && frozen {
            self.note(format!(
                "stage `{dvc_name}`: both `frozen` and `always_changed`; kept `frozen`"
            ));
        } else if always {
            t.insert("always".into(), T::Boolean(true));
        }
        if let Some(d) = get("desc").and_then(Y::as_str) {
            self.descs.insert(name.clone(), d.to_string());
        }
        for (k, _) in body.iter().chain(m.iter()) {
            let k = key_text(k);
            match k.as_str() {
                "cmd" | "wdir" | "deps" | "outs" | "metrics" | "plots" | "params" | "frozen"
                | "always_changed" | "desc" | "vars" | "foreach" | "do" | "matrix" => {}
                "meta" => self.note(format!("stage `{dvc_name}`: `meta` dropped")),
                other => self.note(format!(
                    "stage `{dvc_name}`: key `{other}` has no pipe equivalent; dropped"
                )),
            }
        }
        // foreach / matrix go last so TOML keeps the stage's plain keys together.
        if let Some(v) = t.remove("__foreach") {
            t.insert("foreach".into(), v);
        }
        if let Some(v) = t.remove("__matrix") {
            t.insert("matrix".into(), v);
        }
        Some((name, t))
    }

    /// Data DVC tracks with `.dvc` files (from `dvc add` / `dvc import`) that a stage reads:
    /// one stage each that fetches it with `dvc pull`, so the dep has a producer.
    fn pull_stages(
        &mut self,
        stages: &IndexMap<String, toml::Table>,
    ) -> Vec<(String, toml::Table)> {
        let mut tracked: Vec<(String, String)> = Vec::new();
        let skip = [".git", ".dvc", ".pipe", "node_modules", ".venv", "venv"];
        for e in walkdir::WalkDir::new(&self.root)
            .max_depth(8)
            .into_iter()
            .filter_entry(|e| !skip.iter().any(|s| e.file_name() == *s))
            .filter_map(|e| e.ok())
        {
            let p = e.path();
            if !e.file_type().is_file() || p.extension().is_none_or(|x| x != "dvc") {
                continue;
            }
            let Ok(rel) = p.strip_prefix(&self.root) else {
                continue;
            };
            let rel = rel.to_string_lossy().to_string();
            let Ok(text) = std::fs::read_to_string(p) else {
                continue;
            };
            let Ok(y) = serde_yaml_ng::from_str::<Y>(&text) else {
                continue;
            };
            let parent = Path::new(&rel)
                .parent()
                .map(|d| d.to_string_lossy().to_string());
            for o in list(y.get("outs")) {
                if let Some(path) = o.get("path").and_then(Y::as_str) {
                    let full = rebase(parent.as_deref().filter(|d| !d.is_empty()), path);
                    tracked.push((full, rel.clone()));
                }
            }
        }
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        for t in stages.values() {
            for d in t.get("deps").and_then(T::as_array).into_iter().flatten() {
                let d = d.as_str().unwrap_or_default().trim_end_matches('/');
                for (path, file) in &tracked {
                    let p = path.trim_end_matches('/');
                    if d == p || d.starts_with(&format!("{p}/")) {
                        used.insert((path.clone(), file.clone()));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (path, file) in used {
            let name = format!(
                "dvc_pull_{}",
                sanitize_name(path.trim_end_matches('/')).replace(['.', '-'], "_")
            );
            let mut t = toml::Table::new();
            t.insert("cmd".into(), T::String(format!("dvc pull {file}")));
            t.insert("deps".into(), T::Array(vec![T::String(file.clone())]));
            t.insert("outs".into(), T::Array(vec![T::String(path.clone())]));
            t.insert("cache".into(), T::Boolean(false));
            self.descs.insert(
                name.clone(),
                format!(
                    "{path} is tracked by DVC ({file}); this stage fetches it from DVC's remote."
                ),
            );
            self.note(format!(
                "`{path}` is data tracked by DVC ({file}): stage `{name}` fetches it with `dvc pull` (DVC must be installed), or fetch it once and mark that stage `frozen = true`"
            ));
            out.push((name, t));
        }
        out
    }

    /// Other dvc.yaml files below the root are pipelines of their own.
    fn nested_dvc_yaml(&mut self) {
        let skip = [".git", ".dvc", ".pipe", "node_modules", ".venv", "venv"];
        let found: Vec<String> = walkdir::WalkDir::new(&self.root)
            .min_depth(2)
            .max_depth(6)
            .into_iter()
            .filter_entry(|e| !skip.iter().any(|s| e.file_name() == *s))
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() == "dvc.yaml")
            .filter_map(|e| {
                e.path()
                    .strip_prefix(&self.root)
                    .ok()
                    .map(|p| p.display().to_string())
            })
            .collect();
        for f in found {
            let dir = Path::new(&f)
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            self.note(format!(
                "`{f}` is another DVC pipeline; import it on its own with `pipe import dvc {dir}`"
            ));
        }
    }
}

/// DVC's dict unpacking in a command: `${train}` with `{epochs: 3, fast: true}` becomes
/// `--epochs ${params.train.epochs} --fast`.
fn unpack(prefix: &str, t: &toml::Table) -> String {
    let mut parts = Vec::new();
    for (k, leaf) in crate::spec::flatten_params(t) {
        match leaf {
            T::Boolean(true) => parts.push(format!("--{k}")),
            T::Boolean(false) => {}
            T::Array(items) => {
                let vals: Vec<String> = items.iter().map(text_of).collect();
                parts.push(format!("--{k} {}", vals.join(" ")));
            }
            _ => parts.push(format!("--{k} ${{params.{prefix}.{k}}}")),
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebases_paths_on_wdir() {
        assert_eq!(rebase(Some("src"), "../data/x.csv"), "data/x.csv");
        assert_eq!(rebase(Some("a/b"), "out/"), "a/b/out/");
        assert_eq!(rebase(None, "./x"), "x");
        assert_eq!(rebase(Some("a"), "../../x"), "../x");
    }

    #[test]
    fn looks_up_dotted_and_indexed_paths() {
        let t: toml::Table = toml::from_str("a = { b = [1, 2] }").unwrap();
        assert_eq!(lookup(&t, "a.b.1"), Some(&T::Integer(2)));
        assert_eq!(lookup(&t, "a.b[0]"), Some(&T::Integer(1)));
        assert_eq!(lookup(&t, "a.c"), None);
    }
}
