//! `pipe completions SHELL`, `pipe man [SUBCOMMAND]` and `pipe schema`: generated from the
//! clap definition and the serde types of `Pipeline.toml`, so they never drift from them.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::invalid;
use anyhow::Result;
use clap::CommandFactory;

pub fn completions(a: &CompletionsArgs) -> Result<i32> {
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "pipe", &mut buf);
    crate::output::write_bytes(&buf)?;
    Ok(0)
}

/// `pipe schema`: the JSON Schema of Pipeline.toml, from the serde types that parse it.
pub fn schema() -> Result<i32> {
    let mut text = serde_json::to_string_pretty(&crate::spec::json_schema())?;
    text.push('\n');
    crate::output::write_str(&text)?;
    Ok(0)
}

pub fn man(a: &ManArgs) -> Result<i32> {
    let root = Cli::command();
    let cmd = match &a.command {
        None => root,
        Some(name) => {
            let Some(sub) = root.find_subcommand(name) else {
                let names: Vec<&str> = root.get_subcommands().map(|c| c.get_name()).collect();
                let hint = crate::error::suggest(name, names.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(invalid(format!(
                    "no subcommand `{name}`{hint}; one of: {}",
                    names.join(", ")
                )));
            };
            // clap names are &'static str (without its `string` feature); one page per process.
            let page: &'static str = Box::leak(format!("pipe-{}", sub.get_name()).into_boxed_str());
            sub.clone().name(page).version(crate::cli::VERSION)
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| anyhow::anyhow!("cannot render the man page: {e}"))?;
    crate::output::write_str(&title_first(&String::from_utf8_lossy(&buf)))?;
    Ok(0)
}

/// roff puts its apostrophe definitions (`.ie` / `.el`) before `.TH`; `man`, `whatis` and
/// `mandb` expect the page to open with `.TH`, so move that line to the top.
fn title_first(page: &str) -> String {
    let mut lines: Vec<&str> = page.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with(".TH ")) {
        let th = lines.remove(i);
        lines.insert(0, th);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}
