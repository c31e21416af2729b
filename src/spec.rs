//! Serde mirror of `Pipeline.toml`: the raw shape, unknown keys refused, no logic.

use indexmap::IndexMap;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    #[serde(default)]
    pub pipeline: RawMeta,
    pub params_file: Option<String>,
    #[serde(default)]
    pub resources: IndexMap<String, u32>,
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default)]
    pub stages: IndexMap<String, RawStage>,
    pub remote: Option<RawRemote>,
    pub executor: Option<RawExecutor>,
    pub hooks: Option<RawHooks>,
}

/// `[hooks]`: shell commands run after a build (see `execute::hooks`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    /// After a build that succeeded.
    pub on_success: Option<String>,
    /// After a stage failed, a gate failed, or the build was interrupted.
    pub on_failure: Option<String>,
    /// After a build that made a release.
    pub on_release: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    pub name: Option<String>,
    pub jobs: Option<usize>,
    pub cache_dir: Option<String>,
    pub runs_dir: Option<String>,
    /// How many run folders to keep (older ones are pruned after a build).
    pub keep_runs: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub cmd: Option<toml::Value>,
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default)]
    pub outs: Vec<String>,
    #[serde(default)]
    pub params: Vec<String>,
    #[serde(default)]
    pub env: IndexMap<String, toml::Value>,
    pub wdir: Option<String>,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub resources: IndexMap<String, u32>,
    #[serde(default)]
    pub retries: u32,
    pub retry_delay: Option<String>,
    pub timeout: Option<String>,
    pub gate: Option<RawGate>,
    #[serde(default)]
    pub release: bool,
    pub cache: Option<bool>,
    #[serde(default)]
    pub always: bool,
    #[serde(default)]
    pub frozen: bool,
    #[serde(default)]
    pub persist: bool,
    #[serde(default)]
    pub metrics: Vec<String>,
    pub matrix: Option<IndexMap<String, toml::Value>>,
    pub foreach: Option<toml::Value>,
    pub executor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub name: Option<String>,
    pub file: String,
    #[serde(default)]
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain http endpoints (default: true when an endpoint is given).
    pub allow_http: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutor {
    pub kind: Option<String>,
    pub slurm: Option<RawSlurm>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlurm {
    pub partition: Option<String>,
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Seconds between `squeue` polls (default 1).
    pub poll_interval: Option<f64>,
}

/// Parse the text into the raw shape; the error keeps the serde message and byte span.
pub fn parse(text: &str) -> Result<RawPipeline, toml::de::Error> {
    toml::from_str(text)
}

/// Merge-friendly view of a params table flattened to dotted leaf keys.
pub fn flatten_params(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(sub) => walk(&key, sub, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}
