//! Reliability: do the bad thing for real with the real binary — kill -9 mid-build, Ctrl-C,
//! SIGTERM, two builds at once, flaky stages, timeouts, resource pools, stale and escaping outs.

use crate::harness::{
    Ws, alive, assert_serial, events, finish, kill9, rendezvous, serial, signal, still_running,
    wait_until,
};

use std::time::Duration;

// ---------------------------------------------------------------- helpers

/// Exit code of a child that should end on its own (30 s at most).
fn exit_code(child: std::process::Child) -> i32 {
    finish(child, Duration::from_secs(30)).code
}

/// A pid from a file a stage wrote (`echo $$ > f`).
fn read_pid(ws: &Ws, rel: &str) -> Option<i32> {
    std::fs::read_to_string(ws.path(rel))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// After `kill -9` of pipe its stages live on as orphans (as after a crash of pipe alone);
/// kill their process groups too, as a machine crash would, so the next build starts clean.
fn kill_orphans(ws: &Ws, pid_files: &[&str]) {
    for f in pid_files {
        if let Some(pg) = read_pid(ws, f) {
            unsafe { libc::killpg(pg, libc::SIGKILL) };
        }
    }
    // Let the kernel finish tearing them down before the next build looks at the files.
    for f in pid_files {
        if let Some(pg) = read_pid(ws, f) {
            wait_until("orphans to die", || !alive(pg));
        }
    }
}

fn lock_stages(ws: &Ws) -> Vec<String> {
    let text = ws.read("Pipeline.lock");
    let lock = pipe::lockfile::LockFile::parse(&text)
        .unwrap_or_else(|e| panic!("Pipeline.lock does not parse: {e}\n{text}"));
    lock.stages.keys().cloned().collect()
}

/// Every record pipe left behind parses: manifests, event lines, the lock.
fn records_parse(ws: &Ws) {
    if ws.exists("Pipeline.lock") {
        lock_stages(ws);
    }
    let Ok(rd) = std::fs::read_dir(ws.path(".pipe/runs")) else {
        return;
    };
    for run in rd {
        let dir = run.unwrap().path();
        if let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: torn manifest ({e})\n{text}", dir.display()));
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("events.jsonl")) {
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{}: torn event line ({e}): {line}", dir.display()));
            }
        }
    }
}

// A chain a → b → c of stages that write their out in two steps with a pause (PAUSE_x,
// see `chain`) between them, so a cut leaves a partial file behind. Each records its process
// group (`$$`) and appends to a run counter.
const CHAIN: &str = r#"
[stages.a]
cmd = "echo $$ > pg_a; echo run >> runs_a.txt; printf 'A:' > a.txt; PAUSE_a; cat in.txt >> a.txt"
deps = ["in.txt"]
outs = ["a.txt"]

[stages.b]
cmd = "echo $$ > pg_b; echo run >> runs_b.txt; printf 'B:' > b.txt; PAUSE_b; cat a.txt >> b.txt"
deps = ["a.txt"]
outs = ["b.txt"]

[stages.c]
cmd = "echo $$ > pg_c; echo run >> runs_c.txt; printf 'C:' > c.txt; PAUSE_c; cat b.txt >> c.txt"
deps = ["b.txt"]
outs = ["c.txt"]
"#;

/// CHAIN with `pause(stage)` as the shell between the two halves of each stage's out.
fn chain(pause: impl Fn(&str) -> String) -> String {
    let mut p = CHAIN.to_string();
    for s in ["a", "b", "c"] {
        p = p.replace(&format!("PAUSE_{s}"), &pause(s));
    }
    p
}

/// A pause that lasts while the file `stop_<stage>` exists (20 s at most): the test decides
/// when a stage is cut, not a clock.
fn stop_file(stage: &str) -> String {
    format!("i=0; while [ -f stop_{stage} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done")
}

fn chain_is_correct(ws: &Ws, input: &str) {
    assert_eq!(ws.read("a.txt"), format!("A:{input}"));
    assert_eq!(ws.read("b.txt"), format!("B:A:{input}"));
    assert_eq!(ws.read("c.txt"), format!("C:B:A:{input}"));
}

// ---------------------------------------------------------------- crash safety

