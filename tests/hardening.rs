//! Hostile caches, remotes, values and file systems: nothing outside the workspace and the
//! cache changes, nothing panics, nothing hangs.
mod common;
use common::*;

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
cmd = "mkdir -p out && echo ok > out/ok.txt && ln -sf {} out/link"
outs = ["out"]
"#,
        out.victim().display()
    ));
    let r = ws.pipe(&["build"]);
    sane(&r)
        .code(1)
        .err_has("out/link")
        .err_has("outside the workspace");
    // The victim's bytes never went into the cache.
    let secret = blake3::hash(b"precious\n").to_hex().to_string();
    assert!(
        !ws.path(".pipe/cache/objects")
            .join(&secret[..2])
            .join(&secret[2..])
            .exists(),
        "the target of the symlink was stored in the cache"
    );
    out.untouched();
}
