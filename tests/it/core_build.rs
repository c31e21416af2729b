//! The core engine end to end: staleness reasons in `pipe status`, what `pipe build` runs,
//! Pipeline.lock, `pipe dag`, `pipe init`, `-C` and `-f`.

use crate::harness::{Run, Ws, assert_serial, rendezvous, serial, wait_for_event};

// ---------------------------------------------------------------- helpers

/// The reasons `pipe status` prints for `stage` in its table (stdout).
fn text_reasons(run: &Run, stage: &str) -> Vec<String> {
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .find("reasons")
        .unwrap_or_else(|| panic!("no table header\n{run}"));
    let mut current = String::new();
    let mut out = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            current = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        if current == stage && line.len() > col {
            let r = line[col..].trim();
            if !r.is_empty() {
                out.push(r.to_string());
            }
        }
    }
    out
}

/// The state and reasons of `stage` in `pipe status --json`.
fn json_stage(ws: &Ws, stage: &str) -> (String, Vec<String>) {
    let run = ws.pipe(&["status", "--json"]);
    let v = run.json();
    let s = v["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages array\n{run}"))
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage} in status --json\n{run}"))
        .clone();
    let reasons = s["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    (s["state"].as_str().unwrap().to_string(), reasons)
}

/// `stage` is stale with (at least) `reason`, in both the table and the JSON, and status exits 1.
fn assert_reason(ws: &Ws, stage: &str, reason: &str) {
    let run = ws.pipe(&["status"]);
    run.code(1);
    let text = text_reasons(&run, stage);
    assert!(
        text.iter().any(|r| r == reason),
        "table reasons of {stage} are {text:?}, expected {reason:?}\n{run}"
    );
    let (state, json) = json_stage(ws, stage);
    assert!(
        state == "stale" || state == "restorable",
        "{stage} state in --json is {state}"
    );
    assert!(
        json.iter().any(|r| r == reason),
        "json reasons of {stage} are {json:?}, expected {reason:?}"
    );
}

fn assert_up_to_date(ws: &Ws) {
    let run = ws.pipe(&["status", "--json"]);
    run.ok();
    let v = run.json();
    assert_eq!(v["up_to_date"], true, "{run}");
}

/// A stage `name` running `body` (no deps, no outs).
fn stage(name: &str, body: &str) -> String {
    format!("[stages.{name}]\ncmd = \"{body}\"\n")
}

const CHAIN: &str = r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo run >> runs_b.txt && cat a.txt a.txt > b.txt"
deps = ["a.txt"]
outs = ["b.txt"]

[stages.c]
cmd = "echo run >> runs_c.txt && cp other.txt c.txt"
deps = ["other.txt"]
outs = ["c.txt"]
"#;

fn chain() -> Ws {
    let ws = Ws::new(CHAIN);
    ws.write("in.txt", "hello\n");
    ws.write("other.txt", "other\n");
    ws
}

fn counts(ws: &Ws) -> (usize, usize, usize) {
    (
        ws.count("runs_a.txt"),
        ws.count("runs_b.txt"),
        ws.count("runs_c.txt"),
    )
}

// ---------------------------------------------------------------- staleness reasons

#[test]
fn status_never_run_and_exit_codes() {
    let ws = chain();
    assert_reason(&ws, "a", "never run");
    assert_reason(&ws, "b", "never run");
    // Every reason is listed, not only the first.
    assert_reason(&ws, "b", "upstream stale: a");
    ws.pipe(&["status", "--exit-zero"])
        .ok()
        .out_has("never run");
    ws.pipe(&["status", "--json", "--exit-zero"]).ok();
    ws.pipe(&["build"]).ok();
    assert_up_to_date(&ws);
    let run = ws.pipe(&["status"]);
    run.ok();
    assert!(text_reasons(&run, "a").is_empty(), "{run}");
}

#[test]
fn status_command_changed_counts_whitespace() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo hi > a.txt"
outs = ["a.txt"]
"#,
    );
    ws.pipe(&["build"]).ok();
    assert_up_to_date(&ws);
    ws.write(
        "Pipeline.toml",
        "\n[stages.a]\ncmd = \"echo hi  > a.txt\"\nouts = [\"a.txt\"]\n",
    );
    assert_reason(&ws, "a", "command changed");
}

#[test]
fn status_comment_and_retries_do_not_make_stale() {
    let ws = Ws::new("[stages.a]\ncmd = \"echo hi > a.txt\"\nouts = [\"a.txt\"]\n");
    ws.pipe(&["build"]).ok();
    ws.write(
        "Pipeline.toml",
        "# a comment\n[stages.a]\ncmd = \"echo hi > a.txt\"   # why\nouts = [\"a.txt\"]\nretries = 3\ntimeout = \"1h\"\n",
    );
    assert_up_to_date(&ws);
}

#[test]
fn status_dep_changed() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "changed\n");
    assert_reason(&ws, "a", "dep changed: in.txt");
    assert_reason(&ws, "b", "upstream stale: a");
    let (state, reasons) = json_stage(&ws, "c");
    assert_eq!((state.as_str(), reasons.len()), ("up_to_date", 0));
}

