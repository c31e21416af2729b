//! Every validation error exits 2 before any command runs, naming file:line and the stage;
//! broken input never panics.

use crate::harness::{Run, Ws};

/// A stage that leaves a marker if anything runs at all; appended after the pipeline under test.
const MARKER: &str = "\n[stages.zz_marker]\ncmd = \"touch ran-marker\"\n";

/// Checks `pipeline` is rejected by `validate`, `status` and `build` with exit 2, before any
/// command runs, with a message holding `Pipeline.toml:LINE:`, the stage and `needles`.
fn rejects(pipeline: &str, line: usize, stage: &str, needles: &[&str]) -> Run {
    let ws = Ws::new(&format!("{pipeline}{MARKER}"));
    ws.write("present.txt", "here\n");
    let mut last = None;
    for args in [
        &["validate"][..],
        &["status"],
        &["build"],
        &["build", "-j", "1"],
    ] {
        let run = ws.pipe(args);
        run.code(2)
            .err_has(&format!("Pipeline.toml:{line}:"))
            .err_has(&format!("stage `{stage}`"));
        for n in needles {
            run.err_has(n);
        }
        assert!(
            !ws.exists("ran-marker"),
            "a command ran before validation failed ({args:?})\n{run}"
        );
        assert!(!ws.exists("Pipeline.lock"), "{args:?} wrote a lock\n{run}");
        last = Some(run);
    }
    last.unwrap()
}

#[test]
fn toml_syntax_error() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nouts = [\"x.txt\",, \"y.txt\"]\n",
        3,
        "a",
        &[],
    );
    // An unterminated string.
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\n\n[stages.b]\ncmd = \"oops\n",
        5,
        "b",
        &[],
    );
}

#[test]
fn wrong_type() {
    rejects(
        "[stages.a]\ncmd = 5\nouts = [\"x.txt\"]\n",
        2,
        "a",
        &["cmd"],
    );
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nouts = \"x.txt\"\n",
        3,
        "a",
        &["outs"],
    );
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nalways = \"yes\"\n",
        3,
        "a",
        &["always"],
    );
}

#[test]
fn unknown_key_with_did_you_mean() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\noutz = [\"x.txt\"]\n",
        3,
        "a",
        &["outz", "did you mean `outs`"],
    );
    rejects(
        "[stages.train]\ncmd = \"touch ran-marker\"\n\n[stages.eval]\ncmd = \"true\"\ndepz = [\"present.txt\"]\n",
        6,
        "eval",
        &["depz", "did you mean `deps`"],
    );
}

#[test]
fn cycle_names_the_stages() {
    let run = rejects(
        r#"[stages.first]
cmd = "touch ran-marker; touch first.txt"
deps = ["third.txt"]
outs = ["first.txt"]

[stages.second]
cmd = "touch second.txt"
deps = ["first.txt"]
outs = ["second.txt"]

[stages.third]
cmd = "touch third.txt"
deps = ["second.txt"]
outs = ["third.txt"]
"#,
        // The error points at one of the stages of the cycle.
        1,
        "first",
        &["cycle", "first", "second", "third"],
    );
    assert!(!run.stderr.contains("zz_marker"), "{run}");
}

#[test]
fn cycle_through_after() {
    let ws = Ws::new(&format!(
        "[stages.a]\ncmd = \"touch ran-marker\"\nafter = [\"b\"]\n\n[stages.b]\ncmd = \"true\"\nafter = [\"a\"]\n{MARKER}"
    ));
    let run = ws.pipe(&["build"]);
    run.code(2).err_has("cycle").err_has("Pipeline.toml:");
    assert!(!ws.exists("ran-marker"));
}

#[test]
fn two_stages_with_the_same_out() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nouts = [\"same.txt\"]\n\n[stages.b]\ncmd = \"true\"\nouts = [\"same.txt\"]\n",
        7,
        "b",
        &["same.txt", "`a`"],
    );
}

#[test]
fn out_inside_another_stages_out_folder() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nouts = [\"models\"]\n\n[stages.b]\ncmd = \"true\"\nouts = [\"models/best.bin\"]\n",
        7,
        "b",
        &["models/best.bin", "models", "`a`"],
    );
}

