//! Hostile caches, remotes, values and file systems: nothing outside the workspace and the
//! cache changes, nothing panics, nothing hangs.

use crate::harness::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One stage copying `in.txt` to `a.txt`, counting its runs in `runs_a.txt`.
const COPY: &str = r#"
[stages.a]
cmd = "echo run >> runs_a.txt && cp in.txt a.txt"
deps = ["in.txt"]
outs = ["a.txt"]
"#;

/// One stage writing a folder out, counting its runs.
const FOLDER: &str = r#"
[stages.f]
cmd = "echo run >> runs_f.txt && mkdir -p out/sub && cp in.txt out/sub/x.txt && echo y > out/y.txt"
deps = ["in.txt"]
outs = ["out"]
"#;

/// A folder outside the workspace holding one file, to check that nothing touched it.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::Builder::new()
            .prefix("pipe-victim-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(dir.path().join("victim"), "precious\n").unwrap();
        Outside { dir }
    }
    fn victim(&self) -> PathBuf {
        self.dir.path().join("victim")
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The folder still holds exactly the victim file, unchanged.
    fn untouched(&self) {
        let names: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["victim"], "files appeared outside the workspace");
        assert_eq!(
            std::fs::read_to_string(self.victim()).unwrap(),
            "precious\n"
        );
    }
}

/// Nothing panicked.
fn sane(r: &Run) -> &Run {
    assert_ne!(r.code, 101, "pipe panicked\n{r}");
    assert!(!r.stderr.contains("panicked"), "pipe panicked\n{r}");
    r
}

fn run_entries(ws: &Ws) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ws.path(".pipe/cache/runs"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Rewrite every run-cache entry of the workspace with `f`.
fn tamper_runs(ws: &Ws, f: impl Fn(&mut serde_json::Value)) {
    let entries = run_entries(ws);
    assert!(!entries.is_empty(), "no run-cache entry to tamper with");
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("pack-") {
            // A pack: a line `<fingerprint> <entry JSON>` each.
            let text = std::fs::read_to_string(&p).unwrap();
            let mut out = String::new();
            for line in text.lines() {
                let (fp, json) = line.split_once(' ').unwrap();
                let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
                f(&mut v);
                out += &format!("{fp} {}\n", serde_json::to_string(&v).unwrap());
            }
            std::fs::write(&p, out).unwrap();
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode()
}

// ---------------------------------------------------------------- 1. trust nothing

#[test]
fn a_run_entry_hash_that_is_a_path_is_ignored_and_the_victim_survives() {
    let out = Outside::new();
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let hostile = format!("xx{}", out.victim().display());
    tamper_runs(&ws, |v| v["outs"]["a.txt"]["hash"] = hostile.clone().into());
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    let r = ws.pipe(&["build"]);
    sane(&r)
        .ok()
        .err_has("ignoring run-cache entry")
        .err_has("not a digest");
    assert!(r.stderr.contains("stage `a`"), "{r}");
    assert_eq!(ws.count("runs_a.txt"), 2, "the stage did not run instead");
    assert_eq!(ws.read("a.txt"), "v1\n");
    out.untouched();
}

#[test]
fn a_tampered_entry_in_a_file_remote_is_refused_by_a_fresh_clone() {
    let out = Outside::new();
    let remote = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "{COPY}\n[remote]\nurl = \"file://{}\"\n",
        remote.path().display()
    );
    let ws = Ws::new(&pipeline);
    ws.write("in.txt", "v1\n");
    sane(&ws.pipe(&["build", "--push"])).ok();
    let runs: Vec<PathBuf> = files_under(&remote.path().join("runs"));
    assert_eq!(runs.len(), 1, "nothing pushed");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&runs[0]).unwrap()).unwrap();
    v["outs"]["a.txt"]["hash"] = format!("xx{}", out.victim().display()).into();
    std::fs::write(&runs[0], serde_json::to_vec(&v).unwrap()).unwrap();
    // A fresh clone: the same pipeline and input, no local cache.
    let clone = Ws::new(&pipeline);
    clone.write("in.txt", "v1\n");
    let r = clone.pipe(&["build", "--pull"]);
    sane(&r).ok().err_has("not a digest");
    assert_eq!(
        clone.count("runs_a.txt"),
        1,
        "the stage did not run instead"
    );
    assert_eq!(clone.read("a.txt"), "v1\n");
    out.untouched();
}