#[test]
fn status_dep_added_and_removed() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "cat x.txt > a.txt"
deps = ["x.txt"]
outs = ["a.txt"]
"#,
    );
    ws.write("x.txt", "x\n");
    ws.write("y.txt", "y\n");
    ws.pipe(&["build"]).ok();
    ws.write(
        "Pipeline.toml",
        "[stages.a]\ncmd = \"cat x.txt > a.txt\"\ndeps = [\"x.txt\", \"y.txt\"]\nouts = [\"a.txt\"]\n",
    );
    assert_reason(&ws, "a", "dep added: y.txt");
    ws.pipe(&["build"]).ok();
    assert_up_to_date(&ws);
    ws.write(
        "Pipeline.toml",
        "[stages.a]\ncmd = \"cat x.txt > a.txt\"\ndeps = [\"y.txt\"]\nouts = [\"a.txt\"]\n",
    );
    assert_reason(&ws, "a", "dep removed: x.txt");
}

#[test]
fn status_param_changed_shows_old_and_new() {
    let pipeline = |lr: &str, name: &str| {
        format!(
            "[params]\nname = \"{name}\"\n[params.train]\nlr = {lr}\nepochs = 3\n\n[stages.t]\ncmd = \"echo ${{params.train.lr}} > t.txt\"\nouts = [\"t.txt\"]\nparams = [\"train\", \"name\"]\n"
        )
    };
    let ws = Ws::new(&pipeline("0.5", "hex8"));
    ws.pipe(&["build"]).ok();
    assert_up_to_date(&ws);
    ws.write("Pipeline.toml", &pipeline("0.25", "hex9"));
    assert_reason(&ws, "t", "param changed: train.lr (0.5 -> 0.25)");
    assert_reason(&ws, "t", "param changed: name (\"hex8\" -> \"hex9\")");
}

#[test]
fn status_env_changed() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"echo $FOO > a.txt\"\nouts = [\"a.txt\"]\nenv = { FOO = \"1\", BAR = \"x\" }\n",
    );
    ws.pipe(&["build"]).ok();
    ws.write(
        "Pipeline.toml",
        "[stages.a]\ncmd = \"echo $FOO > a.txt\"\nouts = [\"a.txt\"]\nenv = { FOO = \"2\", BAR = \"x\" }\n",
    );
    assert_reason(&ws, "a", "env changed: FOO");
    let (_, reasons) = json_stage(&ws, "a");
    assert!(
        !reasons.iter().any(|r| r.contains("BAR")),
        "BAR did not change: {reasons:?}"
    );
}

#[test]
fn status_outs_changed() {
    let ws = Ws::new("[stages.a]\ncmd = \"echo 1 > a.txt; echo 2 > b.txt\"\nouts = [\"a.txt\"]\n");
    ws.pipe(&["build"]).ok();
    ws.write(
        "Pipeline.toml",
        "[stages.a]\ncmd = \"echo 1 > a.txt; echo 2 > b.txt\"\nouts = [\"a.txt\", \"b.txt\"]\n",
    );
    assert_reason(&ws, "a", "outs changed");
}

#[test]
fn status_out_missing_and_out_modified() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.write("b.txt", "edited by hand\n");
    assert_reason(&ws, "a", "out missing: a.txt");
    assert_reason(&ws, "b", "out modified: b.txt");
    // Hand edits are undone by the next build; the deleted out comes back.
    ws.pipe(&["build", "--no-cache"]).ok();
    assert_eq!(ws.read("a.txt"), "hello\n");
    assert_eq!(ws.read("b.txt"), "hello\nhello\n");
    assert_up_to_date(&ws);
}

#[test]
fn status_lists_every_reason_of_a_stage() {
    let ws = Ws::new(
        "[params]\nx = 1\n[stages.a]\ncmd = \"echo hi > a.txt\"\ndeps = [\"in.txt\"]\nouts = [\"a.txt\"]\nparams = [\"x\"]\nenv = { E = \"1\" }\n",
    );
    ws.write("in.txt", "1\n");
    ws.pipe(&["build"]).ok();
    ws.write(
        "Pipeline.toml",
        "[params]\nx = 2\n[stages.a]\ncmd = \"echo  hi > a.txt\"\ndeps = [\"in.txt\"]\nouts = [\"a.txt\"]\nparams = [\"x\"]\nenv = { E = \"2\" }\n",
    );
    ws.write("in.txt", "2\n");
    ws.write("a.txt", "hand edit\n");
    let want = [
        "command changed",
        "env changed: E",
        "param changed: x (1 -> 2)",
        "dep changed: in.txt",
        "out modified: a.txt",
    ];
    let run = ws.pipe(&["status"]);
    run.code(1);
    let text = text_reasons(&run, "a");
    let (_, json) = json_stage(&ws, "a");
    for w in want {
        assert!(text.iter().any(|r| r == w), "table lacks {w:?}: {text:?}");
        assert!(json.iter().any(|r| r == w), "json lacks {w:?}: {json:?}");
    }
}

