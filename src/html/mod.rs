//! `pipe report`: one self-contained HTML page about a run (the graph coloured by state, the
//! timeline, durations and metrics over runs, gates, releases) and the SVG of `pipe dag
//! --format svg`. Everything is inline (CSS and SVG; no script, no font, no network), so
//! the file opens offline and can be attached to a ticket or a CI artifact.

pub mod chart;
pub mod dag;
pub mod data;
pub mod timeline;

use crate::cache::Cache;
use crate::graph::Pipeline;
use crate::stage_state::StageState;
use data::{Run, SpanEnd};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// Runs of history shown in the charts and sparklines.
pub const HISTORY: usize = 30;
/// Metric charts drawn at most.
pub const MAX_CHARTS: usize = 48;
/// Rows of the durations table at most (the slowest stages).
pub const MAX_DURATION_ROWS: usize = 60;
/// Lines in one metric chart at most (matrix members).
pub const MAX_LINES: usize = 8;

const CSS: &str = include_str!("report.css");

/// Escape text for HTML and SVG (element content and quoted attributes). A `/` after `:`
/// is written `&#47;`: it reads the same, and a URL quoted in a command or an error never
/// looks like a network reference to a scan of the file.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut prev = ' ';
    for c in s.chars() {
        let after_colon = prev == ':' || (prev == '/' && o.ends_with("&#47;"));
        prev = c;
        match c {
            '/' if after_colon => o.push_str("&#47;"),
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// What the page is made from.
pub struct Input<'a> {
    pub p: &'a Pipeline,
    /// Every run, oldest first.
    pub runs: &'a [Run],
    /// The reported run (an index into `runs`).
    pub at: usize,
    pub cache: &'a Cache,
    pub releases_dir: &'a Path,
}

const STATES: [(&str, &str); 8] = [
    ("ran", "ran"),
    ("restored", "restored"),
    ("up_to_date", "up to date"),
    ("failed", "failed"),
    ("blocked", "blocked"),
    ("skipped", "skipped"),
    ("frozen", "frozen"),
    ("not_in_run", "not in this run"),
];

/// The whole HTML page.
pub fn page(i: &Input) -> String {
    let p = i.p;
    let run = &i.runs[i.at];
    let m = &run.manifest;
    let first = i.at.saturating_sub(HISTORY - 1);
    let history: Vec<&Run> = i.runs[first..=i.at].iter().collect();
    let newest = i.at + 1 == i.runs.len();
    let gates = data::latest_gates(&history);

    let mut h = String::with_capacity(64 * 1024);
    let title = p.name.clone().unwrap_or_else(|| "pipeline".into());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>pipe report · {} · {}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<main>\n",
        esc(&title),
        esc(&run.id)
    );

    // Header.
    let status = m.status.as_str();
    let _ = write!(
        h,
        "<header id=\"summary\">\n<h1>{} <span class=\"run-id\">run {}{}</span> <span class=\"badge {status}\">{}</span></h1>\n",
        esc(&title),
        esc(&run.id),
        run.name
            .as_ref()
            .map(|n| format!(" ({})", esc(n)))
            .unwrap_or_default(),
        esc(&status.replace('_', " "))
    );
    let (spans, total) = data::read_spans(&run.dir);
    let mut meta = vec![format!("started {}", esc(&m.started_at))];
    // The manifest's times have whole seconds; the event log has milliseconds.
    let took = m.duration_s().unwrap_or(0.0).max(total);
    if took > 0.0 {
        meta.push(format!("took {}", timeline::fmt_secs(took)));
    }
    if !m.host.is_empty() {
        meta.push(format!("on {}", esc(&m.host)));
    }
    if let Some(c) = &m.git.commit {
        meta.push(format!(
            "git {}{}",
            esc(c.get(..10).unwrap_or(c)),
            if m.git.dirty { " (dirty)" } else { "" }
        ));
    }
    meta.push(format!("pipe {}", esc(&m.pipe_version)));
    meta.push(format!("{} stages in the pipeline", p.stages.len()));
    let _ = writeln!(h, "<p class=\"meta\">{}</p>", meta.join(" · "));
    if let Some(to) = &m.rollback_to {
        let _ = writeln!(
            h,
            "<p class=\"note\">This run is a rollback to the release of run {}.</p>",
            esc(to)
        );
    }
    if !m.command.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"cmd\"><code>{}</code></p>",
            esc(&m.command.join(" "))
        );
    }
    let states = data::states(m);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in states.values() {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    h.push_str("<ul class=\"chips counts\">");
    for (k, label) in STATES {
        if let Some(n) = counts.get(k) {
            let _ = write!(h, "<li class=\"st-{k}\">{n} {label}</li>");
        }
    }
    h.push_str("</ul>\n</header>\n");

    // The graph.
    let mut marks = dag::Marks {
        run: true,
        states,
        gates: HashMap::new(),
    };
    for (_, g) in &gates {
        let mark = if g.overridden {
            dag::GateMark::Overridden
        } else if g.passed {
            dag::GateMark::Pass
        } else {
            dag::GateMark::Fail
        };
        marks.gates.insert(g.stage.clone(), mark);
    }
    h.push_str("<section id=\"dag\">\n<h2>Graph</h2>\n<ul class=\"chips legend\">");
    for (k, label) in STATES {
        let _ = write!(h, "<li class=\"st-{k}\">{label}</li>");
    }
    h.push_str("<li>◆ gate (green passed, red failed, orange overridden)</li><li>double border: release</li></ul>\n<div class=\"dag-wrap\">\n");
    h.push_str(&dag::render(p, &marks, false));
    h.push_str("</div>\n</section>\n");

    // The timeline.
    h.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
    if spans.is_empty() {
        h.push_str("<p class=\"note\">No stage ran or was restored in this run.</p>\n");
    } else {
        let (svg, crit) = timeline::render(p, &spans, total);
        let (_, nlanes) = timeline::lanes(&spans);
        let crit_s: f64 = spans
            .iter()
            .filter(|s| crit.contains(&s.stage))
            .map(|s| s.end - s.start)
            .sum();
        let retried = spans.iter().filter(|s| !s.retries.is_empty()).count();
        let restored = spans.iter().filter(|s| s.how == SpanEnd::Restored).count();
        let _ = writeln!(
            h,
            "<p class=\"note\">{} stages on {nlanes} {} over {}; {restored} restored (↺, dashed), {retried} retried (⟳, orange ticks at each retry). <b>Critical path</b> (outlined): {} — {} of stage time.</p>",
            spans.len(),
            if nlanes == 1 {
                "lane"
            } else {
                "parallel lanes"
            },
            timeline::fmt_secs(total),
            esc(&shorten_path(&crit)),
            timeline::fmt_secs(crit_s)
        );
        let _ = write!(h, "<div class=\"timeline-wrap\">\n{svg}</div>\n");
    }
    h.push_str("</section>\n");

    // Gates.
    h.push_str("<section id=\"gates\">\n<h2>Gates</h2>\n");
    if gates.is_empty() {
        h.push_str("<p class=\"note\">No gate was checked in this run or before it.</p>\n");
    } else {
        h.push_str("<table class=\"gates\">\n<thead><tr><th>gate</th><th>stage</th><th>check</th><th class=\"num\">expected</th><th class=\"num\">actual</th><th>result</th></tr></thead>\n<tbody>\n");
        for (rid, g) in &gates {
            let from = if rid != &run.id {
                format!(" <span class=\"note\">(from run {})</span>", esc(rid))
            } else {
                String::new()
            };
            let mut rows: Vec<(String, String, String, String, bool)> = g
                .checks
                .iter()
                .map(|c| {
                    (
                        c.check.clone(),
                        format!("{} {}", c.op, chart::short_num(c.expected)),
                        match (c.actual, &c.error) {
                            (Some(a), _) => format!("{a}"),
                            (None, Some(e)) => e.clone(),
                            (None, None) => "–".into(),
                        },
                        String::new(),
                        c.passed,
                    )
                })
                .collect();
            if let Some(e) = &g.error {
                rows.push((
                    e.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    false,
                ));
            }
            for (check, exp, act, _, passed) in rows {
                let (cls, word) = match (passed, g.overridden) {
                    (true, _) => ("pass", "passed"),
                    (false, true) => ("overridden", "failed, overridden"),
                    (false, false) => ("fail", "failed"),
                };
                let _ = writeln!(
                    h,
                    "<tr class=\"{}\"><td>{}{from}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><span class=\"badge {cls}\">{word}</span></td></tr>",
                    if passed { "" } else { "fail" },
                    esc(&g.gate),
                    esc(&g.stage),
                    esc(&check),
                    esc(&exp),
                    esc(&act)
                );
            }
            if let Some(r) = &g.reason {
                let _ = writeln!(
                    h,
                    "<tr><td colspan=\"6\" class=\"note\">override reason: {}</td></tr>",
                    esc(r)
                );
            }
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str("</section>\n");

    // Metrics over runs.
    metrics_section(&mut h, i, &history, newest);

    // Durations over runs.
    durations_section(&mut h, p, &history);

    // Releases.
    let releases = data::releases(i.releases_dir, i.runs);
    h.push_str("<section id=\"releases\">\n<h2>Releases</h2>\n");
    if releases.is_empty() {
        h.push_str("<p class=\"note\">No release yet: a stage with <code>release = true</code> writes one when it runs successfully.</p>\n");
    } else {
        h.push_str("<table class=\"releases\">\n<thead><tr><th>run</th><th>created</th><th>stage</th><th>artifacts</th><th>gates passed</th><th>marks</th></tr></thead>\n<tbody>\n");
        for r in releases.iter().take(100) {
            let marks: Vec<String> = r
                .marks
                .iter()
                .map(|mk| {
                    let cls = mk.split_whitespace().next().unwrap_or_default();
                    format!("<span class=\"badge {}\">{}</span>", esc(cls), esc(mk))
                })
                .collect();
            let arts = if r.artifacts.len() > 3 {
                format!(
                    "{} and {} more",
                    r.artifacts[..3].join(", "),
                    r.artifacts.len() - 3
                )
            } else {
                r.artifacts.join(", ")
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&r.run_id),
                esc(&r.created_at),
                esc(&r.stage),
                esc(&arts),
                esc(&r.gates.join(", ")),
                marks.join(" ")
            );
        }
        h.push_str("</tbody>\n</table>\n");
        if releases.len() > 100 {
            let _ = writeln!(
                h,
                "<p class=\"note\">{} older releases not shown (see <code>pipe releases</code>).</p>",
                releases.len() - 100
            );
        }
    }
    h.push_str("</section>\n");

    // Every stage of the run.
    stages_section(&mut h, p, run);

    let _ = write!(
        h,
        "<footer>written by pipe {} at {} · one file, no network</footer>\n</main>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&crate::fsutil::now_rfc3339())
    );
    h
}

/// `a → b → … → z` for long paths.
fn shorten_path(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(" → ")
    } else {
        format!(
            "{} → … ({} more) → {}",
            names[..3].join(" → "),
            names.len() - 6,
            names[names.len() - 3..].join(" → ")
        )
    }
}