#[test]
fn a_file_added_to_a_cached_tree_is_refused_and_the_stage_runs() {
    let out = Outside::new();
    let ws = Ws::new(FOLDER);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let trees: Vec<PathBuf> = std::fs::read_dir(ws.path(".pipe/cache/trees"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(trees.len(), 1);
    let mut t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trees[0]).unwrap()).unwrap();
    let mut extra = t["entries"][0].clone();
    extra["path"] = "zz-evil.txt".into();
    t["entries"].as_array_mut().unwrap().push(extra);
    std::fs::write(&trees[0], serde_json::to_vec(&t).unwrap()).unwrap();
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    let r = ws.pipe(&["build"]);
    sane(&r).ok().err_has("does not match its digest");
    assert_eq!(ws.count("runs_f.txt"), 2, "the stage did not run instead");
    assert!(!ws.exists("out/zz-evil.txt"), "the added file was restored");
    assert_eq!(ws.read("out/sub/x.txt"), "v1\n");
    out.untouched();
}

#[test]
fn setuid_and_setgid_bits_from_a_cache_entry_are_never_applied() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    tamper_runs(&ws, |v| v["outs"]["a.txt"]["mode"] = 0o6777.into());
    std::fs::remove_file(ws.path("a.txt")).unwrap();
    sane(&ws.pipe(&["build"])).ok();
    assert_eq!(ws.count("runs_a.txt"), 1, "expected a restore, not a run");
    let m = mode(&ws.path("a.txt"));
    assert_eq!(m & 0o7000, 0, "restored with mode {m:o}");
    assert_eq!(ws.read("a.txt"), "v1\n");
}

#[test]
fn a_restore_never_writes_through_a_symlink_an_upstream_stage_made_mid_build() {
    let out = Outside::new();
    let pipeline = |link: bool| {
        format!(
            r#"
[stages.u]
cmd = "{} echo u > u.txt"
outs = ["u.txt"]

[stages.a]
cmd = "test ! -L d && mkdir -p d && cp in.txt d/a.txt"
deps = ["in.txt"]
outs = ["d/a.txt"]
after = ["u"]
"#,
            if link {
                format!("rm -rf d && ln -s {} d &&", out.path().display())
            } else {
                String::new()
            }
        )
    };
    let ws = Ws::new(&pipeline(false));
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    std::fs::remove_dir_all(ws.path("d")).unwrap();
    ws.write("Pipeline.toml", &pipeline(true));
    let r = ws.pipe(&["build"]);
    sane(&r).err_has("symlink leading outside the workspace");
    out.untouched();
}

#[test]
fn a_symlink_inside_an_out_folder_leading_outside_is_refused_when_stored() {
    let out = Outside::new();
    let ws = Ws::new(&format!(
        r#"
[stages.f]
cmd = "echo run >> runs.txt && mkdir -p out && cat in.txt > out/ok.txt && ln -sf {} out/link"
deps = ["in.txt"]
outs = ["out"]
"#,
        out.victim().display()
    ));
    ws.write("in.txt", "1\n");
    let r = ws.pipe(&["build"]);
    // The stage's result stands; the cache refuses the folder, with one warning.
    sane(&r)
        .ok()
        .err_has("out/link")
        .err_has("outside the workspace: not storing it in the cache");
    // The victim's bytes never went into the cache, and no run entry points at the folder.
    let secret = blake3::hash(b"precious\n").to_hex().to_string();
    assert!(
        !ws.path(".pipe/cache/objects")
            .join(&secret[..2])
            .join(&secret[2..])
            .exists(),
        "the target of the symlink was stored in the cache"
    );
    assert!(run_entries(&ws).is_empty(), "a run entry was written");
    // So going back to an earlier input runs the stage instead of restoring.
    ws.write("in.txt", "2\n");
    sane(&ws.pipe(&["build"])).ok();
    ws.write("in.txt", "1\n");
    sane(&ws.pipe(&["build"])).ok();
    assert_eq!(ws.count("runs.txt"), 3);
    assert_eq!(ws.read("out/ok.txt"), "1\n");
    out.untouched();
}