#[test]
fn status_always_and_build_dry_run_forced() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"echo hi > a.txt\"\nouts = [\"a.txt\"]\n\n[stages.clock]\ncmd = \"date +%s.%N >> ticks.txt\"\ndeps = [\"a.txt\"]\nouts = [\"ticks.txt\"]\nalways = true\n",
    );
    ws.pipe(&["build"]).ok();
    assert_reason(&ws, "clock", "always");
    let (state, _) = json_stage(&ws, "a");
    assert_eq!(state, "up_to_date");

    let run = ws.pipe(&["build", "--dry-run", "--force", "a"]);
    run.ok();
    assert!(
        run.stderr.contains("forced") || run.stdout.contains("forced"),
        "{run}"
    );
    let v = ws.pipe(&["build", "--dry-run", "--force", "--json"]).json();
    for s in v["stages"].as_array().unwrap() {
        let reasons: Vec<&str> = s["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["text"].as_str().unwrap())
            .collect();
        assert!(reasons.contains(&"forced"), "{s}");
        assert_eq!(s["status"], "stale", "{s}");
    }
    // The dry run ran nothing.
    assert_eq!(ws.count("ticks.txt"), 1);
}

// ---------------------------------------------------------------- what build runs

#[test]
fn noop_rebuild_runs_nothing() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    assert_eq!(counts(&ws), (1, 1, 1));
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "-j", "1"]).ok();
    assert_eq!(counts(&ws), (1, 1, 1));
    let v = ws.pipe(&["build", "--json"]).json();
    for s in v["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "up_to_date", "{s}");
    }
}

#[test]
fn dep_edit_reruns_stage_and_downstream_only() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "edited\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(counts(&ws), (2, 2, 1));
    assert_eq!(ws.read("b.txt"), "edited\nedited\n");
}

#[test]
fn param_change_reruns_only_stages_using_the_key() {
    let pipeline = |x: i32, y: i32| {
        format!(
            r#"
[params]
x = {x}
y = {y}

[stages.lists_x]
cmd = "echo run >> runs_x.txt; echo $PIPE_PARAM_X > x.txt"
outs = ["x.txt"]
params = ["x"]

[stages.lists_y]
cmd = "echo run >> runs_y.txt; echo y > y.txt"
outs = ["y.txt"]
params = ["y"]

[stages.uses_x]
cmd = "echo run >> runs_u.txt; echo ${{params.x}} > u.txt"
outs = ["u.txt"]
"#
        )
    };
    let ws = Ws::new(&pipeline(1, 1));
    ws.pipe(&["build"]).ok();
    ws.write("Pipeline.toml", &pipeline(2, 1));
    // `${params.x}` in cmd counts as using x.
    assert_reason(&ws, "uses_x", "param changed: x (1 -> 2)");
    let (state, _) = json_stage(&ws, "lists_y");
    assert_eq!(state, "up_to_date");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_x.txt"), 2);
    assert_eq!(ws.count("runs_u.txt"), 2);
    assert_eq!(ws.count("runs_y.txt"), 1);
    assert_eq!(ws.read("x.txt"), "2\n");
    assert_eq!(ws.read("u.txt"), "2\n");
}

#[test]
fn set_overrides_a_param_for_one_run() {
    let ws = Ws::new(
        "[params.train]\nlr = 0.5\n[stages.t]\ncmd = \"echo ${params.train.lr} $PIPE_PARAM_TRAIN_LR > t.txt\"\nouts = [\"t.txt\"]\nparams = [\"train.lr\"]\n",
    );
    ws.pipe(&["build", "--set", "train.lr=0.01"]).ok();
    assert_eq!(ws.read("t.txt"), "0.01 0.01\n");
    ws.pipe(&["status", "--set", "train.lr=0.01"]).ok();
    assert_reason(&ws, "t", "param changed: train.lr (0.01 -> 0.5)");
    ws.pipe(&["build", "--no-cache"]).ok();
    assert_eq!(ws.read("t.txt"), "0.5 0.5\n");
}

#[test]
fn param_env_vars_for_listed_keys_and_tables() {
    let ws = Ws::new(
        r#"
[params]
board = "hex8"
[params.train]
lr = 0.001
epochs = 10

[stages.e]
cmd = "env | grep ^PIPE_PARAM_ | sort > env.txt"
outs = ["env.txt"]
params = ["board", "train"]
"#,
    );
    ws.pipe(&["build"]).ok();
    let env = ws.read("env.txt");
    for line in [
        "PIPE_PARAM_BOARD=hex8",
        "PIPE_PARAM_TRAIN_LR=0.001",
        "PIPE_PARAM_TRAIN_EPOCHS=10",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
}

#[test]
fn file_added_to_a_folder_dep_reruns() {
    let ws = Ws::new(
        "[stages.f]\ncmd = \"echo run >> runs.txt; ls data > f.txt\"\ndeps = [\"data/\"]\nouts = [\"f.txt\"]\n",
    );
    ws.write("data/a.txt", "a\n");
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 1);
    ws.write("data/sub/b.txt", "b\n");
    let (state, reasons) = json_stage(&ws, "f");
    assert_eq!(state, "stale");
    assert!(
        reasons.iter().any(|r| r.starts_with("dep changed: data")),
        "{reasons:?}"
    );
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 2);
    assert_eq!(ws.read("f.txt"), "a.txt\nsub\n");
}