#[test]
fn dep_or_out_outside_the_workspace() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\ndeps = [\"../secret.txt\"]\n",
        3,
        "a",
        &["../secret.txt", "outside the workspace"],
    );
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\ndeps = [\"data/../../x.txt\"]\n",
        3,
        "a",
        &["outside the workspace"],
    );
    // An absolute dep is an external dep (SPEC: *Dependencies outside the workspace*), but
    // never one that climbs with `..`.
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\ndeps = [\"/etc/../hostname\"]\n",
        3,
        "a",
        &["/etc/../hostname", "`..` is not allowed"],
    );
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nouts = [\"../escape.txt\"]\n",
        3,
        "a",
        &["../escape.txt", "outside the workspace"],
    );
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nouts = [\"/tmp/pipe-abs-out.txt\"]\n",
        3,
        "a",
        &["/tmp/pipe-abs-out.txt", "outside the workspace"],
    );
}

#[test]
fn dep_that_does_not_exist_and_no_stage_produces() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\ndeps = [\"present.txt\", \"nowhere.txt\"]\nouts = [\"a.txt\"]\n",
        3,
        "a",
        &["nowhere.txt", "does not exist"],
    );
    // A dep that another stage produces is fine, even before it exists.
    let ws = Ws::new(
        "[stages.a]\ncmd = \"echo x > a.txt\"\nouts = [\"a.txt\"]\n[stages.b]\ncmd = \"cp a.txt b.txt\"\ndeps = [\"a.txt\"]\nouts = [\"b.txt\"]\n",
    );
    ws.pipe(&["validate"]).ok();
}

#[test]
fn unknown_param_key() {
    rejects(
        "[params]\nlr = 0.1\n\n[stages.train]\ncmd = \"touch ran-marker\"\nparams = [\"lrr\"]\n",
        6,
        "train",
        &["lrr", "did you mean `lr`"],
    );
    let run = rejects(
        "[params]\nlr = 0.1\n\n[stages.train]\ncmd = \"touch ran-marker --lr ${params.lr_x}\"\n",
        5,
        "train",
        &["lr_x"],
    );
    assert!(
        !run.stderr.contains("is empty"),
        "one problem, one message\n{run}"
    );
    rejects(
        "[params.train]\nlr = 0.1\n\n[stages.train]\ncmd = \"touch ran-marker\"\nparams = [\"train.epochs\"]\n",
        6,
        "train",
        &["train.epochs"],
    );
}

#[test]
fn after_naming_an_unknown_stage() {
    rejects(
        "[stages.prepare]\ncmd = \"true\"\n\n[stages.train]\ncmd = \"touch ran-marker\"\nafter = [\"prepair\"]\n",
        6,
        "train",
        &["prepair", "did you mean `prepare`"],
    );
}

#[test]
fn bad_duration() {
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\ntimeout = \"soon\"\n",
        3,
        "a",
        &["timeout", "soon"],
    );
    rejects(
        "[stages.a]\ncmd = \"touch ran-marker\"\nretries = 1\nretry_delay = \"5 parsecs\"\n",
        4,
        "a",
        &["retry_delay"],
    );
}

#[test]
fn resource_request_larger_than_its_pool() {
    rejects(
        "[resources]\ngpu = 1\n\n[stages.train]\ncmd = \"touch ran-marker\"\nresources = { gpu = 2 }\n",
        6,
        "train",
        &["gpu"],
    );
    rejects(
        "[resources]\ngpu = 1\n\n[stages.train]\ncmd = \"touch ran-marker\"\nresources = { gpuz = 1 }\n",
        6,
        "train",
        &["gpuz"],
    );
}

#[test]
fn gate_check_that_does_not_parse() {
    let run = rejects(
        "[stages.eval]\ncmd = \"touch ran-marker; echo '{}' > m.json\"\nouts = [\"m.json\"]\n[stages.eval.gate]\nfile = \"m.json\"\nchecks = [\"acc >= 0.5\", \"loss >>= 3\"]\n",
        // The error points at the check that does not parse.
        6,
        "eval",
        &["loss >>= 3"],
    );
    assert!(!run.stderr.contains("`acc >= 0.5`"), "{run}");
}

