//! The validated pipeline: stages with normalised paths, substituted commands, the graph
//! from outs → deps (plus `after`), topological order and target selection.
//!
//! Everything that can be checked without running a command is checked here, once;
//! later steps never re-check.

mod builder;
mod built;
mod link;
mod select;
mod stage;

use crate::error::{invalid, unknown};
use crate::fsutil::Layout;
use crate::gate::GateSpec;
use crate::source::Source;
use crate::spec::{self};
use anyhow::Result;
use builder::Builder;
use globset::GlobMatcher;
use indexmap::IndexMap;
pub use select::{Selection, Targets};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A dependency as declared: a path (file or folder) or a glob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dep {
    /// The normalised text (folders keep no trailing slash; globs as written).
    pub path: String,
    /// Compiled again when a built snapshot is read ([`built`]).
    #[serde(skip)]
    pub glob: Option<GlobMatcher>,
}

/// A declared output: a file or a folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Out {
    pub path: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir_hint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub extra_args: Vec<String>,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    /// The `[stages.NAME]` table this stage came from (differs for matrix members).
    pub source_name: String,
    /// Matrix values of a matrix member, in declaration order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matrix: Vec<(String, String)>,
    /// The commands as written (before `${…}` substitution): "command changed" compares these.
    pub cmd_template: Vec<String>,
    /// The commands as run.
    pub cmds: Vec<String>,
    pub deps: Vec<Dep>,
    pub outs: Vec<Out>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, toml::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wdir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    pub retry_delay: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub release: bool,
    pub cache: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub always: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub frozen: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub persist: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    pub executor: ExecutorKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downstream: Vec<usize>,
}

// Stages in the built snapshot ([`built`]) leave out what is empty or off.
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// What loading saw of the workspace's paths (see [`crate::fsutil::StatMemo`]).
    pub stats: crate::fsutil::StatMemo,
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
    pub hooks: spec::RawHooks,
    pub executor: ExecutorKind,
    pub slurm: SlurmConfig,
    /// What the pipeline was built from besides the workspace's paths (see [`built`]).
    pub built: Option<BuiltFrom>,
}

/// The key of the built snapshot (the file's bytes and the load options) and the params
/// files read, with the blake3 of their bytes.
#[derive(Debug, Clone)]
pub struct BuiltFrom {
    pub key: blake3::Hash,
    pub files: Vec<(PathBuf, String)>,
}

/// What the loader needs beyond the file: `--params-file` and `--set` overrides.
#[derive(Default, Clone)]
pub struct LoadOptions {
    pub overrides: Vec<(String, toml::Value)>,
    /// A TOML, JSON or YAML file whose values override params (before `--set`).
    pub params_file: Option<PathBuf>,
}

impl Pipeline {
    pub fn load(file: &Path, display: String, opts: &LoadOptions) -> Result<Pipeline> {
        let source = Source::read(file, display)?;
        let root = Self::workspace(file)?;
        Builder::new(source, root, opts).build()
    }

    /// The workspace of the pipeline file `file`: its folder, canonical.
    fn workspace(file: &Path) -> Result<PathBuf> {
        let root = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let root = if root.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            root
        };
        root.canonicalize()
            .map_err(|e| invalid(format!("cannot open workspace {}: {e}", root.display())))
    }

    /// What a load of `file` with `opts` would be keyed by (see [`built`]), without
    /// building it, and its workspace: what a [`crate::fresh`] proof is checked against.
    pub fn built_key(file: &Path, opts: &LoadOptions) -> Option<(blake3::Hash, PathBuf)> {
        let bytes = std::fs::read(file).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let root = Self::workspace(file).ok()?;
        Some((built::key(text, &root, opts), root))
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
                return Err(unknown(
                    "stage",
                    name,
                    format!(" in {}", self.source.display),
                    self.index
                        .keys()
                        .map(String::as_str)
                        .chain(self.groups.keys().map(String::as_str)),
                ));
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