// ---------------------------------------------------------------- 2. shared caches

/// Run pipe under `sh` with a given umask (the umask is per process: the test harness's own
/// must not change under the other tests).
fn pipe_umask(ws: &Ws, umask: &str, cache: &Path, args: &str) -> Run {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" {args}"))
        .arg(bin())
        .current_dir(ws.root())
        .env("PIPE_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
        .into()
}

#[test]
fn cache_entries_and_folders_follow_the_umask() {
    let cache = tempfile::tempdir().unwrap();
    let ws = Ws::new(FOLDER);
    ws.write("in.txt", "v1\n");
    sane(&pipe_umask(&ws, "002", cache.path(), "build")).ok();
    let mut checked = 0;
    for sub in ["runs", "trees"] {
        for e in std::fs::read_dir(cache.path().join(sub)).unwrap() {
            let m = mode(&e.unwrap().path()) & 0o777;
            assert_eq!(m, 0o664, "{sub} file has mode {m:o}");
            checked += 1;
        }
        assert_eq!(mode(&cache.path().join(sub)) & 0o777, 0o775);
    }
    assert_eq!(checked, 2);
    // Objects stay read-only for everyone.
    for e in files_under(&cache.path().join("objects")) {
        assert_eq!(mode(&e) & 0o777, 0o444, "{}", e.display());
    }
    // A new lock follows the umask too.
    assert_eq!(mode(&ws.path("Pipeline.lock")) & 0o777, 0o664);
}

/// A read-only bind mount of a folder, removed on drop; `None` (with a note) when this
/// machine does not allow mounts.
struct Mount(PathBuf);

impl Mount {
    fn bind_ro(src: &Path, dst: &Path) -> Option<Mount> {
        std::fs::create_dir_all(dst).unwrap();
        let ok = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
        if !ok(&["--bind", s, d]) {
            eprintln!("note: skipping: cannot bind-mount (needs root)");
            return None;
        }
        let m = Mount(dst.to_path_buf());
        if !ok(&["-o", "remount,ro,bind", d]) {
            eprintln!("note: skipping: cannot remount read-only");
            return None;
        }
        Some(m)
    }
    fn tmpfs(dst: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dst).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dst)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: skipping: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Mount(dst.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_cache_restores_and_never_fails_a_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let ws1 = Ws::new(COPY);
    ws1.write("in.txt", "v1\n");
    sane(&pipe_umask(&ws1, "022", &cache, "build")).ok();
    let Some(_ro) = Mount::bind_ro(&cache, &tmp.path().join("ro")) else {
        return;
    };
    let ro = tmp.path().join("ro");
    // A teammate's clone restores from it.
    let ws2 = Ws::new(COPY);
    ws2.write("in.txt", "v1\n");
    sane(&pipe_umask(&ws2, "022", &ro, "build")).ok();
    assert_eq!(ws2.count("runs_a.txt"), 0, "expected a restore");
    assert_eq!(ws2.read("a.txt"), "v1\n");
    // A change runs the stage: it succeeds, with one warning, and nothing is stored.
    ws2.write("in.txt", "v2\n");
    let r = pipe_umask(&ws2, "022", &ro, "build");
    sane(&r).ok();
    assert_eq!(
        r.stderr.matches("restoring from it, not storing").count(),
        1,
        "{r}"
    );
    assert_eq!(ws2.read("a.txt"), "v2\n");
    sane(&pipe_umask(&ws2, "022", &ro, "status")).ok();
}

