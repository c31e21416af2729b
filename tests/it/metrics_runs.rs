//! Comparing runs: metrics recorded per run, `pipe metrics --runs` (changes against a
//! baseline, --sort, --json, --csv), numbers as people write them, NaN in metrics and gates,
//! and `--params-file` overrides.

use crate::harness::*;

/// `train` writes `acc` from a param, so each `--set` is one run of a sweep.
const SWEEP: &str = r#"
[params]
lr = 0.1
acc = 0.88
[stages.train]
cmd = "printf '{\"acc\": %s, \"loss\": 1e-05, \"n\": 3}' ${params.acc} > m.json && echo ${params.lr} > lr.txt"
outs = ["m.json", "lr.txt"]
params = ["lr", "acc"]
metrics = ["m.json"]
"#;

fn run_ids(ws: &Ws) -> Vec<String> {
    let v = ws.pipe(&["runs", "--json"]).json();
    let mut ids: Vec<String> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    ids
}

/// Three runs: acc 0.88, 0.91 (named `best`), 0.85.
fn sweep() -> Ws {
    let ws = Ws::new(SWEEP);
    ws.pipe(&["build"]).ok();
    ws.pipe(&[
        "build", "--set", "acc=0.91", "--set", "lr=0.2", "--name", "best",
    ])
    .ok();
    ws.pipe(&["build", "--set", "acc=0.85", "--set", "lr=0.3"])
        .ok();
    ws
}

#[test]
fn each_run_records_its_metrics_even_after_the_file_changes() {
    let ws = sweep();
    let m = ws.last_manifest();
    assert_eq!(
        m["stages"]["train"]["metrics"]["m.json"]["acc"], 0.85,
        "{m:#}"
    );
    // The file now holds 0.85, yet the first run still says 0.88.
    ws.pipe(&["metrics", "--runs"]).ok().out_has("0.88");
    // A restored stage records the metrics it brought back.
    ws.pipe(&["build"]).ok();
    let m = ws.last_manifest();
    assert_eq!(m["stages"]["train"]["status"], "restored");
    assert_eq!(
        m["stages"]["train"]["metrics"]["m.json"]["acc"], 0.88,
        "{m:#}"
    );
}

#[test]
fn runs_show_differing_params_metrics_and_changes_against_the_first() {
    let ws = sweep();
    let r = ws.pipe(&["metrics", "--runs"]);
    r.ok()
        .out_has("best")
        .out_has("lr")
        .out_has("0.91 (+0.03)")
        .out_has("0.85 (-0.03)")
        .out_has("1e-05");
    assert!(!r.stdout.contains("0.0000"), "{}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and one row per run, oldest first\n{r}"
    );
    assert!(
        lines[1].contains("0.88") && lines[3].contains("0.85"),
        "{r}"
    );
    // `loss` and `n` never change and `acc`'s param differs: params shown are lr and acc.
    assert!(lines[0].contains("lr") && lines[0].contains("acc"), "{r}");

    // --baseline: changes against the named run.
    ws.pipe(&["metrics", "--runs", "--baseline", "best"])
        .ok()
        .out_has("0.88 (-0.03)")
        .out_has("0.85 (-0.06)");

    // --sort, largest first with --desc.
    let r = ws.pipe(&["metrics", "--runs", "--sort", "acc", "--desc"]);
    let rows: Vec<&str> = r.ok().stdout.lines().skip(1).collect();
    assert!(rows[0].contains("best") && rows[2].contains("0.85"), "{r}");
    let r = ws.pipe(&["metrics", "--runs", "--sort", "acc"]);
    let rows: Vec<&str> = r.ok().stdout.lines().skip(1).collect();
    assert!(rows[0].contains("0.85") && rows[2].contains("best"), "{r}");
    ws.pipe(&["metrics", "--runs", "--sort", "nope"])
        .code(2)
        .err_has("acc");

    // Two runs by reference, as before.
    let ids = run_ids(&ws);
    let r = ws.pipe(&["metrics", "--runs", &ids[0], "latest"]);
    r.ok().out_has(&ids[0]).out_has("0.85 (-0.03)");
    assert_eq!(r.stdout.lines().count(), 3, "{r}");
    ws.pipe(&["metrics", "--runs", "nope"])
        .code(2)
        .err_has("no run");
}

