//! The content-addressed cache: restore instead of rerun, verification, folders and modes,
//! sharing one cache between workspaces, and `pipe gc`.
use crate::harness::{Run, Ws, files_under, finish, rendezvous, start};

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One stage copying `in.txt` to `a.txt`, counting its runs in `runs_a.txt` (not an out).
const COPY: &str = r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
"#;

/// Where the cache keeps the object with this digest.
fn object(cache: &Path, digest: &str) -> PathBuf {
    cache.join("objects").join(&digest[..2]).join(&digest[2..])
}

/// The digest the newest run recorded for `stage`'s out `out`.
fn out_hash(ws: &Ws, stage: &str, out: &str) -> String {
    let m = ws.last_manifest();
    m["stages"][stage]["outs"][out]["hash"]
        .as_str()
        .unwrap_or_else(|| panic!("no hash for {stage}/{out} in manifest:\n{m:#}"))
        .to_string()
}

fn make_writable(p: &Path) {
    let mut perm = std::fs::metadata(p).unwrap().permissions();
    perm.set_mode(0o644);
    std::fs::set_permissions(p, perm).unwrap();
}

fn build_with_cache(ws: &Ws, cache: &Path, args: &[&str]) -> Run {
    ws.cmd(args)
        .env("PIPE_CACHE_DIR", cache)
        .output()
        .expect("run pipe")
        .into()
}

#[test]
fn input_going_back_to_v1_restores_v1_outs_without_running() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("a.txt"), "v2\n");
    assert_eq!(ws.count("runs_a.txt"), 2);

    ws.write("in.txt", "v1\n");
    ws.pipe(&["status"])
        .code(1)
        .out_has("restorable")
        .out_has("dep changed: in.txt");
    let st = ws.pipe(&["status", "--json"]).json();
    assert_eq!(st["stages"][0]["state"], "restorable", "{st:#}");

    let b = ws.pipe(&["build"]);
    b.ok();
    assert!(
        b.stderr.contains("Restored") || b.stdout.contains("Restored"),
        "build does not say it restored\n{b}"
    );
    assert_eq!(
        ws.count("runs_a.txt"),
        2,
        "the stage ran instead of being restored"
    );
    assert_eq!(ws.read("a.txt"), "v1\n");
    assert_eq!(ws.last_manifest()["stages"]["a"]["status"], "restored");
    // The restore updated the lock: nothing is stale any more.
    ws.pipe(&["status"]).ok().out_has("up to date");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 2);
}

#[test]
fn deleted_or_edited_out_comes_back_without_running() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.pipe(&["status"]).code(1).out_has("out missing: a.txt");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 1);
    assert_eq!(ws.read("a.txt"), "v1\n");
    assert_eq!(ws.last_manifest()["stages"]["a"]["status"], "restored");

    ws.write("a.txt", "edited by hand\n");
    ws.pipe(&["status"]).code(1).out_has("out modified: a.txt");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 1);
    assert_eq!(ws.read("a.txt"), "v1\n");
}

#[test]
fn deleted_lock_is_rebuilt_from_the_run_cache_without_running() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let lock = ws.read("Pipeline.lock");
    std::fs::remove_file(ws.path("Pipeline.lock")).unwrap();
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.pipe(&["status"]).code(1).out_has("restorable");
    ws.pipe(&["build"]).ok();
    assert_eq!(
        ws.count("runs_a.txt"),
        1,
        "the stage ran although the run cache had it"
    );
    assert_eq!(ws.read("a.txt"), "v1\n");
    assert_eq!(ws.read("Pipeline.lock"), lock, "the restored lock differs");
    ws.pipe(&["status"]).ok();
}

#[test]
fn no_cache_runs_instead_of_restoring() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build", "--no-cache"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 3);
    assert_eq!(ws.read("a.txt"), "v1\n");
    assert_eq!(ws.last_manifest()["stages"]["a"]["status"], "ran");
    // A deleted out with --no-cache also runs.
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.pipe(&["build", "--no-cache"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 4);
}

