//! The graph: edges from outs → deps and `after`, overlapping outs, deps nobody makes,
//! and a topological order (cycles reported with the stages around them).

use super::builder::Builder;
use super::*;
use crate::error::did_you_mean;
use crate::source::{Seg, diags_error};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};

impl<'a> Builder<'a> {
    /// Edges from outs → deps and `after`; overlapping outs; deps nobody makes.
    pub(super) fn link(&mut self, stages: &mut [Stage], index: &HashMap<String, usize>) {
        // Every out, by path.
        let mut outs: BTreeMap<String, usize> = BTreeMap::new();
        for (i, s) in stages.iter().enumerate() {
            for (oi, o) in s.outs.iter().enumerate() {
                if let Some(&j) = outs.get(&o.path) {
                    let other = stages[j].name.clone();
                    let msg = if j == i {
                        format!("out `{}` is listed twice", o.path)
                    } else {
                        format!(
                            "out `{}` is also an out of stage `{other}`; two stages cannot write the same path",
                            o.path
                        )
                    };
                    self.err_item(s, "outs", oi, msg);
                } else {
                    outs.insert(o.path.clone(), i);
                }
            }
        }
        // An out inside another out's folder.
        for (path, &i) in &outs {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if let Some(&j) = outs.get(parent) {
                    let s = &stages[i];
                    let oi = s.outs.iter().position(|o| &o.path == path).unwrap_or(0);
                    let msg = format!(
                        "out `{path}` is inside out folder `{parent}` of stage `{}`",
                        stages[j].name
                    );
                    self.err_item(s, "outs", oi, msg);
                }
                p = parent;
            }
        }

        let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); stages.len()];
        for (i, s) in stages.iter().enumerate() {
            for (di, dep) in s.deps.iter().enumerate() {
                let mut producers = BTreeSet::new();
                if let Some(g) = &dep.glob {
                    for (path, &j) in &outs {
                        if g.is_match(path) {
                            producers.insert(j);
                        }
                    }
                } else {
                    // The dep is an out, inside an out folder, or a folder holding outs.
                    let mut p = dep.path.as_str();
                    loop {
                        if let Some(&j) = outs.get(p) {
                            producers.insert(j);
                        }
                        match p.rsplit_once('/') {
                            Some((parent, _)) => p = parent,
                            None => break,
                        }
                    }
                    let prefix = format!("{}/", dep.path);
                    for (path, &j) in outs.range(prefix.clone()..) {
                        if !path.starts_with(&prefix) {
                            break;
                        }
                        producers.insert(j);
                    }
                }
                let loc = [
                    Seg::Key("stages"),
                    Seg::Key(&s.source_name),
                    Seg::Key("deps"),
                    Seg::Index(di),
                ];
                if producers.contains(&i) {
                    let d = self.src.diag(
                        &loc,
                        Some(&s.name),
                        format!("dep `{}` is one of the stage's own outs", dep.path),
                    );
                    self.diags.push(d);
                    continue;
                }
                if producers.is_empty()
                    && dep.glob.is_none()
                    && self.stats.metadata(&self.root.join(&dep.path)).is_err()
                {
                    let d = self
                        .src
                        .diag(
                            &loc,
                            Some(&s.name),
                            format!("dep `{}` does not exist and no stage produces it", dep.path),
                        )
                        .help(Some(
                            "create the file, fix the path, or add it to another stage's `outs`"
                                .into(),
                        ));
                    self.diags.push(d);
                }
                edges[i].extend(producers);
            }
            for (ai, a) in s.after.iter().enumerate() {
                let loc = [
                    Seg::Key("stages"),
                    Seg::Key(&s.source_name),
                    Seg::Key("after"),
                    Seg::Index(ai),
                ];
                match index.get(a) {
                    Some(&j) if j == i => {
                        let d =
                            self.src
                                .diag(&loc, Some(&s.name), "`after` names the stage itself");
                        self.diags.push(d);
                    }
                    Some(&j) => {
                        edges[i].insert(j);
                    }
                    None => {
                        // `after` may name a whole matrix group.
                        let members: Vec<usize> = stages
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| t.source_name == *a && t.name != t.source_name)
                            .map(|(j, _)| j)
                            .collect();
                        if members.is_empty() {
                            let hint = did_you_mean(a, index.keys().map(String::as_str));
                            let d = self
                                .src
                                .diag(
                                    &loc,
                                    Some(&s.name),
                                    format!("`after` names unknown stage `{a}`"),
                                )
                                .help(hint);
                            self.diags.push(d);
                        } else {
                            edges[i].extend(members);
                        }
                    }
                }
            }
        }
        for (i, up) in edges.into_iter().enumerate() {
            for &j in &up {
                stages[j].downstream.push(i);
            }
            stages[i].upstream = up.into_iter().collect();
        }
    }

    /// Kahn's algorithm in declaration order; a cycle is reported with the stages around it.
    pub(super) fn toposort(&mut self, stages: &[Stage]) -> Result<Vec<usize>> {
        let mut indeg: Vec<usize> = stages.iter().map(|s| s.upstream.len()).collect();
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..stages.len())
            .filter(|&i| indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(stages.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &d in &stages[i].downstream {
                indeg[d] -= 1;
                if indeg[d] == 0 {
                    ready.push(std::cmp::Reverse(d));
                }
            }
        }
        if order.len() == stages.len() {
            return Ok(order);
        }
        // Find one cycle among the stages left: follow upstream edges until a repeat.
        let left: BTreeSet<usize> = (0..stages.len()).filter(|i| indeg[*i] > 0).collect();
        let start = *left.iter().next().unwrap_or(&0);
        let mut path = vec![start];
        let mut seen = HashMap::from([(start, 0usize)]);
        let mut cur = start;
        let cycle = loop {
            let Some(&next) = stages[cur].upstream.iter().find(|u| left.contains(u)) else {
                break vec![start];
            };
            if let Some(&pos) = seen.get(&next) {
                break path[pos..].to_vec();
            }
            seen.insert(next, path.len());
            path.push(next);
            cur = next;
        };
        // `cycle` follows upstream edges; print it in data-flow order.
        let mut names: Vec<&str> = cycle
            .iter()
            .rev()
            .map(|&i| stages[i].name.as_str())
            .collect();
        names.push(names[0]);
        let first = &stages[cycle[0]];
        let d = self.src.diag(
            &[Seg::Key("stages"), Seg::Key(&first.source_name)],
            Some(&first.name),
            format!("dependency cycle: {}", names.join(" → ")),
        );
        Err(diags_error(vec![d]))
    }
}