#[test]
fn kill_9_during_each_stage_then_rebuild_reruns_what_was_cut_off() {
    let ws = Ws::new(&chain(stop_file));
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    chain_is_correct(&ws, "v1\n");
    ws.write("in.txt", "v2\n");
    let pgs = ["pg_a", "pg_b", "pg_c"];

    // Cut each stage in turn, after it wrote the first half of its out and while it is held
    // at its pause by `stop_<stage>`.
    for (k, (stage, out)) in [("a", "a.txt"), ("b", "b.txt"), ("c", "c.txt")]
        .into_iter()
        .enumerate()
    {
        let counter = format!("runs_{stage}.txt");
        let before = ws.count(&counter);
        ws.write(&format!("stop_{stage}"), "");
        let child = ws.spawn(&["build", "-j", "1"], &format!("kill{k}.err"));
        let partial = format!("{}:", stage.to_uppercase());
        wait_until(&format!("stage {stage} to start"), || {
            ws.count(&counter) > before
                && std::fs::read_to_string(ws.path(out)).ok() == Some(partial.clone())
        });
        kill9(child);
        kill_orphans(&ws, &pgs);
        std::fs::remove_file(ws.path(&format!("stop_{stage}"))).unwrap();
        assert_eq!(ws.read(out), partial, "the cut left a partial {out}");
        records_parse(&ws);
        // The cut-off stage is stale, never up to date.
        let st = ws.pipe(&["status", stage]);
        st.code(1);
        assert!(
            st.stdout.contains(stage) && !st.stdout.contains("all up to date"),
            "{st}"
        );
    }

    ws.pipe(&["build"]).ok();
    chain_is_correct(&ws, "v2\n");
    // Phase 0 ran each once; cut 1 cut a; cut 2 reran a, cut b; cut 3 reran b, cut c;
    // the last build reran c. a: 1 + 2, b: 1 + 2, c: 1 + 2.
    assert_eq!(ws.count("runs_a.txt"), 3);
    assert_eq!(ws.count("runs_b.txt"), 3);
    assert_eq!(ws.count("runs_c.txt"), 3);
    assert_eq!(lock_stages(&ws), vec!["a", "b", "c"]);
    records_parse(&ws);
    ws.pipe(&["status"]).ok();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 3, "a no-op build runs nothing");
    for dir in [".pipe/state/running", ".pipe/state/journal"] {
        assert!(
            !ws.path(dir).exists() || std::fs::read_dir(ws.path(dir)).unwrap().next().is_none(),
            "no stage is left marked as running ({dir})"
        );
    }
}

#[test]
fn kill_9_at_many_moments_never_leaves_a_workspace_the_next_build_gets_wrong() {
    // Whatever the moment of the cut, the next build must be right: the moments below only
    // spread the cuts over a build, no assertion depends on where they land.
    let ws = Ws::new(&chain(|_| "sleep 0.15".into()));
    ws.write("in.txt", "hello\n");
    let pgs = ["pg_a", "pg_b", "pg_c"];
    // Moments from "pipe just started" through "between stages" to "recording the last one".
    for (k, ms) in [0u64, 30, 120, 200, 330, 480, 520, 700]
        .into_iter()
        .enumerate()
    {
        let child = ws.spawn(&["build"], &format!("k{k}.err"));
        std::thread::sleep(Duration::from_millis(ms));
        kill9(child);
        kill_orphans(&ws, &pgs);
        records_parse(&ws);
        // Read-only commands work on whatever was left.
        let st = ws.pipe(&["status"]);
        assert!(st.code == 0 || st.code == 1, "{st}");
        ws.pipe(&["runs"]).ok();
    }
    ws.pipe(&["build"]).ok();
    chain_is_correct(&ws, "hello\n");
    records_parse(&ws);
    assert_eq!(lock_stages(&ws), vec!["a", "b", "c"]);
    ws.pipe(&["status"]).ok();
    let runs = (
        ws.count("runs_a.txt"),
        ws.count("runs_b.txt"),
        ws.count("runs_c.txt"),
    );
    ws.pipe(&["build"]).ok();
    assert_eq!(
        (
            ws.count("runs_a.txt"),
            ws.count("runs_b.txt"),
            ws.count("runs_c.txt")
        ),
        runs,
        "a no-op build after recovery runs nothing"
    );
}