fn metrics_section(h: &mut String, i: &Input, history: &[&Run], newest: bool) {
    let p = i.p;
    h.push_str("<section id=\"metrics\">\n<h2>Metrics over runs</h2>\n");
    let series = data::metric_series(p, i.cache, history, newest);
    // Runs with at least one metric value make the x axis.
    let keep: Vec<usize> = (0..history.len())
        .filter(|&r| series.iter().any(|s| s.values[r].is_some()))
        .collect();
    if series.is_empty() || keep.is_empty() {
        h.push_str("<p class=\"note\">No metrics yet: declare <code>metrics = [\"file.json\"]</code> on a stage, or give it a gate.</p>\n</section>\n");
        return;
    }
    let labels: Vec<String> = keep.iter().map(|&r| history[r].label()).collect();
    // One chart per (matrix group, key); members are its lines.
    let mut charts: Vec<((String, String), Vec<&data::Series>)> = Vec::new();
    let mut slot: HashMap<(String, String), usize> = HashMap::new();
    for s in &series {
        let group = p
            .stage(&s.stage)
            .map(|st| st.source_name.clone())
            .unwrap_or_else(|| s.stage.clone());
        let k = (group, s.key.clone());
        let at = *slot.entry(k.clone()).or_insert_with(|| {
            charts.push((k, vec![]));
            charts.len() - 1
        });
        charts[at].1.push(s);
    }
    // Metrics a gate checks first: those are the ones a release depends on.
    charts.sort_by_key(|(_, members)| members.iter().all(|s| s.thresholds.is_empty()));
    let _ = writeln!(
        h,
        "<p class=\"note\">{} {} over the last {} {} with metrics (x: runs, oldest first, labelled by name or id); dashed red lines are gate thresholds.</p>",
        charts.len(),
        if charts.len() == 1 {
            "metric"
        } else {
            "metrics"
        },
        keep.len(),
        if keep.len() == 1 { "run" } else { "runs" }
    );
    h.push_str("<div class=\"charts\">\n");
    for ((group, key), members) in charts.iter().take(MAX_CHARTS) {
        let picked: Vec<Vec<Option<f64>>> = members
            .iter()
            .take(MAX_LINES)
            .map(|s| keep.iter().map(|&r| s.values[r]).collect())
            .collect();
        let lines: Vec<chart::Line> = members
            .iter()
            .zip(&picked)
            .map(|(s, v)| chart::Line {
                name: &s.stage,
                values: v,
            })
            .collect();
        let mut thresholds = members
            .first()
            .map(|s| s.thresholds.clone())
            .unwrap_or_default();
        thresholds.dedup();
        let svg = chart::line_chart(&labels, &lines, &thresholds);
        let last = picked
            .first()
            .and_then(|v| v.iter().rev().flatten().next())
            .map(|v| format!(" — latest {}", chart::short_num(*v)))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<figure class=\"chart metric-chart\" data-metric=\"{}:{}\"><figcaption>{} · {}{}</figcaption>",
            esc(group),
            esc(key),
            esc(group),
            esc(key),
            esc(&last)
        );
        if members.len() > 1 || members.first().is_some_and(|s| &s.stage != group) {
            h.push_str("<div class=\"legend\">");
            for (li, s) in members.iter().take(MAX_LINES).enumerate() {
                let c = chart::PALETTE[li % chart::PALETTE.len()];
                let _ = write!(
                    h,
                    "<span class=\"swatch\" style=\"background:rgb({},{},{})\"></span>{}",
                    c.0,
                    c.1,
                    c.2,
                    esc(&s.stage)
                );
            }
            if members.len() > MAX_LINES {
                let _ = write!(h, " and {} more", members.len() - MAX_LINES);
            }
            h.push_str("</div>");
        }
        h.push_str(&svg);
        h.push_str("</figure>\n");
    }
    h.push_str("</div>\n");
    if charts.len() > MAX_CHARTS {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} more metrics not drawn (see <code>pipe metrics</code>).</p>",
            charts.len() - MAX_CHARTS
        );
    }
    h.push_str("</section>\n");
}

