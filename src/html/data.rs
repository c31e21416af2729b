//! What the report reads: run manifests, event logs, gate records, release manifests and
//! metrics files. Everything is read leniently: a record that cannot be parsed is left out,
//! never a reason to fail the report.

use crate::cache::Cache;
use crate::graph::Pipeline;
use crate::record::{Manifest, RunStatus};
use crate::stage_state::StageState;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One recorded run.
pub struct Run {
    pub id: String,
    /// The run's `--name`, when it has one.
    pub name: Option<String>,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Run {
    /// How charts label the run: its name, else its id without the year.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => self.id.get(4..).unwrap_or(&self.id).to_string(),
        }
    }
}

/// Every readable run under `runs_dir`, oldest first.
pub fn load_runs(runs_dir: &Path) -> Vec<Run> {
    let mut runs: Vec<Run> = crate::record::list_runs(runs_dir)
        .into_iter()
        .map(|manifest| Run {
            id: manifest.run_id.clone(),
            name: manifest.name.clone(),
            dir: runs_dir.join(&manifest.run_id),
            manifest,
        })
        .collect();
    runs.reverse();
    runs
}

/// A gate record (`gates/<gate>.json`) as written by the build.
#[derive(Debug, Clone, Deserialize)]
pub struct GateRec {
    pub gate: String,
    pub stage: String,
    pub passed: bool,
    #[serde(default)]
    pub checks: Vec<CheckRec>,
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub overridden: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckRec {
    pub check: String,
    pub key: String,
    #[serde(default)]
    pub op: String,
    pub expected: f64,
    #[serde(default)]
    pub actual: Option<f64>,
    pub passed: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// The gate records of one run folder, by gate name.
pub fn read_gates(run_dir: &Path) -> Vec<GateRec> {
    let mut out: Vec<GateRec> = match std::fs::read_dir(run_dir.join("gates")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect(),
        Err(_) => vec![],
    };
    out.sort_by(|a, b| a.gate.cmp(&b.gate));
    out
}

/// How a bar of the timeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanEnd {
    Ok,
    Restored,
    Failed,
    /// Started but never ended in the log (a crashed or running build).
    Open,
}

/// One stage's time in a run, in seconds from the run's start.
#[derive(Debug, Clone)]
pub struct Span {
    pub stage: String,
    pub start: f64,
    pub end: f64,
    pub how: SpanEnd,
    pub attempts: u32,
    /// When each retry was scheduled (seconds from the run's start).
    pub retries: Vec<f64>,
}

/// The stage spans of a run from its `events.jsonl`, in start order, and the run's length.
pub fn read_spans(run_dir: &Path) -> (Vec<Span>, f64) {
    let Ok(text) = std::fs::read_to_string(run_dir.join("events.jsonl")) else {
        return (vec![], 0.0);
    };
    let mut t0: Option<SystemTime> = None;
    let mut last = 0.0f64;
    let mut spans: Vec<Span> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["ts"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            continue;
        };
        let t0 = *t0.get_or_insert(ts);
        let at = ts
            .duration_since(t0)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        last = last.max(at);
        let stage = v["stage"].as_str().unwrap_or_default().to_string();
        let dur = v["duration_s"].as_f64().unwrap_or(0.0);
        let attempts = v["attempts"].as_u64().unwrap_or(1) as u32;
        match v["event"].as_str().unwrap_or_default() {
            "stage_start" if !open.contains_key(&stage) => {
                open.insert(stage.clone(), spans.len());
                spans.push(Span {
                    stage,
                    start: at,
                    end: at,
                    how: SpanEnd::Open,
                    attempts: 1,
                    retries: vec![],
                });
            }
            "stage_retry" => {
                if let Some(&i) = open.get(&stage) {
                    spans[i].retries.push(at);
                }
            }
            ev @ ("stage_ok" | "stage_fail" | "stage_restored") => {
                let how = match ev {
                    "stage_ok" => SpanEnd::Ok,
                    "stage_fail" => SpanEnd::Failed,
                    _ => SpanEnd::Restored,
                };
                match open.remove(&stage) {
                    Some(i) => {
                        spans[i].end = at;
                        spans[i].how = how;
                        spans[i].attempts = attempts.max(1);
                    }
                    None => spans.push(Span {
                        stage,
                        start: (at - dur).max(0.0),
                        end: at,
                        how,
                        attempts: attempts.max(1),
                        retries: vec![],
                    }),
                }
            }
            _ => {}
        }
    }
    for s in spans.iter_mut().filter(|s| s.how == SpanEnd::Open) {
        s.end = last;
    }
    spans.sort_by(|a, b| a.start.total_cmp(&b.start));
    (spans, last)
}

/// Flatten JSON numbers to dotted keys (`folds.0.acc`).
pub fn flatten_numbers(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten_numbers(&key(k), v, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten_numbers(&key(&i.to_string()), v, out);
            }
        }
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.insert(prefix.to_string(), f);
            }
        }
        _ => {}
    }
}

/// One metric of one stage over runs.
pub struct Series {
    pub stage: String,
    pub key: String,
    /// One value per run of the history (None: not known for that run).
    pub values: Vec<Option<f64>>,
    /// Gate checks on this metric: (op, expected).
    pub thresholds: Vec<(String, f64)>,
}