#[test]
fn a_persist_stage_cut_off_after_rewriting_identical_outs_is_still_rerun() {
    // persist keeps the outs, and the cut happens after the stage rewrote its out with the
    // recorded bytes: every out hash matches the lock, only the running marker tells.
    let ws = Ws::new(
        r#"
[stages.train]
cmd = "echo $$ > pg; echo run >> runs.txt; printf 'ckpt' > ckpt.txt; if [ -f hold ]; then touch held; i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; fi; echo done > done.txt"
outs = ["ckpt.txt", "done.txt"]
persist = true
cache = false
"#,
    );
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 1);
    // `hold` keeps the forced run waiting after it rewrote ckpt.txt; `held` says it got there.
    ws.write("hold", "");
    let child = ws.spawn(&["build", "--force"], "force.err");
    wait_until("the forced run to rewrite its out", || ws.exists("held"));
    kill9(child);
    kill_orphans(&ws, &["pg"]);
    std::fs::remove_file(ws.path("hold")).unwrap();
    ws.pipe(&["status"]).code(1).out_has("incomplete");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 3, "the cut-off stage ran again");
    ws.pipe(&["status"]).ok();
}

// ---------------------------------------------------------------- interrupts

/// A stage whose child (a grandchild of pipe) writes its pid and sleeps; `slow` gates it.
const SLEEPER: &str = r#"
[stages.s]
cmd = "echo run >> runs.txt; printf partial > out.txt; if [ -f slow ]; then sleep 120 & echo $! > child.pid; wait; fi; echo done > out.txt"
deps = ["in.txt"]
outs = ["out.txt"]
"#;

