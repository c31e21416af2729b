//! The stage graph as SVG, left to right: shared by `pipe dag --format svg` and the report
//! (where each node is coloured by its state in the run).
//!
//! Big graphs are folded before layout so the picture stays legible and fast: matrix groups
//! become one node (as `pipe status` folds them); past [`MAX_NODES`], stages with the same
//! upstream, downstream and state fold together, then unbranched chains of one state; what
//! is still beyond the cap folds into bands of ranks (an overview of the shape). Layout is
//! `layout-rs` (a Sugiyama-style layered layout with crossing minimisation); should it ever
//! panic, a plain longest-path layering draws the graph instead. In the report a graph too
//! deep for the page width turns top to bottom, so the page scrolls down, never sideways.

use super::esc;
use crate::graph::Pipeline;
use crate::stage_state::StageState;
use std::collections::{BTreeMap, HashMap, HashSet};

/// At most this many nodes are laid out (layout-rs is superlinear: ~0.4 s for 300 nodes).
pub const MAX_NODES: usize = 120;

/// A gate's result in the run, for its mark on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GateMark {
    Pass,
    Overridden,
    Fail,
}

/// What colours the graph: stage states and gate results of a run (both empty for `pipe dag`).
#[derive(Default)]
pub struct Marks {
    pub run: bool,
    pub states: HashMap<String, StageState>,
    pub gates: HashMap<String, GateMark>,
}

struct Node {
    members: Vec<usize>,
    label: String,
    sub: String,
    /// CSS class of the state (`ran`, ..., `not_in_run`, or `plain` outside a run).
    class: &'static str,
    gate: Option<Option<GateMark>>,
    release: bool,
    title: String,
    pos: usize,
}

pub fn state_rank(s: Option<StageState>) -> u8 {
    match s {
        Some(StageState::Failed) => 9,
        Some(StageState::Blocked) => 8,
        Some(StageState::Skipped) => 7,
        Some(StageState::Ran) => 6,
        Some(StageState::Restored) => 5,
        Some(StageState::Stale) | Some(StageState::Restorable) | Some(StageState::Running) => 4,
        Some(StageState::UpToDate) | Some(StageState::RolledBack) => 3,
        Some(StageState::Frozen) => 2,
        None => 0,
    }
}

fn make_node(p: &Pipeline, m: &Marks, pos_of: &[usize], mut members: Vec<usize>) -> Node {
    members.sort_by_key(|&i| pos_of[i]);
    members.dedup();
    let first = &p.stages[members[0]];
    let last = &p.stages[*members.last().unwrap_or(&members[0])];
    let one_group = members
        .iter()
        .all(|&i| p.stages[i].source_name == first.source_name);
    let label = if members.len() == 1 {
        first.name.clone()
    } else if one_group {
        format!("{} [{}]", first.source_name, members.len())
    } else {
        format!("{} … {}", first.name, last.name)
    };
    let state_of = |i: usize| m.states.get(&p.stages[i].name).copied();
    let worst = members
        .iter()
        .map(|&i| state_of(i))
        .max_by_key(|s| state_rank(*s))
        .flatten();
    let class = if !m.run {
        "plain"
    } else {
        worst.map(|s| s.as_str()).unwrap_or("not_in_run")
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &members {
        *counts
            .entry(state_of(i).map(|s| s.label()).unwrap_or("not in run"))
            .or_default() += 1;
    }
    let gate = if members.iter().any(|&i| p.stages[i].gate.is_some()) {
        Some(
            members
                .iter()
                .filter_map(|&i| m.gates.get(&p.stages[i].name).copied())
                .max(),
        )
    } else {
        None
    };
    let release = members.iter().any(|&i| p.stages[i].release);
    let mut sub: Vec<String> = Vec::new();
    if members.len() > 1 {
        sub.push(format!("{} stages", members.len()));
    }
    if m.run {
        if counts.len() == 1 {
            sub.push(
                counts
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
            );
        } else {
            sub.extend(counts.iter().map(|(k, v)| format!("{v} {k}")));
        }
    }
    if let Some(g) = gate {
        sub.push(
            match g {
                Some(GateMark::Pass) => "gate ✓",
                Some(GateMark::Fail) => "gate ✗",
                Some(GateMark::Overridden) => "gate overridden",
                None => "gate",
            }
            .to_string(),
        );
    }
    if release {
        sub.push("release".into());
    }
    let mut names: Vec<&str> = members
        .iter()
        .take(40)
        .map(|&i| p.stages[i].name.as_str())
        .collect();
    if members.len() > 40 {
        names.push("…");
    }
    let title = format!("{}\n{}", names.join("\n"), sub.join(" · "));
    Node {
        pos: pos_of[members[0]],
        members,
        label,
        sub: sub.join(" · "),
        class,
        gate,
        release,
        title,
    }
}

/// Regroup nodes by `key` (nodes with equal keys merge).
fn regroup<K: std::hash::Hash + Eq>(
    p: &Pipeline,
    m: &Marks,
    pos_of: &[usize],
    nodes: Vec<Node>,
    key: impl Fn(usize, &Node) -> K,
) -> Vec<Node> {
    let mut slot: HashMap<K, usize> = HashMap::new();
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let b = *slot.entry(key(k, n)).or_insert_with(|| {
            buckets.push(vec![]);
            buckets.len() - 1
        });
        buckets[b].extend(&n.members);
    }
    let mut out: Vec<Node> = buckets
        .into_iter()
        .map(|b| make_node(p, m, pos_of, b))
        .collect();
    out.sort_by_key(|n| n.pos);
    out
}

