//! Releases that travel and the last pieces of issue 14: release manifests and their objects
//! through a `file://` remote into a fresh clone, gates of foreach/matrix members, external
//! deps, symlink outs.

use crate::harness::*;

fn pipeline_with(remote: &str) -> String {
    format!(
        r#"
[stages.train]
cmd = "cp data.txt model.bin; mkdir -p weights; cp data.txt weights/w.bin"
deps = ["data.txt"]
outs = ["model.bin", "weights"]

[stages.promote]
cmd = "mkdir -p release && cp model.bin release/model.bin && rm -rf release/weights && cp -r weights release/weights"
deps = ["model.bin", "weights"]
outs = ["release/model.bin", "release/weights"]
release = true

{remote}
"#
    )
}

fn pipeline(remote: &std::path::Path) -> String {
    pipeline_with(&format!(
        "[remote]\nurl = \"file://{}\"\n",
        remote.display()
    ))
}

fn releases(ws: &Ws) -> Vec<serde_json::Value> {
    ws.pipe(&["releases", "--json"]).ok().json()["releases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Workspace A makes two releases and pushes (without --all: the lock references only the
/// second); a fresh workspace B pulls, lists both and rolls back to the first.
fn travel(text: &str, pipe: &dyn Fn(&Ws, &[&str]) -> Run) {
    let a = Ws::new(text);
    a.write("data.txt", "model v1\n");
    a.pipe(&["build"]).ok();
    let first = releases(&a)[0]["run_id"].as_str().unwrap().to_string();
    a.write("data.txt", "model v2\n");
    a.pipe(&["build"]).ok();
    assert_eq!(releases(&a).len(), 2);
    let pushed = pipe(&a, &["push", "--json"]).ok().json();
    assert_eq!(pushed["releases"], 2, "{pushed}");
    // A second push sends nothing new (create-only).
    assert_eq!(pipe(&a, &["push", "--json"]).ok().json()["releases"], 0);

    let b = Ws::new(text);
    b.write("data.txt", "model v2\n");
    b.pipe(&["releases"]).ok().err_has("no releases yet");
    let pulled = pipe(&b, &["pull", "--json"]).ok().json();
    assert_eq!(pulled["releases"], 2, "{pulled}");
    let listed = releases(&b);
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed.iter().filter(|r| r["current"] == true).count(),
        1,
        "{listed:?}"
    );
    b.pipe(&["rollback", &first]).ok().err_has("Rolled back");
    assert_eq!(b.read("release/model.bin"), "model v1\n");
    assert_eq!(b.read("release/weights/w.bin"), "model v1\n");
    // Pulling again adds nothing.
    assert_eq!(pipe(&b, &["pull", "--json"]).ok().json()["releases"], 0);
    // The rollback sticks in the clone too: its first build does not re-release v2.
    b.pipe(&["build"]).ok();
    assert_eq!(b.read("release/model.bin"), "model v1\n");
    assert_eq!(releases(&b).len(), 2);
}

#[test]
fn a_fresh_clone_pulls_the_teams_releases_and_rolls_back_to_one() {
    let remote = tempfile::tempdir().unwrap();
    travel(&pipeline(remote.path()), &|ws, args| ws.pipe(args));
    assert_eq!(
        remote.path().join("releases").read_dir().unwrap().count(),
        2
    );
}

#[test]
fn releases_travel_through_the_s3_server_too() {
    let Some(s3) = Server::start("s3") else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let remote = format!(
        "[remote]\nurl = \"s3://{}/rel{}-{nanos}\"\nendpoint = \"{}\"\n",
        s3.var("PIPE_TEST_S3_BUCKET"),
        std::process::id(),
        s3.var("PIPE_TEST_S3_ENDPOINT")
    );
    travel(&pipeline_with(&remote), &|ws, args| s3.pipe(ws, args));
}

#[test]
fn a_damaged_remote_release_manifest_is_ignored_not_trusted() {
    let remote = tempfile::tempdir().unwrap();
    let text = pipeline(remote.path());
    std::fs::create_dir_all(remote.path().join("releases")).unwrap();
    std::fs::write(remote.path().join("releases/broken.json"), "{not json").unwrap();
    std::fs::write(
        remote.path().join("releases/escape.json"),
        serde_json::json!({
            "status": "released", "run_id": "x", "created_at": "2026-01-01T00:00:00Z",
            "stage": "promote", "gates": [], "git": {"commit": null, "dirty": false},
            "artifacts": [{"path": "../outside", "hash": "a".repeat(64), "size": 1}]
        })
        .to_string(),
    )
    .unwrap();
    let b = Ws::new(&text);
    b.write("data.txt", "x\n");
    let run = b.pipe(&["pull", "--json"]);
    run.ok();
    assert_eq!(run.json()["releases"], 0);
    assert!(releases(&b).is_empty());
}

#[test]
fn an_external_absolute_dep_is_hashed_never_written_and_makes_the_stage_stale() {
    let ext = tempfile::tempdir().unwrap();
    let file = ext.path().join("base.bin");
    std::fs::write(&file, "base v1\n").unwrap();
    std::fs::create_dir_all(ext.path().join("set")).unwrap();
    std::fs::write(ext.path().join("set/a.txt"), "a\n").unwrap();
    let ws = Ws::new(&format!(
        r#"
[stages.train]
cmd = "cat {f} {d}/a.txt > model.bin; echo x >> runs.txt"
deps = ["{f}", "{d}/"]
outs = ["model.bin"]
"#,
        f = file.display(),
        d = ext.path().join("set").display()
    ));
    ws.pipe(&["build", "train"]).ok();
    assert_eq!(ws.read("model.bin"), "base v1\na\n");
    ws.pipe(&["status", "train"]).ok();
    ws.pipe(&["build", "train"]).ok();
    assert_eq!(ws.count("runs.txt"), 1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "base v1\n");
    std::fs::write(&file, "base v2\n").unwrap();
    ws.pipe(&["status", "train"])
        .code(1)
        .out_has(&format!("dep changed: {}", file.display()));
    std::fs::write(ext.path().join("set/a.txt"), "b\n").unwrap();
    ws.pipe(&["build", "train"]).ok();
    assert_eq!(ws.read("model.bin"), "base v2\nb\n");
    assert_eq!(ws.count("runs.txt"), 2);
    // Outs stay inside the workspace.
    let out = ext.path().join("o.txt");
    let bad = Ws::new(&format!(
        "[stages.a]\ncmd = \"true\"\nouts = [\"{}\"]\n",
        out.display()
    ));
    bad.pipe(&["validate"])
        .code(2)
        .err_has("outside the workspace");
}

fn gated_sweep(name: &str) -> Ws {
    let ws = Ws::new(&format!(
        r#"
[stages.eval]
foreach = ["a", "b"]
cmd = "mkdir -p metrics && cp scores/${{item}}.json metrics/${{item}}.json"
deps = ["scores/${{item}}.json"]
outs = ["metrics/${{item}}.json"]
[stages.eval.gate]
name = "{name}"
file = "metrics/${{item}}.json"
checks = ["acc >= 0.5"]

[stages.promote]
foreach = ["a", "b"]
cmd = "mkdir -p release && cp metrics/${{item}}.json release/${{item}}.json"
deps = ["metrics/${{item}}.json"]
outs = ["release/${{item}}.json"]
"#
    ));
    ws.write("scores/a.json", r#"{"acc": 0.9}"#);
    ws.write("scores/b.json", r#"{"acc": 0.1}"#);
    ws
}

fn gate_record(ws: &Ws, file: &str) -> serde_json::Value {
    let p = ws.last_run_dir().join("gates").join(file);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn each_foreach_member_has_its_own_gate_and_blocks_only_its_own_downstream() {
    let ws = gated_sweep("promotion_gate_${item}");
    ws.pipe(&["build"]).code(3);
    let a = gate_record(&ws, "promotion_gate_a.json");
    let b = gate_record(&ws, "promotion_gate_b.json");
    assert_eq!(a["passed"], true, "{a}");
    assert_eq!(a["gate"], "promotion_gate_a");
    assert_eq!(a["file"], "metrics/a.json");
    assert_eq!(b["passed"], false, "{b}");
    assert_eq!(b["file"], "metrics/b.json");
    assert!(ws.exists("release/a.json"));
    assert!(!ws.exists("release/b.json"));
    let stages = &ws.last_manifest()["stages"];
    assert_eq!(stages["promote@b"]["status"], "blocked", "{stages}");
    // A member's gate can be overridden by its own name.
    ws.pipe(&[
        "build",
        "--override-gate",
        "promotion_gate_b",
        "--reason",
        "b is fine",
    ])
    .ok();
    assert!(ws.exists("release/b.json"));
}

#[test]
fn a_fixed_gate_name_in_a_sweep_still_gives_each_member_its_own_record() {
    let ws = gated_sweep("eval_gate");
    ws.pipe(&["build"]).code(3);
    let dir = ws.last_run_dir().join("gates");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let passed: Vec<bool> = names
        .iter()
        .map(|n| gate_record(&ws, n)["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [true, false], "{names:?}");
}

#[test]
fn a_symlink_out_is_stored_and_restored_as_a_symlink() {
    let ws = Ws::new(
        r#"
[stages.train]
cmd = "mkdir -p models && cp data.txt models/canonical.bin && ln -sf canonical.bin models/best.bin; echo x >> runs.txt"
deps = ["data.txt"]
outs = ["models/canonical.bin", "models/best.bin"]
release = true
"#,
    );
    ws.write("data.txt", "weights v1\n");
    ws.pipe(&["build"]).ok();
    let link = ws.path("models/best.bin");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("canonical.bin")
    );
    ws.pipe(&["status"]).ok();
    // Delete the outs and a build restores them from the cache: the link as a link.
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(ws.path("models/canonical.bin")).unwrap();
    ws.pipe(&["build"]).ok().err_has("estored");
    assert_eq!(ws.count("runs.txt"), 1);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("canonical.bin")
    );
    assert_eq!(ws.read("models/best.bin"), "weights v1\n");
    ws.pipe(&["status"]).ok();
    // A rollback puts the link back as a link too.
    let first = releases(&ws)[0]["run_id"].as_str().unwrap().to_string();
    ws.write("data.txt", "weights v2\n");
    ws.pipe(&["build"]).ok();
    std::fs::remove_file(&link).unwrap();
    std::fs::write(&link, "a plain file now\n").unwrap();
    ws.pipe(&["rollback", &first]).ok();
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("canonical.bin")
    );
    assert_eq!(ws.read("models/best.bin"), "weights v1\n");
}

#[test]
fn a_symlink_out_leading_outside_is_still_refused() {
    let ext = tempfile::tempdir().unwrap();
    std::fs::write(ext.path().join("secret"), "s\n").unwrap();
    let ws = Ws::new(&format!(
        "[stages.a]\ncmd = \"ln -sf {} out.bin\"\nouts = [\"out.bin\"]\n",
        ext.path().join("secret").display()
    ));
    ws.pipe(&["build"]).code(1);
    ws.pipe(&["build"]).code(1);
}
