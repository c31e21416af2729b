//! Operating pipe day to day: following a build live, history that keeps what matters, run
//! references, one run's stages, hooks.

use crate::harness::*;
use std::time::Duration;

const TWO: &str = r#"
[stages.a]
cmd = "echo a-one; echo a-two; echo done > a.txt"
outs = ["a.txt"]

[stages.b]
cmd = "echo b-one >&2; echo done > b.txt"
outs = ["b.txt"]
"#;

#[test]
fn follow_prints_every_line_each_stage_writes_prefixed_with_its_name() {
    let ws = Ws::new(TWO);
    let run = ws.pipe(&["build", "--follow", "-j", "2"]);
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    for want in ["a | a-one", "a | a-two", "b | b-one"] {
        assert!(lines.contains(&want), "{want:?} missing\n{run}");
    }
    // In order within a stage.
    let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    assert!(pos("a | a-one") < pos("a | a-two"));
    // --json keeps stdout for the document; the lines go to stderr.
    let run = ws.pipe(&["build", "--follow", "--force", "--json"]);
    assert_eq!(run.json()["version"], 1);
    run.err_has("a | a-two");
}

#[test]
fn verbose_says_why_each_stage_runs() {
    let ws = Ws::new(TWO);
    ws.pipe(&["build", "-v"])
        .ok()
        .err_has("Running a (never run)");
}

#[test]
fn a_noop_build_writes_no_run_folder_and_log_still_finds_the_stage() {
    let ws = Ws::new(TWO);
    ws.pipe(&["build"]).ok();
    for _ in 0..3 {
        let run = ws.pipe(&["build"]);
        run.ok();
        assert!(!run.stderr.contains("(run "), "{run}");
    }
    assert_eq!(std::fs::read_dir(ws.path(".pipe/runs")).unwrap().count(), 1);
    ws.pipe(&["log", "a"]).ok().out_has("a-two");
    let v = ws.pipe(&["build", "--json"]).json();
    assert!(v["run_id"].is_null(), "{v:#}");
}

#[test]
fn runs_are_named_by_id_prefix_latest_latest_n_and_name() {
    let ws = Ws::new(TWO);
    ws.pipe(&["build", "--name", "baseline"]).ok();
    let first = ws
        .last_run_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    ws.pipe(&["build", "--force", "--name", "retry"]).ok();
    let second = ws
        .last_run_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let id_of = |r: &str| -> String {
        let v = ws.pipe(&["runs", r, "--json"]).ok().json();
        assert_eq!(v["version"], 1);
        v["run_id"].as_str().unwrap().to_string()
    };
    assert_eq!(id_of("latest"), second);
    assert_eq!(id_of("latest~1"), first);
    assert_eq!(id_of("baseline"), first);
    assert_eq!(id_of(&second), second);
    // The shortest prefix of the first id that the second does not share.
    let n = (1..=first.len())
        .find(|&n| !second.starts_with(&first[..n]))
        .unwrap();
    assert_eq!(id_of(&first[..n]), first);
    // Ambiguous and unknown references list candidates.
    let amb = ws.pipe(&["runs", &first[..4]]);
    amb.code(2)
        .err_has("ambiguous")
        .err_has(&first)
        .err_has(&second);
    ws.pipe(&["runs", "nope"]).code(2).err_has("baseline");
    ws.pipe(&["log", "baseline", "a"]).ok().out_has("a-one");
    ws.pipe(&["runs"]).ok().out_has(&second);
}

#[test]
fn runs_run_shows_that_runs_stages_with_reasons_exit_codes_and_gates() {
    let ws = Ws::new(
        r#"
[stages.score]
cmd = "echo '{\"acc\": 0.4}' > m.json"
outs = ["m.json"]
[stages.score.gate]
file = "m.json"
checks = ["acc >= 0.5"]

[stages.ship]
cmd = "cp m.json s.json"
deps = ["m.json"]
outs = ["s.json"]

[stages.bad]
cmd = "exit 4"
"#,
    );
    ws.pipe(&["build", "--keep-going"]).code(1);
    let table = ws.pipe(&["runs", "latest"]);
    table.ok();
    for want in [
        "score",
        "ran",
        "never run",
        "gate score_gate failed",
        "acc >= 0.5 (actual 0.4)",
        "ship",
        "blocked",
        "bad",
        "failed",
        "exited with code 4",
    ] {
        assert!(table.stdout.contains(want), "{want:?} missing\n{table}");
    }
    let v = ws.pipe(&["runs", "latest", "--json"]).ok().json();
    let stages = v["stages"].as_array().unwrap();
    let bad = stages.iter().find(|s| s["name"] == "bad").unwrap();
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["exit_code"], 4);
    let score = stages.iter().find(|s| s["name"] == "score").unwrap();
    assert_eq!(score["gate_result"]["passed"], false);
    assert_eq!(score["reasons"][0]["kind"], "never_run");
}

#[test]
fn log_follow_follows_a_running_stage_from_another_terminal_until_it_ends() {
    let ws = Ws::new(
        r#"
[stages.train]
cmd = "echo epoch-1; while [ ! -e go ]; do sleep 0.02; done; echo epoch-2; echo ok > model.bin"
outs = ["model.bin"]
"#,
    );
    let build = ws.spawn(&["build"], "build.err");
    wait_until("the stage to start", || {
        std::fs::read_dir(ws.path(".pipe/runs"))
            .map(|rd| rd.count() > 0)
            .unwrap_or(false)
            && ws.pipe(&["log", "train"]).stdout.contains("epoch-1")
    });
    let mut follower = ws.cmd(&["log", "--follow", "train"]);
    follower.stdout(std::process::Stdio::piped());
    let follower = start(follower);
    // The follower has printed the first line and keeps waiting.
    std::thread::sleep(Duration::from_millis(300));
    ws.write("go", "");
    let out = finish(follower, Duration::from_secs(30));
    out.ok().out_has("epoch-1").out_has("epoch-2");
    finish(build, Duration::from_secs(30)).ok();
}

#[test]
fn hooks_run_after_the_build_with_the_runs_facts_and_never_change_the_exit_code() {
    let ws = Ws::new(
        r#"
[hooks]
on_success = "echo \"ok $PIPE_RUN_ID $PIPE_RUN_STATUS\" >> hooks.txt"
on_failure = "echo \"fail $PIPE_RUN_STATUS [$PIPE_FAILED_STAGES] $PIPE_RUN_DIR\" >> hooks.txt; exit 7"
on_release = "echo release >> hooks.txt"

[stages.a]
cmd = "test -e broken && exit 1; echo a > a.txt"
outs = ["a.txt"]
release = true
"#,
    );
    ws.pipe(&["build"]).ok();
    let id = ws
        .last_run_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(ws.read("hooks.txt"), format!("ok {id} success\nrelease\n"));
    ws.write("broken", "");
    let run = ws.pipe(&["build", "--force"]);
    run.code(1)
        .err_has("hook on_failure")
        .err_has("exit code 7");
    let dir = ws.last_run_dir();
    let text = ws.read("hooks.txt");
    assert!(
        text.ends_with(&format!("fail failed [a] {}\n", dir.display())),
        "{text}"
    );
    // A no-op runs no hook.
    std::fs::remove_file(ws.path("broken")).unwrap();
    ws.pipe(&["build"]).ok();
    let before = ws.read("hooks.txt");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("hooks.txt"), before);
}
