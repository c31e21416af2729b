//! Sweeps: matrix and foreach stages, params files, metrics across members, params diff.
use crate::harness::{Ws, rendezvous};

const SWEEP: &str = r#"
[stages.train]
matrix = { lr = [0.01, 0.1], seed = [1, 2] }
cmd = "echo ${matrix.lr}-${matrix.seed} >> runs.txt && mkdir -p models metrics && echo model-${matrix.lr}-${matrix.seed} > models/${matrix.lr}-${matrix.seed}.bin && echo '{\"acc\": ${matrix.seed}, \"lr\": ${matrix.lr}}' > metrics/${matrix.lr}-${matrix.seed}.json"
deps = ["train.sh"]
outs = ["models/${matrix.lr}-${matrix.seed}.bin", "metrics/${matrix.lr}-${matrix.seed}.json"]
metrics = ["metrics/${matrix.lr}-${matrix.seed}.json"]

[stages.pick]
cmd = "echo pick >> picks.txt && ls models > best.txt"
deps = ["models/"]
outs = ["best.txt"]
"#;

fn sweep() -> Ws {
    let ws = Ws::new(SWEEP);
    ws.write("train.sh", "v1\n");
    ws
}

#[test]
fn a_two_by_two_matrix_builds_four_members_in_parallel_then_the_fan_in() {
    // Each member waits until another one has started too: the build passes only if members
    // ran side by side.
    let ws = Ws::new(&SWEEP.replace(
        "runs.txt && ",
        &format!("runs.txt && {} && ", rendezvous("ready", 2)),
    ));
    ws.write("train.sh", "v1\n");
    ws.pipe(&["build", "-j", "4"]).ok();
    assert_eq!(ws.count("runs.txt"), 4);
    assert_eq!(ws.read("best.txt").lines().count(), 4);
    for name in ["0.01-1", "0.01-2", "0.1-1", "0.1-2"] {
        assert!(ws.exists(&format!("models/{name}.bin")), "{name}");
    }
    let lock = ws.read("Pipeline.lock");
    assert!(lock.contains("[stages.\"train@lr=0.01,seed=1\"]"), "{lock}");
    ws.pipe(&["status"]).ok().out_has("train [4 members]");
    ws.pipe(&["status", "-v"])
        .ok()
        .out_has("train@lr=0.1,seed=2");
}

#[test]
fn changing_one_matrix_value_runs_only_the_new_combinations_and_drops_the_old() {
    let ws = sweep();
    ws.pipe(&["build"]).ok();
    ws.write(
        "Pipeline.toml",
        &SWEEP.replace("seed = [1, 2]", "seed = [1, 3]"),
    );
    ws.pipe(&["build"]).ok();
    let runs = ws.read("runs.txt");
    assert_eq!(runs.lines().count(), 6, "{runs}");
    assert!(runs.lines().skip(4).all(|l| l.ends_with("-3")), "{runs}");
    let lock = ws.read("Pipeline.lock");
    assert!(
        !lock.contains("seed=2"),
        "removed member still in lock:\n{lock}"
    );
    // The fan-in saw its folder dep change.
    assert_eq!(ws.count("picks.txt"), 2);
}

#[test]
fn the_fan_in_reruns_when_one_member_changes_and_a_group_is_a_target() {
    let ws = sweep();
    ws.pipe(&["build", "train"]).ok();
    assert_eq!(ws.count("runs.txt"), 4);
    assert!(!ws.exists("best.txt"), "pick is not upstream of train");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("picks.txt"), 1);
    std::fs::remove_file(ws.path("models/0.1-2.bin")).unwrap();
    ws.write("models/0.1-2.bin", "tampered\n");
    ws.pipe(&["status"]).code(1);
    ws.pipe(&["build"]).ok();
    // The member came back from the cache (no run) and the fan-in was re-checked: same bytes.
    assert_eq!(ws.count("runs.txt"), 4);
    assert_eq!(ws.read("models/0.1-2.bin"), "model-0.1-2\n");
    ws.pipe(&["build", "--force", "train@lr=0.1,seed=2"]).ok();
    assert_eq!(ws.count("runs.txt"), 5);
}