fn edges_of(p: &Pipeline, nodes: &[Node]) -> Vec<(usize, usize)> {
    let mut node_of = vec![usize::MAX; p.stages.len()];
    for (k, n) in nodes.iter().enumerate() {
        for &i in &n.members {
            node_of[i] = k;
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, s) in p.stages.iter().enumerate() {
        for &u in &s.upstream {
            let (a, b) = (node_of[u], node_of[i]);
            if a != b && a != usize::MAX && b != usize::MAX && seen.insert((a, b)) {
                out.push((a, b));
            }
        }
    }
    out
}

/// The nodes to draw (folded and capped), their edges, and how many stages were left out.
fn fold(p: &Pipeline, m: &Marks) -> (Vec<Node>, Vec<(usize, usize)>, usize) {
    let mut pos_of = vec![0; p.stages.len()];
    for (k, &i) in p.order.iter().enumerate() {
        pos_of[i] = k;
    }
    let mut group_of: Vec<usize> = (0..p.stages.len()).collect();
    for members in p.groups.values() {
        for &i in members {
            group_of[i] = members[0];
        }
    }
    let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &p.order {
        by.entry(group_of[i]).or_default().push(i);
    }
    let mut nodes: Vec<Node> = by
        .into_values()
        .map(|ms| make_node(p, m, &pos_of, ms))
        .collect();
    nodes.sort_by_key(|n| n.pos);
    if nodes.len() > MAX_NODES {
        // Siblings: the same upstream and downstream nodes, the same look.
        let edges = edges_of(p, &nodes);
        let mut ups: Vec<Vec<usize>> = vec![vec![]; nodes.len()];
        let mut downs: Vec<Vec<usize>> = vec![vec![]; nodes.len()];
        for &(a, b) in &edges {
            ups[b].push(a);
            downs[a].push(b);
        }
        nodes = regroup(p, m, &pos_of, nodes, |k, n| {
            let mut u = ups[k].clone();
            u.sort();
            let mut d = downs[k].clone();
            d.sort();
            if n.gate.is_some() || n.release {
                (u, d, n.class, k)
            } else {
                (u, d, n.class, usize::MAX)
            }
        });
    }
    if nodes.len() > MAX_NODES {
        // Unbranched chains of one look.
        let edges = edges_of(p, &nodes);
        let mut outs = vec![0usize; nodes.len()];
        let mut ins = vec![0usize; nodes.len()];
        let mut next = vec![usize::MAX; nodes.len()];
        for &(a, b) in &edges {
            outs[a] += 1;
            ins[b] += 1;
            next[a] = b;
        }
        let plain = |n: &Node| n.gate.is_none() && !n.release;
        let mut head: Vec<usize> = (0..nodes.len()).collect();
        // Nodes are in topological order, so a chain's head is settled before its tail.
        for k in 0..nodes.len() {
            let b = next[k];
            if outs[k] == 1
                && b != usize::MAX
                && ins[b] == 1
                && nodes[k].class == nodes[b].class
                && plain(&nodes[k])
                && plain(&nodes[b])
            {
                head[b] = head[k];
            }
        }
        nodes = regroup(p, m, &pos_of, nodes, |k, _| head[k]);
    }
    if nodes.len() > MAX_NODES {
        // Bands of ranks: an overview of the graph's shape, at most BANDS columns.
        let edges = edges_of(p, &nodes);
        let rank = ranks(nodes.len(), &edges);
        let depth = rank.iter().max().map_or(1, |r| r + 1);
        nodes = regroup(p, m, &pos_of, nodes, |k, n| {
            let band = rank[k] * BANDS / depth;
            let own = if n.gate.is_some() || n.release {
                k
            } else {
                usize::MAX
            };
            (band, n.class, own)
        });
    }
    let mut left_out = 0;
    if nodes.len() > MAX_NODES {
        left_out = nodes[MAX_NODES..].iter().map(|n| n.members.len()).sum();
        nodes.truncate(MAX_NODES);
    }
    let edges = edges_of(p, &nodes);
    (nodes, edges, left_out)
}

/// Columns of the overview a graph folds into when nothing else brings it under the cap.
const BANDS: usize = 10;

/// Longest-path rank of each node (nodes in topological order; edges going back, from
/// folded cycles, do not rank).
fn ranks(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut rank = vec![0usize; n];
    let mut sorted = edges.to_vec();
    sorted.sort_by_key(|&(_, b)| b);
    for &(a, b) in &sorted {
        if a < b {
            rank[b] = rank[b].max(rank[a] + 1);
        }
    }
    rank
}

struct Placed {
    rects: Vec<(f64, f64, f64, f64)>,
    /// Per edge: the SVG path data and whether it points backwards (head at its start).
    paths: Vec<Option<(String, bool)>>,
}

fn node_size(n: &Node) -> (f64, f64) {
    let chars = n.label.chars().count().max(n.sub.chars().count() * 10 / 13);
    ((chars as f64 * 7.6 + 28.0).clamp(90.0, 300.0), 44.0)
}

mod lr {
    use layout::core::format::{ClipHandle, RenderBackend};
    use layout::core::geometry::Point;
    use layout::core::style::StyleAttr;

    /// Records where layout-rs put each node and edge; the report draws them itself.
    /// An edge: its index, the path (exit vector, then entry vectors), and whether it
    /// points backwards.
    pub type Arrow = (usize, Vec<(Point, Point)>, bool);

    #[derive(Default)]
    pub struct Capture {
        pub rects: Vec<(usize, Point, Point)>,
        pub arrows: Vec<Arrow>,
    }

    impl RenderBackend for Capture {
        fn draw_rect(
            &mut self,
            xy: Point,
            size: Point,
            _: &StyleAttr,
            properties: Option<String>,
            _: Option<ClipHandle>,
        ) {
            if let Some(k) = properties.and_then(|p| p.parse().ok()) {
                self.rects.push((k, xy, size));
            }
        }
        fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
        fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
        fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}
        fn draw_arrow(
            &mut self,
            path: &[(Point, Point)],
            _: bool,
            head: (bool, bool),
            _: &StyleAttr,
            properties: Option<String>,
            _: &str,
        ) {
            if let Some(k) = properties.and_then(|p| p.parse().ok()) {
                self.arrows.push((k, path.to_vec(), head.0 && !head.1));
            }
        }
        fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
            0
        }
    }
}