#[test]
fn always_and_uncached_stages_are_never_restored() {
    let ws = Ws::new(
        r#"
[stages.al]
cmd = "echo run >> runs_al.txt && cp in.txt al.txt"
deps = ["in.txt"]
outs = ["al.txt"]
always = true

[stages.nc]
cmd = "echo run >> runs_nc.txt && cp in.txt nc.txt"
deps = ["in.txt"]
outs = ["nc.txt"]
cache = false
"#,
    );
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v1\n");
    let st = ws.pipe(&["status"]);
    st.code(1);
    assert!(!st.stdout.contains("restorable"), "{st}");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_al.txt"), 3);
    assert_eq!(ws.count("runs_nc.txt"), 3);
    let m = ws.last_manifest();
    assert_eq!(m["stages"]["al"]["status"], "ran", "{m:#}");
    assert_eq!(m["stages"]["nc"]["status"], "ran", "{m:#}");

    // A deleted out of the uncached stage is rebuilt by running it.
    std::fs::remove_file(ws.path("nc.txt")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_nc.txt"), 4);
    assert_eq!(ws.read("nc.txt"), "v1\n");
    assert_eq!(ws.count("runs_al.txt"), 4);
}

#[test]
fn corrupted_object_is_reported_and_the_stage_reruns() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let digest = out_hash(&ws, "a", "a.txt");
    let obj = object(&ws.path(".pipe/cache"), &digest);
    assert!(obj.is_file(), "no object at {}", obj.display());
    assert_eq!(
        std::fs::metadata(&obj).unwrap().permissions().mode() & 0o222,
        0,
        "cache objects should be read-only"
    );
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();

    make_writable(&obj);
    std::fs::write(&obj, "v9\n").unwrap();
    ws.write("in.txt", "v1\n");
    let b = ws.pipe(&["build"]);
    b.ok();
    assert!(
        b.stderr.contains(&digest) && b.stderr.contains("`a`"),
        "warning does not name the object and the stage\n{b}"
    );
    assert_eq!(ws.count("runs_a.txt"), 3, "the stage did not rerun");
    assert_eq!(ws.read("a.txt"), "v1\n");
    assert_eq!(ws.last_manifest()["stages"]["a"]["status"], "ran");
    // The bad object was replaced by the good bytes the rerun stored.
    assert_eq!(std::fs::read_to_string(&obj).unwrap(), "v1\n");
    let events = std::fs::read_to_string(ws.last_run_dir().join("events.jsonl")).unwrap();
    assert!(events.contains("cache_corrupt"), "{events}");
}

#[test]
fn corrupted_object_of_a_deleted_out_is_not_restored() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let obj = object(&ws.path(".pipe/cache"), &out_hash(&ws, "a", "a.txt"));
    make_writable(&obj);
    std::fs::write(&obj, "v1 but longer\n").unwrap();
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    let b = ws.pipe(&["build"]);
    b.ok().err_has("corrupt");
    assert_eq!(ws.count("runs_a.txt"), 2);
    assert_eq!(ws.read("a.txt"), "v1\n");
}