#[test]
fn metrics_are_shown_side_by_side_across_members() {
    let ws = sweep();
    ws.pipe(&["build"]).ok();
    let r = ws.pipe(&["metrics"]);
    r.ok().out_has("train@lr=0.01,seed=1").out_has("acc");
    let j = ws.pipe(&["metrics", "--json"]).json();
    let member = j["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "train@lr=0.1,seed=2")
        .expect("a metrics source for the member");
    assert_eq!(member["values"]["acc"], serde_json::json!(2));
}

#[test]
fn bad_matrices_are_errors_naming_the_stage_and_line() {
    let cases = [
        ("matrix = { lr = [] }\ncmd = \"echo\"\n", "has no values"),
        (
            "matrix = { lr = [1] }\ncmd = \"echo ${matrix.seed}\"\n",
            "`seed` is not a key",
        ),
        (
            "matrix = { lr = [1, 2] }\ncmd = \"echo ${matrix.lr} > same.txt\"\nouts = [\"same.txt\"]\n",
            "two stages cannot write the same path",
        ),
        ("cmd = \"echo ${matrix.lr}\"\n", "has no `matrix`"),
    ];
    for (body, msg) in cases {
        let ws = Ws::new(&format!("[stages.train]\n{body}"));
        ws.pipe(&["validate"])
            .code(2)
            .err_has(msg)
            .err_has("Pipeline.toml:")
            .err_has("train");
    }
}

#[test]
fn foreach_over_a_list_and_a_table() {
    let ws = Ws::new(
        r#"
[stages.fetch]
foreach = ["a", "b"]
cmd = "echo ${item} > ${item}.txt"
outs = ["${item}.txt"]

[stages.size]
foreach = { small = { n = 1 }, large = { n = 3 } }
cmd = "echo ${key}=${item.n} > size-${key}.txt"
outs = ["size-${key}.txt"]
"#,
    );
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("a.txt"), "a\n");
    assert_eq!(ws.read("size-large.txt"), "large=3\n");
    ws.pipe(&["build", "fetch@b", "--force"]).ok();
}

#[test]
fn params_files_merge_and_duplicates_are_errors() {
    let ws = Ws::new(
        r#"
params_file = "params.toml"
[params]
board = "hex8"

[stages.a]
cmd = "echo ${params.train.lr} ${params.board} > a.txt"
outs = ["a.txt"]
"#,
    );
    ws.write("params.toml", "[train]\nlr = 0.5\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("a.txt"), "0.5 hex8\n");
    ws.write("params.toml", "[train]\nlr = 0.25\n");
    ws.pipe(&["status"])
        .code(1)
        .out_has("param changed: train.lr (0.5 -> 0.25)");

    ws.write("params.toml", "board = \"hex9\"\n");
    ws.pipe(&["validate"])
        .code(2)
        .err_has("param `board` is defined twice")
        .err_has("params.toml");

    let j = Ws::new(
        "params_file = \"p.json\"\n[stages.a]\ncmd = \"echo ${params.model.depth} > a.txt\"\nouts = [\"a.txt\"]\n",
    );
    j.write("p.json", r#"{"model": {"depth": 4}}"#);
    j.pipe(&["build"]).ok();
    assert_eq!(j.read("a.txt"), "4\n");
}

#[test]
fn params_diff_names_what_differs_between_two_runs() {
    let ws = Ws::new(
        "[params]\nlr = 0.1\nseed = 1\n[stages.a]\ncmd = \"echo ${params.lr} > a.txt\"\nouts = [\"a.txt\"]\n",
    );
    ws.pipe(&["build"]).ok();
    let first = ws.last_manifest()["run_id"].as_str().unwrap().to_string();
    ws.pipe(&["build", "--set", "lr=0.2"]).ok();
    let second = ws.last_manifest()["run_id"].as_str().unwrap().to_string();
    let r = ws.pipe(&["params", "diff", &first, &second]);
    r.ok().out_has("lr").out_has("0.1").out_has("0.2");
    assert!(!r.stdout.contains("seed"), "{r}");
    ws.pipe(&["params", "diff", &first, "nope"])
        .code(2)
        .err_has("no run `nope`");
}

#[test]
fn dag_folds_matrix_groups_unless_verbose() {
    let ws = sweep();
    ws.pipe(&["dag"])
        .ok()
        .out_has("train [4 members]")
        .out_has("pick")
        .out_has("<- train [4 members]");
    ws.pipe(&["dag", "-v"]).ok().out_has("train@lr=0.01,seed=2");
    ws.pipe(&["dag", "--format", "dot"])
        .ok()
        .out_has("\"train@lr=0.1,seed=1\" -> \"pick\"");
}