#[test]
fn unknown_build_target_with_did_you_mean() {
    let ws = Ws::new(&format!(
        "[stages.train]\ncmd = \"touch ran-marker\"\n{MARKER}"
    ));
    ws.pipe(&["build", "trian"])
        .code(2)
        .err_has("trian")
        .err_has("did you mean `train`");
    ws.pipe(&["status", "trian"]).code(2).err_has("trian");
    ws.pipe(&["build", "--dry-run", "nothing_like_it"])
        .code(2)
        .err_has("nothing_like_it");
    assert!(!ws.exists("ran-marker"));
}

#[test]
fn bad_set_key() {
    let ws = Ws::new(&format!(
        "[params.train]\nlr = 0.1\n\n[stages.train]\ncmd = \"touch ran-marker\"\nparams = [\"train\"]\n{MARKER}"
    ));
    ws.pipe(&["build", "--set", "train.lrr=0.2"])
        .code(2)
        .err_has("train.lrr")
        .err_has("did you mean `train.lr`");
    ws.pipe(&["build", "--set", "nope=1"])
        .code(2)
        .err_has("nope");
    ws.pipe(&["build", "--set", "train.lr"])
        .code(2)
        .err_has("KEY=VALUE");
    ws.pipe(&["build", "--set", "=1"]).code(2);
    ws.pipe(&["status", "--set", "train.lrr=1"]).code(2);
    assert!(!ws.exists("ran-marker"));
    ws.pipe(&["build", "--set", "train.lr=0.2"]).ok();
    assert!(ws.exists("ran-marker"));
}

#[test]
fn bad_command_line_flags_exit_2() {
    let ws = Ws::new(&format!("[stages.a]\ncmd = \"touch ran-marker\"\n{MARKER}"));
    ws.pipe(&["build", "-j", "0"]).code(2);
    ws.pipe(&["build", "--no-such-flag"]).code(2);
    ws.pipe(&["dag", "--format", "png"]).code(2);
    assert!(!ws.exists("ran-marker"));
}

#[test]
fn several_problems_are_all_reported() {
    let ws = Ws::new(
        "[stages.a]\ncmd = \"touch ran-marker\"\ndeps = [\"gone.txt\"]\n\n[stages.b]\ncmd = \"true\"\nafter = [\"zzz\"]\n",
    );
    let run = ws.pipe(&["validate"]);
    run.code(2)
        .err_has("gone.txt")
        .err_has("zzz")
        .err_has("stage `a`")
        .err_has("stage `b`");
}

#[test]
fn valid_pipeline_passes_validate() {
    let ws = Ws::new(
        r#"
[pipeline]
name = "ok"
jobs = 2

[resources]
gpu = 2

[params]
board = "hex8"
[params.train]
lr = 0.001

[stages.export]
cmd = "echo ${params.board} > data.txt"
outs = ["data.txt"]
params = ["board"]

[stages.train]
cmd = ["cp data.txt model.bin", "echo '{\"acc\": 0.9}' > m.json"]
deps = ["data.txt"]
outs = ["model.bin", "m.json"]
params = ["train"]
env = { OMP_NUM_THREADS = "2" }
resources = { gpu = 1 }
retries = 1
retry_delay = "1s"
timeout = "2h"
[stages.train.gate]
file = "m.json"
checks = ["acc >= 0.5"]
"#,
    );
    ws.pipe(&["validate"]).ok();
    ws.pipe(&["build"]).ok();
}

// ---------------------------------------------------------------- never panic

fn never_panics(run: &Run, what: &str) {
    assert_ne!(run.code, 101, "{what}: pipe panicked\n{run}");
    assert!(run.code >= 0, "{what}: pipe died from a signal\n{run}");
    assert!(!run.stderr.contains("panicked"), "{what}\n{run}");
    assert!(!run.stderr.contains("RUST_BACKTRACE"), "{what}\n{run}");
}

