//! `pipe report` (one offline HTML page, rendered in headless Chromium), `pipe dag --format
//! svg` and Mermaid node ids.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Skip (outside CI) or fail (under CI) when a tool the test needs is missing.
fn missing(what: &str) {
    let msg = format!("{what} is missing (`.ci/run` installs it)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPING: {msg}");
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Run a command to its end or until `secs` pass (then kill it); returns its stdout.
fn run_for(mut cmd: Command, secs: u64) -> (bool, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let ok = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (ok, std::fs::read_to_string(out.path()).unwrap_or_default())
}

/// Headless Chromium on a file: `extra` is `--screenshot=PNG` or `--dump-dom`.
fn chromium(bin: &Path, html: &Path, extra: &str) -> (bool, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.path().display()),
        "--window-size=1280,800",
        extra,
        &format!("file://{}", html.display()),
    ]);
    run_for(c, 90)
}

/// Pixels of a PNG: (width, height, distinct colours, share of the most common colour).
fn png_stats(path: &Path) -> (u32, u32, usize, f64) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let mut counts: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for px in bytes.chunks(step) {
        *counts.entry(px).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    let top = counts.values().max().copied().unwrap_or(0);
    (
        info.width,
        info.height,
        counts.len(),
        top as f64 / total.max(1) as f64,
    )
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(from).unwrap();
        if rel.starts_with(".pipe") {
            continue;
        }
        let dst = to.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Checks every report must pass: one file, every stage named, SVG inside, nothing fetched
/// from the network.
fn check_html(html: &str, stages: &[&str]) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    for s in stages {
        assert!(html.contains(s), "report lacks stage {s}");
    }
    assert!(html.contains("<svg"), "report has no SVG");
    for bad in [
        "http://", "https://", " src=", "<link", "@import", "url(http",
    ] {
        assert!(!html.contains(bad), "report holds `{bad}`");
    }
}

#[test]
fn report_of_the_example_pipeline_renders_offline_in_chromium() {
    if which(&["python3"]).is_none() {
        return missing("python3");
    }
    let ws = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ml-pipeline"),
        ws.path(),
    );
    let pipe = |args: &[&str]| -> Run {
        Command::new(bin())
            .args(args)
            .current_dir(ws.path())
            .env_remove("PIPE_CACHE_DIR")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
            .into()
    };
    pipe(&["build"]).ok();
    pipe(&["build", "--set", "train.lr=0.05"]).ok();
    let r = pipe(&["report"]);
    r.ok().out_has("report.html");
    let path = PathBuf::from(r.stdout.trim());
    let path = if path.is_absolute() {
        path
    } else {
        ws.path().join(path)
    };
    assert_eq!(
        path,
        ws.path().join(".pipe/report.html").canonicalize().unwrap()
    );
    let html = std::fs::read_to_string(&path).unwrap();
    let stages = ["export", "check_data", "train", "evaluate", "promote"];
    check_html(&html, &stages);
    for part in [
        "class=\"dag\"",
        "class=\"timeline\"",
        "metric-chart",
        "eval_gate",
        "accuracy &gt;= 0.8",
        "Releases",
        "current",
        "Critical path",
    ] {
        assert!(html.contains(part), "report lacks {part}");
    }
    // Gate thresholds are drawn in the charts of the metrics they check.
    assert!(html.contains("gate &gt;= 0.800") || html.contains("gate >= 0.800"));

    let Some(chrome) = which(&["chromium", "chromium-browser", "google-chrome"]) else {
        return missing("chromium");
    };
    let shot = ws.path().join("shot.png");
    let (ok, _) = chromium(&chrome, &path, &format!("--screenshot={}", shot.display()));
    assert!(ok && shot.exists(), "chromium took no screenshot");
    let (w, h, colours, top) = png_stats(&shot);
    assert_eq!((w, h), (1280, 800));
    assert!(
        colours >= 20 && top < 0.95,
        "the screenshot looks blank: {colours} colours, the commonest covers {:.0}%",
        top * 100.0
    );

    // The DOM after scripts ran: names every stage, holds the charts, and the page is no
    // wider than the window (a copy with a probe script; the report itself has no script).
    let probe = ws.path().join("probe.html");
    std::fs::write(
        &probe,
        html.replace(
            "</body>",
            "<script>document.body.setAttribute('data-scroll-width', document.documentElement.scrollWidth)</script></body>",
        ),
    )
    .unwrap();
    let (ok, dom) = chromium(&chrome, &probe, "--dump-dom");
    assert!(ok, "chromium --dump-dom failed");
    for s in stages {
        assert!(dom.contains(s), "DOM lacks stage {s}");
    }
    assert!(dom.matches("metric-chart").count() >= 4, "DOM lacks charts");
    assert!(dom.contains("class=\"dag\"") && dom.contains("class=\"timeline\""));
    let width: u32 = dom
        .split("data-scroll-width=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the probe script ran");
    assert!(width <= 1280, "the page scrolls sideways: {width} px wide");
}

const GATED: &str = r#"
[stages.make]
cmd = "mkdir -p out && echo '{\"acc\": 0.4, \"folds\": [{\"acc\": 0.5}]}' > out/m.json"
outs = ["out/m.json"]
metrics = ["out/m.json"]
[stages.make.gate]
name = "acc_gate"
file = "out/m.json"
checks = ["acc >= 0.9"]

[stages.ship]
cmd = "cp out/m.json out/shipped.json"
deps = ["out/m.json"]
outs = ["out/shipped.json"]
release = true