const FOLDER: &str = r#"
[stages.f]
cmd = """
echo run >> runs_f.txt
mkdir -p out/sub/deeper
cp in.txt out/sub/x.txt
echo deep > out/sub/deeper/y.txt
printf '#!/bin/sh\\necho hi\\n' > out/tool.sh
chmod 755 out/tool.sh
if grep -q v2 in.txt; then echo extra > out/extra.txt; fi
"""
deps = ["in.txt"]
outs = ["out"]
"#;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn folder_out_is_restored_whole_with_modes() {
    let ws = Ws::new(FOLDER);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(mode(&ws.path("out/tool.sh")) & 0o111, 0o111);
    let before: Vec<PathBuf> = files_under(&ws.path("out"));
    assert_eq!(before.len(), 3);

    // Deleted folder comes back.
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_f.txt"), 1);
    assert_eq!(files_under(&ws.path("out")), before);
    assert_eq!(ws.read("out/sub/x.txt"), "v1\n");
    assert_eq!(ws.read("out/sub/deeper/y.txt"), "deep\n");
    assert_eq!(ws.read("out/tool.sh"), "#!/bin/sh\necho hi\n");
    assert_eq!(
        mode(&ws.path("out/tool.sh")) & 0o111,
        0o111,
        "restored script is no longer executable"
    );
    assert_eq!(mode(&ws.path("out/sub/x.txt")) & 0o111, 0);
    let out = std::process::Command::new(ws.path("out/tool.sh"))
        .output()
        .expect("restored script runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // v2 adds a file; going back to v1 restores the v1 folder exactly, without the extra file.
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    assert!(ws.exists("out/extra.txt"));
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_f.txt"), 2);
    assert_eq!(ws.last_manifest()["stages"]["f"]["status"], "restored");
    assert!(
        !ws.exists("out/extra.txt"),
        "a file of the v2 folder survived the restore"
    );
    assert_eq!(files_under(&ws.path("out")), before);
    assert_eq!(ws.read("out/sub/x.txt"), "v1\n");
    assert_eq!(mode(&ws.path("out/tool.sh")) & 0o111, 0o111);

    // A file added by hand inside the folder makes it modified; the restore removes it.
    ws.write("out/stray.txt", "x");
    ws.pipe(&["status"]).code(1).out_has("out modified: out");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_f.txt"), 2);
    assert!(!ws.exists("out/stray.txt"));
}

#[test]
fn restored_file_is_a_private_copy_not_a_link_into_the_cache() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let obj = object(&ws.path(".pipe/cache"), &out_hash(&ws, "a", "a.txt"));
    // The out the stage wrote is not linked either.
    let built = std::fs::metadata(ws.path("a.txt")).unwrap();
    assert_ne!(built.ino(), std::fs::metadata(&obj).unwrap().ino());
    std::fs::write(ws.path("a.txt"), "changed after build\n").unwrap();
    assert_eq!(std::fs::read_to_string(&obj).unwrap(), "v1\n");

    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 1);
    let restored = std::fs::metadata(ws.path("a.txt")).unwrap();
    let o = std::fs::metadata(&obj).unwrap();
    assert_ne!(
        restored.ino(),
        o.ino(),
        "restored file is the cache object itself"
    );
    assert_eq!(restored.nlink(), 1, "restored file has other links");
    assert_ne!(
        restored.permissions().mode() & 0o200,
        0,
        "restored file is not writable"
    );

    // Editing the restored file in place leaves the object intact.
    std::fs::write(ws.path("a.txt"), "edited in place\n").unwrap();
    assert_eq!(std::fs::read_to_string(&obj).unwrap(), "v1\n");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.read("a.txt"), "v1\n");
    assert_eq!(ws.count("runs_a.txt"), 1);
}