#[test]
fn garbage_pipeline_files_never_panic() {
    let deep_array = format!("x = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
    let deep_table = format!("x = {}1{}\n", "{a=".repeat(5000), "}".repeat(5000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("binary", vec![0, 159, 146, 150, 255, 254, 0, 1, 2, 3]),
        ("nul in text", b"[stages.a]\ncmd = \"tr\0ue\"\n".to_vec()),
        ("random text", b"}}}{{{ ::: === [[[ ]]] \"\"\" '''".to_vec()),
        ("stages not a table", b"stages = 5\n".to_vec()),
        ("stage not a table", b"[stages]\na = \"cmd\"\n".to_vec()),
        ("array of stages", b"[[stages]]\ncmd = \"true\"\n".to_vec()),
        ("empty stage", b"[stages.a]\n".to_vec()),
        (
            "odd stage name",
            b"[stages.\"a b/../c\"]\ncmd = \"true\"\n".to_vec(),
        ),
        (
            "empty stage name",
            b"[stages.\"\"]\ncmd = \"true\"\n".to_vec(),
        ),
        ("empty cmd list", b"[stages.a]\ncmd = []\n".to_vec()),
        (
            "params not a table",
            b"params = [1, 2]\n[stages.a]\ncmd = \"true\"\n".to_vec(),
        ),
        (
            "pipeline jobs zero",
            b"[pipeline]\njobs = 0\n[stages.a]\ncmd = \"true\"\n".to_vec(),
        ),
        (
            "pipeline jobs negative",
            b"[pipeline]\njobs = -3\n[stages.a]\ncmd = \"true\"\n".to_vec(),
        ),
        (
            "negative resource",
            b"[resources]\ngpu = -1\n[stages.a]\ncmd = \"true\"\nresources = { gpu = 1 }\n"
                .to_vec(),
        ),
        (
            "huge retries",
            b"[stages.a]\ncmd = \"true\"\nretries = 99999999999999\n".to_vec(),
        ),
        (
            "dangling subst",
            b"[params]\nx = 1\n[stages.a]\ncmd = \"echo ${params.x\"\n".to_vec(),
        ),
        ("empty subst", b"[stages.a]\ncmd = \"echo ${}\"\n".to_vec()),
        (
            "empty out",
            b"[stages.a]\ncmd = \"true\"\nouts = [\"\"]\n".to_vec(),
        ),
        (
            "dot out",
            b"[stages.a]\ncmd = \"true\"\nouts = [\".\"]\n".to_vec(),
        ),
        (
            "bad glob",
            b"[stages.a]\ncmd = \"true\"\ndeps = [\"a/[\"]\n".to_vec(),
        ),
        (
            "gate without checks",
            b"[stages.a]\ncmd = \"true\"\n[stages.a.gate]\n".to_vec(),
        ),
        ("deep array", deep_array.into_bytes()),
        ("deep table", deep_table.into_bytes()),
    ];
    for (what, bytes) in cases {
        let ws = Ws::new("");
        std::fs::write(ws.path("Pipeline.toml"), &bytes).unwrap();
        for args in [
            &["validate"][..],
            &["status"],
            &["build", "--dry-run"],
            &["dag"],
        ] {
            let run = ws.pipe(args);
            never_panics(&run, &format!("{what}: {args:?}"));
        }
    }
}

#[test]
fn corrupted_lock_never_panics() {
    let pipeline = "[stages.a]\ncmd = \"echo x > a.txt\"\nouts = [\"a.txt\"]\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary", vec![0xff, 0xfe, 0, 1, 2, 0x80]),
        ("truncated", b"version = 1\n[stages.a\nfinger".to_vec()),
        ("wrong version", b"version = 99\n".to_vec()),
        ("no version", b"[stages.a]\nfingerprint = \"x\"\n".to_vec()),
        ("wrong types", b"version = 1\n[stages.a]\nfingerprint = 3\ncmd = 4\n".to_vec()),
        ("stages wrong", b"version = 1\nstages = \"nope\"\n".to_vec()),
        ("bad outs", b"version = 1\n[stages.a]\nfingerprint = \"f\"\ncmd = \"echo x > a.txt\"\n[stages.a.outs]\n\"a.txt\" = 7\n".to_vec()),
        ("unknown stage", b"version = 1\n[stages.gone]\nfingerprint = \"f\"\ncmd = \"x\"\n".to_vec()),
        ("empty", b"".to_vec()),
    ];
    for (what, bytes) in cases {
        let ws = Ws::new(pipeline);
        std::fs::write(ws.path("Pipeline.lock"), &bytes).unwrap();
        for args in [&["status"][..], &["build"], &["build", "--dry-run"]] {
            let run = ws.pipe(args);
            never_panics(&run, &format!("{what}: {args:?}"));
            if run.code == 2 {
                assert!(
                    run.stderr.contains("Pipeline.lock"),
                    "{what}: the error names the lock file\n{run}"
                );
            }
        }
    }
}