// ---------------------------------------------------------------- 3. full disks, kills

/// What pipe tags its temporary files with on this machine: `<pid>.<host id>.`.
fn tag(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let id = blake3::hash(host.trim().as_bytes()).to_hex()[..8].to_string();
    format!("{pid}.{id}.")
}

fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn a_full_cache_disk_fails_no_stage_and_leaves_no_partial_object() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let Some(_m) = Mount::tmpfs(&cache, "1m") else {
        return;
    };
    let ws = Ws::new(
        r#"
[stages.big]
cmd = "head -c 3000000 /dev/zero | tr '\\0' x > big.bin"
outs = ["big.bin"]
"#,
    );
    let r = pipe_umask(&ws, "022", &cache, "build");
    sane(&r).ok().err_has("is full");
    assert_eq!(
        std::fs::metadata(ws.path("big.bin")).unwrap().len(),
        3_000_000
    );
    let litter: Vec<PathBuf> = files_under(&cache)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 10_000)
        .collect();
    assert!(
        litter.is_empty(),
        "partial files left in the cache: {litter:?}"
    );
    // The cache is not blocked: a small out is stored by the next build.
    ws.write(
        "Pipeline.toml",
        r#"
[stages.small]
cmd = "echo small > small.txt"
outs = ["small.txt"]
"#,
    );
    let r = pipe_umask(&ws, "022", &cache, "build");
    sane(&r).ok();
    assert!(!r.stderr.contains("is full"), "{r}");
    assert_eq!(
        std::fs::read_dir(cache.join("runs")).unwrap().count(),
        1,
        "the small stage's run entry was not stored"
    );
}

/// Plant the litter a killed pipe leaves: restores in `.pipe/tmp`, objects in the cache.
fn plant_litter(ws: &Ws, dead: u32) -> Vec<PathBuf> {
    let t = tag(dead);
    let files = [
        format!(".pipe/tmp/restore-{t}1"),
        format!(".pipe/tmp/restore-{t}2/sub/x"),
        format!(".pipe/tmp/.pipe-tmp-{t}abc"),
        format!(".pipe/cache/tmp/.tmp-{t}3"),
    ];
    for f in &files {
        ws.write(f, &"x".repeat(100_000));
    }
    files.iter().map(|f| ws.path(f)).collect()
}

#[test]
fn gc_and_the_next_build_sweep_temp_files_of_dead_writers_and_keep_live_ones() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    ws.pipe(&["build"]).ok();
    let me = tag(std::process::id());
    let live = [
        ws.path(&format!(".pipe/tmp/restore-{me}9")),
        ws.path(&format!(".pipe/cache/tmp/.tmp-{me}9")),
    ];
    for l in &live {
        // A build that stored only files made no `.pipe/cache/tmp` (objects are written
        // unnamed, then linked): a writer of a folder's tree would have.
        std::fs::create_dir_all(l.parent().unwrap()).unwrap();
        std::fs::write(l, "live").unwrap();
    }
    let mut dead = plant_litter(&ws, dead_pid());
    // Litter of a lock write before `.pipe/` existed, and of a restore onto another file
    // system (beside its out); and a user's file that merely looks tagged.
    let t = tag(dead_pid());
    for f in [
        format!(".pipe-tmp-{t}q"),
        format!(".a.txt.pipe-restore-{t}1"),
    ] {
        ws.write(&f, "x");
        dead.push(ws.path(&f));
    }
    let user = format!("report-{t}txt");
    ws.write(&user, "mine");
    sane(&ws.pipe(&["gc"])).ok();
    for d in &dead {
        assert!(!d.exists(), "gc left {}", d.display());
    }
    assert_eq!(ws.read(&user), "mine", "gc removed a user's file");
    std::fs::remove_file(ws.path(&user)).unwrap();
    for l in &live {
        assert!(l.exists(), "gc removed a live writer's {}", l.display());
    }
    // The next build sweeps too, even one with nothing to do.
    let dead = plant_litter(&ws, dead_pid());
    sane(&ws.pipe(&["build"])).ok();
    for d in &dead {
        assert!(!d.exists(), "a no-op build left {}", d.display());
    }
    let dead = plant_litter(&ws, dead_pid());
    ws.write("in.txt", "v2\n");
    sane(&ws.pipe(&["build"])).ok();
    for d in &dead {
        assert!(!d.exists(), "build left {}", d.display());
    }
    for l in &live {
        assert!(l.exists(), "build removed a live writer's {}", l.display());
    }
    // And nothing of pipe's is ever left in the workspace root.
    let mut names: Vec<String> = std::fs::read_dir(ws.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".pipe",
            "Pipeline.lock",
            "Pipeline.toml",
            "a.txt",
            "in.txt",
            "runs_a.txt"
        ]
    );
}