#[test]
fn new_file_matching_a_glob_dep_reruns_and_others_do_not() {
    let ws = Ws::new(
        "[stages.g]\ncmd = \"echo run >> runs.txt; cat raw/*/*.jsonl > g.txt\"\ndeps = [\"raw/**/*.jsonl\"]\nouts = [\"g.txt\"]\n",
    );
    ws.write("raw/a/1.jsonl", "{\"a\":1}\n");
    ws.pipe(&["build"]).ok();
    ws.write("raw/a/notes.txt", "not matched\n");
    assert_up_to_date(&ws);
    ws.write("raw/b/2.jsonl", "{\"b\":2}\n");
    assert_reason(&ws, "g", "dep changed: raw/**/*.jsonl");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 2);
    assert_eq!(ws.read("g.txt"), "{\"a\":1}\n{\"b\":2}\n");
}

#[test]
fn early_cutoff_identical_outs_do_not_rerun_downstream() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo run >> runs_a.txt; wc -l < in.txt | tr -d ' ' > a.txt"
deps = ["in.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo run >> runs_b.txt; cp a.txt b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
"#,
    );
    ws.write("in.txt", "one\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "uno\n"); // same line count: a writes the same a.txt
    assert_reason(&ws, "b", "upstream stale: a");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 2);
    assert_eq!(ws.count("runs_b.txt"), 1);
    assert_up_to_date(&ws);
    ws.write("in.txt", "uno\ndos\n"); // a's out changes: b reruns
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_b.txt"), 2);
    assert_eq!(ws.read("b.txt"), "2\n");
}

#[test]
fn diamond_runs_each_stage_once() {
    let ws = Ws::new(
        r#"
[stages.top]
cmd = "echo run >> runs_top.txt; cp in.txt top.txt"
deps = ["in.txt"]
outs = ["top.txt"]

[stages.left]
cmd = "echo run >> runs_left.txt; cat top.txt > left.txt"
deps = ["top.txt"]
outs = ["left.txt"]

[stages.right]
cmd = "echo run >> runs_right.txt; cat top.txt > right.txt"
deps = ["top.txt"]
outs = ["right.txt"]

[stages.bottom]
cmd = "echo run >> runs_bottom.txt; cat left.txt right.txt > bottom.txt"
deps = ["left.txt", "right.txt"]
outs = ["bottom.txt"]
"#,
    );
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build", "-j", "4"]).ok();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build", "-j", "4"]).ok();
    for s in ["top", "left", "right", "bottom"] {
        assert_eq!(ws.count(&format!("runs_{s}.txt")), 2, "{s}");
    }
    assert_eq!(ws.read("bottom.txt"), "v2\nv2\n");
}

#[test]
fn jobs_two_overlap_and_jobs_one_never() {
    // Under -j 2 each stage waits for the other to start: the build passes only if they ran
    // at the same time.
    let both = rendezvous("ready", 2);
    let ws = Ws::new(&format!("{}\n{}", stage("p", &both), stage("q", &both)));
    ws.pipe(&["build", "-j", "2"]).ok();

    // Under -j 1 the start/end lines of the two stages never interleave.
    let ws = Ws::new(&format!(
        "{}\n{}",
        stage("p", &serial("p")),
        stage("q", &serial("q"))
    ));
    ws.pipe(&["build", "-j", "1"]).ok();
    let mut order = assert_serial(&ws);
    order.sort();
    assert_eq!(order, ["p", "q"]);
}

#[test]
fn pipeline_jobs_key_is_the_default_parallelism() {
    let ws = Ws::new(&format!(
        "[pipeline]\njobs = 1\n\n{}\n{}",
        stage("p", &serial("p")),
        stage("q", &serial("q"))
    ));
    ws.pipe(&["build"]).ok();
    assert_eq!(assert_serial(&ws).len(), 2, "jobs = 1 but p and q overlap");
}

const FAILING: &str = r#"
[stages.bad]
cmd = "printf 'fir%s\\n' st-line; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30; do echo noise$i; done; printf 'the-%s\\n' last-words; exit 3"
outs = ["bad.txt"]

[stages.slow]
cmd = "WAIT_FOR_FAILURE; echo ok > slow.txt"
outs = ["slow.txt"]

[stages.late]
cmd = "echo ok > late.txt"
deps = ["slow.txt"]
outs = ["late.txt"]
"#;

/// FAILING, where `slow` keeps running until pipe has recorded the failure of `bad`.
fn failing() -> String {
    FAILING.replace("WAIT_FOR_FAILURE", &wait_for_event("stage_fail"))
}