fn layout_rs(nodes: &[Node], edges: &[(usize, usize)], across: bool) -> Option<Placed> {
    use layout::core::base::Orientation;
    use layout::core::geometry::Point;
    use layout::core::style::StyleAttr;
    use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
    use layout::topo::layout::VisualGraph;
    let dir = if across {
        Orientation::LeftToRight
    } else {
        Orientation::TopToBottom
    };
    let run = || {
        let mut vg = VisualGraph::new(dir);
        vg.dag.set_validate(false);
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let (w, h) = node_size(n);
                vg.add_node(Element::create_with_properties(
                    ShapeKind::new_box(""),
                    StyleAttr::simple(),
                    dir,
                    Point::new(w, h),
                    k.to_string(),
                ))
            })
            .collect();
        for (k, &(a, b)) in edges.iter().enumerate() {
            vg.add_edge(
                Arrow::simple_with_properties("", k.to_string()),
                handles[a],
                handles[b],
            );
        }
        let mut cap = lr::Capture::default();
        vg.do_it(false, false, false, &mut cap);
        cap
    };
    // layout-rs asserts on inputs it does not expect; a panic there must not end the report.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let cap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    std::panic::set_hook(hook);
    let cap = cap.ok()?;
    let mut rects = vec![(f64::NAN, 0.0, 0.0, 0.0); nodes.len()];
    for (k, xy, size) in cap.rects {
        if k < rects.len() {
            rects[k] = (xy.x, xy.y, size.x, size.y);
        }
    }
    if rects.iter().any(|r| r.0.is_nan()) {
        return None;
    }
    let mut paths = vec![None; edges.len()];
    for (k, path, backwards) in cap.arrows {
        if k >= paths.len() || path.len() < 2 {
            continue;
        }
        let mut d = format!(
            "M{:.1} {:.1} C{:.1} {:.1} {:.1} {:.1} {:.1} {:.1}",
            path[0].0.x,
            path[0].0.y,
            path[0].1.x,
            path[0].1.y,
            path[1].0.x,
            path[1].0.y,
            path[1].1.x,
            path[1].1.y
        );
        for pt in &path[2..] {
            d.push_str(&format!(
                " S{:.1} {:.1} {:.1} {:.1}",
                pt.0.x, pt.0.y, pt.1.x, pt.1.y
            ));
        }
        paths[k] = Some((d, backwards));
    }
    Some(Placed { rects, paths })
}