// ---------------------------------------------------------------- 4. values that cannot hurt

/// A stage around one hostile line, the line it is on and what the message must name.
fn hostile_values() -> Vec<(String, usize, &'static str)> {
    let stage = |extra: &str| {
        format!("[stages.s]\ncmd = \"echo hi > o.txt\"\nouts = [\"o.txt\"]\n{extra}\n")
    };
    vec![
        (stage("timeout = \"500000000000y\""), 4, "timeout"),
        (stage("timeout = \"400days\""), 4, "timeout"),
        (stage("retry_delay = \"9999999h\""), 4, "retry_delay"),
        (stage("retries = 4000000000"), 4, "retries"),
        (
            format!("[resources]\ngpu = 2147483648\n\n{}", stage("")),
            2,
            "gpu",
        ),
        (stage("resources = { cpus = 100000 }"), 4, "cpus"),
        (
            stage(
                "matrix = { a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], c = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], d = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] }",
            ),
            4,
            "10 × 10 × 10 × 11 = 11000",
        ),
        (
            format!("[pipeline]\ncache_dir = \"/\"\n\n{}", stage("")),
            2,
            "cache_dir",
        ),
        (
            format!("[pipeline]\ncache_dir = \"/etc/pipe\"\n\n{}", stage("")),
            2,
            "/etc",
        ),
        (
            format!("[pipeline]\ncache_dir = \"../elsewhere\"\n\n{}", stage("")),
            2,
            "cache_dir",
        ),
        (
            format!("[pipeline]\nruns_dir = \"../x\"\n\n{}", stage("")),
            2,
            "runs_dir",
        ),
        (
            format!("[pipeline]\nruns_dir = \"/tmp/runs\"\n\n{}", stage("")),
            2,
            "runs_dir",
        ),
        (
            format!("[pipeline]\njobs = 1000000\n\n{}", stage("")),
            2,
            "jobs",
        ),
        (stage("env = { \"A=B\" = \"x\" }"), 4, "env name"),
        (stage("env = { \"\" = \"x\" }"), 4, "env name"),
        (stage("env = { A = \"x\\u0000y\" }"), 4, "NUL"),
        (
            format!("{}\n[remote]\nurl = \"ftp://x\"\n", stage("")),
            7,
            "url",
        ),
        (
            format!("{}\n[remote]\nurl = \"s3://\"\n", stage("")),
            7,
            "no bucket",
        ),
        (
            format!("{}\n[remote]\nurl = \"file://relative/x\"\n", stage("")),
            7,
            "absolute",
        ),
        (
            format!("{}\n[remote]\nurl = \"file:///\"\n", stage("")),
            7,
            "url",
        ),
        (
            format!("[executor.slurm]\npoll_interval = nan\n\n{}", stage("")),
            2,
            "poll_interval",
        ),
    ]
}