#[test]
fn runs_as_json_and_csv() {
    let ws = sweep();
    let ids = run_ids(&ws);
    let r = ws.pipe(&["metrics", "--runs", "--json"]);
    assert!(
        r.ok()
            .stdout
            .trim_start()
            .starts_with("{\n  \"version\": 1"),
        "{r}"
    );
    let v = r.json();
    assert_eq!(v["baseline"], ids[0].as_str());
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[1]["run_id"], ids[1].as_str());
    assert_eq!(runs[1]["name"], "best");
    assert_eq!(runs[0]["name"], serde_json::Value::Null);
    assert_eq!(runs[1]["params"]["lr"], 0.2);
    assert_eq!(runs[1]["metrics"]["acc"], 0.91);
    assert_eq!(runs[1]["deltas"]["acc"], 0.03);
    assert_eq!(runs[2]["deltas"]["acc"], -0.03);
    assert_eq!(runs[2]["deltas"]["n"], 0);
    assert!(
        v["metrics"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("acc"))
    );

    let r = ws.pipe(&["metrics", "--runs", "--csv"]);
    let lines: Vec<&str> = r.ok().stdout.lines().collect();
    assert!(
        lines[0].starts_with("run_id,name,started_at,") && lines[0].contains(",acc,"),
        "{r}"
    );
    assert_eq!(lines.len(), 4, "{r}");
    assert!(lines[2].starts_with(&format!("{},best,", ids[1])), "{r}");
    assert!(lines[2].contains(",0.91,"), "{r}");
}

#[test]
fn the_default_is_the_last_ten_runs_with_metrics() {
    let ws = Ws::new(&format!(
        "{SWEEP}\n[stages.other]\ncmd = \"echo ${{params.lr}} > o.txt\"\nouts = [\"o.txt\"]\nparams = [\"lr\"]\n"
    ));
    for i in 0..11 {
        ws.pipe(&["build", "--set", &format!("acc=0.{:02}", 50 + i), "train"])
            .ok();
    }
    // A run in which no metrics stage ran is not a row.
    ws.pipe(&["build", "--set", "lr=0.5", "--set", "acc=0.60", "other"])
        .ok();
    let v = ws.pipe(&["metrics", "--runs", "--json"]).ok().json();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 10, "{v:#}");
    assert_eq!(runs[0]["metrics"]["acc"], 0.51, "oldest first");
    assert_eq!(runs[9]["metrics"]["acc"], 0.6);
}

#[test]
fn the_same_key_in_two_stages_is_prefixed_with_the_stage() {
    let ws = Ws::new(
        r#"
[params]
x = 1
[stages.a]
cmd = "echo '{\"acc\": ${params.x}, \"only_a\": 1}' > a.json"
outs = ["a.json"]
params = ["x"]
metrics = ["a.json"]
[stages.b]
cmd = "echo '{\"acc\": 2, \"f\": {\"g\": [5]}}' > b.json"
outs = ["b.json"]
metrics = ["b.json"]
"#,
    );
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "--set", "x=4"]).ok();
    let r = ws.pipe(&["metrics", "--runs"]);
    r.ok()
        .out_has("a.acc")
        .out_has("b.acc")
        .out_has("only_a")
        .out_has("f.g.0")
        .out_has("4 (+3)");
}