fn interrupt_stops_the_stage(sig: i32) {
    let ws = Ws::new(SLEEPER);
    ws.write("in.txt", "1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "2\n");
    ws.write("slow", "");
    let mut child = ws.spawn(&["build"], "int.err");
    // The shell creates the file before it writes the pid: wait for a whole pid.
    wait_until("the stage's child to start", || {
        read_pid(&ws, "child.pid").is_some()
    });
    let pid = read_pid(&ws, "child.pid").unwrap();
    assert!(alive(pid));
    signal(&child, sig);
    let code = {
        wait_until("pipe to exit", || !still_running(&mut child));
        child.wait().unwrap().code()
    };
    let err = std::fs::read_to_string(ws.path("int.err")).unwrap();
    assert_eq!(code, Some(130), "{err}");
    wait_until("the child to be gone", || !alive(pid));
    assert!(!ws.exists("out.txt"), "partial out removed\n{err}");
    let m = ws.last_manifest();
    assert_eq!(m["status"], "interrupted", "{m:#}");
    assert_ne!(m["stages"]["s"]["status"], "ran", "{m:#}");
    assert_ne!(m["stages"]["s"]["status"], "up_to_date", "{m:#}");
    records_parse(&ws);

    ws.pipe(&["status"]).code(1);
    std::fs::remove_file(ws.path("slow")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 3, "the interrupted stage ran again");
    assert_eq!(ws.read("out.txt"), "done\n");
    ws.pipe(&["status"]).ok();
}

#[test]
fn sigint_stops_the_stage_process_group_and_exits_130() {
    interrupt_stops_the_stage(libc::SIGINT);
}

#[test]
fn sigterm_stops_the_stage_process_group_and_exits_130() {
    interrupt_stops_the_stage(libc::SIGTERM);
}

// ---------------------------------------------------------------- one build at a time

/// A stage that holds the workspace until the test creates `go` (or ~30 s pass).
const HOLDER: &str = r#"
[stages.hold]
cmd = "echo $$ > pg; echo run >> runs.txt; i=0; while [ ! -f go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo x > out.txt"
outs = ["out.txt"]
"#;

#[test]
fn a_second_build_waits_naming_the_holder_and_nothing_runs_twice() {
    let ws = Ws::new(HOLDER);
    let mut first = ws.spawn(&["build"], "first.err");
    wait_until("the first build's stage to start", || {
        ws.count("runs.txt") == 1
    });
    let mut second = ws.spawn(&["build"], "second.err");
    wait_until("the second build to say it waits", || {
        std::fs::read_to_string(ws.path("second.err"))
            .unwrap()
            .contains("waiting")
    });
    let err = std::fs::read_to_string(ws.path("second.err")).unwrap();
    assert!(
        err.contains(&format!("pid {}", first.id())),
        "names the holder: {err}"
    );
    assert!(still_running(&mut first) && still_running(&mut second));
    ws.write("go", "");
    assert_eq!(exit_code(first), 0);
    assert_eq!(exit_code(second), 0);
    assert_eq!(
        ws.count("runs.txt"),
        1,
        "the second build found it up to date"
    );
    ws.pipe(&["status"]).ok();
}

#[test]
fn no_wait_fails_fast_naming_the_holder() {
    let ws = Ws::new(HOLDER);
    let mut first = ws.spawn(&["build"], "first.err");
    wait_until("the first build's stage to start", || {
        ws.count("runs.txt") == 1
    });
    let r = ws.pipe(&["build", "--no-wait"]);
    r.code(1).err_has(&format!("pid {}", first.id()));
    assert!(
        still_running(&mut first),
        "--no-wait returned while the holder still ran"
    );
    ws.write("go", "");
    assert_eq!(exit_code(first), 0);
    assert_eq!(ws.count("runs.txt"), 1);
}

#[test]
fn read_only_commands_work_while_a_build_holds_the_workspace() {
    let ws = Ws::new(HOLDER);
    let mut first = ws.spawn(&["build"], "first.err");
    wait_until("the first build's stage to start", || {
        ws.count("runs.txt") == 1
    });
    ws.pipe(&["status"]).code(1).out_has("hold");
    ws.pipe(&["dag"]).ok().out_has("hold");
    ws.pipe(&["runs"]).ok();
    ws.pipe(&["validate"]).ok();
    ws.pipe(&["build", "--dry-run"]).ok();
    assert!(
        still_running(&mut first),
        "read-only commands waited for the build"
    );
    ws.write("go", "");
    assert_eq!(exit_code(first), 0);
}

#[test]
fn a_kill_9ed_holder_never_blocks_the_next_build() {
    let ws = Ws::new(HOLDER);
    let first = ws.spawn(&["build"], "first.err");
    wait_until("the first build's stage to start", || {
        ws.count("runs.txt") == 1
    });
    kill9(first);
    kill_orphans(&ws, &["pg"]);
    ws.write("go", "");
    ws.pipe(&["build", "--no-wait"]).ok();
    assert_eq!(ws.count("runs.txt"), 2);
    assert_eq!(ws.read("out.txt"), "x\n");
}

// ---------------------------------------------------------------- retries and timeouts

#[test]
fn a_flaky_stage_passes_on_its_second_attempt() {
    let ws = Ws::new(
        r#"
[stages.flaky]
cmd = "n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries; echo attempt $n; [ $n -ge 2 ] && echo ok > out.txt"
outs = ["out.txt"]
retries = 1
retry_delay = "10ms"
"#,
    );
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("tries"), "2\n");
    assert_eq!(ws.read("out.txt"), "ok\n");
    let m = ws.last_manifest();
    assert_eq!(m["stages"]["flaky"]["attempts"], 2, "{m:#}");
    assert_eq!(m["stages"]["flaky"]["status"], "ran", "{m:#}");
    let ev = events(&ws.last_run_dir());
    let retry = ev
        .iter()
        .find(|e| e["event"] == "stage_retry")
        .unwrap_or_else(|| panic!("no stage_retry in {ev:#?}"));
    assert_eq!(retry["stage"], "flaky");
    // Both attempts are in the log.
    let log = std::fs::read_to_string(ws.last_run_dir().join("logs/flaky.log")).unwrap();
    assert!(
        log.contains("attempt 1") && log.contains("attempt 2"),
        "{log}"
    );
    ws.pipe(&["status"]).ok();
}