fn durations_section(h: &mut String, p: &Pipeline, history: &[&Run]) {
    h.push_str("<section id=\"durations\">\n<h2>Stage durations over runs</h2>\n");
    // Rows: matrix groups folded, as `pipe status` folds them.
    let mut rows: Vec<(String, Vec<usize>)> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for &i in &p.order {
        let s = &p.stages[i];
        let key = if p.groups.contains_key(&s.source_name) {
            s.source_name.as_str()
        } else {
            s.name.as_str()
        };
        let at = *seen.entry(key).or_insert_with(|| {
            rows.push((key.to_string(), vec![]));
            rows.len() - 1
        });
        rows[at].1.push(i);
    }
    let current = history.last().map(|r| &r.manifest);
    // (row name, members, duration per run, state in this run, sort key)
    type Row = (String, usize, Vec<Option<f64>>, Option<StageState>, f64);
    let mut table: Vec<Row> = rows
        .into_iter()
        .map(|(name, members)| {
            let values: Vec<Option<f64>> = history
                .iter()
                .map(|r| {
                    let ran: Vec<f64> = members
                        .iter()
                        .filter_map(|&i| r.manifest.stages.get(&p.stages[i].name))
                        .filter(|s| s.status == StageState::Ran)
                        .map(|s| s.duration_s)
                        .collect();
                    (!ran.is_empty()).then(|| ran.iter().sum())
                })
                .collect();
            let state = current.and_then(|m| {
                members
                    .iter()
                    .filter_map(|&i| m.stages.get(&p.stages[i].name).map(|s| s.status))
                    .max_by_key(|s| dag::state_rank(Some(*s)))
            });
            let sort = values.iter().flatten().last().copied().unwrap_or(0.0);
            (name, members.len(), values, state, sort)
        })
        .collect();
    let total_rows = table.len();
    if total_rows > MAX_DURATION_ROWS {
        table.sort_by(|a, b| b.4.total_cmp(&a.4));
        table.truncate(MAX_DURATION_ROWS);
    }
    let _ = writeln!(
        h,
        "<p class=\"note\">Time each stage took when it ran, over the last {} runs (sparkline: oldest left, this run right; gaps: it did not run).</p>",
        history.len()
    );
    h.push_str("<table class=\"durations\">\n<thead><tr><th>stage</th><th>this run</th><th class=\"num\">duration</th><th class=\"num\">mean</th><th class=\"num\">min</th><th class=\"num\">max</th><th class=\"num\">runs</th><th>trend</th></tr></thead>\n<tbody>\n");
    for (name, n, values, state, _) in &table {
        let ran: Vec<f64> = values.iter().flatten().copied().collect();
        let cell = |v: Option<f64>| v.map(timeline::fmt_secs).unwrap_or_else(|| "–".into());
        let mean = (!ran.is_empty()).then(|| ran.iter().sum::<f64>() / ran.len() as f64);
        let min = ran.iter().copied().reduce(f64::min);
        let max = ran.iter().copied().reduce(f64::max);
        let this = values.last().copied().flatten();
        let label = if *n > 1 {
            format!("{} [{n}]", esc(name))
        } else {
            esc(name)
        };
        let st = state.map(|s| s.as_str()).unwrap_or("not_in_run");
        let st_label = state.map(|s| s.label()).unwrap_or("not in run");
        let _ = writeln!(
            h,
            "<tr><td>{label}</td><td><span class=\"badge st-{st}\">{st_label}</span></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            cell(this),
            cell(mean),
            cell(min),
            cell(max),
            ran.len(),
            chart::sparkline(values, &format!("{name}: duration over runs"))
        );
    }
    h.push_str("</tbody>\n</table>\n");
    if total_rows > MAX_DURATION_ROWS {
        let _ = writeln!(
            h,
            "<p class=\"note\">The {MAX_DURATION_ROWS} slowest of {total_rows} rows (see <code>pipe runs --stats</code>).</p>"
        );
    }
    h.push_str("</section>\n");
}