#[test]
fn nan_shows_as_nan_and_fails_a_gate_saying_so() {
    let ws = Ws::new(
        r#"
[stages.eval]
cmd = "cp src.json m.json"
deps = ["src.json"]
outs = ["m.json"]
metrics = ["m.json"]
[stages.eval.gate]
file = "m.json"
checks = ["loss < 1"]
"#,
    );
    ws.write(
        "src.json",
        r#"{"loss": 0.5, "lr": 0.00001, "acc": 0.910000}"#,
    );
    ws.pipe(&["build"]).ok();
    ws.pipe(&["metrics"]).ok().out_has("1e-05").out_has("0.91");
    ws.write("src.json", r#"{"loss": NaN, "lr": 0.00001, "acc": 0.91}"#);
    ws.pipe(&["build"]).code(3).err_has("NaN");
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.last_run_dir().join("gates/eval_gate.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(g["passed"], false);
    assert!(
        g["checks"][0]["error"].as_str().unwrap().contains("NaN"),
        "{g}"
    );
    ws.pipe(&["metrics"]).ok().out_has("NaN");
    let r = ws.pipe(&["metrics", "--runs"]);
    r.ok().out_has("NaN").out_has("0.5");
    let v = ws.pipe(&["metrics", "--runs", "--json"]).ok().json();
    assert_eq!(v["runs"][1]["metrics"]["loss"], "NaN");
    assert!(v["runs"][1]["deltas"].get("loss").is_none(), "{v:#}");
}

#[test]
fn runs_recorded_before_metrics_were_read_from_the_cache() {
    let ws = sweep();
    // Strip the recorded values, as in a manifest written by an older pipe.
    let dir = ws.last_run_dir();
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["stages"]["train"]
        .as_object_mut()
        .unwrap()
        .remove("metrics");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    ws.pipe(&["metrics", "--runs"]).ok().out_has("0.85 (-0.03)");
}

const CONFIGURED: &str = r#"
[params]
board = "hex8"
[params.train]
lr = 0.1
epochs = 10
[stages.train]
cmd = "echo ${params.board} ${params.train.lr} ${params.train.epochs} > out.txt"
outs = ["out.txt"]
params = ["board", "train"]
"#;

#[test]
fn a_params_file_overrides_params_for_one_run_and_set_wins() {
    let ws = Ws::new(CONFIGURED);
    ws.write("conf.json", r#"{"train": {"lr": 0.5}, "board": "hex9"}"#);
    ws.write("conf.yaml", "train:\n  epochs: 20\n");
    ws.write("conf.toml", "[train]\nlr = 0.25\n");

    ws.pipe(&["build", "--params-file", "conf.json"]).ok();
    assert_eq!(ws.read("out.txt"), "hex9 0.5 10\n");
    assert_eq!(ws.last_manifest()["params"]["train.lr"], 0.5);
    ws.pipe(&["status", "--params-file", "conf.json"]).ok();
    ws.pipe(&["status"]).code(1).out_has("train.lr");

    ws.pipe(&["build", "--params-file", "conf.yaml"]).ok();
    assert_eq!(ws.read("out.txt"), "hex8 0.1 20\n");
    ws.pipe(&[
        "build",
        "--params-file",
        "conf.toml",
        "--set",
        "train.lr=0.3",
    ])
    .ok();
    assert_eq!(ws.read("out.txt"), "hex8 0.3 10\n");

    // Relative to the folder pipe was started in, also below the workspace.
    ws.write("sub/c.yml", "board: sub\n");
    let r: Run = ws
        .cmd(&["build", "--params-file", "c.yml"])
        .current_dir(ws.path("sub"))
        .output()
        .unwrap()
        .into();
    r.ok();
    assert_eq!(ws.read("out.txt"), "sub 0.1 10\n");
}

#[test]
fn a_params_file_value_of_another_type_or_key_is_an_error() {
    let ws = Ws::new(CONFIGURED);
    ws.write("bad.json", r#"{"train": {"lr": "abc"}}"#);
    ws.pipe(&["build", "--params-file", "bad.json"])
        .code(2)
        .err_has("train.lr")
        .err_has("a number")
        .err_has("a string")
        .err_has("bad.json");
    ws.pipe(&["build", "--set", "train.lr=abc"])
        .code(2)
        .err_has("train.lr")
        .err_has("a string");
    assert!(!ws.exists("out.txt"));
    ws.write("typo.yaml", "train:\n  lrr: 0.2\n");
    ws.pipe(&["build", "--params-file", "typo.yaml"])
        .code(2)
        .err_has("train.lrr");
    ws.write("broken.yaml", "train: [\n");
    ws.pipe(&["build", "--params-file", "broken.yaml"])
        .code(2)
        .err_has("YAML");
    ws.pipe(&["build", "--params-file", "missing.json"])
        .code(2)
        .err_has("missing.json");
    // An integer for a float and a number given as text to a string param are fine.
    ws.write("ok.json", r#"{"train": {"lr": 1, "epochs": 12.5}}"#);
    ws.pipe(&["build", "--params-file", "ok.json", "--set", "board=123"])
        .ok();
    assert_eq!(ws.read("out.txt"), "123 1 12.5\n");
}

#[test]
fn params_file_in_the_pipeline_may_be_yaml() {
    let ws = Ws::new(
        "params_file = \"params.yaml\"\n[stages.a]\ncmd = \"echo ${params.model.depth} ${params.name} > a.txt\"\nouts = [\"a.txt\"]\nparams = [\"model\"]\n",
    );
    ws.write("params.yaml", "model:\n  depth: 4\nname: resnet\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("a.txt"), "4 resnet\n");
    ws.pipe(&["build", "--set", "model.depth=6"]).ok();
    assert_eq!(ws.read("a.txt"), "6 resnet\n");
}