#[test]
fn a_stage_failing_every_attempt_fails_after_all_of_them() {
    let ws = Ws::new(
        r#"
[stages.bad]
cmd = "echo try >> tries; exit 3"
outs = ["out.txt"]
retries = 2
retry_delay = "10ms"
"#,
    );
    ws.pipe(&["build"]).code(1).err_has("after 3 attempts");
    assert_eq!(ws.count("tries"), 3);
    let m = ws.last_manifest();
    assert_eq!(m["stages"]["bad"]["attempts"], 3);
    assert_eq!(m["stages"]["bad"]["status"], "failed");
    let retries = events(&ws.last_run_dir())
        .iter()
        .filter(|e| e["event"] == "stage_retry")
        .count();
    assert_eq!(retries, 2);
}

#[test]
fn a_timeout_kills_the_process_group_and_says_so() {
    let ws = Ws::new(
        r#"
[stages.slow]
cmd = "sleep 30 & echo $! > child.pid; wait; echo x > out.txt"
outs = ["out.txt"]
timeout = "1s"
"#,
    );
    let r = ws.pipe(&["build"]);
    r.code(1).err_has("timed out after 1s");
    let pid = read_pid(&ws, "child.pid").expect("the stage wrote its child's pid");
    wait_until("the timed-out child to be gone", || !alive(pid));
    assert!(!ws.exists("out.txt"));
    assert_eq!(ws.last_manifest()["stages"]["slow"]["status"], "failed");
}

// ---------------------------------------------------------------- resource pools

/// Stages g1 and g2, each asking for `want` of a `gpu` pool of `pool`: each writes the
/// devices it was given to `<name>.dev`, then runs `body(name)`.
fn gpu_pipeline(pool: u32, want: u32, body: impl Fn(&str) -> String) -> String {
    let mut s = format!("[resources]\ngpu = {pool}\n");
    for name in ["g1", "g2"] {
        s.push_str(&format!(
            r#"
[stages.{name}]
cmd = "echo $CUDA_VISIBLE_DEVICES > {name}.dev; {body}"
outs = ["{name}.dev"]
resources = {{ gpu = {want} }}
"#,
            body = body(name)
        ));
    }
    s
}

#[test]
fn two_gpu_stages_on_a_pool_of_one_never_overlap() {
    let ws = Ws::new(&gpu_pipeline(1, 1, serial));
    ws.pipe(&["build", "-j", "2"]).ok();
    assert_serial(&ws);
    assert_eq!(ws.read("g1.dev").trim(), "0");
    assert_eq!(ws.read("g2.dev").trim(), "0");
}

#[test]
fn two_gpu_stages_on_a_pool_of_two_get_different_devices() {
    // Each stage waits for the other to start, so the build passes only if they run side
    // by side (and the test above could fail).
    let ws = Ws::new(&gpu_pipeline(2, 1, |_| rendezvous("ready", 2)));
    ws.pipe(&["build", "-j", "2"]).ok();
    let d1 = ws.read("g1.dev").trim().to_string();
    let d2 = ws.read("g2.dev").trim().to_string();
    let mut devs = vec![d1.clone(), d2.clone()];
    devs.sort();
    assert_eq!(devs, vec!["0", "1"], "g1 got {d1:?}, g2 got {d2:?}");
}

#[test]
fn jobs_cap_the_total_even_with_free_resources() {
    let ws = Ws::new(&gpu_pipeline(2, 1, serial));
    ws.pipe(&["build", "-j", "1"]).ok();
    assert_serial(&ws);
}

#[test]
fn asking_for_more_than_the_pool_is_a_validation_error() {
    let ws = Ws::new(&gpu_pipeline(1, 2, serial));
    ws.pipe(&["validate"])
        .code(2)
        .err_has("Pipeline.toml")
        .err_has("gpu");
    ws.pipe(&["build"]).code(2);
    assert!(!ws.exists("g1.dev") && !ws.exists("g2.dev"), "nothing ran");
}

// ---------------------------------------------------------------- outs before and after a run

#[test]
fn an_old_out_never_passes_as_new_output() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo run >> runs.txt; if [ -f make ]; then cat in.txt > out.txt; fi"
deps = ["in.txt"]
outs = ["out.txt"]
"#,
    );
    ws.write("in.txt", "1\n");
    ws.write("make", "");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("out.txt"), "1\n");
    // Now the command forgets to write its out: the old file must not count.
    std::fs::remove_file(ws.path("make")).unwrap();
    ws.write("in.txt", "2\n");
    ws.pipe(&["build"]).code(1).err_has("did not create");
    assert!(
        !ws.exists("out.txt"),
        "the old out was removed before the run"
    );
    assert_eq!(ws.count("runs.txt"), 2);
    ws.pipe(&["status"]).code(1);
}

