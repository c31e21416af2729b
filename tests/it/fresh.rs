//! The no-op proof (`.pipe/state/fresh.json`): a `status` or `build` that finds every stage
//! up to date keeps what it looked at, and the next one answers from the same stats alone.
//! Each test changes one thing the proof rests on and expects the full verdict.

use crate::harness::*;

const PIPELINE: &str = r#"
[params]
lr = 0.1

[stages.prep]
cmd = "echo run >> runs_prep.txt; cat raw.txt > clean.txt"
deps = ["raw.txt"]
outs = ["clean.txt"]

[stages.train]
cmd = "echo run >> runs_train.txt; cat clean.txt > model.txt; echo ${params.lr} >> model.txt"
deps = ["clean.txt"]
params = ["lr"]
outs = ["model.txt"]
"#;

/// A signature newer than 100 ms is never trusted (a change in the same clock tick would
/// not show in it), so a proof is only kept once the files written are older than that.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(150));
}

/// Whether this command answered from the proof (`-v` says so).
fn proven(ws: &Ws, args: &[&str]) -> bool {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let run = ws.pipe(&all);
    run.stderr.contains("nothing changed since the last no-op")
}

/// A built workspace whose last `status` kept a proof.
fn proven_ws() -> Ws {
    let ws = Ws::new(PIPELINE);
    ws.write("raw.txt", "abc\n");
    ws.pipe(&["build"]).ok();
    settle();
    ws.pipe(&["status"]).ok();
    assert!(proven(&ws, &["status"]), "a no-op status keeps a proof");
    ws
}

#[test]
fn a_proven_noop_answers_status_and_build_as_the_full_path_does() {
    let ws = proven_ws();
    let fast = ws.pipe(&["status", "--json"]).ok().json();
    let fast_table = ws.pipe(&["status"]).ok().stdout.clone();
    std::fs::remove_file(ws.path(".pipe/state/fresh.json")).unwrap();
    assert!(!proven(&ws, &["status"]));
    assert_eq!(ws.pipe(&["status", "--json"]).ok().json(), fast);
    assert_eq!(ws.pipe(&["status"]).ok().stdout, fast_table);
    assert_eq!(fast["up_to_date"], true);
    assert_eq!(fast["stages"].as_array().unwrap().len(), 2);

    // `build` uses the proof `status` kept: nothing runs, no run is recorded.
    settle();
    ws.pipe(&["status"]).ok();
    let runs_before = std::fs::read_dir(ws.path(".pipe/runs")).unwrap().count();
    assert!(proven(&ws, &["build"]));
    ws.pipe(&["build"])
        .ok()
        .err_has("0 ran, 0 restored, 2 up to date");
    let doc = ws.pipe(&["build", "--json"]).ok().json();
    assert_eq!(doc["stages"][1]["name"], "train");
    assert_eq!(doc["stages"][1]["status"], "up_to_date");
    assert_eq!(
        std::fs::read_dir(ws.path(".pipe/runs")).unwrap().count(),
        runs_before
    );
    // A selection is its own proof: `status prep` shows prep alone.
    let one = ws.pipe(&["status", "prep", "--json"]).ok().json();
    assert_eq!(one["stages"].as_array().unwrap().len(), 1);
    // --force is never answered by a proof.
    ws.pipe(&["build", "--force", "train"]).ok();
    assert_eq!(ws.count("runs_train.txt"), 2);
}

#[test]
fn a_same_size_edit_of_a_dep_is_seen() {
    let ws = proven_ws();
    ws.write("raw.txt", "xyz\n");
    ws.pipe(&["status"]).code(1).out_has("dep changed: raw.txt");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_prep.txt"), 2);
}

#[test]
fn an_edited_or_removed_out_is_seen() {
    let ws = proven_ws();
    ws.write("clean.txt", "abd\n");
    ws.pipe(&["status"])
        .code(1)
        .out_has("out modified: clean.txt");
    let ws = proven_ws();
    std::fs::remove_file(ws.path("model.txt")).unwrap();
    ws.pipe(&["status"])
        .code(1)
        .out_has("out missing: model.txt");
    ws.pipe(&["build"]).ok();
    assert!(ws.exists("model.txt"));
}

