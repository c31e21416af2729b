//! Manners (issue 16): completions, man page, version, help examples, JSON schema,
//! versioned JSON documents, closed pipes, upward search, `pipe import dvc`.

mod common;
use clap::CommandFactory;
use common::*;
use std::process::Command;

const SIMPLE: &str = r#"
[params]
n = 1
[stages.a]
cmd = "echo ${params.n} > a.txt"
outs = ["a.txt"]
[stages.b]
cmd = "cat a.txt > b.txt"
deps = ["a.txt"]
outs = ["b.txt"]
"#;

// ---- 1. completions, man page, version, help ----

#[test]
fn completions_for_every_shell() {
    let ws = Ws::new(SIMPLE);
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let r = ws.pipe(&["completions", shell]);
        r.ok();
        assert!(r.stdout.contains("pipe"), "{shell}: {r}");
        assert!(r.stderr.is_empty(), "{shell}: {r}");
    }
    ws.pipe(&["completions", "tcsh"])
        .code(2)
        .err_has("invalid value");
}

#[test]
fn bash_completions_source_and_complete() {
    let ws = Ws::new(SIMPLE);
    let r = ws.pipe(&["completions", "bash"]);
    r.ok();
    ws.write("pipe.bash", &r.stdout);
    // Source it, then ask the completion function what follows `pipe bu`.
    let script = r#"set -e
source ./pipe.bash
complete -p pipe
COMP_WORDS=(pipe bu); COMP_CWORD=1; COMP_LINE="pipe bu"; COMP_POINT=7
_pipe pipe bu pipe
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .args(["--norc", "-c", script])
        .current_dir(ws.root())
        .output()
        .unwrap();
    let run: Run = out.into();
    run.ok().out_has("build");
    assert!(run.stderr.is_empty(), "{run}");
}

#[test]
fn man_page_is_roff_opening_with_th() {
    let ws = Ws::new(SIMPLE);
    let r = ws.pipe(&["man"]);
    r.ok();
    assert!(r.stdout.starts_with(".TH pipe 1"), "{}", &r.stdout[..200]);
    assert!(r.stdout.contains("completions"));
    let r = ws.pipe(&["man", "build"]);
    r.ok();
    assert!(r.stdout.starts_with(".TH pipe-build 1"), "{r}");
    assert!(r.stdout.contains("dry"));
    ws.pipe(&["man", "biuld"])
        .code(2)
        .err_has("did you mean `build`");
}

#[test]
fn version_names_the_commit() {
    let r = Ws::new(SIMPLE).pipe(&["--version"]);
    r.ok();
    let line = r.stdout.trim();
    assert!(
        line.starts_with(&format!("pipe {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    // "(abc1234def)" from git, or "(unknown commit)" outside a checkout.
    assert!(line.ends_with(')') && line.contains(" ("), "{line}");
}

#[test]
fn every_subcommand_help_has_examples() {
    let ws = Ws::new(SIMPLE);
    let root = pipe::cli::Cli::command();
    let mut paths: Vec<Vec<String>> = Vec::new();
    for sub in root.get_subcommands() {
        paths.push(vec![sub.get_name().to_string()]);
        for subsub in sub.get_subcommands() {
            paths.push(vec![
                sub.get_name().to_string(),
                subsub.get_name().to_string(),
            ]);
        }
    }
    assert!(paths.len() >= 15, "{paths:?}");
    for p in paths {
        let mut args: Vec<&str> = p.iter().map(String::as_str).collect();
        args.push("--help");
        let r = ws.pipe(&args);
        r.ok();
        assert!(r.stdout.contains("Examples:"), "pipe {args:?}: {r}");
    }
}

#[test]
fn every_flag_and_argument_is_described() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&pipe::cli::Cli::command(), "pipe", &mut missing);
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}
