//! `pipe metrics` (metrics files side by side across matrix members or two runs) and
//! `pipe params diff A B`.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::{MetricsArgs, ParamsArgs, ParamsCommand};
use crate::error::invalid;
use crate::output::{self, Text};
use crate::record;
use anyhow::Result;
use std::collections::BTreeMap;

/// Flatten JSON numbers to dotted keys.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(
                    &if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    },
                    v,
                    out,
                );
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

type Column = (String, BTreeMap<String, serde_json::Value>);

/// Where a column's values came from, for `--json`.
#[derive(serde::Serialize)]
struct Source<'a> {
    label: &'a str,
    stage: String,
    file: String,
    run_id: Option<String>,
    values: &'a BTreeMap<String, serde_json::Value>,
}

pub fn metrics(ctx: &Ctx, a: &MetricsArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let mut cols: Vec<Column> = Vec::new();
    // (stage, file, run) of each column, in the same order.
    let mut origin: Vec<(String, String, Option<String>)> = Vec::new();
    match &a.runs {
        None => {
            for &i in &p.order {
                let s = &p.stages[i];
                for m in &s.metrics {
                    let Ok(bytes) = std::fs::read(p.root.join(m)) else {
                        continue;
                    };
                    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                        continue;
                    };
                    let mut flat = BTreeMap::new();
                    flatten("", &json, &mut flat);
                    let label = if s.metrics.len() > 1 {
                        format!("{} {m}", s.name)
                    } else {
                        s.name.clone()
                    };
                    cols.push((label, flat));
                    origin.push((s.name.clone(), m.clone(), None));
                }
            }
        }
        Some(ids) => {
            // Metrics of a run come from the cache objects its manifest recorded.
            let cache = Cache::new(&p.layout.cache);
            for id in ids {
                let m = record::read_manifest(&p.layout.runs.join(id))
                    .map_err(|_| invalid(format!("no run `{id}` (see `pipe runs`)")))?;
                for &i in &p.order {
                    let s = &p.stages[i];
                    let Some(r) = m.stages.get(&s.name) else {
                        continue;
                    };
                    for path in &s.metrics {
                        let Some(o) = r.outs.get(path) else { continue };
                        let Ok(d) = o.hash.parse() else { continue };
                        let Ok(bytes) = std::fs::read(cache.object_path(&d)) else {
                            continue;
                        };
                        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                            continue;
                        };
                        let mut flat = BTreeMap::new();
                        flatten("", &json, &mut flat);
                        cols.push((format!("{id} {}", s.name), flat));
                        origin.push((s.name.clone(), path.clone(), Some(id.clone())));
                    }
                }
            }
        }
    }
    if a.json {
        let sources: Vec<Source> = cols
            .iter()
            .zip(origin)
            .map(|((label, values), (stage, file, run_id))| Source {
                label,
                stage,
                file,
                run_id,
                values,
            })
            .collect();
        output::print_json(&serde_json::json!({ "sources": sources }))?;
        return Ok(0);
    }
    if cols.is_empty() {
        eprintln!(
            "no metrics yet: declare `metrics = [\"path.json\"]` on a stage (also in its outs) and build it"
        );
        return Ok(0);
    }
    print_table(&cols)?;
    Ok(0)
}

/// Metrics as rows (one per key), sources as columns.
fn print_table(cols: &[Column]) -> Result<()> {
    let mut keys: Vec<&String> = cols.iter().flat_map(|(_, m)| m.keys()).collect();
    keys.sort();
    keys.dedup();
    let kw = keys
        .iter()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let cell = |v: Option<&serde_json::Value>| match v {
        None => "-".to_string(),
        Some(serde_json::Value::Number(n)) => n.as_f64().map_or(n.to_string(), |f| {
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{f}")
            } else {
                format!("{f:.4}")
            }
        }),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|(name, m)| {
            keys.iter()
                .map(|k| cell(m.get(*k)).chars().count())
                .max()
                .unwrap_or(1)
                .max(name.chars().count())
        })
        .collect();
    let mut header = format!("{:<kw$}", "metric");
    for ((name, _), w) in cols.iter().zip(&widths) {
        header.push_str(&format!("  {name:>w$}"));
    }
    let mut out = Text::new();
    out.line(header);
    for k in keys {
        let mut line = format!("{k:<kw$}");
        for ((_, m), w) in cols.iter().zip(&widths) {
            line.push_str(&format!("  {:>w$}", cell(m.get(k))));
        }
        out.line(line);
    }
    out.print()
}

pub fn params(ctx: &Ctx, a: &ParamsArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let ParamsCommand::Diff { a: ra, b: rb, json } = &a.command;
    let load = |id: &str| {
        record::read_manifest(&p.layout.runs.join(id))
            .map_err(|_| invalid(format!("no run `{id}` (see `pipe runs`)")))
    };
    let (ma, mb) = (load(ra)?, load(rb)?);
    let mut keys: Vec<&String> = ma.params.keys().chain(mb.params.keys()).collect();
    keys.sort();
    keys.dedup();
    let keys: Vec<&String> = keys
        .into_iter()
        .filter(|k| ma.params.get(*k) != mb.params.get(*k))
        .collect();
    if *json {
        // Values as JSON values (a param missing from one run is null there).
        let value = |v: Option<&toml::Value>| {
            v.and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let v: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({"key": k, "a": value(ma.params.get(*k)), "b": value(mb.params.get(*k))})
            })
            .collect();
        output::print_json(&serde_json::json!({ "a": ra, "b": rb, "params": v }))?;
        return Ok(0);
    }
    let show = |v: Option<&toml::Value>| v.map_or("-".to_string(), |v| v.to_string());
    let diffs: Vec<(&String, String, String)> = keys
        .into_iter()
        .map(|k| (k, show(ma.params.get(k)), show(mb.params.get(k))))
        .collect();
    if diffs.is_empty() {
        output::write_str(&format!("no param differs between {ra} and {rb}\n"))?;
        return Ok(0);
    }
    let kw = diffs
        .iter()
        .map(|d| d.0.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let aw = diffs
        .iter()
        .map(|d| d.1.chars().count())
        .max()
        .unwrap_or(1)
        .max(ra.chars().count());
    let mut out = Text::new();
    out.line(format!("{:<kw$}  {:<aw$}  {}", "param", ra, rb));
    for (k, x, y) in diffs {
        out.line(format!("{k:<kw$}  {x:<aw$}  {y}"));
    }
    out.print()?;
    Ok(0)
}
