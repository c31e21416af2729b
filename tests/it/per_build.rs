//! Files a build writes once, not once per stage: the journal of running markers
//! (`.pipe/state/journal/`) and the run-cache pack (`<cache>/runs/pack-*.jsonl`). Each test
//! breaks what the file is for: a cut-off build, a leftover process group, a restore.

use crate::harness::*;

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ...
fn stat_fields(pid: i32) -> Option<Vec<i64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|w| w.parse().unwrap_or(0))
            .collect(),
    )
}

/// pipe's watchdog: the child of `pipe` that sits in a session of its own.
fn watchdog_of(pipe: i32) -> i32 {
    let mut found = None;
    wait_until("the watchdog to be found", || {
        found = std::fs::read_dir("/proc").unwrap().find_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let f = stat_fields(pid)?;
            (f[0] == pipe as i64 && f[2] == pid as i64).then_some(pid)
        });
        found.is_some()
    });
    found.unwrap()
}

fn files_in(ws: &Ws, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ws.path(rel))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Wait until `pipe status` shows `n` stages of the live build as running: their process
/// groups are then known to the watchdog and written in the journal (a stage can write its
/// pid file a moment before).
fn wait_running(ws: &Ws, n: usize) {
    wait_until(&format!("{n} stages to show as running"), || {
        let v = ws.pipe(&["status", "--json"]).json();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "running")
            .count()
            == n
    });
}

fn reap_group(pg: i32) {
    if alive(pg) {
        unsafe { libc::killpg(pg, libc::SIGKILL) };
    }
}

#[test]
fn a_group_left_alive_by_a_killed_build_and_its_watchdog_is_stopped_by_the_next_build() {
    // The first run never ends by itself and ignores SIGTERM; later runs finish.
    let ws = Ws::new(
        r#"
[stages.train]
cmd = "echo $$ > pg.txt; if [ ! -e second ]; then trap '' TERM; while :; do sleep 0.05; done; fi; echo ok > model.bin"
outs = ["model.bin"]
"#,
    );
    let build = ws.spawn(&["build"], "build.err");
    let pg = wait_pid(&ws, "pg.txt");
    wait_running(&ws, 1);
    // pipe and its watchdog both die: only the journal knows the group.
    let wd = watchdog_of(build.id() as i32);
    unsafe { libc::kill(wd, libc::SIGKILL) };
    kill9(build);
    assert!(
        alive(pg),
        "the stage's group outlived pipe and its watchdog"
    );
    let run_id = ws
        .last_run_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    ws.pipe(&["status"]).code(1).out_has("incomplete");

    ws.write("second", "");
    let run = ws.pipe(&["build"]);
    let survived = alive(pg);
    reap_group(pg);
    run.ok().err_has(&format!(
        "stage `train`: stopping processes its run {run_id} left running (process group {pg})"
    ));
    assert!(!survived, "the leftover group was stopped");
    assert_eq!(ws.read("model.bin"), "ok\n");
    ws.pipe(&["status"]).ok();
    assert!(files_in(&ws, ".pipe/state/journal").is_empty());
}

const TWO_HELD: &str = r#"
[stages.a]
cmd = "echo $$ > pg_a; while [ -e hold ]; do sleep 0.05; done; echo a > a.txt"
outs = ["a.txt"]

[stages.b]
cmd = "echo $$ > pg_b; while [ -e hold ]; do sleep 0.05; done; echo b > b.txt"
outs = ["b.txt"]
"#;

/// A build of TWO_HELD killed (with `kill -9`) while both stages run, once the watchdog
/// has stopped them.
fn crashed_with_both_running() -> Ws {
    let ws = Ws::new(TWO_HELD);
    ws.write("hold", "");
    let build = ws.spawn(&["build", "-j", "2"], "build.err");
    let (pa, pb) = (wait_pid(&ws, "pg_a"), wait_pid(&ws, "pg_b"));
    wait_running(&ws, 2);
    kill9(build);
    wait_until("the watchdog to stop the stages", || {
        !alive(pa) && !alive(pb)
    });
    ws
}