#[test]
fn persist_keeps_outs_for_a_stage_that_resumes() {
    let toml = |persist: bool| {
        format!(
            r#"
[stages.train]
cmd = "if [ -f ckpt.txt ]; then echo resumed >> seen.txt; fi; cat in.txt >> ckpt.txt"
deps = ["in.txt"]
outs = ["ckpt.txt"]
persist = {persist}
"#
        )
    };
    let ws = Ws::new(&toml(true));
    ws.write("in.txt", "1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "2\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("ckpt.txt"), "1\n2\n");
    assert_eq!(ws.count("seen.txt"), 1);

    let ws = Ws::new(&toml(false));
    ws.write("in.txt", "1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "2\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("ckpt.txt"), "2\n");
    assert_eq!(ws.count("seen.txt"), 0);
}

#[test]
fn outs_of_a_failed_stage_are_removed() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "mkdir -p d && echo half > d/part.bin && echo half > out.txt && exit 1"
outs = ["out.txt", "d/"]
"#,
    );
    ws.pipe(&["build"]).code(1);
    assert!(!ws.exists("out.txt"));
    assert!(!ws.exists("d/part.bin"));
    ws.pipe(&["status"]).code(1);
}

// ---------------------------------------------------------------- symlinks out of the workspace

#[test]
fn an_existing_symlinked_out_leading_outside_is_refused_at_validation() {
    let outside = tempfile::tempdir().unwrap();
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo x > link/out.txt; echo x > file.txt"
outs = ["link/out.txt", "file.txt"]
"#,
    );
    std::os::unix::fs::symlink(outside.path(), ws.path("link")).unwrap();
    ws.pipe(&["validate"]).code(2).err_has("link/out.txt");
    ws.pipe(&["build"]).code(2);
    assert!(!ws.exists("file.txt"), "nothing ran");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing was written outside"
    );

    // The same for an out that is itself a symlink to an outside file.
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo x > model.bin"
outs = ["model.bin"]
"#,
    );
    std::fs::write(outside.path().join("victim"), "keep me\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("victim"), ws.path("model.bin")).unwrap();
    ws.pipe(&["build"]).code(2).err_has("model.bin");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).unwrap(),
        "keep me\n"
    );
}

#[test]
fn a_stage_that_creates_a_symlinked_out_leading_outside_fails() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), "keep me\n").unwrap();
    let ws = Ws::new(&format!(
        r#"
[stages.s]
cmd = "ln -s {}/victim model.bin"
outs = ["model.bin"]
"#,
        outside.path().display()
    ));
    ws.pipe(&["build"])
        .code(1)
        .err_has("model.bin")
        .err_has("outside the workspace");
    // The same for a folder out that the command makes a link to an outside folder.
    let ws2 = Ws::new(&format!(
        r#"
[stages.s]
cmd = "rmdir data; ln -s {} data"
outs = ["data/"]
"#,
        outside.path().display()
    ));
    ws2.pipe(&["build"])
        .code(1)
        .err_has("outside the workspace");
    assert!(std::fs::symlink_metadata(ws2.path("data")).is_err());
    // The link was removed, never followed: the outside file is intact.
    assert!(std::fs::symlink_metadata(ws.path("model.bin")).is_err());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).unwrap(),
        "keep me\n"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert!(!ws.exists("Pipeline.lock") || !lock_stages(&ws).contains(&"s".to_string()));
    ws.pipe(&["status"]).code(1);
}

// ---------------------------------------------------------------- a poisoned cache

/// The workspace is `w/` inside the test's folder, so an escape lands where the test sees it.
fn nested(pipeline: &str) -> Ws {
    let ws = Ws::new("");
    std::fs::remove_file(ws.path("Pipeline.toml")).unwrap();
    ws.write("w/Pipeline.toml", pipeline);
    ws
}

