//! Serde mirror of `Pipeline.toml`: the raw shape, unknown keys refused, no logic.
//!
//! The same types derive `JsonSchema`, so `pipe schema` (the JSON Schema editors use to
//! complete and check `Pipeline.toml`) is generated from what actually parses the file.
//! Doc comments on the fields are the descriptions editors show.

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The JSON Schema (draft-07, which taplo and most editors read) of `Pipeline.toml`.
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .for_deserialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<RawPipeline>();
    schema.insert("title".into(), "Pipeline.toml".into());
    schema.insert(
        "description".into(),
        "A pipe pipeline: stages with cmd, deps, outs and params (see docs/pipeline-toml.md)"
            .into(),
    );
    schema.to_value()
}

// Schemas for the fields kept as free TOML values (checked by the graph builder).

fn cmd_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Shell command run with `sh -c` from the workspace root (or `wdir`); a list runs in order and stops at the first failure. `${params.KEY}`, `${matrix.K}`, `${item}`, `${key}` are substituted.",
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1}
        ]
    })
}

fn params_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Values stages may use: any TOML value, nested tables allowed. A stage lists the keys it depends on in `params` (dotted: `train.lr`).",
        "type": "object"
    })
}

fn env_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Extra environment variables for the command (hashed into the fingerprint).",
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]}
    })
}

fn matrix_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "One stage per combination of values, e.g. `{ lr = [0.01, 0.1], seed = [1, 2] }`; use `${matrix.lr}` in cmd, deps and outs.",
        "type": "object",
        "additionalProperties": {"type": "array", "minItems": 1}
    })
}

fn foreach_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "One stage per item: a list (`${item}`, `${item.field}`) or a table (`${key}` and `${item}`).",
        "type": ["array", "object"]
    })
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `Pipeline.toml`: the pipeline, its params, resources and stages.
pub struct RawPipeline {
    /// Pipeline-wide settings.
    #[serde(default)]
    pub pipeline: RawMeta,
    /// A TOML, JSON (`.json`) or YAML (`.yaml`, `.yml`) file whose values are merged under
    /// `[params]`.
    pub params_file: Option<String>,
    /// Named capacity pools (`gpu = 2`); stages take units with `resources`.
    #[serde(default)]
    pub resources: IndexMap<String, u32>,
    #[serde(default)]
    #[schemars(schema_with = "params_schema")]
    pub params: toml::Table,
    /// The stages, by name (letters, digits, `_`, `-`, `.`).
    #[serde(default)]
    pub stages: IndexMap<String, RawStage>,
    /// The remote cache shared by a team or CI (`pipe push`, `pipe pull`).
    pub remote: Option<RawRemote>,
    /// Where stages run: locally (default) or on Slurm.
    pub executor: Option<RawExecutor>,
    pub hooks: Option<RawHooks>,
}

/// `[hooks]`: shell commands run after a build (see `execute::hooks`).
#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    /// After a build that succeeded.
    pub on_success: Option<String>,
    /// After a stage failed, a gate failed, or the build was interrupted.
    pub on_failure: Option<String>,
    /// After a build that made a release.
    pub on_release: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `[pipeline]`: pipeline-wide settings.