/// A plain layering: rank = longest path from a source, order in a rank by the mean
/// position of the upstream nodes (one barycentre pass), straight curves between.
fn layered(nodes: &[Node], edges: &[(usize, usize)]) -> Placed {
    let n = nodes.len();
    let rank = ranks(n, edges);
    let ranks = rank.iter().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![vec![]; ranks];
    let mut slot = vec![0.0f64; n];
    for k in 0..n {
        let ups: Vec<f64> = edges
            .iter()
            .filter(|&&(a, b)| b == k && a < k)
            .map(|&(a, _)| slot[a])
            .collect();
        let want = if ups.is_empty() {
            rows[rank[k]].len() as f64
        } else {
            ups.iter().sum::<f64>() / ups.len() as f64
        };
        slot[k] = want;
        rows[rank[k]].push(k);
    }
    let col_w = nodes.iter().map(|n| node_size(n).0).fold(90.0, f64::max) + 70.0;
    let mut rects = vec![(0.0, 0.0, 0.0, 0.0); n];
    for (r, row) in rows.iter_mut().enumerate() {
        row.sort_by(|&a, &b| slot[a].total_cmp(&slot[b]));
        for (j, &k) in row.iter().enumerate() {
            let (w, h) = node_size(&nodes[k]);
            rects[k] = (r as f64 * col_w, j as f64 * (h + 24.0), w, h);
        }
    }
    let paths = edges
        .iter()
        .map(|&(a, b)| {
            let (ax, ay, aw, ah) = rects[a];
            let (bx, by, _, bh) = rects[b];
            let (x1, y1, x2, y2) = (ax + aw, ay + ah / 2.0, bx, by + bh / 2.0);
            let mx = (x1 + x2) / 2.0;
            Some((
                format!("M{x1:.1} {y1:.1} C{mx:.1} {y1:.1} {mx:.1} {y2:.1} {x2:.1} {y2:.1}"),
                false,
            ))
        })
        .collect();
    Placed { rects, paths }
}

/// The width the report gives the graph, in CSS pixels.
const PAGE_W: f64 = 1160.0;

fn width(pl: &Placed) -> f64 {
    let (a, b) = pl.rects.iter().fold((f64::MAX, f64::MIN), |(a, b), r| {
        (a.min(r.0), b.max(r.0 + r.2))
    });
    b - a
}