#[test]
fn two_workspaces_share_one_cache_through_pipe_cache_dir() {
    let pipeline = r#"
[stages.a]
cmd = "echo run >> runs.txt && cp in.txt a.txt && cat a.txt a.txt > b.txt"
deps = ["in.txt"]
outs = ["a.txt", "b.txt"]

[stages.f]
cmd = "echo run >> runs.txt && mkdir -p dir && cp b.txt dir/c.txt && printf '#!/bin/sh\\n' > dir/run.sh && chmod 755 dir/run.sh"
deps = ["b.txt"]
outs = ["dir"]
"#;
    let cache = tempfile::tempdir().unwrap();
    let one = Ws::new(pipeline);
    let two = Ws::new(pipeline);
    for ws in [&one, &two] {
        ws.write("in.txt", "shared input\n");
    }
    build_with_cache(&one, cache.path(), &["build"]).ok();
    assert_eq!(one.count("runs.txt"), 2);
    assert!(
        !one.exists(".pipe/cache/objects"),
        "PIPE_CACHE_DIR was ignored"
    );
    // The second workspace has never built: no lock, no outs.
    build_with_cache(&two, cache.path(), &["status"])
        .code(1)
        .out_has("restorable");
    build_with_cache(&two, cache.path(), &["build"]).ok();
    assert_eq!(
        two.count("runs.txt"),
        0,
        "the second workspace ran a command"
    );
    for f in ["a.txt", "b.txt", "dir/c.txt", "dir/run.sh", "Pipeline.lock"] {
        assert_eq!(
            std::fs::read(one.path(f)).unwrap(),
            std::fs::read(two.path(f)).unwrap(),
            "{f} differs between the workspaces"
        );
    }
    assert_eq!(mode(&two.path("dir/run.sh")) & 0o111, 0o111);
    let m = two.last_manifest();
    assert_eq!(m["stages"]["a"]["status"], "restored");
    assert_eq!(m["stages"]["f"]["status"], "restored");
}

#[test]
fn cache_dir_in_the_pipeline_is_used_and_the_env_var_wins() {
    let shared = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "[pipeline]\ncache_dir = \"{}\"\n{COPY}",
        shared.path().display()
    );
    let one = Ws::new(&pipeline);
    let two = Ws::new(&pipeline);
    for ws in [&one, &two] {
        ws.write("in.txt", "v1\n");
    }
    one.pipe(&["build"]).ok();
    assert!(!one.exists(".pipe/cache/objects"));
    let digest = out_hash(&one, "a", "a.txt");
    assert!(object(shared.path(), &digest).is_file());
    two.pipe(&["build"]).ok();
    assert_eq!(two.count("runs_a.txt"), 0);
    assert_eq!(two.read("a.txt"), "v1\n");

    // PIPE_CACHE_DIR beats cache_dir: an empty cache there means the stage runs.
    let other = tempfile::tempdir().unwrap();
    let three = Ws::new(&pipeline);
    three.write("in.txt", "v1\n");
    build_with_cache(&three, other.path(), &["build"]).ok();
    assert_eq!(three.count("runs_a.txt"), 1);
    assert!(object(other.path(), &digest).is_file());
}

#[test]
fn gc_removes_unreferenced_objects_and_keeps_what_the_lock_needs() {
    let ws = Ws::new(COPY);
    let cache = ws.path(".pipe/cache");
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let v1 = object(&cache, &out_hash(&ws, "a", "a.txt"));
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    let v2 = object(&cache, &out_hash(&ws, "a", "a.txt"));
    assert!(v1.is_file() && v2.is_file());

    // With the default --keep-runs the v1 run still references v1.
    ws.pipe(&["gc"]).ok();
    assert!(v1.is_file(), "gc removed an object a kept run references");

    ws.pipe(&["gc", "--keep-runs", "0"]).ok();
    assert!(!v1.exists(), "gc kept an unreferenced object");
    assert!(
        v2.is_file(),
        "gc removed the object Pipeline.lock references"
    );
    assert_eq!(
        files_under(&cache.join("runs")).len(),
        1,
        "gc kept the run-cache entry of v1"
    );

    // What the lock references still restores.
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 2);
    assert_eq!(ws.read("a.txt"), "v2\n");
    // v1 is gone: going back runs the stage.
    ws.write("in.txt", "v1\n");
    ws.pipe(&["status"]).code(1).out_has("dep changed: in.txt");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 3);
    assert_eq!(ws.read("a.txt"), "v1\n");
}

#[test]
fn gc_keeps_folder_objects_the_lock_references() {
    let ws = Ws::new(FOLDER);
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    ws.pipe(&["gc", "--keep-runs", "0"]).ok();
    // The extra.txt object of v2 is gone; the v1 folder restores whole.
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_f.txt"), 2);
    assert_eq!(files_under(&ws.path("out")).len(), 3);
    assert_eq!(ws.read("out/sub/x.txt"), "v1\n");
}

