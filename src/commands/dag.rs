//! `pipe dag`: the stage graph as ASCII, Graphviz dot or Mermaid.

use super::Ctx;
use crate::cli::{DagArgs, DagFormat};
use anyhow::Result;

pub fn run(ctx: &Ctx, a: &DagArgs) -> Result<i32> {
    let p = ctx.load(&[])?;
    print!("{}", render(&p, a.format));
    Ok(0)
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

pub fn render(p: &crate::graph::Pipeline, format: DagFormat) -> String {
    let mut out = String::new();
    match format {
        DagFormat::Ascii => {
            let w = p
                .stages
                .iter()
                .map(|s| s.name.chars().count())
                .max()
                .unwrap_or(0);
            for &i in &p.order {
                let s = &p.stages[i];
                let ups: Vec<&str> = s
                    .upstream
                    .iter()
                    .map(|&u| p.stages[u].name.as_str())
                    .collect();
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
                    out.push_str(&format!("{}{flags}\n", s.name));
                } else {
                    out.push_str(&format!("{:<w$}  <- {}{flags}\n", s.name, ups.join(", ")));
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