#[test]
fn every_hostile_value_is_refused_with_file_line_and_key() {
    let before_root: Vec<_> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for (toml, line, key) in hostile_values() {
        let ws = Ws::new(&toml);
        for cmd in ["validate", "build"] {
            let r = ws.pipe(&[cmd]);
            sane(&r).code(2);
            assert!(
                r.stderr.contains(&format!("Pipeline.toml:{line}:")),
                "no line {line} for {key}:\n{toml}\n{r}"
            );
            assert!(
                r.stderr.contains(key),
                "no `{key}` in the message:\n{toml}\n{r}"
            );
        }
        assert!(!ws.exists("o.txt"), "a stage ran:\n{toml}");
    }
    let after_root: Vec<_> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before_root, after_root, "something was written in /");
}

#[test]
fn a_huge_matrix_is_refused_at_once() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo ${matrix.a}${matrix.b}${matrix.c}"
matrix = { a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], c = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }
"#,
    );
    sane(&ws.pipe(&["validate"])).ok();
    let items: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let list = items.join(", ");
    ws.write(
        "Pipeline.toml",
        &format!(
            "[stages.s]\ncmd = \"echo ${{matrix.a}}\"\nmatrix = {{ a = [{list}], b = [{list}], c = [{list}] }}\n"
        ),
    );
    let t = std::time::Instant::now();
    let r = ws.pipe(&["validate"]);
    sane(&r)
        .code(2)
        .err_has("1000 × 1000 × 1000 = 1000000000 stages, over the limit of 10000")
        .err_has("Pipeline.toml:3:");
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
}

#[test]
fn pipe_cache_dir_set_to_the_root_is_refused() {
    let ws = Ws::new(COPY);
    ws.write("in.txt", "v1\n");
    for dir in ["/", "/usr", "/proc/self"] {
        let r: Run = ws
            .cmd(&["build"])
            .env("PIPE_CACHE_DIR", dir)
            .output()
            .unwrap()
            .into();
        sane(&r).code(2).err_has("PIPE_CACHE_DIR");
        assert!(!ws.exists("a.txt"));
    }
    assert!(!Path::new("/objects").exists() && !Path::new("/runs").exists());
}

// ---------------------------------------------------------------- 5. special files

/// Run pipe, killing it (and failing) if it takes more than `secs`.
fn pipe_within(ws: &Ws, args: &[&str], secs: u64) -> Run {
    let mut child = ws
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap().into();
        }
        if start.elapsed().as_secs() > secs {
            let _ = child.kill();
            let r: Run = child.wait_with_output().unwrap().into();
            panic!("pipe {args:?} hung for {secs} s\n{r}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo failed");
}

#[test]
fn a_fifo_dep_is_an_error_naming_it_and_never_hangs() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo ran > o.txt"
deps = ["fifo"]
outs = ["o.txt"]
"#,
    );
    mkfifo(&ws.path("fifo"));
    for cmd in ["status", "build"] {
        let r = pipe_within(&ws, &[cmd], 20);
        sane(&r).err_has("fifo").err_has("FIFO");
        assert_ne!(r.code, 0, "{r}");
    }
    assert!(!ws.exists("o.txt"), "the stage ran on a FIFO dep");
}

#[test]
fn a_fifo_inside_a_folder_dep_or_a_socket_dep_is_an_error_too() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo ran > o.txt"
deps = ["d/"]
outs = ["o.txt"]
"#,
    );
    ws.write("d/a.txt", "a");
    mkfifo(&ws.path("d/pipe"));
    let r = pipe_within(&ws, &["build"], 20);
    sane(&r).err_has("d/pipe").err_has("FIFO");
    std::fs::remove_file(ws.path("d/pipe")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(ws.path("d/sock")).unwrap();
    let r = pipe_within(&ws, &["build"], 20);
    sane(&r).err_has("d/sock").err_has("socket");
    assert!(!ws.exists("o.txt"));
}

