//! A release as a document: what a release stage released (artifacts with their real
//! modes), from which run, under which gates, params and metrics. Written by the ledger,
//! listed and rolled back to by `pipe releases` / `pipe rollback`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The workspace's git commit and whether it had uncommitted changes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Git {
    pub commit: Option<String>,
    pub dirty: bool,
}

/// One released file or folder: its path and what the cache holds for it (hash, size,
/// folder flag, mode, so an executable stays executable on rollback).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    #[serde(flatten)]
    pub out: crate::cache::CachedOut,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub status: String,
    pub run_id: String,
    pub created_at: String,
    pub stage: String,
    pub artifacts: Vec<Artifact>,
    pub gates: Vec<String>,
    pub git: Git,
    #[serde(default)]
    pub pipeline: Option<String>,
    /// The run's `--name`.
    #[serde(default)]
    pub name: Option<String>,
    /// The release stage's fingerprint when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The params the release stage and its upstream ran with.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// The values the upstream gates checked: gate → key → actual value.
    #[serde(default)]
    pub metrics: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// A gate upstream was overridden: the release was forced.
    #[serde(default)]
    pub overridden: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}