pub struct RawMeta {
    /// A name for the pipeline (shown in records and reports).
    pub name: Option<String>,
    /// Default parallelism; `-j` wins; default: the number of CPUs.
    pub jobs: Option<usize>,
    /// The cache folder (default `.pipe/cache`); env `PIPE_CACHE_DIR` wins.
    pub cache_dir: Option<String>,
    /// The run records folder (default `.pipe/runs`).
    pub runs_dir: Option<String>,
    /// How many run folders to keep (older ones are pruned after a build).
    pub keep_runs: Option<usize>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `[stages.NAME]`: one stage.
pub struct RawStage {
    #[serde(default)]
    #[schemars(schema_with = "cmd_schema")]
    pub cmd: Option<toml::Value>,
    /// Files, folders (`data/`) or globs (`data/**/*.jsonl`) the stage reads; relative to the workspace root.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Files or folders the stage writes; relative to the workspace root.
    #[serde(default)]
    pub outs: Vec<String>,
    /// Param keys the stage depends on (dotted: `train.lr`); a table key takes every value under it.
    #[serde(default)]
    pub params: Vec<String>,
    #[serde(default)]
    #[schemars(schema_with = "env_schema")]
    pub env: IndexMap<String, toml::Value>,
    /// Folder the command runs in (paths in deps/outs stay relative to the workspace root).
    pub wdir: Option<String>,
    /// Order-only dependencies: stage (or matrix group) names to run first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Units taken from `[resources]` pools while running (`gpu = 1`); `cpus` and `mem` (MiB) go to Slurm.
    #[serde(default)]
    pub resources: IndexMap<String, u32>,
    /// Extra attempts after a failure, with exponential backoff.
    #[serde(default)]
    pub retries: u32,
    /// First backoff between attempts (`"5s"`); doubles per attempt.
    pub retry_delay: Option<String>,
    /// Time limit per attempt (`"2h"`, `"90m"`).
    pub timeout: Option<String>,
    /// A quality gate checked against a JSON file after the stage succeeds.
    pub gate: Option<RawGate>,
    /// A successful run writes a release manifest.
    #[serde(default)]
    pub release: bool,
    /// Store outs in the cache and restore them from it (default true).
    pub cache: Option<bool>,
    /// Run on every build; never restored.
    #[serde(default)]
    pub always: bool,
    /// Never run; the lock entry stands.
    #[serde(default)]
    pub frozen: bool,
    /// Outs are not removed before a run (training that resumes from its checkpoint).
    #[serde(default)]
    pub persist: bool,
    /// Outs that are JSON metrics, shown by `pipe metrics` (each also in `outs`).
    #[serde(default)]
    pub metrics: Vec<String>,
    #[serde(default)]
    #[schemars(schema_with = "matrix_schema")]
    pub matrix: Option<IndexMap<String, toml::Value>>,
    #[serde(default)]
    #[schemars(schema_with = "foreach_schema")]
    pub foreach: Option<toml::Value>,
    /// `"local"` or `"slurm"` (default: `[executor] kind`).
    pub executor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `[stages.NAME.gate]`: checks against a JSON file the stage writes.
pub struct RawGate {
    /// Gate name (default `<stage>_gate`), used by `--override-gate`.
    pub name: Option<String>,
    /// The JSON file to check.
    pub file: String,
    /// Checks `"KEY OP NUMBER"`: KEY a dotted path into the JSON, OP one of >= > <= < == !=.
    #[serde(default)]
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `[remote]`: the remote cache.
pub struct RawRemote {
    /// `s3://bucket/prefix` or `file:///path`.
    pub url: String,
    /// An S3-compatible server (`http://127.0.0.1:8333`).
    pub endpoint: Option<String>,
    /// The S3 region.
    pub region: Option<String>,
    /// Allow plain http endpoints (default: true when an endpoint is given).
    pub allow_http: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `[executor]`: where stages run.
pub struct RawExecutor {
    /// `"local"` (default) or `"slurm"`.
    pub kind: Option<String>,
    /// Slurm settings.
    pub slurm: Option<RawSlurm>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// `[executor.slurm]`.
pub struct RawSlurm {
    /// The partition jobs are submitted to.
    pub partition: Option<String>,
    /// More `sbatch` arguments (`["--account=ml"]`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Seconds between `squeue` polls (default 1).
    pub poll_interval: Option<f64>,
}

/// Parse the text into the raw shape; the error keeps the serde message and byte span.
pub fn parse(text: &str) -> Result<RawPipeline, toml::de::Error> {
    toml::from_str(text)
}

/// [`parse`] through a snapshot of the parse in `snapshot` ([`crate::snapshot`]).
pub fn parse_cached(text: &str, snapshot: &Path) -> Result<RawPipeline, toml::de::Error> {
    crate::snapshot::cached(
        snapshot,
        &crate::snapshot::key(text.as_bytes()),
        || parse(text),
        |raw: &RawPipeline| raw.json_exact(),
    )
}

impl RawPipeline {
    /// Whether every TOML value in it survives a JSON round trip.
    fn json_exact(&self) -> bool {
        use crate::snapshot::json_exact;
        let poll = self
            .executor
            .as_ref()
            .and_then(|e| e.slurm.as_ref()?.poll_interval);
        poll.is_none_or(f64::is_finite)
            && self.params.values().all(json_exact)
            && self.stages.values().all(|s| {
                s.cmd.iter().all(json_exact)
                    && s.env.values().all(json_exact)
                    && s.matrix.iter().flat_map(|m| m.values()).all(json_exact)
                    && s.foreach.iter().all(json_exact)
            })
    }
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
