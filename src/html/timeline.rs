//! The run's timeline: one bar per stage on parallel lanes (greedy: each bar takes the first
//! lane free at its start), retries and restores marked, the critical path outlined.

use super::data::{Span, SpanEnd};
use super::esc;
use crate::graph::Pipeline;
use std::collections::HashMap;

/// Lane of each span (spans sorted by start): the first lane whose last bar has ended.
pub fn lanes(spans: &[Span]) -> (Vec<usize>, usize) {
    let mut ends: Vec<f64> = Vec::new();
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let lane = match ends.iter().position(|&e| e <= s.start + 1e-9) {
            Some(l) => l,
            None => {
                ends.push(0.0);
                ends.len() - 1
            }
        };
        ends[lane] = s.end.max(s.start);
        out.push(lane);
    }
    (out, ends.len())
}

/// The critical path: the chain of dependent stages (through the pipeline's edges) whose
/// durations add up to the most. Returns span indices, first stage first.
pub fn critical_path(p: &Pipeline, spans: &[Span]) -> Vec<usize> {
    let at: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .map(|(k, s)| (s.stage.as_str(), k))
        .collect();
    let mut best: HashMap<usize, (f64, Option<usize>)> = HashMap::new();
    for &i in &p.order {
        let st = &p.stages[i];
        let Some(&k) = at.get(st.name.as_str()) else {
            continue;
        };
        let own = (spans[k].end - spans[k].start).max(0.0);
        let mut pick: (f64, Option<usize>) = (0.0, None);
        for &u in &st.upstream {
            let Some(&ku) = at.get(p.stages[u].name.as_str()) else {
                continue;
            };
            if let Some(&(d, _)) = best.get(&ku)
                && (d > pick.0 || pick.1.is_none())
            {
                pick = (d, Some(ku));
            }
        }
        best.insert(k, (pick.0 + own, pick.1));
    }
    let Some((&end, _)) = best.iter().max_by(|a, b| a.1.0.total_cmp(&b.1.0)) else {
        return vec![];
    };
    let mut path = vec![end];
    let mut cur = end;
    while let Some(&(_, Some(prev))) = best.get(&cur) {
        path.push(prev);
        cur = prev;
    }
    path.reverse();
    path
}

/// A tick step giving at most ~10 ticks over `total` seconds.
fn tick_step(total: f64) -> f64 {
    for s in [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
    ] {
        if total / s <= 10.0 {
            return s;
        }
    }
    86400.0
}

pub fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{}h{:02.0}m", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    }
}

/// The timeline SVG and the critical path's stage names.
pub fn render(p: &Pipeline, spans: &[Span], total: f64) -> (String, Vec<String>) {
    let (lane_of, nlanes) = lanes(spans);
    let crit = critical_path(p, spans);
    let on_crit: std::collections::HashSet<usize> = crit.iter().copied().collect();
    let total = total
        .max(spans.iter().map(|s| s.end).fold(0.0, f64::max))
        .max(0.001);
    let (w, left, right, top, lane_h, gap) = (1160.0, 24.0, 24.0, 26.0, 22.0, 5.0);
    let h = top + nlanes as f64 * (lane_h + gap) + 8.0;
    let scale = (w - left - right) / total;
    let mut s = format!(
        "<svg class=\"timeline\" viewBox=\"0 0 {w} {h:.0}\" width=\"100%\" role=\"img\" aria-label=\"run timeline\">\n"
    );
    let step = tick_step(total);
    let mut t = 0.0;
    while t <= total + 1e-9 {
        let x = left + t * scale;
        s.push_str(&format!(
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{:.0}\"/><text class=\"tick-label\" x=\"{x:.1}\" y=\"14\">{}</text>\n",
            top - 6.0,
            h - 4.0,
            fmt_secs(t)
        ));
        t += step;
    }
    for (k, sp) in spans.iter().enumerate() {
        let x = left + sp.start * scale;
        let bw = ((sp.end - sp.start) * scale).max(2.0);
        let y = top + lane_of[k] as f64 * (lane_h + gap);
        let how = match sp.how {
            SpanEnd::Ok => "ran",
            SpanEnd::Restored => "restored",
            SpanEnd::Failed => "failed",
            SpanEnd::Open => "open",
        };
        let mut class = format!("bar {how}");
        if on_crit.contains(&k) {
            class.push_str(" crit");
        }
        if !sp.retries.is_empty() {
            class.push_str(" retried");
        }
        let mut title = format!(
            "{}: {} ({how}",
            sp.stage,
            fmt_secs((sp.end - sp.start).max(0.0))
        );
        if sp.attempts > 1 {
            title.push_str(&format!(", {} attempts", sp.attempts));
        }
        if on_crit.contains(&k) {
            title.push_str(", critical path");
        }
        title.push(')');
        s.push_str(&format!(
            "<g class=\"{class}\" data-stage=\"{}\"><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{lane_h}\" rx=\"3\"/>",
            esc(&sp.stage),
            esc(&title)
        ));
        let mark = match sp.how {
            SpanEnd::Restored => "↺ ",
            SpanEnd::Failed => "✗ ",
            _ if !sp.retries.is_empty() => "⟳ ",
            _ => "",
        };
        let label = format!("{mark}{}", sp.stage);
        // About 6.5 px a character at 11 px.
        let fits = (bw - 8.0) / 6.5;
        if fits >= 4.0 {
            let shown: String = if label.chars().count() as f64 <= fits {
                label
            } else {
                let mut t: String = label.chars().take(fits as usize - 1).collect();
                t.push('…');
                t
            };
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 4.0,
                y + 15.0,
                esc(&shown)
            ));
        }
        for &r in &sp.retries {
            let rx = left + r * scale;
            s.push_str(&format!(
                "<line class=\"retry\" x1=\"{rx:.1}\" y1=\"{:.1}\" x2=\"{rx:.1}\" y2=\"{:.1}\"/>",
                y - 2.0,
                y + lane_h + 2.0
            ));
        }
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    let names = crit.iter().map(|&k| spans[k].stage.clone()).collect();
    (s, names)
}