#[test]
fn fail_fast_lets_running_stages_finish_and_starts_nothing_new() {
    let ws = Ws::new(&failing());
    let run = ws.pipe(&["build", "-j", "2"]);
    run.code(1).err_has("bad").err_has("the-last-words");
    assert!(
        !run.stderr.contains("first-line"),
        "only the last lines of the log are shown\n{run}"
    );
    assert!(
        ws.exists("slow.txt"),
        "the running stage was not let finish"
    );
    assert!(
        !ws.exists("late.txt"),
        "a new stage started after a failure"
    );
}

#[test]
fn keep_going_runs_what_does_not_depend_on_the_failure() {
    let ws = Ws::new(
        &r#"
[stages.bad]
cmd = "exit 1"
outs = ["bad.txt"]

[stages.after_bad]
cmd = "echo ok > after_bad.txt"
deps = ["bad.txt"]
outs = ["after_bad.txt"]

[stages.slow]
cmd = "WAIT_FOR_FAILURE; echo ok > slow.txt"
outs = ["slow.txt"]

[stages.late]
cmd = "echo ok > late.txt"
deps = ["slow.txt"]
outs = ["late.txt"]
"#
        .replace("WAIT_FOR_FAILURE", &wait_for_event("stage_fail")),
    );
    // `late` becomes ready only after `bad` failed.
    let run = ws.pipe(&["build", "-j", "2", "--keep-going", "--json"]);
    run.code(1);
    assert!(ws.exists("late.txt"));
    assert!(!ws.exists("after_bad.txt"));
    let v = run.json();
    let status = |n: &str| {
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .map(|s| s["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("bad").as_deref(), Some("failed"));
    assert_eq!(status("late").as_deref(), Some("ran"));
    assert_ne!(status("after_bad").as_deref(), Some("ran"));
}

#[test]
fn a_failed_stage_is_not_locked_and_runs_again() {
    let ws = Ws::new(
        r#"
[stages.ok]
cmd = "echo ok > ok.txt"
outs = ["ok.txt"]

[stages.flaky]
cmd = "echo try >> tries.txt; test -f fixed && echo done > f.txt"
deps = ["ok.txt"]
outs = ["f.txt"]
"#,
    );
    ws.pipe(&["build"]).code(1);
    let lock = ws.read("Pipeline.lock");
    assert!(lock.contains("[stages.ok]"), "{lock}");
    assert!(!lock.contains("[stages.flaky"), "{lock}");
    assert_reason(&ws, "flaky", "never run");
    ws.pipe(&["build"]).code(1);
    assert_eq!(ws.count("tries.txt"), 2);
    ws.write("fixed", "");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("tries.txt"), 3);
    assert!(ws.read("Pipeline.lock").contains("[stages.flaky]"));
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("tries.txt"), 3);
}

#[test]
fn a_missing_declared_out_fails_the_stage_naming_it() {
    let ws =
        Ws::new("[stages.a]\ncmd = \"echo hi > a.txt\"\nouts = [\"a.txt\", \"forgotten.bin\"]\n");
    let run = ws.pipe(&["build"]);
    run.code(1).err_has("forgotten.bin");
    let lock = std::fs::read_to_string(ws.path("Pipeline.lock")).unwrap_or_default();
    assert!(!lock.contains("[stages.a]"), "{lock}");
    assert_reason(&ws, "a", "never run");
}

#[test]
fn targets_build_only_their_upstream() {
    let ws = chain();
    ws.pipe(&["build", "b"]).ok();
    assert_eq!(counts(&ws), (1, 1, 0));
    assert!(!ws.exists("c.txt"));
    ws.pipe(&["build", "c"]).ok();
    assert_eq!(counts(&ws), (1, 1, 1));
}

#[test]
fn downstream_flag_also_builds_dependents() {
    let ws = chain();
    ws.pipe(&["build", "a"]).ok();
    assert_eq!(counts(&ws), (1, 0, 0));
    ws.pipe(&["build", "a", "--downstream"]).ok();
    assert_eq!(counts(&ws), (1, 1, 0));
}

#[test]
fn force_and_force_all() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "--force", "b"]).ok();
    assert_eq!(counts(&ws), (1, 2, 1));
    ws.pipe(&["build", "--force-all", "b"]).ok();
    assert_eq!(counts(&ws), (2, 3, 1));
    ws.pipe(&["build", "--force"]).ok();
    assert_eq!(counts(&ws), (3, 4, 2));
}

#[test]
fn frozen_never_runs_and_downstream_uses_its_outs() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    let frozen = CHAIN.replacen("outs = [\"a.txt\"]", "outs = [\"a.txt\"]\nfrozen = true", 1);
    ws.write("Pipeline.toml", &frozen);
    ws.write("in.txt", "changed\n");
    let (state, _) = json_stage(&ws, "a");
    assert_eq!(state, "frozen");
    assert_up_to_date(&ws);
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "--force", "a"]).ok();
    assert_eq!(counts(&ws), (1, 1, 1));
    // The frozen stage's out is what downstream is judged on.
    ws.write("a.txt", "by hand\n");
    assert_reason(&ws, "b", "dep changed: a.txt");
    ws.pipe(&["build"]).ok();
    assert_eq!(counts(&ws), (1, 2, 1));
    assert_eq!(ws.read("b.txt"), "by hand\nby hand\n");
}