#[test]
fn a_fifo_out_fails_the_stage_naming_it_and_never_hangs() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "mkfifo o"
outs = ["o"]
"#,
    );
    let r = pipe_within(&ws, &["build"], 20);
    sane(&r).code(1).err_has("FIFO");
    let r = pipe_within(&ws, &["status"], 20);
    sane(&r);
}

#[test]
fn a_dep_symlinked_to_dev_zero_is_refused_at_once() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo ran > o.txt"
deps = ["z"]
outs = ["o.txt"]
"#,
    );
    std::os::unix::fs::symlink("/dev/zero", ws.path("z")).unwrap();
    let r = pipe_within(&ws, &["build"], 20);
    sane(&r).err_has("character device");
    assert_ne!(r.code, 0);
    assert!(!ws.exists("o.txt"));
}

#[test]
fn a_file_that_shrinks_while_it_is_hashed_never_crashes_pipe() {
    let ws = Ws::new(
        r#"
[stages.s]
cmd = "echo ran > o.txt"
deps = ["big.bin"]
outs = ["o.txt"]
"#,
    );
    let big = ws.path("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        let big = big.clone();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
            let mut long = true;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Sparse: shrinking and growing costs no disk bandwidth.
                f.set_len(if long { 64 << 20 } else { 1 << 20 }).unwrap();
                long = !long;
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
        })
    };
    for _ in 0..15 {
        // Bypass the stat cache: every status hashes the file again.
        let _ = std::fs::remove_file(ws.path(".pipe/state/stat.bin"));
        let r = pipe_within(&ws, &["status"], 60);
        sane(&r);
        assert!(
            r.code == 0 || r.code == 1,
            "status died (a signal such as SIGBUS gives no exit code)\n{r}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
}

// ---------------------------------------------------------------- 6. messages with places

#[test]
fn invalid_utf8_in_the_pipeline_names_the_line() {
    let ws = Ws::new("");
    std::fs::write(
        ws.path("Pipeline.toml"),
        b"[stages.s]\ncmd = \"echo \xff\"\n".as_slice(),
    )
    .unwrap();
    let r = ws.pipe(&["validate"]);
    sane(&r)
        .code(2)
        .err_has("Pipeline.toml:2:")
        .err_has("UTF-8");
}

const ONE: &str = r#"
[stages.s]
cmd = "echo ran >> runs.txt && echo o > o.txt"
outs = ["o.txt"]
"#;

#[test]
fn every_lock_parse_error_names_the_line() {
    let ws = Ws::new(ONE);
    ws.pipe(&["build"]).ok();
    let good = ws.read("Pipeline.lock");
    let lines = good.lines().count();
    let cases = [
        (format!("{good}\n[stages.x\n"), lines + 2),
        (good.replacen("fingerprint = ", "fingerprint = 3 #", 1), 0),
        (format!("{good}\nbogus = \n"), lines + 2),
    ];
    for (text, line) in cases {
        ws.write("Pipeline.lock", &text);
        for cmd in ["status", "build"] {
            let r = ws.pipe(&[cmd]);
            sane(&r).code(2).err_has("Pipeline.lock:");
            if line > 0 {
                r.err_has(&format!("Pipeline.lock:{line}:"));
            }
        }
    }
    std::fs::write(ws.path("Pipeline.lock"), b"version = 1\n\xfe\n".as_slice()).unwrap();
    sane(&ws.pipe(&["status"]))
        .code(2)
        .err_has("Pipeline.lock:2:")
        .err_has("UTF-8");
}

#[test]
fn a_conflict_marker_in_the_lock_says_so_and_how_to_resolve() {
    let ws = Ws::new(ONE);
    ws.pipe(&["build"]).ok();
    let good = ws.read("Pipeline.lock");
    let (head, tail) = good.split_once("[stages.s]").unwrap();
    ws.write(
        "Pipeline.lock",
        &format!("{head}<<<<<<< HEAD\n[stages.s]{tail}=======\n[stages.s]{tail}>>>>>>> other\n"),
    );
    let line = head.lines().count() + 1;
    let r = ws.pipe(&["status"]);
    sane(&r)
        .code(2)
        .err_has(&format!("Pipeline.lock:{line}: a git conflict marker"))
        .err_has("--ours")
        .err_has("delete the lock");
    // Deleting the lock, as told, works: the out comes back from the cache or the stage runs.
    std::fs::remove_file(ws.path("Pipeline.lock")).unwrap();
    sane(&ws.pipe(&["build"])).ok();
    sane(&ws.pipe(&["status"])).ok();
}

#[test]
fn a_nan_param_is_up_to_date_after_a_build() {
    let ws = Ws::new(
        r#"
[params]
x = nan
y = [nan, 1.0]

[stages.s]
cmd = "echo ${params.x} >> runs.txt && echo o > o.txt"
params = ["x", "y"]
outs = ["o.txt"]
"#,
    );
    ws.pipe(&["build"]).ok();
    let r = ws.pipe(&["status"]);
    sane(&r).ok();
    assert!(!r.stdout.contains("param changed"), "{r}");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs.txt"), 1, "the NaN stage ran again");
}

#[test]
fn the_executable_bit_counts_for_a_file_dep_as_inside_a_folder_dep() {
    let ws = Ws::new(
        r#"
[stages.file]
cmd = "echo ran >> runs_file.txt && cp tool.sh f.txt"
deps = ["tool.sh"]
outs = ["f.txt"]

[stages.folder]
cmd = "echo ran >> runs_folder.txt && cp tools/tool.sh g.txt"
deps = ["tools/"]
outs = ["g.txt"]
"#,
    );
    ws.write("tool.sh", "#!/bin/sh\n");
    ws.write("tools/tool.sh", "#!/bin/sh\n");
    ws.pipe(&["build"]).ok();
    sane(&ws.pipe(&["status"])).ok();
    for p in ["tool.sh", "tools/tool.sh"] {
        std::fs::set_permissions(ws.path(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let r = ws.pipe(&["status"]);
    sane(&r)
        .code(1)
        .out_has("dep changed: tool.sh")
        .out_has("dep changed: tools");
    ws.pipe(&["build"]).ok();
    assert_eq!(ws.count("runs_file.txt"), 2);
    assert_eq!(ws.count("runs_folder.txt"), 2);
    sane(&ws.pipe(&["status"])).ok();
}

#[test]
fn a_build_killed_during_a_restore_leaves_nothing_after_the_next_build() {
    let ws = Ws::new(
        r#"
[stages.big]
cmd = "head -c 67108864 /dev/urandom > big.bin && mkdir -p d && head -c 33554432 /dev/urandom > d/x.bin"
outs = ["big.bin", "d"]
"#,
    );
    ws.pipe(&["build"]).ok();
    for delay_ms in [5u64, 40, 120] {
        std::fs::remove_file(ws.path("big.bin")).unwrap();
        std::fs::remove_dir_all(ws.path("d")).unwrap();
        let mut child = ws
            .cmd(&["build"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        sane(&ws.pipe(&["build"])).ok();
        let litter: Vec<PathBuf> = files_under(ws.root())
            .into_iter()
            .filter(|p| {
                let s = p.to_string_lossy();
                s.contains("pipe-restore")
                    || s.contains("/.pipe/tmp/")
                    || s.contains("/.pipe-tmp-")
                    || s.contains("/cache/tmp/")
            })
            .collect();
        assert!(
            litter.is_empty(),
            "after a kill at {delay_ms} ms: {litter:?}"
        );
        assert_eq!(
            std::fs::metadata(ws.path("big.bin")).unwrap().len(),
            64 << 20
        );
    }
}