/// Every metric over `history` (oldest first): from the metrics files the manifests recorded
/// (read back from the cache), from the gate records, and, for the workspace's newest run,
/// from the metrics files on disk.
pub fn metric_series(p: &Pipeline, cache: &Cache, history: &[&Run], newest: bool) -> Vec<Series> {
    let mut map: BTreeMap<(String, String), Vec<Option<f64>>> = BTreeMap::new();
    let n = history.len();
    let mut order: Vec<(String, String)> = Vec::new();
    let mut put = |stage: &str, key: &str, run: usize, v: f64| {
        let k = (stage.to_string(), key.to_string());
        let slot = map.entry(k.clone()).or_insert_with(|| {
            order.push(k);
            vec![None; n]
        });
        if slot[run].is_none() {
            slot[run] = Some(v);
        }
    };
    for (ri, run) in history.iter().enumerate() {
        for &i in &p.order {
            let s = &p.stages[i];
            if s.metrics.is_empty() {
                continue;
            }
            let rec = run.manifest.stages.get(&s.name);
            for path in &s.metrics {
                let from_cache = rec
                    .and_then(|r| r.outs.get(path))
                    .filter(|o| !o.dir)
                    .and_then(|o| o.hash.parse::<crate::cache::Digest>().ok())
                    .and_then(|d| std::fs::read(cache.object_path(&d)).ok());
                let bytes = match from_cache {
                    Some(b) => Some(b),
                    None if newest && ri + 1 == n => std::fs::read(p.root.join(path)).ok(),
                    None => None,
                };
                let Some(json) = bytes.and_then(|b| serde_json::from_slice(&b).ok()) else {
                    continue;
                };
                let mut flat = BTreeMap::new();
                flatten_numbers("", &json, &mut flat);
                for (k, v) in flat {
                    put(&s.name, &k, ri, v);
                }
            }
        }
        for g in read_gates(&run.dir) {
            for c in &g.checks {
                if let Some(a) = c.actual {
                    put(&g.stage, &c.key, ri, a);
                }
            }
        }
    }
    order
        .into_iter()
        .map(|(stage, key)| {
            let values = map
                .remove(&(stage.clone(), key.clone()))
                .unwrap_or_default();
            let thresholds = p
                .stage(&stage)
                .and_then(|s| s.gate.as_ref())
                .map(|g| {
                    g.checks
                        .iter()
                        .filter(|c| c.key == key)
                        .map(|c| {
                            let op = serde_json::to_value(c.op)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default();
                            (op, c.expected)
                        })
                        .collect()
                })
                .unwrap_or_default();
            Series {
                stage,
                key,
                values,
                thresholds,
            }
        })
        .collect()
}

/// A release as the report shows it.
pub struct ReleaseRow {
    pub run_id: String,
    pub created_at: String,
    pub stage: String,
    pub artifacts: Vec<String>,
    pub gates: Vec<String>,
    /// Marks: `current`, `overridden`, `forced`, `rolled back`.
    pub marks: Vec<String>,
}

/// Every release manifest under `.pipe/releases/` (newest first) with its marks; rollbacks
/// come from the `pipe rollback` runs' manifests.
pub fn releases(releases_dir: &Path, runs: &[Run]) -> Vec<ReleaseRow> {
    let mut rows: Vec<(ReleaseRow, serde_json::Value)> = match std::fs::read_dir(releases_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter_map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                let row = ReleaseRow {
                    run_id: s("run_id"),
                    created_at: s("created_at"),
                    stage: s("stage"),
                    artifacts: v["artifacts"]
                        .as_array()?
                        .iter()
                        .filter_map(|a| a["path"].as_str().map(str::to_string))
                        .collect(),
                    gates: v["gates"]
                        .as_array()
                        .map(|g| {
                            g.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    marks: vec![],
                };
                Some((row, v))
            })
            .collect(),
        Err(_) => vec![],
    };
    rows.sort_by(|a, b| a.0.run_id.cmp(&b.0.run_id));
    // Walk releases and rollbacks in time order to find what each rollback undid.
    let mut timeline: Vec<(String, Option<String>)> =
        rows.iter().map(|(r, _)| (r.run_id.clone(), None)).collect();
    for run in runs {
        if run.manifest.status == RunStatus::Rollback {
            timeline.push((run.id.clone(), run.manifest.rollback_to.clone()));
        }
    }
    timeline.sort();
    let mut current: Option<String> = None;
    let mut rolled: HashMap<String, String> = HashMap::new();
    for (id, to) in timeline {
        match to {
            None => current = Some(id),
            Some(to) => {
                if let Some(c) = current.take().filter(|c| *c != to) {
                    rolled.insert(c, to.clone());
                }
                current = Some(to);
            }
        }
    }
    for (row, v) in &mut rows {
        if current.as_deref() == Some(row.run_id.as_str()) {
            row.marks.push("current".into());
        }
        if v["overridden"].as_bool() == Some(true) {
            row.marks.push("overridden".into());
        }
        if v["forced"].as_bool() == Some(true) {
            row.marks.push("forced".into());
        }
        if v["rolled_back"].as_bool() == Some(true) || rolled.contains_key(&row.run_id) {
            let to = rolled
                .get(&row.run_id)
                .map(|t| format!(" (to {t})"))
                .unwrap_or_default();
            row.marks.push(format!("rolled back{to}"));
        }
    }
    let mut out: Vec<ReleaseRow> = rows.into_iter().map(|(r, _)| r).collect();
    out.reverse();
    out
}

/// A stage's state in a run, for colouring (stages the run did not touch: None).
pub fn states(m: &Manifest) -> HashMap<String, StageState> {
    m.stages
        .iter()
        .map(|(n, r)| (n.clone(), r.status))
        .collect()
}

/// The newest earlier gate record of each gate, for runs whose stage was up to date.
pub fn latest_gates(history: &[&Run]) -> Vec<(String, GateRec)> {
    let mut seen: BTreeMap<String, (String, GateRec)> = BTreeMap::new();
    for run in history.iter().rev() {
        for g in read_gates(&run.dir) {
            seen.entry(g.gate.clone())
                .or_insert_with(|| (run.id.clone(), g));
        }
    }
    seen.into_values().collect()
}
