//! `pipe init`: a starter Pipeline.toml that validates, and `.pipe/` in `.gitignore`.

use super::Ctx;
use crate::error::invalid;
use crate::report::{Reporter, Tone};
use anyhow::{Context, Result};

pub const STARTER: &str = r#"# pipe pipeline: stages with cmd, deps, outs and params.
# `pipe status` shows what is stale and why; `pipe build` brings it up to date.
# Every key is described in Pipeline.toml.example and docs/pipeline-toml.md.

[pipeline]
name = "my-pipeline"

[params]
greeting = "hello"

[stages.prepare]
cmd = "mkdir -p data && echo '${params.greeting}, world' > data/hello.txt"
outs = ["data/hello.txt"]
params = ["greeting"]

[stages.count]
cmd = "wc -w < data/hello.txt > data/count.txt"
deps = ["data/hello.txt"]
outs = ["data/count.txt"]
"#;

pub fn run(ctx: &Ctx, rep: &Reporter) -> Result<i32> {
    let (file, display) = ctx.pipeline_file();
    if file.exists() {
        return Err(invalid(format!(
            "{display} already exists; not overwriting it"
        )));
    }
    std::fs::write(&file, STARTER).with_context(|| format!("cannot write {display}"))?;
    let root = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into());
    let gi = root.join(".gitignore");
    let existing = std::fs::read_to_string(&gi).unwrap_or_default();
    if !existing
        .lines()
        .any(|l| matches!(l.trim(), ".pipe" | ".pipe/" | "/.pipe" | "/.pipe/"))
    {
        let mut text = existing.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(".pipe/\n");
        std::fs::write(&gi, text).with_context(|| format!("cannot write {}", gi.display()))?;
    }
    rep.status(
        "Created",
        Tone::Good,
        &format!("{display} (try `pipe status`, then `pipe build`)"),
    );
    Ok(0)
}