#[test]
fn gc_dry_run_reports_and_removes_nothing() {
    let ws = Ws::new(COPY);
    let cache = ws.path(".pipe/cache");
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    let before = files_under(&cache);
    let r = ws.pipe(&["gc", "--dry-run", "--keep-runs", "0", "--json"]);
    r.ok();
    // v1: one object (3 bytes) and one run-cache entry.
    // The count and the bytes: the 3-byte object plus the entry's JSON.
    let v = r.json();
    assert_eq!(v["removed_files"], 2, "{r}");
    let bytes = v["removed_bytes"].as_u64().unwrap();
    // The terminal line says it once, in one unit.
    ws.pipe(&["gc", "--dry-run", "--keep-runs", "0"])
        .ok()
        .err_has("Would remove 2 files,");
    let entry = files_under(&cache.join("runs"))
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .min()
        .unwrap();
    assert!(bytes > 3 && bytes <= 3 + entry * 2, "{bytes} bytes\n{r}");
    assert_eq!(files_under(&cache), before, "dry run removed something");
    // Nothing unreferenced: the dry run says zero.
    ws.pipe(&["gc", "--keep-runs", "0"]).ok();
    let r = ws.pipe(&["gc", "--dry-run", "--keep-runs", "0", "--json"]);
    assert_eq!(r.json()["removed_files"], 0, "{r}");
}

#[test]
fn two_concurrent_builds_in_two_clones_on_one_cache_both_succeed() {
    // Stage `a` of each clone waits for stage `a` of the other one (a rendezvous in a folder
    // outside both), so the two builds really run at the same time.
    let meet = tempfile::tempdir().unwrap();
    let pipeline = r#"
[stages.a]
cmd = "echo run >> runs.txt && MEET && head -c 200000 /dev/zero | tr '\\0' x > big.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt", "big.txt"]

