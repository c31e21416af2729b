//! `pipe metrics` (metrics files side by side across matrix members), `pipe metrics --runs`
//! (one row per run, with changes against a baseline) and `pipe params diff A B`.

use super::Ctx;
use crate::cache::Cache;
use crate::cli::{MetricsArgs, ParamsArgs, ParamsCommand};
use crate::error::invalid;
use crate::gate;
use crate::graph::Pipeline;
use crate::output::{self, Text};
use crate::params;
use crate::record::{self, Manifest, history};
use crate::stage_state::StageState;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};

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
    label: String,
    stage: String,
    file: String,
    run_id: Option<String>,
    values: &'a BTreeMap<String, serde_json::Value>,
}

pub fn metrics(ctx: &Ctx, a: &MetricsArgs) -> Result<i32> {
    if a.runs.is_some() || a.baseline.is_some() || a.sort.is_some() || a.csv {
        return compare(ctx, a);
    }
    let p = ctx.load(&[])?;
    let mut cols: Vec<Column> = Vec::new();
    // (stage, file) of each column, in the same order.
    let mut origin: Vec<(String, String)> = Vec::new();
    for &i in &p.order {
        let s = &p.stages[i];
        for m in &s.metrics {
            let Ok(bytes) = std::fs::read(p.root.join(m)) else {
                continue;
            };
            let Ok(json) = gate::parse_metrics(&bytes) else {
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
            origin.push((s.name.clone(), m.clone()));
        }
    }
    if a.json {
        let sources: Vec<Source> = cols
            .iter()
            .zip(origin)
            .map(|((label, values), (stage, file))| Source {
                label: label.clone(),
                stage,
                file,
                run_id: None,
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

/// How many runs `pipe metrics --runs` shows by default.
const DEFAULT_RUNS: usize = 10;

/// One metrics file of one run, flattened.
struct RunSource {
    stage: String,
    file: String,
    values: BTreeMap<String, serde_json::Value>,
}

/// A run's metrics: what its manifest recorded, else (runs from before metrics were
/// recorded, stages that were up to date) the cache objects of the metrics outs it names.
/// Also whether a stage that ran or was restored in it produced any.
fn run_metrics(p: &Pipeline, cache: &Cache, m: &Manifest) -> (Vec<RunSource>, bool) {
    let mut out = Vec::new();
    let mut produced = false;
    let mut take = |stage: &str, file: &str, json: &serde_json::Value, st: StageState| {
        let mut values = BTreeMap::new();
        flatten("", json, &mut values);
        if values.is_empty() {
            return;
        }
        produced |= matches!(st, StageState::Ran | StageState::Restored);
        out.push(RunSource {
            stage: stage.to_string(),
            file: file.to_string(),
            values,
        });
    };
    for (stage, r) in &m.stages {
        if !r.metrics.is_empty() {
            for (file, json) in &r.metrics {
                take(stage, file, json, r.status);
            }
            continue;
        }
        let Some(s) = p.index.get(stage).map(|&i| &p.stages[i]) else {
            continue;
        };
        for file in &s.metrics {
            let Some(o) = r.outs.get(file) else { continue };
            let Ok(d) = o.hash.parse() else { continue };
            let Ok(bytes) = std::fs::read(cache.object_path(&d)) else {
                continue;
            };
            let Ok(json) = gate::parse_metrics(&bytes) else {
                continue;
            };
            take(stage, file, &json, r.status);
        }
    }
    (out, produced)
}

/// A metric column: its label and where its values come from.
struct MetricCol {
    label: String,
    stage: String,
    file: String,
    key: String,
}

/// One column per metric key; a key that two stages (or two files) have is prefixed with
/// the stage (`evaluate.acc`), and with the file too when one stage has it twice.
fn metric_columns(rows: &[(&Manifest, Vec<RunSource>)]) -> Vec<MetricCol> {
    let mut seen: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for (_, sources) in rows {
        for s in sources {
            for k in s.values.keys() {
                seen.entry(k.as_str())
                    .or_default()
                    .insert((s.stage.as_str(), s.file.as_str()));
            }
        }
    }
    let mut cols = Vec::new();
    for (key, origins) in seen {
        let stages: BTreeSet<&str> = origins.iter().map(|o| o.0).collect();
        for &(stage, file) in &origins {
            let label = if origins.len() == 1 {
                key.to_string()
            } else if stages.len() == origins.len() {
                format!("{stage}.{key}")
            } else {
                format!("{stage}:{file}.{key}")
            };
            cols.push(MetricCol {
                label,
                stage: stage.to_string(),
                file: file.to_string(),
                key: key.to_string(),
            });
        }
    }
    cols
}

/// Format a float as people read it: the shortest text that reads back as the same number,
/// in exponent form (`1e-05`, `2.5e+20`) when very small or very large; `NaN`, `Infinity`.
pub fn fmt_f64(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return "0".into();
    }
    if (1e-4..1e16).contains(&f.abs()) {
        return format!("{f}");
    }
    let s = format!("{f:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.unsigned_abs()
    )
}

/// A metric or param value as text.
fn fmt_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => n.as_f64().map_or(n.to_string(), fmt_f64),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Decimal places a formatted number shows (`0.91` → 2, `1e-05` → 5, `3` → 0).
fn decimals(text: &str) -> i32 {
    let (mantissa, exp) = text.split_once('e').unwrap_or((text, "0"));
    let frac = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    frac - exp.parse::<i32>().unwrap_or(0)
}

/// `value - base`, rounded to the decimals the two show, so `0.91 - 0.88` is `0.03` and not
/// `0.030000000000000027`. None unless both are finite numbers.
fn delta(value: &serde_json::Value, base: &serde_json::Value) -> Option<f64> {
    let (x, b) = (gate::number(value)?, gate::number(base)?);
    if !x.is_finite() || !b.is_finite() {
        return None;
    }
    let d = x - b;
    // The decimals the numbers show, but no finer than 12 significant digits of the larger
    // (the subtraction's own error sits near the 16th).
    let shown = decimals(&fmt_f64(x)).max(decimals(&fmt_f64(b)));
    let big = x.abs().max(b.abs());
    let significant = if big > 0.0 {
        11 - big.log10().floor() as i32
    } else {
        0
    };
    let places = shown.min(significant).clamp(-300, 300);
    let scale = 10f64.powi(places);
    let r = (d * scale).round() / scale;
    // `+ 0.0` turns a -0 into 0.
    Some(if r.is_finite() { r + 0.0 } else { d })
}

/// A change as a JSON value: an integer when both values are.
fn delta_json(d: f64, value: Option<&serde_json::Value>) -> serde_json::Value {
    if value.is_some_and(|v| v.is_i64() || v.is_u64()) && d.fract() == 0.0 && d.abs() < 9e15 {
        serde_json::json!(d as i64)
    } else {
        serde_json::json!(d)
    }
}

fn fmt_delta(d: f64) -> String {
    if d >= 0.0 {
        format!("+{}", fmt_f64(d))
    } else {
        fmt_f64(d)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `pipe metrics --runs [RUN...]`: one row per run with the params that differ between the
/// runs and every metric, with its change against the baseline (the first row, or
/// `--baseline`).
fn compare(ctx: &Ctx, a: &MetricsArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    let cache = Cache::new(&p.layout.cache);
    let all = record::list_runs(&p.layout.runs);
    let refs = a.runs.as_deref().unwrap_or_default();
    let mut rows: Vec<(&Manifest, Vec<RunSource>)> = Vec::new();
    if refs.is_empty() {
        for m in &all {
            let (sources, produced) = run_metrics(&p, &cache, m);
            if produced {
                rows.push((m, sources));
                if rows.len() == DEFAULT_RUNS {
                    break;
                }
            }
        }
        rows.reverse();
    } else {
        for r in refs {
            let m = history::resolve(&all, r)?;
            rows.push((m, run_metrics(&p, &cache, m).0));
        }
    }
    let mut base = 0;
    if let Some(b) = &a.baseline {
        let m = history::resolve(&all, b)?;
        base = match rows.iter().position(|(r, _)| r.run_id == m.run_id) {
            Some(i) => i,
            None => {
                rows.insert(0, (m, run_metrics(&p, &cache, m).0));
                0
            }
        };
    }
    let cols = metric_columns(&rows);
    // Each row's value per column.
    let values: Vec<Vec<Option<&serde_json::Value>>> = rows
        .iter()
        .map(|(_, sources)| {
            cols.iter()
                .map(|c| {
                    sources
                        .iter()
                        .find(|s| s.stage == c.stage && s.file == c.file)
                        .and_then(|s| s.values.get(&c.key))
                })
                .collect()
        })
        .collect();
    let deltas: Vec<Vec<Option<f64>>> = values
        .iter()
        .map(|vs| {
            vs.iter()
                .zip(&values[base.min(values.len().saturating_sub(1))])
                .map(|(v, b)| delta((*v)?, (*b)?))
                .collect()
        })
        .collect();
    // Params that differ between the shown runs.
    let mut pkeys: BTreeSet<&String> = BTreeSet::new();
    for (m, _) in &rows {
        pkeys.extend(m.params.keys());
    }
    let pkeys: Vec<&String> = pkeys
        .into_iter()
        .filter(|k| {
            let first = rows.first().and_then(|(m, _)| m.params.get(*k));
            rows.iter()
                .any(|(m, _)| !params::same(first, m.params.get(*k)))
        })
        .collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    if let Some(metric) = &a.sort {
        let col = match cols.iter().position(|c| &c.label == metric) {
            Some(i) => i,
            None => {
                let by_key: Vec<usize> = (0..cols.len())
                    .filter(|&i| &cols[i].key == metric)
                    .collect();
                match by_key.as_slice() {
                    [i] => *i,
                    _ => {
                        let names: Vec<&str> = cols.iter().map(|c| c.label.as_str()).collect();
                        let what = if by_key.is_empty() {
                            "no metric"
                        } else {
                            "more than one metric is"
                        };
                        return Err(invalid(format!(
                            "--sort {metric}: {what} called `{metric}` in these runs; metrics: {}",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        )));
                    }
                }
            }
        };
        // Numbers in order, then whatever has no number (missing, NaN, text) last.
        let key = |i: &usize| {
            values[*i][col]
                .and_then(gate::number)
                .filter(|f| !f.is_nan())
        };
        order.sort_by(|x, y| match (key(x), key(y)) {
            (Some(a_), Some(b_)) => {
                let o = a_.total_cmp(&b_);
                if a.desc { o.reverse() } else { o }
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    let param_json = |m: &Manifest, k: &String| {
        m.params
            .get(k)
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    if a.json {
        let runs: Vec<serde_json::Value> = order
            .iter()
            .map(|&i| {
                let (m, _) = &rows[i];
                let mut metrics = serde_json::Map::new();
                let mut ds = serde_json::Map::new();
                for (c, col) in cols.iter().enumerate() {
                    if let Some(v) = values[i][c] {
                        metrics.insert(col.label.clone(), v.clone());
                    }
                    if let Some(d) = deltas[i][c] {
                        let int = values[i][c]
                            .filter(|_| values[base][c].is_some_and(|b| b.is_i64() || b.is_u64()));
                        ds.insert(col.label.clone(), delta_json(d, int));
                    }
                }
                let ps: serde_json::Map<String, serde_json::Value> = pkeys
                    .iter()
                    .map(|k| ((*k).clone(), param_json(m, k)))
                    .collect();
                serde_json::json!({
                    "run_id": m.run_id,
                    "name": m.name,
                    "started_at": m.started_at,
                    "status": m.status,
                    "baseline": i == base,
                    "params": ps,
                    "metrics": metrics,
                    "deltas": ds,
                })
            })
            .collect();
        let sources: Vec<Source> = order
            .iter()
            .flat_map(|&i| {
                let (m, srcs) = &rows[i];
                srcs.iter().map(move |s| Source {
                    // As `--runs A B` always labelled them.
                    label: format!("{} {}", m.run_id, s.stage),
                    stage: s.stage.clone(),
                    file: s.file.clone(),
                    run_id: Some(m.run_id.clone()),
                    values: &s.values,
                })
            })
            .collect();
        output::print_json(&serde_json::json!({
            "baseline": rows.get(base).map(|(m, _)| m.run_id.clone()),
            "sort": a.sort,
            "params": pkeys,
            "metrics": cols.iter().map(|c| &c.label).collect::<Vec<_>>(),
            "runs": runs,
            "sources": sources,
        }))?;
        return Ok(0);
    }
    let param_text = |m: &Manifest, k: &String| {
        m.params.get(k).map_or("-".to_string(), |v| match v {
            toml::Value::Float(f) => fmt_f64(*f),
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    if a.csv {
        let mut header: Vec<String> = vec!["run_id".into(), "name".into(), "started_at".into()];
        header.extend(pkeys.iter().map(|k| (*k).clone()));
        header.extend(cols.iter().map(|c| c.label.clone()));
        let mut text = header
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",");
        text.push('\n');
        for &i in &order {
            let (m, _) = &rows[i];
            let mut line = vec![
                m.run_id.clone(),
                m.name.clone().unwrap_or_default(),
                m.started_at.clone(),
            ];
            line.extend(
                pkeys
                    .iter()
                    .map(|k| m.params.get(*k).map_or(String::new(), |_| param_text(m, k))),
            );
            line.extend(values[i].iter().map(|v| v.map_or(String::new(), fmt_value)));
            text.push_str(
                &line
                    .iter()
                    .map(|f| csv_field(f))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            text.push('\n');
        }
        output::write_str(&text)?;
        return Ok(0);
    }
    if rows.is_empty() {
        eprintln!(
            "no run has metrics yet: declare `metrics = [\"path.json\"]` on a stage (also in its outs) and build it"
        );
        return Ok(0);
    }
    // The table: run, name, the differing params, then the metrics with their changes.
    let mut header: Vec<String> = vec!["run".into(), "name".into()];
    header.extend(pkeys.iter().map(|k| (*k).clone()));
    header.extend(cols.iter().map(|c| c.label.clone()));
    let mut table: Vec<Vec<String>> = Vec::new();
    for &i in &order {
        let (m, _) = &rows[i];
        let mut line = vec![
            m.run_id.clone(),
            m.name.clone().unwrap_or_else(|| "-".into()),
        ];
        line.extend(pkeys.iter().map(|k| param_text(m, k)));
        for c in 0..cols.len() {
            line.push(match (values[i][c], deltas[i][c]) {
                (None, _) => "-".to_string(),
                (Some(v), Some(d)) if i != base => format!("{} ({})", fmt_value(v), fmt_delta(d)),
                (Some(v), _) => fmt_value(v),
            });
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|l| l[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(1)
        })
        .collect();
    // Run, name and params read left to right; metrics line up on the right.
    let left = 2 + pkeys.len();
    let render = |cells: &[String]| {
        let mut s = String::new();
        for (c, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if c > 0 {
                s.push_str("  ");
            }
            if c < left {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = Text::new();
    out.line(render(&header));
    for line in &table {
        out.line(render(line));
    }
    out.print()?;
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
        Some(v) => fmt_value(v),
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
    let all = record::list_runs(&p.layout.runs);
    let (ma, mb) = (history::resolve(&all, ra)?, history::resolve(&all, rb)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_people_write_them() {
        assert_eq!(fmt_f64(1e-5), "1e-05");
        assert_eq!(fmt_f64(0.91), "0.91");
        assert_eq!(fmt_f64(0.0001), "0.0001");
        assert_eq!(fmt_f64(2.5e20), "2.5e+20");
        assert_eq!(fmt_f64(-3.0), "-3");
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(fmt_value(&json!(0.910000)), "0.91");
        assert_eq!(fmt_value(&json!(12)), "12");
    }

    #[test]
    fn changes_are_rounded_to_what_the_numbers_show() {
        assert_eq!(delta(&json!(0.91), &json!(0.88)), Some(0.03));
        assert_eq!(delta(&json!(0.88), &json!(0.91)), Some(-0.03));
        assert_eq!(delta(&json!(2e-5), &json!(1e-5)), Some(1e-5));
        assert_eq!(
            delta(&json!(1.1e-6), &json!(1.0000000000000002e-06)),
            Some(1e-7)
        );
        assert_eq!(delta(&json!(5), &json!(5)), Some(0.0));
        assert_eq!(delta(&json!("NaN"), &json!(1.0)), None);
        assert_eq!(fmt_delta(0.03), "+0.03");
        assert_eq!(fmt_delta(-1e-5), "-1e-05");
    }
}