#[test]
fn an_unknown_param_points_at_its_placeholder_and_a_twice_defined_stage_is_named() {
    let ws =
        Ws::new("[params]\nlr = 1\n[stages.a]\ncmd = \"echo ${params.lrr} > a\"\nouts = [\"a\"]\n");
    ws.pipe(&["validate"])
        .code(2)
        .err_has("Pipeline.toml:4:13: stage `a`: unknown param `lrr`")
        .err_has("did you mean `lr`?");
    let ws = Ws::new(
        "[stages.a]\ncmd = \"echo > a\"\nouts = [\"a\"]\n\n[stages.b]\ncmd = \"x\"\n\n[stages.a]\ncmd = \"y\"\n",
    );
    ws.pipe(&["validate"])
        .code(2)
        .err_has("Pipeline.toml:8:1: stage `a`: stage `a` is defined twice");
}

#[test]
fn validate_in_a_fresh_checkout_writes_nothing_and_status_keeps_its_snapshots_in_pipe() {
    let ws = Ws::new("[stages.a]\ncmd = \"echo hi > a.txt\"\nouts = [\"a.txt\"]\n");
    ws.pipe(&["validate"]).ok();
    assert!(!ws.exists(".pipe"), "validate made .pipe/");
    ws.pipe(&["build"]).ok();
    // Once pipe keeps state here, the parsed pipeline and lock are kept beside it, and an
    // edit to either is seen (the snapshot is named by the bytes it was made from).
    ws.pipe(&["status"]).ok();
    assert!(ws.exists(".pipe/state/pipeline.json") && ws.exists(".pipe/state/lock.json"));
    ws.write(
        "Pipeline.toml",
        "[stages.a]\ncmd = \"echo ho > a.txt\"\nouts = [\"a.txt\"]\n",
    );
    ws.pipe(&["status"]).code(1).out_has("command changed");
    ws.pipe(&["build"]).ok();
    ws.pipe(&["status"]).ok();
    let lock = ws.read("Pipeline.lock").replace("echo ho", "echo hu");
    ws.write("Pipeline.lock", &lock);
    ws.pipe(&["status"]).code(1).out_has("command changed");
}

#[test]
fn the_built_pipeline_is_kept_and_every_input_of_its_checks_is_seen_changing() {
    // A source dep, a params file, and an out folder: each is something the built
    // pipeline (`.pipe/state/built.json`) depends on besides the text of Pipeline.toml.
    let ws = Ws::new(
        "params_file = \"params.toml\"\n\n[stages.a]\ncmd = \"cat in.txt > out/a.txt; echo ${params.n} >> out/a.txt\"\ndeps = [\"in.txt\"]\nouts = [\"out/a.txt\"]\nparams = [\"n\"]\n",
    );
    ws.write("in.txt", "1\n");
    ws.write("params.toml", "n = 1\n");
    ws.pipe(&["build"]).ok();
    ws.pipe(&["status"]).ok();
    assert!(ws.exists(".pipe/state/built.json"), "no built snapshot");

    // A params file edited: the kept pipeline is not used (its params are stale).
    ws.write("params.toml", "n = 2\n");
    ws.pipe(&["status"])
        .code(1)
        .out_has("param changed: n (1 -> 2)");
    ws.pipe(&["build"]).ok();
    ws.pipe(&["status"]).ok();

    // A source dep removed: the check that it exists runs again.
    std::fs::remove_file(ws.path("in.txt")).unwrap();
    ws.pipe(&["status"])
        .code(2)
        .err_has("dep `in.txt` does not exist and no stage produces it");
    ws.write("in.txt", "1\n");
    ws.pipe(&["status"]).ok();

    // The out folder replaced by a symlink leading outside the workspace: refused again.
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path("out")).unwrap();
    ws.pipe(&["status"])
        .code(2)
        .err_has("through a symlink, outside the workspace");
    std::fs::remove_file(ws.path("out")).unwrap();

    // A damaged snapshot is ignored and replaced.
    ws.pipe(&["build"]).ok();
    ws.write(".pipe/state/built.json", "garbage");
    ws.pipe(&["status"]).ok();
    assert!(
        ws.read(".pipe/state/built.json")
            .starts_with("pipe-snapshot")
    );
}