fn cache_files(ws: &Ws, sub: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(ws.path(&format!("w/.pipe/cache/{sub}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_tampered_run_cache_entry_never_restores_outside_the_workspace() {
    let ws = nested(
        r#"
[stages.s]
cmd = "echo run >> runs.txt; (cat in.txt; echo made) > out.txt"
deps = ["in.txt"]
outs = ["out.txt"]
"#,
    );
    ws.write("w/in.txt", "hello\n");
    ws.pipe(&["-C", "w", "build"]).ok();
    // Someone with write access to a shared cache renames the out to a path outside.
    assert_eq!(cache_files(&ws, "runs").len(), 1);
    let absolute = ws.path("abs_escape.txt").display().to_string();
    for (k, evil) in ["../escape.txt", absolute.as_str(), "in.txt"]
        .into_iter()
        .enumerate()
    {
        // Every stored copy (each build that ran the stage packed one).
        let tamper = |json: &str| {
            let mut entry: serde_json::Value = serde_json::from_str(json).unwrap();
            let outs = entry["outs"].as_object_mut().unwrap();
            let (_, v) = outs
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap();
            outs.clear();
            outs.insert(evil.to_string(), v);
            serde_json::to_string(&entry).unwrap()
        };
        for f in cache_files(&ws, "runs") {
            let text = std::fs::read_to_string(&f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let new = if name.starts_with("pack-") {
                text.lines()
                    .map(|l| {
                        let (fp, json) = l.split_once(' ').unwrap();
                        format!("{fp} {}\n", tamper(json))
                    })
                    .collect()
            } else {
                tamper(&text)
            };
            std::fs::write(&f, new).unwrap();
        }
        std::fs::remove_file(ws.path("w/out.txt")).unwrap();
        let r = ws.pipe(&["-C", "w", "build"]);
        assert!(
            !ws.exists("escape.txt"),
            "restored outside the workspace\n{r}"
        );
        assert!(
            !ws.exists("abs_escape.txt"),
            "restored to an absolute path\n{r}"
        );
        assert_eq!(
            ws.read("w/in.txt"),
            "hello\n",
            "restored over another file\n{r}"
        );
        r.ok().err_has("running it instead");
        assert_eq!(ws.read("w/out.txt"), "hello\nmade\n");
        assert_eq!(ws.count("w/runs.txt"), 2 + k, "the stage ran instead");
        ws.pipe(&["-C", "w", "status"]).ok();
    }
}

#[test]
fn a_tampered_cached_folder_never_restores_outside_the_workspace() {
    let ws = nested(
        r#"
[stages.s]
cmd = "echo run >> runs.txt; mkdir -p d; cat in.txt > d/a.txt"
deps = ["in.txt"]
outs = ["d/"]
"#,
    );
    ws.write("w/in.txt", "hello\n");
    ws.pipe(&["-C", "w", "build"]).ok();
    let trees = cache_files(&ws, "trees");
    assert_eq!(trees.len(), 1);
    let text = std::fs::read_to_string(&trees[0]).unwrap();
    let mut tree: serde_json::Value = serde_json::from_str(&text).unwrap();
    tree["entries"][0]["path"] = "../../escape.txt".into();
    std::fs::write(&trees[0], serde_json::to_vec(&tree).unwrap()).unwrap();
    std::fs::remove_dir_all(ws.path("w/d")).unwrap();
    let r = ws.pipe(&["-C", "w", "build"]);
    assert!(
        !ws.exists("escape.txt"),
        "restored outside the workspace\n{r}"
    );
    r.ok();
    assert_eq!(ws.read("w/d/a.txt"), "hello\n");
    assert_eq!(ws.count("w/runs.txt"), 2, "the stage ran instead");
}

#[test]
fn ctrl_c_while_waiting_for_the_workspace_exits_130() {
    let ws = Ws::new(HOLDER);
    let mut first = ws.spawn(&["build"], "first.err");
    wait_until("the first build's stage to start", || {
        ws.count("runs.txt") == 1
    });
    let mut second = ws.spawn(&["build"], "second.err");
    wait_until("the second build to say it waits", || {
        std::fs::read_to_string(ws.path("second.err"))
            .unwrap()
            .contains("waiting")
    });
    signal(&second, libc::SIGINT);
    wait_until("the waiting build to give up", || {
        !still_running(&mut second) || !still_running(&mut first)
    });
    assert!(
        still_running(&mut first),
        "the waiting build ignored Ctrl-C until the holder finished"
    );
    assert_eq!(exit_code(second), 130);
    ws.write("go", "");
    assert_eq!(exit_code(first), 0);
    assert_eq!(ws.count("runs.txt"), 1);
}

#[test]
fn ctrl_c_during_a_retry_delay_stops_without_another_attempt() {
    let ws = Ws::new(
        r#"
[stages.flaky]
cmd = "echo try >> tries; exit 1"
outs = ["out.txt"]
retries = 3
retry_delay = "1h"
"#,
    );
    let mut child = ws.spawn(&["build"], "b.err");
    wait_until("the retry to be announced", || {
        std::fs::read_to_string(ws.path("b.err"))
            .unwrap()
            .contains("Retrying")
    });
    signal(&child, libc::SIGINT);
    wait_until("pipe to exit", || !still_running(&mut child));
    assert_eq!(exit_code(child), 130);
    assert_eq!(ws.count("tries"), 1, "no attempt after Ctrl-C");
    assert_eq!(ws.last_manifest()["status"], "interrupted");
}

#[test]
fn ctrl_c_stops_every_running_stage() {
    let ws = Ws::new(
        r#"
[stages.x]
cmd = "sleep 120 & echo $! > x.pid; wait"
outs = ["x.txt"]

[stages.y]
cmd = "sleep 120 & echo $! > y.pid; wait"
outs = ["y.txt"]
"#,
    );
    let mut child = ws.spawn(&["build", "-j", "2"], "b.err");
    wait_until("both stages to start", || {
        read_pid(&ws, "x.pid").is_some() && read_pid(&ws, "y.pid").is_some()
    });
    let pids = [
        read_pid(&ws, "x.pid").unwrap(),
        read_pid(&ws, "y.pid").unwrap(),
    ];
    signal(&child, libc::SIGINT);
    wait_until("pipe to exit", || !still_running(&mut child));
    assert_eq!(exit_code(child), 130);
    for pid in pids {
        wait_until("every stage's child to be gone", || !alive(pid));
    }
    ws.pipe(&["status"]).code(1);
}

#[test]
fn a_stage_ignoring_sigterm_is_killed_on_the_second_ctrl_c() {
    let ws = Ws::new(
        r#"
[stages.stubborn]
cmd = "trap '' TERM; sleep 120 & echo $! > child.pid; wait; wait"
outs = ["out.txt"]
"#,
    );
    let mut child = ws.spawn(&["build"], "b.err");
    wait_until("the stage to start", || {
        read_pid(&ws, "child.pid").is_some()
    });
    let pid = read_pid(&ws, "child.pid").unwrap();
    signal(&child, libc::SIGINT);
    wait_until("pipe to take the first Ctrl-C", || {
        std::fs::read_to_string(ws.path("b.err"))
            .unwrap()
            .contains("Interrupted")
    });
    if still_running(&mut child) {
        signal(&child, libc::SIGINT);
    }
    wait_until("pipe to exit", || !still_running(&mut child));
    assert_eq!(exit_code(child), 130);
    wait_until("the stubborn child to be gone", || !alive(pid));
}

#[test]
fn symlinks_inside_an_out_folder_never_lead_pipe_to_write_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), "keep me\n").unwrap();
    let ws = Ws::new(&format!(
        r#"
[stages.s]
cmd = "mkdir -p d && cat in.txt > d/own.txt && ln -s {}/victim d/link"
deps = ["in.txt"]
outs = ["d/"]
"#,
        outside.path().display()
    ));
    ws.write("in.txt", "1\n");
    ws.pipe(&["build"]).ok();
    // A rerun removes the old folder first: the link goes, never what it points to.
    ws.write("in.txt", "2\n");
    ws.pipe(&["build"]).ok();
    // Back to 1: the folder comes out of the cache, over the link.
    ws.write("in.txt", "1\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("d/own.txt"), "1\n");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).unwrap(),
        "keep me\n"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}