fn stages_section(h: &mut String, p: &Pipeline, run: &Run) {
    let m = &run.manifest;
    // Pipeline order first (stages the run did not touch too), then stages the pipeline
    // no longer has.
    let mut names: Vec<&str> = p.order.iter().map(|&i| p.stages[i].name.as_str()).collect();
    for n in m.stages.keys() {
        if p.stage(n).is_none() {
            names.push(n);
        }
    }
    let open = if names.len() <= 40 { " open" } else { "" };
    let _ = write!(
        h,
        "<section id=\"stages\">\n<details{open}>\n<summary>Every stage ({}; {} in this run)</summary>\n",
        names.len(),
        m.stages.len()
    );
    h.push_str("<table class=\"stages\">\n<thead><tr><th>stage</th><th>state</th><th class=\"num\">duration</th><th class=\"num\">attempts</th><th class=\"num\">exit</th><th>why</th></tr></thead>\n<tbody>\n");
    for n in names {
        let Some(r) = m.stages.get(n) else {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><span class=\"badge st-not_in_run\">not in this run</span></td><td></td><td></td><td></td><td></td></tr>",
                esc(n)
            );
            continue;
        };
        let mut why: Vec<String> = r.reasons.iter().map(|x| x.to_string()).collect();
        if let Some(e) = &r.error {
            why.push(e.clone());
        }
        let mut why = why.join("; ");
        if why.chars().count() > 300 {
            why = why.chars().take(299).collect::<String>() + "…";
        }
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td>{}</td><td><span class=\"badge st-{}\">{}</span></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"reasons\">{}</td></tr>",
            if r.status == StageState::Failed {
                "fail"
            } else {
                ""
            },
            esc(n),
            r.status.as_str(),
            r.status.label(),
            if r.duration_s > 0.0 {
                timeline::fmt_secs(r.duration_s)
            } else {
                "–".into()
            },
            r.attempts,
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            esc(&why)
        );
    }
    h.push_str("</tbody>\n</table>\n</details>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn esc_escapes_markup_and_hides_url_schemes() {
        assert_eq!(esc("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&#39;");
        assert_eq!(
            esc("curl https://x.org/a failed"),
            "curl https:&#47;&#47;x.org/a failed"
        );
        assert_eq!(esc("data/train.jsonl"), "data/train.jsonl");
    }
}