#[test]
fn a_params_change_in_the_file_or_a_params_file_is_seen() {
    let ws = proven_ws();
    ws.write("Pipeline.toml", &PIPELINE.replace("lr = 0.1", "lr = 0.2"));
    ws.pipe(&["status"])
        .code(1)
        .out_has("param changed: lr (0.1 -> 0.2)");

    let ws = proven_ws();
    ws.write("conf.json", r#"{"lr": 0.1}"#);
    settle();
    ws.pipe(&["status", "--params-file", "conf.json"]).ok();
    assert!(proven(&ws, &["status", "--params-file", "conf.json"]));
    ws.write("conf.json", r#"{"lr": 0.3}"#);
    ws.pipe(&["status", "--params-file", "conf.json"])
        .code(1)
        .out_has("param changed: lr (0.1 -> 0.3)");
}

#[test]
fn an_edited_lock_is_seen() {
    let ws = proven_ws();
    let lock = ws.read("Pipeline.lock");
    let cut = lock.find("[stages.train]").expect("train's entry");
    ws.write("Pipeline.lock", &lock[..cut]);
    ws.pipe(&["status"]).code(1).out_has("never run");
}

#[test]
fn a_live_build_shows_its_running_stage() {
    let ws = Ws::new(&PIPELINE.replace(
        "cat raw.txt > clean.txt",
        "while [ -e hold ]; do sleep 0.05; done; cat raw.txt > clean.txt",
    ));
    ws.write("raw.txt", "abc\n");
    ws.pipe(&["build"]).ok();
    settle();
    ws.pipe(&["status"]).ok();
    assert!(proven(&ws, &["status"]));
    ws.write("hold", "");
    let child = ws.spawn(&["build", "--force", "prep"], "build.err");
    wait_until("prep to show as running", || {
        let v = ws.pipe(&["status", "--json"]).json();
        v["stages"][0]["state"] == "running"
    });
    std::fs::remove_file(ws.path("hold")).unwrap();
    finish(child, std::time::Duration::from_secs(60)).ok();
}

#[test]
fn a_change_inside_a_folder_or_glob_dep_is_seen() {
    let pipeline = r#"
[stages.a]
cmd = "ls -R data > list.txt"
deps = ["data"]
outs = ["list.txt"]

[stages.b]
cmd = "cat logs/*.log > all.txt"
deps = ["logs/*.log"]
outs = ["all.txt"]
"#;
    let ready = || {
        let ws = Ws::new(pipeline);
        ws.write("data/x.txt", "1");
        ws.write("data/sub/y.txt", "1");
        ws.write("logs/a.log", "a");
        ws.pipe(&["build"]).ok();
        settle();
        ws.pipe(&["status"]).ok();
        assert!(proven(&ws, &["status"]), "a walked folder is proven too");
        ws
    };
    // A file rewritten in a subfolder (same size), a file added, one removed.
    let ws = ready();
    ws.write("data/sub/y.txt", "2");
    ws.pipe(&["status"]).code(1).out_has("dep changed: data");
    let ws = ready();
    ws.write("data/sub/z.txt", "");
    ws.pipe(&["status"]).code(1).out_has("dep changed: data");
    let ws = ready();
    std::fs::remove_file(ws.path("data/x.txt")).unwrap();
    ws.pipe(&["status"]).code(1).out_has("dep changed: data");
    // A damaged record of the walks proves nothing (and the full path agrees all is fresh).
    let ws = ready();
    let tree = ws.path(".pipe/state/fresh.tree");
    let bytes = std::fs::read(&tree).unwrap();
    std::fs::write(&tree, &bytes[..bytes.len() - 3]).unwrap();
    assert!(!proven(&ws, &["status"]));
    ws.pipe(&["status"]).ok();
    // A new file the glob matches; one it does not match leaves b up to date.
    let ws = ready();
    ws.write("logs/b.txt", "b");
    ws.pipe(&["status"]).ok();
    ws.write("logs/b.log", "b");
    ws.pipe(&["status"])
        .code(1)
        .out_has("dep changed: logs/*.log");
}

#[test]
fn a_symlink_in_a_folder_dep_is_never_proven() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"cat data/* > all.txt\"\ndeps = [\"data\"]\nouts = [\"all.txt\"]\n",
    );
    ws.write("real.txt", "1");
    std::fs::create_dir(ws.path("data")).unwrap();
    std::os::unix::fs::symlink(ws.path("real.txt"), ws.path("data/link.txt")).unwrap();
    ws.pipe(&["build"]).ok();
    settle();
    ws.pipe(&["status"]).ok();
    assert!(!proven(&ws, &["status"]));
    // What the link leads to changes with no signature in the folder changing.
    ws.write("real.txt", "2");
    ws.pipe(&["status"]).code(1).out_has("dep changed: data");
}

#[test]
fn a_build_still_prunes_the_lock_entry_of_a_removed_stage() {
    let ws = proven_ws();
    let only_prep = &PIPELINE[..PIPELINE.find("[stages.train]").unwrap()];
    ws.write("Pipeline.toml", only_prep);
    settle();
    ws.pipe(&["status"]).ok();
    // status may prove prep up to date, but a build has the lock entry of train to prune.
    assert!(proven(&ws, &["status"]));
    assert!(ws.read("Pipeline.lock").contains("train"));
    ws.pipe(&["build"]).ok();
    assert!(!ws.read("Pipeline.lock").contains("train"));
    assert_eq!(ws.count("runs_prep.txt"), 1);
}