#[test]
fn always_runs_every_build() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"echo run >> runs.txt; echo x > a.txt\"\nouts = [\"a.txt\"]\nalways = true\n",
    );
    for _ in 0..3 {
        ws.pipe(&["build"]).ok();
    }
    assert_eq!(ws.count("runs.txt"), 3);
}

#[test]
fn no_deps_runs_once_and_no_deps_no_outs_runs_every_build() {
    let ws = Ws::new(
        r#"
[stages.download]
cmd = "echo run >> runs_d.txt; echo data > d.txt"
outs = ["d.txt"]

[stages.notify]
cmd = "echo run >> runs_n.txt"
"#,
    );
    for _ in 0..3 {
        ws.pipe(&["build"]).ok();
    }
    assert_eq!(ws.count("runs_d.txt"), 1);
    assert_eq!(ws.count("runs_n.txt"), 3);
}

#[test]
fn dry_run_runs_and_writes_nothing() {
    let ws = chain();
    let run = ws.pipe(&["build", "--dry-run"]);
    run.ok();
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("never run"), "plan shows reasons\n{run}");
    assert_eq!(counts(&ws), (0, 0, 0));
    for f in ["a.txt", "b.txt", "c.txt", "Pipeline.lock", ".pipe/runs"] {
        assert!(!ws.exists(f), "{f} written by a dry run");
    }
    ws.pipe(&["build"]).ok();
    let lock = ws.read("Pipeline.lock");
    ws.write("in.txt", "changed\n");
    ws.pipe(&["build", "-n"]).ok();
    assert_eq!(ws.read("Pipeline.lock"), lock);
    assert_eq!(ws.read("a.txt"), "hello\n");
    assert_eq!(counts(&ws), (1, 1, 1));
}

#[test]
fn build_json_summary() {
    let ws = chain();
    ws.pipe(&["build", "a"]).ok();
    let run = ws.pipe(&["build", "--json"]);
    run.ok();
    let v = run.json();
    assert_eq!(v["status"], "success", "{run}");
    assert_eq!(v["exit_code"], 0);
    assert!(v["run_id"].is_string());
    let st: Vec<(String, String)> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(st.contains(&("a".into(), "up_to_date".into())), "{st:?}");
    assert!(st.contains(&("b".into(), "ran".into())), "{st:?}");
    assert!(st.contains(&("c".into(), "ran".into())), "{st:?}");
}

#[test]
fn cmd_list_runs_in_order_and_stops_at_a_failure() {
    let ws = Ws::new(
        "[stages.a]\ncmd = [\"echo one >> order.txt\", \"echo two >> order.txt\", \"echo three >> order.txt\"]\n",
    );
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("order.txt"), "one\ntwo\nthree\n");
    let ws = Ws::new(
        "[stages.a]\ncmd = [\"echo one >> order.txt\", \"exit 4\", \"echo two >> order.txt\"]\n",
    );
    ws.pipe(&["build"]).code(1);
    assert_eq!(ws.read("order.txt"), "one\n");
}

#[test]
fn wdir_runs_the_command_there() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"pwd > here.txt; cat input.txt > copy.txt\"\nwdir = \"sub\"\ndeps = [\"sub/input.txt\"]\nouts = [\"sub/here.txt\", \"sub/copy.txt\"]\n",
    );
    ws.write("sub/input.txt", "in sub\n");
    ws.pipe(&["build"]).ok();
    let here = std::fs::canonicalize(ws.read("sub/here.txt").trim()).unwrap();
    assert_eq!(here, std::fs::canonicalize(ws.path("sub")).unwrap());
    assert_eq!(ws.read("sub/copy.txt"), "in sub\n");
    assert_up_to_date(&ws);
}

#[test]
fn after_orders_without_data() {
    let ws = Ws::new(&format!(
        "{}{}after = [\"first\"]\n",
        stage("first", &serial("first")),
        stage("second", &serial("second"))
    ));
    ws.pipe(&["build", "-j", "4"]).ok();
    assert_eq!(assert_serial(&ws), ["first", "second"]);
}