[stages.side]
cmd = "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; test $n -ge 1 && echo side > side.txt"
outs = ["side.txt"]
retries = 1
retry_delay = "0.1s"
"#;

#[test]
fn report_shows_failed_gates_and_blocked_stages_and_takes_a_run_and_an_output() {
    let ws = Ws::new(GATED);
    ws.pipe(&["report"]).code(2).err_has("no runs yet");
    ws.pipe(&["build"]).code(3);
    let run_id = ws
        .last_run_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let r = ws.pipe(&["report", &run_id, "-o", "out/r.html"]);
    r.ok().out_has("out/r.html");
    let html = ws.read("out/r.html");
    check_html(&html, &["make", "ship", "side", "acc_gate"]);
    assert!(html.contains("node blocked"), "ship is drawn blocked");
    assert!(html.contains("gate-mark fail"), "the failed gate is marked");
    assert!(html.contains("acc &gt;= 0.9"));
    assert!(html.contains("gate_failed"));
    assert!(
        html.contains(" retried\" data-stage=\"side\""),
        "side's retry is marked"
    );
    assert!(html.contains("class=\"retry\""));
    // A stage added since the run is still named, as not in this run.
    ws.write(
        "Pipeline.toml",
        &format!("{GATED}\n[stages.later]\ncmd = \"echo > later.txt\"\nouts = [\"later.txt\"]\n"),
    );
    ws.pipe(&["report", "latest"]).ok();
    let html = ws.read(".pipe/report.html");
    check_html(&html, &["make", "ship", "side", "later"]);
    assert!(html.contains("node not_in_run"));
    ws.pipe(&["report", "20990101-000000-000"])
        .code(2)
        .err_has(&run_id);
}

#[test]
fn dag_svg_is_a_standalone_picture_and_mermaid_ids_are_distinct() {
    let ws = Ws::new(
        r#"
[stages.prep-a]
cmd = "echo a > a.txt"
outs = ["a.txt"]
[stages.prep_a]
cmd = "echo b > b.txt"
outs = ["b.txt"]
[stages.join]
cmd = "cat a.txt b.txt > c.txt"
deps = ["a.txt", "b.txt"]
outs = ["c.txt"]
release = true
[stages.s0]
cmd = "true"
after = ["join"]
"#,
    );
    let r = ws.pipe(&["dag", "--format", "mermaid"]);
    // A plain name is its own id; `prep-a` gets a generated one, moved aside from the
    // stage that is really named `s0`.
    r.ok()
        .out_has("s0_[\"prep-a\"]")
        .out_has("prep_a[\"prep_a\"]")
        .out_has("s0_ --> join")
        .out_has("prep_a --> join")
        .out_has("join --> s0\n");
    let r = ws.pipe(&["dag", "--format", "svg"]);
    r.ok();
    let svg = r.stdout.trim();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.ends_with("</svg>"));
    for s in ["prep-a", "prep_a", "join"] {
        assert!(svg.contains(&format!(">{s}</text>")), "svg lacks {s}");
    }
    assert_eq!(svg.matches("class=\"edge\"").count(), 3);
    assert!(svg.contains("node plain release"));
}

#[test]
fn big_graphs_fold_into_a_legible_picture() {
    // 450 stages: a 300-member matrix and a 150-stage chain.
    let mut t = String::from(
        "[stages.fan]\ncmd = \"echo ${matrix.i} > f/${matrix.i}.txt\"\nouts = [\"f/${matrix.i}.txt\"]\n",
    );
    t.push_str(&format!(
        "matrix = {{ i = [{}] }}\n",
        (0..300)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for i in 0..150 {
        t.push_str(&format!(
            "[stages.c{i}]\ncmd = \"echo > c/{i}\"\nouts = [\"c/{i}\"]\n{}\n",
            if i > 0 {
                format!("deps = [\"c/{}\"]", i - 1)
            } else {
                String::new()
            }
        ));
    }
    let ws = Ws::new(&t);
    let started = Instant::now();
    let r = ws.pipe(&["dag", "--format", "svg"]);
    r.ok();
    assert!(started.elapsed() < Duration::from_secs(20));
    let nodes = r.stdout.matches("<g class=\"node").count();
    assert!(nodes <= 120, "{nodes} nodes drawn");
    assert!(r.stdout.contains("fan [300]"));
    assert!(
        r.stdout.contains("c0 … c149"),
        "the chain folds into one node"
    );

    // 400 distinct stages wired at random to recent ones: nothing folds by shape, so the
    // picture becomes an overview of bands of ranks.
    let mut t = String::new();
    let mut x: u64 = 7;
    for i in 0..400u64 {
        let mut deps = vec![];
        for _ in 0..2 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if i > 0 {
                deps.push(format!("\"r/{}\"", i - 1 - (x >> 33) % i.min(30)));
            }
        }
        deps.dedup();
        t.push_str(&format!(
            "[stages.r{i}]\ncmd = \"echo > r/{i}\"\nouts = [\"r/{i}\"]\ndeps = [{}]\n",
            deps.join(", ")
        ));
    }
    let ws = Ws::new(&t);
    let r = ws.pipe(&["dag", "--format", "svg"]);
    r.ok();
    let nodes = r.stdout.matches("<g class=\"node").count();
    assert!((2..=40).contains(&nodes), "{nodes} nodes drawn");
    assert!(r.stdout.contains("stages"));
}