#[test]
fn stages_cut_off_by_a_crash_stay_incomplete_across_builds_until_rerun_or_cleaned() {
    let ws = crashed_with_both_running();
    let st = ws.pipe(&["status"]);
    st.code(1);
    assert_eq!(st.stdout.matches("incomplete").count(), 2, "{st}");

    // A build of `a` alone: `a` is no longer cut off, `b` still is (carried over).
    std::fs::remove_file(ws.path("hold")).unwrap();
    ws.pipe(&["build", "a"]).ok();
    let st = ws.pipe(&["status", "--json"]).json();
    let state = |name: &str| {
        st["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(state("a")["state"], "up_to_date", "{st:#}");
    let b = state("b").to_string();
    assert!(b.contains("incomplete"), "{st:#}");
    assert_eq!(
        files_in(&ws, ".pipe/state/journal"),
        ["carried.journal"],
        "one file holds what earlier builds left open"
    );

    // Another build that does not touch `b` keeps it incomplete too.
    ws.pipe(&["build", "a", "--force"]).ok();
    ws.pipe(&["status", "b"]).code(1).out_has("incomplete");

    // `pipe clean b` clears it: b is stale (never run) but no longer incomplete.
    ws.pipe(&["clean", "b"]).ok();
    let st = ws.pipe(&["status"]);
    st.code(1);
    assert!(!st.stdout.contains("incomplete"), "{st}");
    assert!(files_in(&ws, ".pipe/state/journal").is_empty());
    ws.pipe(&["build"]).ok();
    ws.pipe(&["status"]).ok();
}

#[test]
fn a_stage_cut_off_and_rerun_is_no_longer_incomplete_and_a_torn_journal_line_is_ignored() {
    let ws = crashed_with_both_running();
    // The crashed build's journal, with a torn last line as a power cut might leave.
    let journals = files_in(&ws, ".pipe/state/journal");
    assert_eq!(journals.len(), 1, "{journals:?}");
    let path = ws.path(&format!(".pipe/state/journal/{}", journals[0]));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("end \"a");
    std::fs::write(&path, text).unwrap();
    let st = ws.pipe(&["status"]);
    assert_eq!(st.stdout.matches("incomplete").count(), 2, "{st}");

    std::fs::remove_file(ws.path("hold")).unwrap();
    ws.pipe(&["build"]).ok();
    ws.pipe(&["status"]).ok();
    assert!(files_in(&ws, ".pipe/state/journal").is_empty());
}

// ---------------------------------------------------------------- run-cache packs

/// A stage whose out depends on a param, so switching the param back can restore it.
const PARAM: &str = r#"
[params]
v = 1

[stages.a]
cmd = "echo run >> runs.txt; echo ${params.v} > a.txt"
params = ["v"]
outs = ["a.txt"]
"#;

fn packs(ws: &Ws) -> Vec<String> {
    files_in(ws, ".pipe/cache/runs")
}

#[test]
fn an_entry_stored_in_one_builds_pack_restores_the_stage_in_a_later_build() {
    let ws = Ws::new(PARAM);
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "--set", "v=2"]).ok();
    assert_eq!(ws.count("runs.txt"), 2);
    let p = packs(&ws);
    assert_eq!(p.len(), 2, "one pack per build that stored entries: {p:?}");
    assert!(
        p.iter()
            .all(|n| n.starts_with("pack-") && n.ends_with(".jsonl")),
        "{p:?}"
    );
    // Back to v = 1: restored from the first build's pack, not run.
    ws.pipe(&["status"]).code(1).out_has("restorable");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 2, "the stage was restored, not run");
    assert_eq!(ws.read("a.txt"), "1\n");
    assert_eq!(ws.last_manifest()["stages"]["a"]["status"], "restored");
    assert_eq!(packs(&ws).len(), 2, "a restore stores nothing");
}

#[test]
fn torn_lines_in_packs_are_skipped_and_a_tampered_line_is_refused() {
    let ws = Ws::new(PARAM);
    for v in ["1", "2", "3"] {
        ws.pipe(&["build", "--set", &format!("v={v}")]).ok();
    }
    assert_eq!(ws.count("runs.txt"), 3);
    let dir = ws.path(".pipe/cache/runs");
    assert_eq!(packs(&ws).len(), 3);
    // Every pack gets a torn line at its end, as a writer killed mid-line would leave.
    for name in packs(&ws) {
        let path = dir.join(&name);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&"f".repeat(64));
        text.push_str(" {\"version\":1,\"sta");
        std::fs::write(&path, text).unwrap();
    }
    // v = 2 and v = 1 restore from their packs despite the torn tails.
    ws.pipe(&["build", "--set", "v=2"]).ok();
    assert_eq!(ws.read("a.txt"), "2\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("a.txt"), "1\n");
    assert_eq!(ws.count("runs.txt"), 3, "both were restored");
    // Each whole line's entry now names another fingerprint than the line: refused, and
    // the stage runs instead.
    for name in packs(&ws) {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = String::new();
        for line in text.split_inclusive('\n') {
            if let Some(body) = line.strip_suffix('\n') {
                let (fp, json) = body.split_once(' ').unwrap();
                let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
                v["fingerprint"] = "0".repeat(64).into();
                out += &format!("{fp} {v}\n");
            } else {
                out += line;
            }
        }
        std::fs::write(&path, out).unwrap();
    }
    let r = ws.pipe(&["build", "--set", "v=3"]);
    r.ok()
        .err_has("ignoring run-cache entry")
        .err_has("does not match");
    assert_eq!(ws.count("runs.txt"), 4, "the stage ran instead");
    assert_eq!(ws.read("a.txt"), "3\n");
}

#[test]
fn gc_drops_pack_entries_nothing_references_and_keeps_the_rest() {
    let ws = Ws::new(PARAM);
    ws.pipe(&["build"]).ok();
    ws.pipe(&["build", "--set", "v=2"]).ok();
    assert_eq!(packs(&ws).len(), 2);
    let r = ws.pipe(&["gc", "--keep-runs", "0", "--dry-run", "--json"]);
    // The v = 1 entry and its object.
    assert_eq!(r.ok().json()["removed_files"], 2, "{r}");
    assert_eq!(packs(&ws).len(), 2, "a dry run changes nothing");
    ws.pipe(&["gc", "--keep-runs", "0"]).ok();
    let p = packs(&ws);
    assert_eq!(
        p.len(),
        1,
        "the packs of finished builds were merged: {p:?}"
    );
    let text = std::fs::read_to_string(ws.path(&format!(".pipe/cache/runs/{}", p[0]))).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    // What the lock references still restores; v = 1 runs again.
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.pipe(&["build", "--set", "v=2"]).ok();
    assert_eq!(ws.count("runs.txt"), 2);
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 3);
    // A second gc with nothing unreferenced and (after the build) two packs merges them.
    let r = ws.pipe(&["gc", "--json"]);
    assert_eq!(r.ok().json()["removed_files"], 0, "{r}");
    assert_eq!(packs(&ws).len(), 1);
    ws.pipe(&["build", "--set", "v=2"]).ok();
    assert_eq!(ws.count("runs.txt"), 3, "restored from the merged pack");
}
