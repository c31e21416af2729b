//! Run records (manifest, events, logs), quality gates, releases and rollback, and the
//! `pipe runs` / `pipe log` / `pipe releases` views of them.
use crate::harness::{Ws, events};

use serde_json::Value;
use std::path::Path;

/// `event` or `event:stage` for each line, in order.
fn names(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .map(|e| match e["stage"].as_str() {
            Some(s) => format!("{}:{s}", e["event"].as_str().unwrap()),
            None => e["event"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn pos(list: &[String], item: &str) -> usize {
    list.iter()
        .position(|x| x == item)
        .unwrap_or_else(|| panic!("no {item:?} in {list:?}"))
}

/// An RFC 3339 timestamp in UTC.
fn assert_utc(v: &Value, what: &str) -> std::time::SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(s.ends_with('Z'), "{what} is not UTC: {s}");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{what} is not RFC 3339: {s}: {e}"))
}

fn run_id(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn git(ws: &Ws, args: &[&str]) -> String {
    let o = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(ws.root())
        .output()
        .expect("git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn git_init(ws: &Ws) -> String {
    git(ws, &["init", "-q"]);
    git(ws, &["add", "Pipeline.toml", "in.txt"]);
    git(ws, &["commit", "-q", "-m", "start"]);
    git(ws, &["rev-parse", "HEAD"])
}

#[test]
fn manifest_and_events_of_a_successful_run() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo hello from a && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo hello from b >&2 && cp a.txt b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
"#,
    );
    ws.write("in.txt", "v1\n");
    let head = git_init(&ws);
    ws.pipe(&["build"]).ok();
    let dir = ws.last_run_dir();
    let m = ws.last_manifest();

    assert_eq!(m["run_id"], run_id(&dir));
    let start = assert_utc(&m["started_at"], "started_at");
    let end = assert_utc(&m["finished_at"], "finished_at");
    assert!(end >= start);
    assert_eq!(m["status"], "success");
    assert_eq!(m["pipe_version"], env!("CARGO_PKG_VERSION"));
    let cmd: Vec<&str> = m["command"]
        .as_array()
        .expect("command is a list")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmd.contains(&"build"), "{cmd:?}");
    assert_eq!(m["git"]["commit"], head.as_str());
    assert_eq!(m["git"]["dirty"], false);
    assert!(!m["host"].as_str().unwrap().is_empty());

    for (name, dep, out) in [("a", "in.txt", "a.txt"), ("b", "a.txt", "b.txt")] {
        let s = &m["stages"][name];
        assert_eq!(s["status"], "ran", "{name}: {s:#}");
        assert_eq!(s["reasons"][0]["text"], "never run", "{name}: {s:#}");
        assert_eq!(s["fingerprint"].as_str().unwrap().len(), 64, "{s:#}");
        let want = blake3::hash(&std::fs::read(ws.path(dep)).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(s["deps"][dep], want.as_str(), "{name}: {s:#}");
        let want = blake3::hash(&std::fs::read(ws.path(out)).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(s["outs"][out]["hash"], want.as_str(), "{name}: {s:#}");
        assert_eq!(s["outs"][out]["size"], 3);
        assert_eq!(s["attempts"], 1);
        assert_eq!(s["exit_code"], 0, "{name}: {s:#}");
        assert!(s["duration_s"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["log"], format!("logs/{name}.log"));
    }
    // Each stage's stdout and stderr are in its log.
    assert!(
        std::fs::read_to_string(dir.join("logs/a.log"))
            .unwrap()
            .contains("hello from a")
    );
    assert!(
        std::fs::read_to_string(dir.join("logs/b.log"))
            .unwrap()
            .contains("hello from b")
    );
    // The lock the manifest describes is the one on disk.
    assert!(
        ws.read("Pipeline.lock")
            .contains(m["stages"]["a"]["fingerprint"].as_str().unwrap())
    );

    let ev = events(&dir);
    for e in &ev {
        assert!(e["event"].is_string(), "{e}");
        assert_utc(&e["ts"], "ts");
    }
    let ts: Vec<_> = ev.iter().map(|e| assert_utc(&e["ts"], "ts")).collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "events out of time order: {ev:?}"
    );
    let n = names(&ev);
    assert_eq!(n.first().map(String::as_str), Some("run_start"), "{n:?}");
    assert_eq!(n.last().map(String::as_str), Some("run_done"), "{n:?}");
    assert!(pos(&n, "stage_start:a") < pos(&n, "stage_ok:a"));
    assert!(pos(&n, "stage_ok:a") < pos(&n, "stage_start:b"), "{n:?}");
    assert!(pos(&n, "stage_start:b") < pos(&n, "stage_ok:b"));
    assert_eq!(ev.last().unwrap()["exit_code"], 0);

    // A change to a tracked file shows as dirty in the next run.
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    let m = ws.last_manifest();
    assert_eq!(m["git"]["commit"], head.as_str());
    assert_eq!(m["git"]["dirty"], true);
}

#[test]
fn manifest_events_and_log_of_a_failed_run() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo about to fail; echo oops on stderr >&2; exit 3"
deps = ["in.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo run >> runs_b.txt && cp a.txt b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
"#,
    );
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).code(1).err_has("oops on stderr");
    assert_eq!(ws.count("runs_b.txt"), 0);
    let dir = ws.last_run_dir();
    let m = ws.last_manifest();
    assert_eq!(m["status"], "failed");
    assert_utc(&m["finished_at"], "finished_at");
    let a = &m["stages"]["a"];
    assert_eq!(a["status"], "failed", "{a:#}");
    assert_eq!(a["exit_code"], 3, "{a:#}");
    assert_eq!(a["attempts"], 1);
    assert_eq!(
        a["log"], "logs/a.log",
        "a failed stage's log is not recorded: {a:#}"
    );
    assert!(a["outs"].as_object().unwrap().is_empty(), "{a:#}");
    let b = &m["stages"]["b"]["status"];
    assert!(b == "skipped" || b == "blocked", "{m:#}");
    let log = std::fs::read_to_string(dir.join("logs/a.log")).unwrap();
    assert!(
        log.contains("about to fail") && log.contains("oops on stderr"),
        "{log}"
    );

    let ev = events(&dir);
    let n = names(&ev);
    assert!(pos(&n, "run_start") < pos(&n, "stage_start:a"));
    assert!(pos(&n, "stage_start:a") < pos(&n, "stage_fail:a"));
    assert_eq!(n.last().map(String::as_str), Some("run_done"), "{n:?}");
    assert!(!n.iter().any(|x| x == "stage_start:b"), "{n:?}");
    let fail = &ev[pos(&n, "stage_fail:a")];
    assert_eq!(fail["exit_code"], 3);
    assert_eq!(ev.last().unwrap()["exit_code"], 1);

    // `pipe log` shows the failed stage's output (the latest run by default).
    ws.pipe(&["log"]).ok().out_has("oops on stderr");
    ws.pipe(&["log", "a"]).ok().out_has("about to fail");
    ws.pipe(&["runs"]).ok().out_has("failed");
}

#[test]
fn manifest_and_events_of_a_partly_restored_run() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in_a.txt a.txt"
deps = ["in_a.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo run >> runs_b.txt && cp in_b.txt b.txt"
deps = ["in_b.txt"]
outs = ["b.txt"]

[stages.u]
cmd = "echo run >> runs_u.txt && cp in_u.txt u.txt"
deps = ["in_u.txt"]
outs = ["u.txt"]
"#,
    );
    for f in ["in_a.txt", "in_b.txt", "in_u.txt"] {
        ws.write(f, "v1\n");
    }
    ws.pipe(&["build"]).ok();
    ws.write("in_a.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    ws.write("in_a.txt", "v1\n");
    ws.write("in_b.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(
        (
            ws.count("runs_a.txt"),
            ws.count("runs_b.txt"),
            ws.count("runs_u.txt")
        ),
        (2, 2, 1)
    );
    let m = ws.last_manifest();
    assert_eq!(m["status"], "success");
    let a = &m["stages"]["a"];
    assert_eq!(a["status"], "restored", "{m:#}");
    assert_eq!(a["reasons"][0]["text"], "dep changed: in_a.txt", "{a:#}");
    let want = blake3::hash(b"v1\n").to_hex().to_string();
    assert_eq!(a["outs"]["a.txt"]["hash"], want.as_str());
    assert!(a["log"].is_null(), "a restored stage has no log: {a:#}");
    assert_eq!(m["stages"]["b"]["status"], "ran");
    assert_eq!(m["stages"]["u"]["status"], "up_to_date");

    let n = names(&events(&ws.last_run_dir()));
    assert!(n.contains(&"stage_restored:a".to_string()), "{n:?}");
    assert!(!n.contains(&"stage_start:a".to_string()), "{n:?}");
    assert!(pos(&n, "stage_start:b") < pos(&n, "stage_ok:b"));
    assert!(
        !n.iter()
            .any(|x| x.ends_with(":u") && x.starts_with("stage_start"))
    );

    // `pipe runs --json` counts them.
    let runs = ws.pipe(&["runs", "--json"]).ok().json()["runs"].clone();
    let first = &runs[0];
    assert_eq!(first["run_id"], m["run_id"]);
    assert_eq!(first["ran"], 1);
    assert_eq!(first["restored"], 1);
    assert_eq!(first["up_to_date"], 1);
    assert_eq!(first["failed"], 0);
}

#[test]
fn a_stage_writes_reports_into_the_run_folder_through_pipe_run_dir() {
    let ws = Ws::new(
        r#"
[stages.eval]
cmd = "echo ok > out.txt && printf '{\"run\": \"%s\", \"stage\": \"%s\"}' \"$PIPE_RUN_ID\" \"$PIPE_STAGE\" > \"$PIPE_RUN_DIR/eval_summary.json\""
outs = ["out.txt"]
"#,
    );
    ws.pipe(&["build"]).ok();
    let dir = ws.last_run_dir();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval_summary.json")).unwrap())
            .unwrap();
    assert_eq!(report["run"], run_id(&dir));
    assert_eq!(report["stage"], "eval");
    assert!(!ws.exists("eval_summary.json"));
}

/// train writes metrics from `acc.txt`; promote copies the model; deploy uses the release.
fn gated(checks: &str) -> String {
    format!(
        r#"
[stages.train]
cmd = "echo run >> runs_train.txt && cp in.txt model.bin && printf '{{\"acc\": %s, \"folds\": [{{\"loss\": 0.3}}], \"name\": \"m1\"}}' $(cat acc.txt) > metrics.json"
deps = ["in.txt", "acc.txt"]
outs = ["model.bin", "metrics.json"]
[stages.train.gate]
name = "eval_gate"
file = "metrics.json"
checks = {checks}

[stages.promote]
cmd = "echo run >> runs_promote.txt && mkdir -p release && cp model.bin release/model.bin"
deps = ["model.bin", "metrics.json"]
outs = ["release/model.bin"]
release = true

[stages.deploy]
cmd = "echo run >> runs_deploy.txt && cp release/model.bin deployed.bin"
deps = ["release/model.bin"]
outs = ["deployed.bin"]
"#
    )
}

fn gated_ws(checks: &str, acc: &str) -> Ws {
    let ws = Ws::new(&gated(checks));
    ws.write("in.txt", "model v1\n");
    ws.write("acc.txt", acc);
    ws
}

fn gate_file(ws: &Ws, gate: &str) -> Value {
    let p = ws.last_run_dir().join("gates").join(format!("{gate}.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

#[test]
fn a_failing_gate_exits_3_records_values_and_blocks_downstream() {
    let ws = gated_ws(r#"["acc >= 0.8", "folds.0.loss < 0.5"]"#, "0.6");
    let b = ws.pipe(&["build"]);
    b.code(3).err_has("eval_gate").err_has("acc >= 0.8");
    assert_eq!(ws.count("runs_train.txt"), 1);
    assert_eq!(ws.count("runs_promote.txt"), 0, "a blocked stage ran");
    assert_eq!(
        ws.count("runs_deploy.txt"),
        0,
        "a stage further downstream ran"
    );
    assert!(!ws.exists("release/model.bin"));

    let g = gate_file(&ws, "eval_gate");
    assert_eq!(g["gate"], "eval_gate");
    assert_eq!(g["stage"], "train");
    assert_eq!(g["passed"], false);
    assert_eq!(g["file"], "metrics.json");
    let want = blake3::hash(&std::fs::read(ws.path("metrics.json")).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(g["file_hash"], want.as_str());
    assert_utc(&g["evaluated_at"], "evaluated_at");
    let c = &g["checks"];
    assert_eq!(c[0]["key"], "acc");
    assert_eq!(c[0]["op"], ">=");
    assert_eq!(c[0]["expected"], 0.8);
    assert_eq!(c[0]["actual"], 0.6);
    assert_eq!(c[0]["passed"], false);
    assert_eq!(c[1]["key"], "folds.0.loss");
    assert_eq!(c[1]["actual"], 0.3);
    assert_eq!(c[1]["passed"], true);

    let m = ws.last_manifest();
    assert_eq!(m["status"], "gate_failed");
    assert_eq!(m["stages"]["train"]["status"], "ran");
    assert_eq!(m["stages"]["promote"]["status"], "blocked", "{m:#}");
    assert_eq!(m["stages"]["deploy"]["status"], "blocked", "{m:#}");
    assert!(!ws.last_run_dir().join("release_manifest.json").exists());

    let n = names(&events(&ws.last_run_dir()));
    assert!(
        pos(&n, "stage_ok:train") < pos(&n, "gate_fail:train"),
        "{n:?}"
    );
    assert!(
        pos(&n, "gate_fail:train") < pos(&n, "stage_blocked:promote"),
        "{n:?}"
    );
    assert!(n.contains(&"stage_blocked:deploy".to_string()), "{n:?}");
    assert_eq!(n.last().map(String::as_str), Some("run_done"));
    assert!(!n.iter().any(|x| x == "stage_start:promote"));

    // `pipe status` says blocked, and another build still blocks without rerunning train.
    let st = ws.pipe(&["status"]);
    st.code(1);
    let line = st
        .stdout
        .lines()
        .find(|l| l.starts_with("promote"))
        .unwrap_or_default();
    assert!(
        line.contains("blocked") && line.contains("eval_gate"),
        "{st}"
    );
    let st = ws.pipe(&["status", "--json"]).json();
    let promote = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "promote")
        .unwrap();
    assert_eq!(promote["state"], "blocked", "{st:#}");
    ws.pipe(&["build"]).code(3);
    assert_eq!(ws.count("runs_train.txt"), 1);
    assert_eq!(ws.count("runs_promote.txt"), 0);
}

#[test]
fn relaxing_the_threshold_proceeds_without_rerunning_the_gated_stage() {
    let ws = gated_ws(r#"["acc >= 0.8"]"#, "0.6");
    ws.pipe(&["build"]).code(3);
    ws.write("Pipeline.toml", &gated(r#"["acc >= 0.5"]"#));
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_train.txt"), 1, "the gated stage reran");
    assert_eq!(ws.count("runs_promote.txt"), 1);
    assert_eq!(ws.count("runs_deploy.txt"), 1);
    assert_eq!(ws.read("deployed.bin"), "model v1\n");
    let g = gate_file(&ws, "eval_gate");
    assert_eq!(g["passed"], true);
    assert_eq!(g["checks"][0]["expected"], 0.5);
    assert_eq!(g["checks"][0]["actual"], 0.6);
    let m = ws.last_manifest();
    assert_eq!(m["status"], "success");
    assert_eq!(m["stages"]["train"]["status"], "up_to_date");
    let n = names(&events(&ws.last_run_dir()));
    assert!(n.contains(&"gate_pass:train".to_string()), "{n:?}");
    assert!(!n.contains(&"stage_start:train".to_string()), "{n:?}");
    ws.pipe(&["status"]).ok();
}

#[test]
fn a_missing_key_or_non_numeric_value_fails_the_gate_naming_key_and_file() {
    let ws = gated_ws(r#"["recall >= 0.5"]"#, "0.9");
    let b = ws.pipe(&["build"]);
    b.code(3).err_has("recall").err_has("metrics.json");
    assert_eq!(ws.count("runs_promote.txt"), 0);
    let g = gate_file(&ws, "eval_gate");
    assert_eq!(g["passed"], false);
    assert!(g["checks"][0]["actual"].is_null(), "{g:#}");
    let msg = g["checks"][0]["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("recall") && msg.contains("metrics.json"),
        "{g:#}"
    );

    ws.write("Pipeline.toml", &gated(r#"["name >= 0.5"]"#));
    let b = ws.pipe(&["build"]);
    b.code(3)
        .err_has("`name`")
        .err_has("metrics.json")
        .err_has("not a number");
    assert_eq!(ws.count("runs_train.txt"), 1);
    assert_eq!(ws.count("runs_promote.txt"), 0);

    // An index past the end of an array is a missing key too.
    ws.write("Pipeline.toml", &gated(r#"["folds.3.loss < 1"]"#));
    ws.pipe(&["build"]).code(3).err_has("folds.3.loss");
}

#[test]
fn override_gate_passes_and_is_recorded() {
    let ws = gated_ws(r#"["acc >= 0.8"]"#, "0.6");
    ws.pipe(&["build"]).code(3);
    // Overriding a gate that does not exist is a usage error.
    ws.pipe(&["build", "--override-gate", "other_gate"])
        .code(2)
        .err_has("other_gate");
    assert_eq!(ws.count("runs_promote.txt"), 0);
    let b = ws.pipe(&["build", "--override-gate", "eval_gate"]);
    b.ok().err_has("overridden");
    assert_eq!(ws.count("runs_train.txt"), 1);
    assert_eq!(ws.count("runs_promote.txt"), 1);
    assert_eq!(ws.count("runs_deploy.txt"), 1);
    let g = gate_file(&ws, "eval_gate");
    assert_eq!(g["passed"], true);
    assert_eq!(g["overridden"], true);
    assert_eq!(g["checks"][0]["actual"], 0.6);
    assert_eq!(
        g["checks"][0]["passed"], false,
        "the check's own result should stay honest"
    );
    let m = ws.last_manifest();
    assert_eq!(m["status"], "success");
    let ov: Vec<&str> = m["gate_overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ov, ["eval_gate"]);
    let ev = events(&ws.last_run_dir());
    let pass = ev
        .iter()
        .find(|e| e["event"] == "gate_pass")
        .expect("a gate_pass event");
    assert_eq!(pass["overridden"], true);

    // The override sticks to this metrics file: the next plain build passes too.
    ws.pipe(&["build"]).ok();
}

#[test]
fn a_release_stage_writes_a_release_manifest() {
    let ws = gated_ws(r#"["acc >= 0.5"]"#, "0.9");
    let head = git_init(&ws);
    ws.pipe(&["build"]).ok().err_has("Released");
    let dir = ws.last_run_dir();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("release_manifest.json")).unwrap())
            .unwrap();
    assert_eq!(r["status"], "released");
    assert_eq!(r["run_id"], run_id(&dir));
    assert_eq!(r["stage"], "promote");
    assert_utc(&r["created_at"], "created_at");
    let arts = r["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 1, "{r:#}");
    assert_eq!(arts[0]["path"], "release/model.bin");
    assert_eq!(
        arts[0]["hash"],
        blake3::hash(b"model v1\n").to_hex().as_str()
    );
    assert_eq!(arts[0]["size"], 9);
    assert_eq!(r["gates"], serde_json::json!(["eval_gate"]));
    assert_eq!(r["git"]["commit"], head.as_str());
    assert_eq!(r["git"]["dirty"], false);
    let n = names(&events(&dir));
    assert!(
        pos(&n, "gate_pass:train") < pos(&n, "stage_start:promote"),
        "{n:?}"
    );
    // A build where promote is up to date makes no new release (nor a run folder: a no-op).
    let before = std::fs::read_dir(ws.path(".pipe/runs")).unwrap().count();
    ws.pipe(&["build"]).ok();
    assert_eq!(
        std::fs::read_dir(ws.path(".pipe/runs")).unwrap().count(),
        before
    );
    let rel = ws.pipe(&["releases", "--json"]).ok().json()["releases"].clone();
    assert_eq!(rel.as_array().unwrap().len(), 1);
}

#[test]
fn two_releases_then_rollback_restores_the_first_releases_bytes() {
    let ws = gated_ws(r#"["acc >= 0.5"]"#, "0.9");
    ws.pipe(&["build"]).ok();
    let first = run_id(&ws.last_run_dir());
    ws.write("in.txt", "model v2\n");
    ws.pipe(&["build"]).ok();
    let second = run_id(&ws.last_run_dir());
    assert_ne!(first, second);
    assert_eq!(ws.read("release/model.bin"), "model v2\n");

    // Newest first.
    let list = ws.pipe(&["releases"]);
    list.ok();
    let a = list
        .stdout
        .find(&second)
        .unwrap_or_else(|| panic!("{list}"));
    let b = list.stdout.find(&first).unwrap_or_else(|| panic!("{list}"));
    assert!(a < b, "releases are not newest first\n{list}");
    let json = ws.pipe(&["releases", "--json"]).ok().json()["releases"].clone();
    assert_eq!(json[0]["run_id"], second.as_str());
    assert_eq!(json[1]["run_id"], first.as_str());

    // gc keeps what a release references, even with no run kept.
    ws.pipe(&["gc", "--keep-runs", "0"]).ok();
    ws.pipe(&["rollback", &first]).ok();
    assert_eq!(ws.read("release/model.bin"), "model v1\n");
    let n = names(&events(&ws.last_run_dir()));
    assert!(n.iter().any(|x| x.starts_with("rollback")), "{n:?}");
    // And forward again.
    ws.pipe(&["rollback", &second]).ok();
    assert_eq!(ws.read("release/model.bin"), "model v2\n");

    // An unknown run is a clear usage error.
    ws.pipe(&["rollback", "19990101-000000-000"])
        .code(2)
        .err_has("19990101-000000-000");
}

#[test]
fn rollback_with_the_objects_gone_fails_and_suggests_pipe_pull() {
    let ws = gated_ws(r#"["acc >= 0.5"]"#, "0.9");
    ws.pipe(&["build"]).ok();
    let first = run_id(&ws.last_run_dir());
    ws.write("in.txt", "model v2\n");
    ws.pipe(&["build"]).ok();
    // Make the cache writable so it can be removed, then remove it.
    let cache = ws.path(".pipe/cache");
    std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&cache)
        .status()
        .unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
    let r = ws.pipe(&["rollback", &first]);
    assert_ne!(r.code, 0, "{r}");
    r.err_has("pipe pull").err_has("release/model.bin");
    assert_eq!(
        ws.read("release/model.bin"),
        "model v2\n",
        "a failed rollback changed the workspace"
    );
}

#[test]
fn runs_log_and_stats_show_past_runs() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo input is $(cat in.txt) && test $(cat in.txt) != bad && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
"#,
    );
    ws.write("in.txt", "one\n");
    let none = ws.pipe(&["runs"]);
    none.ok().err_has("no runs yet");
    assert!(none.stdout.is_empty(), "{none}");
    ws.pipe(&["build"]).ok();
    let r1 = run_id(&ws.last_run_dir());
    ws.write("in.txt", "bad\n");
    ws.pipe(&["build"]).code(1);
    let r2 = run_id(&ws.last_run_dir());
    ws.write("in.txt", "three\n");
    ws.pipe(&["build"]).ok();
    let r3 = run_id(&ws.last_run_dir());

    let runs = ws.pipe(&["runs"]);
    runs.ok();
    let lines: Vec<&str> = runs.stdout.lines().collect();
    let idx = |id: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing\n{runs}"))
    };
    assert!(
        idx(&r3) < idx(&r2) && idx(&r2) < idx(&r1),
        "not newest first\n{runs}"
    );
    assert!(lines[idx(&r2)].contains("failed"), "{runs}");
    assert!(lines[idx(&r3)].contains("success"), "{runs}");

    let json = ws.pipe(&["runs", "--json"]).ok().json()["runs"].clone();
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [r3.as_str(), r2.as_str(), r1.as_str()]);
    assert_eq!(json[1]["status"], "failed");
    assert_eq!(json[1]["failed"], 1);
    assert_eq!(json[0]["ran"], 1);
    assert!(json[0]["duration_s"].as_f64().is_some());

    // pipe log: latest run by default; a named run and stage; a stage alone.
    ws.pipe(&["log"]).ok().out_has("input is three");
    let old = ws.pipe(&["log", &r1, "a"]);
    old.ok().out_has("input is one");
    assert!(!old.stdout.contains("three"));
    ws.pipe(&["log", &r2, "a"]).ok().out_has("input is bad");
    ws.pipe(&["log", "a"]).ok().out_has("input is three");
    ws.pipe(&["log", "nope-run"]).code(2).err_has("nope-run");

    // --stats: one stage, 3 runs, 2 of them successful.
    let st = ws.pipe(&["runs", "--stats"]);
    st.ok().out_has("stage");
    let line = st
        .stdout
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("{st}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "3", "{st}");
    assert_eq!(cols[2], "67%", "{st}");
}

#[test]
fn runs_beyond_keep_runs_are_pruned_but_not_each_stages_newest_run() {
    // Only the newest two stay, plus run 0: the newest (only) run in which `once` ran.
    let ws = Ws::new(
        r#"
[pipeline]
keep_runs = 2

[stages.once]
cmd = "echo once > once.txt"
outs = ["once.txt"]

[stages.a]
cmd = "cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
"#,
    );
    let mut ids = vec![];
    for i in 0..5 {
        ws.write("in.txt", &format!("v{i}\n"));
        ws.pipe(&["build"]).ok();
        ids.push(run_id(&ws.last_run_dir()));
    }
    let mut left: Vec<String> = std::fs::read_dir(ws.path(".pipe/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [ids[0].clone(), ids[3].clone(), ids[4].clone()]);
    ws.pipe(&["log", "once"]).ok().out_has("");
    let json = ws.pipe(&["runs", "--json"]).ok().json()["runs"].clone();
    assert_eq!(json.as_array().unwrap().len(), 3);
}

#[test]
fn every_release_stays_listed_and_can_be_rolled_back_to() {
    let ws = Ws::new(
        r#"
[pipeline]
keep_runs = 1

[stages.a]
cmd = "cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
release = true
"#,
    );
    let mut ids = vec![];
    for i in 0..4 {
        ws.write("in.txt", &format!("v{i}\n"));
        ws.pipe(&["build"]).ok();
        ids.push(run_id(&ws.last_run_dir()));
    }
    let rel = ws.pipe(&["releases", "--json"]).ok().json()["releases"].clone();
    assert_eq!(rel.as_array().unwrap().len(), 4);
    ws.pipe(&["rollback", &ids[0]]).ok();
    assert_eq!(ws.read("a.txt"), "v0\n");
}

#[test]
fn rollback_with_a_corrupted_object_changes_nothing() {
    let ws = Ws::new(
        r#"
[stages.pack]
cmd = "cp in.txt a.txt && cp in.txt b.txt && echo extra >> b.txt"
deps = ["in.txt"]
outs = ["a.txt", "b.txt"]
release = true
"#,
    );
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let first = run_id(&ws.last_run_dir());
    let b_hash = ws.last_manifest()["stages"]["pack"]["outs"]["b.txt"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    // Corrupt the second artifact's object: the first must not be rolled back alone.
    let obj = ws
        .path(".pipe/cache/objects")
        .join(&b_hash[..2])
        .join(&b_hash[2..]);
    std::process::Command::new("chmod")
        .arg("u+w")
        .arg(&obj)
        .status()
        .unwrap();
    std::fs::write(&obj, "v1\nxxxxxx\n").unwrap();
    let r = ws.pipe(&["rollback", &first]);
    assert_eq!(r.code, 1, "{r}");
    r.err_has(&b_hash).err_has("b.txt");
    assert_eq!(
        ws.read("a.txt"),
        "v2\n",
        "rollback changed a.txt before finding b.txt corrupt"
    );
    assert_eq!(ws.read("b.txt"), "v2\nextra\n");
}

#[test]
fn a_crashed_run_still_shows_how_far_it_got() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo run >> runs_b.txt && if [ ! -e crashed ]; then touch crashed; kill -9 $PPID; exit 1; fi; cp a.txt b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
"#,
    );
    ws.write("in.txt", "v1\n");
    // The stage kills pipe itself (sh's parent) with SIGKILL.
    let r = ws.pipe(&["build"]);
    assert_ne!(r.code, 0, "{r}");
    let crashed = ws.last_run_dir();
    let n = names(&events(&crashed));
    assert_eq!(
        n,
        ["run_start", "stage_start:a", "stage_ok:a", "stage_start:b"]
    );
    // The next build finishes the job: a is up to date, b runs.
    ws.pipe(&["build"]).ok();
    assert_eq!((ws.count("runs_a.txt"), ws.count("runs_b.txt")), (1, 2));
    assert_eq!(ws.read("b.txt"), "v1\n");
    assert_ne!(ws.last_run_dir(), crashed);
    let m = ws.last_manifest();
    assert_eq!(m["stages"]["a"]["status"], "up_to_date");
    assert_eq!(m["stages"]["b"]["status"], "ran");
    ws.pipe(&["runs"]).ok().out_has(&run_id(&crashed));
}

#[test]
fn a_gate_whose_file_is_missing_fails_naming_the_file() {
    let ws = Ws::new(
        r#"
[stages.train]
cmd = "echo model > model.bin"
outs = ["model.bin"]
[stages.train.gate]
file = "metrics/none.json"
checks = ["acc > 0"]

[stages.promote]
cmd = "echo run >> runs_promote.txt && cp model.bin out.bin"
deps = ["model.bin"]
outs = ["out.bin"]
"#,
    );
    ws.pipe(&["build"])
        .code(3)
        .err_has("metrics/none.json")
        .err_has("train_gate");
    assert_eq!(ws.count("runs_promote.txt"), 0);
    let g = gate_file(&ws, "train_gate");
    assert_eq!(g["passed"], false);
    assert_eq!(g["file"], "metrics/none.json");
    // A file that is not JSON also fails clearly.
    ws.write("metrics/none.json", "not json");
    ws.pipe(&["build"]).code(3).err_has("not valid JSON");
    ws.write("metrics/none.json", r#"{"acc": 1}"#);
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_promote.txt"), 1);
}