[stages.b]
cmd = "echo run >> runs.txt && mkdir -p d && cp a.txt d/1 && cp big.txt d/2"
deps = ["a.txt", "big.txt"]
outs = ["d"]
"#
    .replace(
        "MEET",
        &rendezvous(&meet.path().join("ready").to_string_lossy(), 2),
    );
    let cache = tempfile::tempdir().unwrap();
    let one = Ws::new(&pipeline);
    let two = Ws::new(&pipeline);
    for ws in [&one, &two] {
        ws.write("in.txt", "same\n");
    }
    let build = |ws: &Ws| {
        let mut c = ws.cmd(&["build"]);
        c.env("PIPE_CACHE_DIR", cache.path());
        start(c)
    };
    let (c1, c2) = (build(&one), build(&two));
    let cap = Duration::from_secs(120);
    finish(c1, cap).ok();
    finish(c2, cap).ok();
    for f in ["a.txt", "big.txt", "d/1", "d/2"] {
        assert_eq!(
            std::fs::read(one.path(f)).unwrap(),
            std::fs::read(two.path(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(one.read("a.txt"), "same\n");
    // No temp files left behind in the shared cache.
    for f in files_under(cache.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp"), "left over: {}", f.display());
    }
    // A third clone restores everything from what the two stored.
    let three = Ws::new(&pipeline);
    three.write("in.txt", "same\n");
    build_with_cache(&three, cache.path(), &["build"]).ok();
    assert_eq!(three.count("runs.txt"), 0);
    assert_eq!(three.read("d/2"), one.read("d/2"));
}

#[test]
fn corrupted_object_inside_a_folder_out_is_caught_and_the_stage_reruns() {
    let ws = Ws::new(FOLDER);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    // The object of out/sub/x.txt holds "v1\n".
    let digest = blake3::hash(b"v1\n").to_hex().to_string();
    let obj = object(&ws.path(".pipe/cache"), &digest);
    make_writable(&obj);
    std::fs::write(&obj, "v7\n").unwrap();
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    let b = ws.pipe(&["build"]);
    b.ok().err_has(&digest).err_has("`f`");
    assert_eq!(ws.count("runs_f.txt"), 2);
    assert_eq!(ws.read("out/sub/x.txt"), "v1\n");
    assert_eq!(files_under(&ws.path("out")).len(), 3);
    // No half-restored temp folder is left next to the out.
    let stray: Vec<_> = std::fs::read_dir(ws.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pipe-restore"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn a_deleted_parent_folder_of_an_out_is_recreated_on_restore() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt deep/nest/a.txt"
deps = ["in.txt"]
outs = ["deep/nest/a.txt"]
"#,
    );
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    std::fs::remove_dir_all(ws.path("deep")).unwrap();
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_a.txt"), 1);
    assert_eq!(ws.read("deep/nest/a.txt"), "v1\n");
}

#[test]
fn gc_refuses_when_it_cannot_read_a_reference() {
    let ws = Ws::new(COPY);
    let cache = ws.path(".pipe/cache");
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    ws.write("in.txt", "v2\n");
    ws.pipe(&["build"]).ok();
    let before = files_under(&cache);
    let lock = ws.read("Pipeline.lock");

    ws.write("Pipeline.lock", "this is [not toml");
    let r = ws.pipe(&["gc", "--keep-runs", "0"]);
    assert_ne!(r.code, 0, "{r}");
    r.err_has("Pipeline.lock");
    assert_eq!(
        files_under(&cache),
        before,
        "gc removed objects without its references"
    );

    // An unreadable manifest of a kept run also stops it.
    ws.write("Pipeline.lock", &lock);
    std::fs::write(ws.last_run_dir().join("manifest.json"), "{ broken").unwrap();
    let r = ws.pipe(&["gc"]);
    assert_ne!(r.code, 0, "{r}");
    r.err_has("manifest.json");
    assert_eq!(files_under(&cache), before);
}

#[test]
fn two_stages_storing_the_same_bytes_share_one_object_and_leave_no_temp_file() {
    let ws = Ws::new(
        r#"
[stages.a]
cmd = "echo same > a.txt"
outs = ["a.txt"]

[stages.b]
cmd = "echo same > b.txt"
outs = ["b.txt"]
"#,
    );
    ws.pipe(&["build", "-j", "2"]).ok();
    let digest = out_hash(&ws, "a", "a.txt");
    assert_eq!(digest, out_hash(&ws, "b", "b.txt"));
    let cache = ws.path(".pipe/cache");
    let obj = object(&cache, &digest);
    assert_eq!(std::fs::read_to_string(&obj).unwrap(), "same\n");
    assert_eq!(std::fs::metadata(&obj).unwrap().mode() & 0o777, 0o444);
    // Every file in the cache is a named object or entry: nothing half-written, no temp file.
    let objects: Vec<PathBuf> = files_under(&cache.join("objects"));
    assert_eq!(objects, std::slice::from_ref(&obj), "{objects:?}");
    let all: Vec<PathBuf> = files_under(&cache)
        .iter()
        .map(|f| f.strip_prefix(&cache).unwrap().to_path_buf())
        .collect();
    assert!(
        all.iter()
            .all(|f| f.starts_with("objects") || f.starts_with("runs")),
        "{all:?}"
    );
    assert!(!cache.join("tmp").exists() || files_under(&cache.join("tmp")).is_empty());
    // Both come back from the one object.
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    std::fs::remove_file(ws.path("b.txt")).unwrap();
    let out = ws.pipe(&["build"]);
    out.ok();
    assert!(out.stderr.contains("2 restored"), "{}", out.stderr);
    assert_eq!(ws.read("a.txt"), "same\n");
    assert_eq!(ws.read("b.txt"), "same\n");
}
