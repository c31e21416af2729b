//! `pipe dag`: the stage graph as ASCII, Graphviz dot, Mermaid or SVG.

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

/// Mermaid node ids: a name that is already a plain id (letters, digits, `_`) is its own
/// id, so the text stays readable (`a --> b`); any other gets `s<index>` (made unique),
/// with the name as its label. Punctuation is never mapped to `_`, which merged `prep-a`
/// and `prep_a` into one node.
fn mermaid_ids(p: &crate::graph::Pipeline) -> Vec<String> {
    let plain = |n: &str| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut used: std::collections::HashSet<String> = p
        .stages
        .iter()
        .filter(|s| plain(&s.name))
        .map(|s| s.name.clone())
        .collect();
    p.stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if plain(&s.name) {
                return s.name.clone();
            }
            let mut id = format!("s{i}");
            while used.contains(&id) {
                id.push('_');
            }
            used.insert(id.clone());
            id
        })
        .collect()
}

/// Mermaid text in a quoted label: quotes become `#quot;` (Mermaid's entity syntax).
fn mermaid_label(name: &str) -> String {
    name.replace('"', "#quot;")
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
        DagFormat::Mermaid => {
            let id = mermaid_ids(p);
            out.push_str("graph TD\n");
            for &i in &p.order {
                let s = &p.stages[i];
                out.push_str(&format!("  {}[\"{}\"]\n", id[i], mermaid_label(&s.name)));
            }
            for &i in &p.order {
                for &u in &p.stages[i].upstream {
                    out.push_str(&format!("  {} --> {}\n", id[u], id[i]));
                }
            }
        }
        DagFormat::Svg => {
            out.push_str(&crate::html::dag::render(
                p,
                &crate::html::dag::Marks::default(),
                true,
            ));
        }
    }
    out
}