#[test]
fn outs_parent_folders_exist_before_the_run() {
    let ws = Ws::new("[stages.a]\ncmd = \"echo x > deep/er/a.txt\"\nouts = [\"deep/er/a.txt\"]\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("deep/er/a.txt"), "x\n");
}

// ---------------------------------------------------------------- Pipeline.lock

#[test]
fn lock_is_versioned_stable_and_deterministic() {
    let ws = chain();
    ws.pipe(&["build"]).ok();
    let lock = ws.read("Pipeline.lock");
    let first = lock.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(first.replace(' ', ""), "version=1");
    ws.pipe(&["build"]).ok();
    assert_eq!(
        ws.read("Pipeline.lock"),
        lock,
        "no-op build changed the lock"
    );
    ws.pipe(&["status"]).ok();
    assert_eq!(ws.read("Pipeline.lock"), lock);

    // The same state in another workspace, stages declared in another order, built with
    // another -j: the same bytes.
    let mut blocks: Vec<&str> = CHAIN.split("\n\n").collect();
    blocks.reverse();
    let other = Ws::new(&blocks.join("\n\n"));
    other.write("in.txt", "hello\n");
    other.write("other.txt", "other\n");
    other.pipe(&["build", "-j", "1"]).ok();
    assert_eq!(other.read("Pipeline.lock"), lock);
    // Stages are sorted by name.
    let pos = |s: &str| lock.find(s).unwrap_or_else(|| panic!("{s} in lock"));
    assert!(pos("[stages.a]") < pos("[stages.b]") && pos("[stages.b]") < pos("[stages.c]"));
}

// ---------------------------------------------------------------- dag, init, -C, -f

#[test]
fn dag_formats_contain_the_edges() {
    let ws = chain();
    let ascii = ws.pipe(&["dag"]);
    ascii.ok();
    let ascii2 = ws.pipe(&["dag", "--format", "ascii"]);
    assert_eq!(ascii.stdout, ascii2.stdout);
    assert!(
        ascii
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with('b') && l.contains("<- a") && !l.contains('c')),
        "{ascii}"
    );
    let dot = ws.pipe(&["dag", "--format", "dot"]);
    dot.ok().out_has("digraph").out_has("\"a\" -> \"b\"");
    assert!(!dot.stdout.contains("-> \"c\""), "{dot}");
    let mer = ws.pipe(&["dag", "--format", "mermaid"]);
    mer.ok().out_has("a --> b");
    assert!(!mer.stdout.contains("--> c"), "{mer}");
}

#[test]
fn init_writes_a_valid_buildable_pipeline_and_never_overwrites() {
    let ws = Ws::new("");
    std::fs::remove_file(ws.path("Pipeline.toml")).unwrap();
    ws.write(".gitignore", "target/\n");
    ws.pipe(&["init"]).ok();
    ws.pipe(&["validate"]).ok();
    ws.pipe(&["build"]).ok();
    assert_up_to_date(&ws);
    let gi = ws.read(".gitignore");
    assert!(gi.lines().any(|l| l == "target/"), "{gi}");
    assert!(
        gi.lines()
            .any(|l| l.trim() == ".pipe/" || l.trim() == ".pipe"),
        "{gi}"
    );

    let before = ws.read("Pipeline.toml");
    ws.pipe(&["init"]).code(2).err_has("Pipeline.toml");
    assert_eq!(ws.read("Pipeline.toml"), before);
    let gi2 = ws.read(".gitignore");
    assert_eq!(gi2.matches(".pipe").count(), 1, "{gi2}");

    let mine = Ws::new("[stages.mine]\ncmd = \"true\"\n");
    mine.pipe(&["init"]).code(2);
    assert_eq!(
        mine.read("Pipeline.toml"),
        "[stages.mine]\ncmd = \"true\"\n"
    );
}

#[test]
fn init_creates_gitignore_when_absent() {
    let ws = Ws::new("");
    std::fs::remove_file(ws.path("Pipeline.toml")).unwrap();
    ws.pipe(&["init"]).ok();
    assert!(ws.read(".gitignore").contains(".pipe"));
    assert!(ws.exists("Pipeline.toml"));
}