/// The CSS of the graph, inside the SVG so the standalone picture looks the same.
pub const DAG_CSS: &str = include_str!("dag.css");

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The graph as an SVG document. `standalone`: with its namespace and pixel size (for a
/// `.svg` file); otherwise it scales to its container's width (inline in the report).
pub fn render(p: &Pipeline, m: &Marks, standalone: bool) -> String {
    let (nodes, edges, left_out) = fold(p, m);
    let mut placed = layout_rs(&nodes, &edges, true);
    // In the page, a graph too deep for its width turns top to bottom (the page scrolls
    // down, never sideways); a standalone picture stays left to right.
    let across = placed.as_ref().map_or(0.0, width);
    if !standalone
        && across > 1.6 * PAGE_W
        && let Some(down) = layout_rs(&nodes, &edges, false)
        && width(&down) < across
    {
        placed = Some(down);
    }
    let placed = placed.unwrap_or_else(|| layered(&nodes, &edges));
    let pad = 16.0;
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for &(x, y, w, h) in &placed.rects {
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x + w);
        y1 = y1.max(y + h);
    }
    if nodes.is_empty() {
        (x0, y0, x1, y1) = (0.0, 0.0, 200.0, 40.0);
    }
    let note_h = if left_out > 0 { 28.0 } else { 0.0 };
    let (w, h) = (x1 - x0 + 2.0 * pad, y1 - y0 + 2.0 * pad + note_h);
    let (dx, dy) = (pad - x0, pad - y0);
    let mut s = String::new();
    if standalone {
        s.push_str(&format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\">\n"
        ));
    } else {
        // Wide graphs shrink to the page width; they never grow past 1.25× their size.
        s.push_str(&format!(
            "<svg class=\"dag\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"100%\" style=\"max-width:{:.0}px\" role=\"img\" aria-label=\"stage graph\">\n",
            w * 1.25
        ));
    }
    s.push_str(&format!("<style>{DAG_CSS}</style>\n"));
    s.push_str("<defs><marker id=\"dag-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" fill=\"#868e96\"/></marker></defs>\n");
    s.push_str(&format!(
        "<g transform=\"translate({dx:.1},{dy:.1})\">\n<g class=\"edges\">\n"
    ));
    for (d, backwards) in placed.paths.iter().flatten() {
        let marker = if *backwards {
            "marker-start"
        } else {
            "marker-end"
        };
        s.push_str(&format!(
            "<path class=\"edge\" d=\"{d}\" {marker}=\"url(#dag-arrow)\"/>\n"
        ));
    }
    s.push_str("</g>\n<g class=\"nodes\">\n");
    for (k, n) in nodes.iter().enumerate() {
        let (x, y, w, h) = placed.rects[k];
        let mut class = format!("node {}", n.class);
        if n.members.len() > 1 {
            class.push_str(" folded");
        }
        if n.gate.is_some() {
            class.push_str(" has-gate");
        }
        if n.release {
            class.push_str(" release");
        }
        let names: Vec<&str> = n
            .members
            .iter()
            .take(40)
            .map(|&i| p.stages[i].name.as_str())
            .collect();
        s.push_str(&format!(
            "<g class=\"{class}\" data-stages=\"{}\"><title>{}</title>",
            esc(&names.join(" ")),
            esc(&n.title)
        ));
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" rx=\"7\"/>"
        ));
        if n.release {
            s.push_str(&format!(
                "<rect class=\"release-ring\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"9\"/>",
                x - 3.5,
                y - 3.5,
                w + 7.0,
                h + 7.0
            ));
        }
        let cx = x + w / 2.0;
        s.push_str(&format!(
            "<text class=\"label\" x=\"{cx:.1}\" y=\"{:.1}\">{}</text>",
            y + 19.0,
            esc(&truncate(&n.label, 36))
        ));
        if !n.sub.is_empty() {
            s.push_str(&format!(
                "<text class=\"sub\" x=\"{cx:.1}\" y=\"{:.1}\">{}</text>",
                y + 35.0,
                esc(&truncate(&n.sub, 46))
            ));
        }
        if let Some(g) = n.gate {
            let c = match g {
                Some(GateMark::Pass) => "pass",
                Some(GateMark::Fail) => "fail",
                Some(GateMark::Overridden) => "overridden",
                None => "unknown",
            };
            let (gx, gy) = (x + w, y);
            s.push_str(&format!(
                "<polygon class=\"gate-mark {c}\" points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\"/>",
                gx,
                gy - 7.0,
                gx + 7.0,
                gy,
                gx,
                gy + 7.0,
                gx - 7.0,
                gy
            ));
        }
        s.push_str("</g>\n");
    }
    s.push_str("</g>\n</g>\n");
    if left_out > 0 {
        s.push_str(&format!(
            "<text class=\"note\" x=\"{pad}\" y=\"{:.0}\">… and {left_out} more stages not drawn (the graph shows at most {MAX_NODES} nodes; see the stage table)</text>\n",
            h - 10.0
        ));
    }
    s.push_str("</svg>\n");
    s
}
