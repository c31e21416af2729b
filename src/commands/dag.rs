//! `pipe dag`: the stage graph as ASCII, Graphviz dot or Mermaid.

use super::Ctx;
use crate::cli::{DagArgs, DagFormat};
use anyhow::Result;

pub fn run(ctx: &Ctx, a: &DagArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    if a.json {
        crate::output::print_json(&json(&p))?;
        return Ok(0);
    }
    crate::output::write_str(&render(&p, a.format, ctx.verbose > 0))?;
    Ok(0)
}

/// The `pipe dag --json` body: every stage (matrix members unfolded) in run order with its
/// upstream, and the edges.
pub fn json(p: &crate::graph::Pipeline) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = p
        .order
        .iter()
        .map(|&i| {
            let s = &p.stages[i];
            serde_json::json!({
                "name": s.name,
                "group": (s.name != s.source_name).then_some(&s.source_name),
                "upstream": s.upstream.iter().map(|&u| &p.stages[u].name).collect::<Vec<_>>(),
                "frozen": s.frozen,
                "always": s.always,
                "gate": s.gate.as_ref().map(|g| &g.name),
                "release": s.release,
            })
        })
        .collect();
    let edges: Vec<serde_json::Value> = p
        .order
        .iter()
        .flat_map(|&i| {
            p.stages[i].upstream.iter().map(
                move |&u| serde_json::json!({"from": p.stages[u].name, "to": p.stages[i].name}),
            )
        })
        .collect();
    serde_json::json!({"pipeline": p.name, "stages": stages, "edges": edges})
}

fn mermaid_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The name a stage shows under in a folded view: its matrix group, or itself.
fn shown(p: &crate::graph::Pipeline, i: usize, fold: bool) -> String {
    let s = &p.stages[i];
    match p.groups.get(&s.source_name) {
        Some(m) if fold => format!("{} [{} members]", s.source_name, m.len()),
        _ => s.name.clone(),
    }
}

/// The graph as text; matrix groups fold into one node unless `verbose` (ascii only).
pub fn render(p: &crate::graph::Pipeline, format: DagFormat, verbose: bool) -> String {
    let mut out = String::new();
    match format {
        DagFormat::Ascii => {
            let fold = !verbose;
            let w = (0..p.stages.len())
                .map(|i| shown(p, i, fold).chars().count())
                .max()
                .unwrap_or(0);
            let mut printed = std::collections::HashSet::new();
            for &i in &p.order {
                let s = &p.stages[i];
                let name = shown(p, i, fold);
                if !printed.insert(name.clone()) {
                    continue;
                }
                let members: Vec<usize> = match p.groups.get(&s.source_name) {
                    Some(m) if fold => m.clone(),
                    _ => vec![i],
                };
                let mut ups: Vec<String> = Vec::new();
                for &m in &members {
                    for &u in &p.stages[m].upstream {
                        let n = shown(p, u, fold);
                        if !ups.contains(&n) {
                            ups.push(n);
                        }
                    }
                }
                let mut flags = Vec::new();
                if s.frozen {
                    flags.push("frozen");
                }
                if s.always {
                    flags.push("always");
                }
                if s.gate.is_some() {
                    flags.push("gate");
                }
                if s.release {
                    flags.push("release");
                }
                let flags = if flags.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", flags.join(", "))
                };
                if ups.is_empty() {
                    out.push_str(&format!("{name}{flags}\n"));
                } else {
                    out.push_str(&format!("{name:<w$}  <- {}{flags}\n", ups.join(", ")));
                }
            }
        }
        DagFormat::Dot => {
            out.push_str("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
            for &i in &p.order {
                out.push_str(&format!("  \"{}\";\n", p.stages[i].name));
            }
            for &i in &p.order {
                for &u in &p.stages[i].upstream {
                    out.push_str(&format!(
                        "  \"{}\" -> \"{}\";\n",
                        p.stages[u].name, p.stages[i].name
                    ));
                }
            }
            out.push_str("}\n");
        }
        DagFormat::Svg => out.push_str(&svg(p)),
        DagFormat::Mermaid => {
            out.push_str("graph TD\n");
            for &i in &p.order {
                let s = &p.stages[i];
                out.push_str(&format!("  {}[\"{}\"]\n", mermaid_id(&s.name), s.name));
            }
            for &i in &p.order {
                for &u in &p.stages[i].upstream {
                    out.push_str(&format!(
                        "  {} --> {}\n",
                        mermaid_id(&p.stages[u].name),
                        mermaid_id(&p.stages[i].name)
                    ));
                }
            }
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The graph as a standalone SVG: one column per depth (stages with no upstream first),
/// edges from each upstream stage to its downstream.
pub fn svg(p: &crate::graph::Pipeline) -> String {
    let n = p.stages.len();
    let mut level = vec![0usize; n];
    for &i in &p.order {
        level[i] = p.stages[i]
            .upstream
            .iter()
            .map(|&u| level[u] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut row = vec![0usize; n];
    let mut per_level: Vec<usize> = Vec::new();
    for &i in &p.order {
        if per_level.len() <= level[i] {
            per_level.resize(level[i] + 1, 0);
        }
        row[i] = per_level[level[i]];
        per_level[level[i]] += 1;
    }
    let longest = p
        .stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(4);
    let (bw, bh, gx, gy, m) = ((longest * 8 + 24) as i64, 32i64, 60i64, 18i64, 16i64);
    let x = |i: usize| m + level[i] as i64 * (bw + gx);
    let y = |i: usize| m + row[i] as i64 * (bh + gy);
    let width = m * 2 + per_level.len().max(1) as i64 * (bw + gx) - gx;
    // Room below the last row for edges that bend around a column.
    let height = m * 2 + per_level.iter().copied().max().unwrap_or(1) as i64 * (bh + gy) + gy;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"monospace\" font-size=\"13\">\n"
    );
    out.push_str("  <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n");
    for &i in &p.order {
        for &u in &p.stages[i].upstream {
            let (x1, y1, x2, y2) = (x(u) + bw, y(u) + bh / 2, x(i), y(i) + bh / 2);
            if level[i] - level[u] > 1 {
                // Skips a column: bend below the boxes in between.
                let dip = y1.max(y2) + bh / 2 + gy / 2;
                out.push_str(&format!(
                    "  <path d=\"M{x1},{y1} C{},{dip} {},{dip} {x2},{y2}\" fill=\"none\" stroke=\"#555\" marker-end=\"url(#arrow)\"/>\n",
                    x1 + gx,
                    x2 - gx
                ));
            } else {
                out.push_str(&format!(
                    "  <line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#555\" marker-end=\"url(#arrow)\"/>\n"
                ));
            }
        }
    }
    for &i in &p.order {
        let s = &p.stages[i];
        let fill = if s.frozen {
            "#e0e0e0"
        } else if s.release {
            "#d9f2d9"
        } else if s.gate.is_some() {
            "#fff2cc"
        } else {
            "#e8f0fe"
        };
        out.push_str(&format!(
            "  <g><title>{name}</title><rect x=\"{}\" y=\"{}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\" fill=\"{fill}\" stroke=\"#333\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"middle\">{name}</text></g>\n",
            x(i),
            y(i),
            x(i) + bw / 2,
            y(i) + bh / 2,
            name = xml_escape(&s.name)
        ));
    }
    out.push_str("</svg>\n");
    out
}
