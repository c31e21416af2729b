//! Exact output, as a person reads it, checked against the snapshots in `tests/it/snapshots/`:
//! the `pipe status` table, the build summary lines (stderr, off a terminal), the
//! `pipe build --dry-run` plan and the main validation errors. Durations, run ids and the
//! workspace path are redacted (see `harness::snapshot_settings` and `harness::redact`).
//!
//! After an intended change of output: `INSTA_UPDATE=always cargo test --test it output::`,
//! then read the change in `git diff tests/it/snapshots/` (or `cargo insta review`).

use crate::harness::{Test, Ws};
use crate::snapshot;

/// prep → train → report, plus `other` on its own; `train` reads the param `lr`.
const PIPELINE: &str = r#"
[params]
lr = 0.1

[stages.prep]
cmd = "cp in.txt prep.txt"
deps = ["in.txt"]
outs = ["prep.txt"]

[stages.train]
cmd = "cat prep.txt prep.txt > model.txt"
deps = ["prep.txt"]
outs = ["model.txt"]
params = ["lr"]

[stages.report]
cmd = "wc -c < model.txt > report.txt"
deps = ["model.txt"]
outs = ["report.txt"]

[stages.other]
cmd = "cp other.txt other.out"
deps = ["other.txt"]
outs = ["other.out"]
"#;

fn workspace() -> Ws {
    let ws = Ws::new(PIPELINE);
    ws.write("in.txt", "hello\n");
    ws.write("other.txt", "other\n");
    ws
}

/// After a build: a dep edited, a param changed, an out deleted (restorable from the cache).
fn changed(ws: &Ws) {
    ws.write("in.txt", "hello again\n");
    ws.write("Pipeline.toml", &PIPELINE.replace("lr = 0.1", "lr = 0.2"));
    std::fs::remove_file(ws.path("other.out")).unwrap();
}

#[test]
fn status_table() {
    let ws = workspace();
    snapshot!("status_never_run", &ws, ws.pipe(&["status"]).code(1));
    ws.pipe(&["build", "-j", "1"]).ok();
    snapshot!("status_up_to_date", &ws, ws.pipe(&["status"]).ok());
    changed(&ws);
    snapshot!("status_stale", &ws, ws.pipe(&["status"]).code(1));
}

#[test]
fn build_summary_on_stderr() {
    let ws = workspace();
    snapshot!("build_first", &ws, ws.pipe(&["build", "-j", "1"]).ok());
    changed(&ws);
    snapshot!(
        "build_after_changes",
        &ws,
        ws.pipe(&["build", "-j", "1"]).ok()
    );
    snapshot!("build_noop", &ws, ws.pipe(&["build", "-j", "1"]).ok());
}

#[test]
fn build_summary_of_a_failure() {
    let done = Test::new()
        .pipeline(
            r#"
[stages.ok]
cmd = "echo ok > ok.txt"
outs = ["ok.txt"]

[stages.bad]
cmd = "echo first; echo last words; exit 3"
deps = ["ok.txt"]
outs = ["bad.txt"]

[stages.after]
cmd = "cp bad.txt after.txt"
deps = ["bad.txt"]
outs = ["after.txt"]
"#,
        )
        .args(["build", "-j", "1"])
        .code(1)
        .run();
    snapshot!("build_failed", &done.ws, *done);
}

#[test]
fn dry_run_plan() {
    let ws = workspace();
    snapshot!(
        "dry_run_never_run",
        &ws,
        ws.pipe(&["build", "--dry-run"]).ok()
    );
    ws.pipe(&["build", "-j", "1"]).ok();
    changed(&ws);
    snapshot!(
        "dry_run_after_changes",
        &ws,
        ws.pipe(&["build", "--dry-run"]).ok()
    );
}

/// `pipe validate` on a broken Pipeline.toml (exit 2).
fn validate(name: &str, pipeline: &str) {
    let done = Test::new()
        .pipeline(pipeline)
        .file("present.txt", "here\n")
        .args(["validate"])
        .code(2)
        .run();
    snapshot!(name, &done.ws, *done);
}

#[test]
fn validation_errors() {
    validate(
        "validate_unknown_key",
        "[stages.a]\ncmd = \"true\"\ndeps = [\"present.txt\"]\noutz = [\"x.txt\"]\n",
    );
    validate(
        "validate_cycle",
        r#"[stages.first]
cmd = "true"
deps = ["third.txt"]
outs = ["first.txt"]

[stages.second]
cmd = "true"
deps = ["first.txt"]
outs = ["second.txt"]

[stages.third]
cmd = "true"
deps = ["second.txt"]
outs = ["third.txt"]
"#,
    );
    validate(
        "validate_duplicate_out",
        "[stages.a]\ncmd = \"true\"\nouts = [\"same.txt\"]\n\n[stages.b]\ncmd = \"true\"\nouts = [\"same.txt\"]\n",
    );
    validate(
        "validate_missing_dep",
        "[stages.a]\ncmd = \"true\"\ndeps = [\"present.txt\", \"nowhere.txt\"]\nouts = [\"a.txt\"]\n",
    );
    validate(
        "validate_toml_syntax",
        "[stages.a]\ncmd = \"true\"\nouts = [\"x.txt\",, \"y.txt\"]\n",
    );
}
