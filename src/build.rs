//! Records the git commit for `pipe --version` (PIPE_GIT_COMMIT). Outside a git checkout
//! (a crates.io tarball, a source archive) it says "unknown commit" instead of failing.
//! Reruns only when HEAD moves, so ordinary edits do not rerun it.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-env-changed=PIPE_GIT_COMMIT");
    let commit = std::env::var("PIPE_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=10", "HEAD"]));
    if commit.is_some() {
        // HEAD itself (a checkout) and the branch it points at (a commit).
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &r])
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!(
        "cargo:rustc-env=PIPE_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown commit".into())
    );
}
