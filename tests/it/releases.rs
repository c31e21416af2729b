//! Releases that stick: sticky gate overrides, manifests that tell the story, rollbacks that
//! are not undone by the next build, the current release, and `pipe clean`.

use crate::harness::*;

const PIPE: &str = r#"
[params]
lr = 0.1

[stages.train]
cmd = "cp data.txt model.bin; cp score.json metrics.json"
deps = ["data.txt", "score.json"]
outs = ["model.bin", "metrics.json"]
params = ["lr"]
[stages.train.gate]
name = "eval_gate"
file = "metrics.json"
checks = ["acc >= 0.8"]

[stages.promote]
cmd = "mkdir -p release && cp model.bin release/model.bin"
deps = ["model.bin"]
outs = ["release/model.bin"]
release = true
"#;

fn ws(acc: f64) -> Ws {
    let ws = Ws::new(PIPE);
    ws.write("data.txt", "model v1\n");
    ws.write("score.json", &format!("{{\"acc\": {acc}}}"));
    ws
}

fn releases(ws: &Ws) -> Vec<serde_json::Value> {
    let v = ws.pipe(&["releases", "--json"]).ok().json();
    match v {
        serde_json::Value::Array(a) => a,
        other => other["releases"].as_array().cloned().unwrap_or_default(),
    }
}

#[test]
fn an_override_sticks_until_the_gate_file_changes_and_is_recorded_everywhere() {
    let ws = ws(0.5);
    ws.pipe(&["build"]).code(3);
    ws.pipe(&[
        "build",
        "--override-gate",
        "eval_gate",
        "--reason",
        "known eval bug",
    ])
    .ok()
    .err_has("overridden");
    let dir = ws.last_run_dir();
    let gate: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gates/eval_gate.json")).unwrap()).unwrap();
    assert_eq!(gate["overridden"], true, "{gate:#}");
    assert_eq!(gate["reason"], "known eval bug");
    assert!(gate["by"].as_str().unwrap().contains('@'), "{gate:#}");
    assert!(gate["at"].is_string());
    let rel: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("release_manifest.json")).unwrap()).unwrap();
    assert_eq!(rel["overridden"], true, "{rel:#}");
    assert_eq!(rel["reason"], "known eval bug");
    let listed = releases(&ws);
    assert_eq!(listed[0]["forced"], true);
    ws.pipe(&["releases"]).ok().out_has("FORCED");

    // The next plain build and status keep treating the gate as overridden: CI stays green.
    ws.pipe(&["build"]).ok();
    ws.pipe(&["status"]).ok();
    // A new metrics file is a new verdict: the gate fails again.
    ws.write("score.json", "{\"acc\": 0.6}");
    ws.pipe(&["build"]).code(3);
}

#[test]
fn a_release_manifest_tells_the_story() {
    let ws = ws(0.9);
    ws.pipe(&["build", "--name", "first-try"]).ok();
    let rel: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.last_run_dir().join("release_manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rel["name"], "first-try", "{rel:#}");
    assert_eq!(rel["params"]["lr"], 0.1, "{rel:#}");
    assert_eq!(rel["metrics"]["eval_gate"]["acc"], 0.9, "{rel:#}");
    assert_eq!(rel["overridden"], false);
    assert_eq!(rel["gates"], serde_json::json!(["eval_gate"]));
}

#[test]
fn a_rollback_sticks_until_the_inputs_change_and_releases_mark_the_current_one() {
    let ws = ws(0.9);
    ws.pipe(&["build"]).ok();
    let first = ws
        .last_run_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    ws.write("data.txt", "model v2\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("release/model.bin"), "model v2\n");
    let current: Vec<_> = releases(&ws)
        .into_iter()
        .filter(|r| r["current"] == true)
        .collect();
    assert_eq!(current.len(), 1);
    assert_ne!(current[0]["run_id"], first.as_str());

    ws.pipe(&["rollback", &first]).ok();
    assert_eq!(ws.read("release/model.bin"), "model v1\n");
    // The next build does not redeploy the release that was rolled back from.
    let run = ws.pipe(&["build"]);
    run.ok().err_has("rolled back");
    assert_eq!(ws.read("release/model.bin"), "model v1\n");
    let st = ws.pipe(&["status", "--json"]).ok().json();
    let promote = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "promote")
        .unwrap()
        .clone();
    assert_eq!(promote["state"], "rolled_back", "{st:#}");
    let current: Vec<_> = releases(&ws)
        .into_iter()
        .filter(|r| r["current"] == true)
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["run_id"], first.as_str());
    ws.pipe(&["releases"]).ok().out_has(&format!("* {first}"));

    // New inputs: released again.
    ws.write("data.txt", "model v3\n");
    ws.pipe(&["build"]).ok().err_has("Released promote");
    assert_eq!(ws.read("release/model.bin"), "model v3\n");
}

#[test]
fn clean_resets_stages_so_a_persist_stage_starts_from_scratch() {
    let ws = Ws::new(
        r#"
[stages.train]
cmd = "mkdir -p ckpt; n=$(cat ckpt/epochs 2>/dev/null || echo 0); echo $((n + 1)) > ckpt/epochs"
outs = ["ckpt/"]
persist = true
always = true
"#,
    );
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("ckpt/epochs"), "2\n");
    let dry = ws.pipe(&["clean", "train", "--dry-run"]);
    dry.ok().err_has("ckpt");
    assert!(ws.exists("ckpt/epochs"), "a dry run removes nothing");
    ws.pipe(&["clean", "train"]).ok().err_has("Cleaned");
    assert!(!ws.exists("ckpt"));
    assert!(!ws.read("Pipeline.lock").contains("[stages.train]"));
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("ckpt/epochs"), "1\n");
}