#[test]
fn dash_c_runs_in_another_folder() {
    let ws = chain();
    let elsewhere = tempfile::tempdir().unwrap();
    let run: Run = ws
        .cmd(&["-C", ws.root().to_str().unwrap(), "build"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap()
        .into();
    run.ok();
    assert_eq!(counts(&ws), (1, 1, 1));
    assert!(ws.exists("Pipeline.lock"));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    let st: Run = ws
        .cmd(&["-C", ws.root().to_str().unwrap(), "status"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap()
        .into();
    st.ok();
}

#[test]
fn dash_f_uses_another_pipeline_file() {
    let ws = Ws::new("[stages.default]\ncmd = \"echo default > default.txt\"\n");
    ws.write(
        "pipelines/alt.toml",
        "[stages.alt]\ncmd = \"echo alt > alt.txt\"\nouts = [\"alt.txt\"]\n",
    );
    ws.pipe(&["-f", "pipelines/alt.toml", "build"]).ok();
    assert!(!ws.exists("default.txt"));
    // The file's folder is the workspace.
    assert_eq!(ws.read("pipelines/alt.txt"), "alt\n");
    ws.pipe(&["-f", "pipelines/alt.toml", "status"]).ok();
    let run = ws.pipe(&["-f", "pipelines/alt.toml", "status", "--json"]);
    let v = run.json();
    let names: Vec<&str> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alt"]);
    ws.pipe(&["-f", "pipelines/missing.toml", "status"])
        .code(2)
        .err_has("missing.toml");
}

#[test]
fn color_and_pipe_log_control_diagnostics() {
    let ws = Ws::new("[stages.a]\ncmd = \"echo a > a.txt\"\nouts = [\"a.txt\"]\n");
    let plain = ws.pipe(&["build", "--force"]);
    plain.ok();
    assert!(
        !plain.stderr.contains('\x1b'),
        "colour without a terminal:\n{plain}"
    );
    let coloured = ws.pipe(&["--color", "always", "build", "--force"]);
    assert!(coloured.stderr.contains("\x1b[1;32m"), "{coloured}");
    // NO_COLOR (set by the helper) wins over auto; PIPE_LOG turns on the decision trace.
    let traced: Run = ws
        .cmd(&["build"])
        .env("PIPE_LOG", "pipe=debug")
        .output()
        .unwrap()
        .into();
    traced
        .ok()
        .err_has("judged")
        .err_has("stage=a")
        .err_has("verdict=\"up to date\"");
    assert!(!traced.stderr.contains('\x1b'), "{traced}");
}

#[test]
fn a_noop_build_writes_nothing_but_still_drops_lock_entries_of_removed_stages() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"echo a > a.txt\"\nouts = [\"a.txt\"]\n\n[stages.b]\ncmd = \"echo b > b.txt\"\nouts = [\"b.txt\"]\n",
    );
    ws.pipe(&["build"]).ok();
    let runs = || std::fs::read_dir(ws.path(".pipe/runs")).unwrap().count();
    let (lock, before) = (ws.read("Pipeline.lock"), runs());
    // Nothing to do: no run folder, no event log, the lock untouched; -v still lists the
    // stages and --json still says what each is.
    ws.pipe(&["build", "-v"])
        .ok()
        .err_has("Fresh a")
        .err_has("0 ran, 0 restored, 2 up to date");
    let j = ws.pipe(&["build", "--json"]).ok().json();
    assert_eq!(j["run_id"], serde_json::Value::Null);
    assert_eq!(j["stages"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(runs(), before, "a no-op build left a run folder");
    assert_eq!(ws.read("Pipeline.lock"), lock);
    // `b` leaves the pipeline: the next build has nothing to run, but drops b's entry.
    ws.write(
        "Pipeline.toml",
        "[stages.a]\ncmd = \"echo a > a.txt\"\nouts = [\"a.txt\"]\n",
    );
    ws.pipe(&["build"])
        .ok()
        .err_has("0 ran, 0 restored, 1 up to date");
    let lock = ws.read("Pipeline.lock");
    assert!(
        lock.contains("[stages.a]") && !lock.contains("[stages.b]"),
        "{lock}"
    );
}

/// A command that is one program with plain words and `<` / `>` runs without `sh` (see
/// `docs/pipeline-toml.md`): it must behave exactly as under `sh -c`.
#[test]
fn a_plain_command_runs_as_the_shell_would_run_it() {
    let ws = Ws::new(
        r#"
[stages.upper]
cmd = "tr a-z A-Z < in.txt > out/upper.txt"
deps = ["in.txt"]
outs = ["out/upper.txt"]

[stages.env]
cmd = "env > ../env.txt"
wdir = "sub"
deps = ["out/upper.txt"]
outs = ["env.txt"]
env = { GREETING = "hi" }

[stages.appended]
cmd = "cat in.txt >> app.txt"
deps = ["in.txt"]
outs = ["app.txt"]
"#,
    );
    ws.write("in.txt", "hello\n");
    ws.write("sub/.keep", "");
    ws.write("app.txt", "old\n");
    // Run from another folder (`-C`): the program's PWD is its own folder, as sh's would be.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = ws
        .cmd(&["-C", ws.root().to_str().unwrap(), "build"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(ws.read("out/upper.txt"), "HELLO\n");
    let env = ws.read("env.txt");
    assert!(env.contains("PIPE_STAGE=env\n"), "{env}");
    assert!(env.contains("GREETING=hi\n"), "{env}");
    let pwd = env.lines().find_map(|l| l.strip_prefix("PWD=")).unwrap();
    assert_eq!(
        std::fs::canonicalize(pwd).unwrap(),
        std::fs::canonicalize(ws.path("sub")).unwrap(),
        "{env}"
    );
    // `>>` appends (the old out was removed before the stage ran, so only this run's line).
    assert_eq!(ws.read("app.txt"), "hello\n");
}

#[test]
fn a_plain_command_that_cannot_start_fails_with_the_shells_words_and_code() {
    // A missing input: sh's "cannot open" and exit 2; the out named after it is untouched.
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "tr a-z A-Z < missing.txt > a.txt"
outs = ["a.txt"]
"#,
    );
    ws.pipe(&["build"]).code(1).err_has("exited with code 2");
    let log = std::fs::read_to_string(ws.last_run_dir().join("logs/a.log")).unwrap();
    assert!(log.contains("missing.txt"), "{log}");
    assert!(!ws.exists("a.txt"));
    // A program that is not on PATH: sh's "not found" and exit 127.
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "no-such-program-here --flag > a.txt"
outs = ["a.txt"]
"#,
    );
    ws.pipe(&["build"]).code(1).err_has("exited with code 127");
    let log = std::fs::read_to_string(ws.last_run_dir().join("logs/a.log")).unwrap();
    assert!(log.contains("not found"), "{log}");
}
