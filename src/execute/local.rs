//! The local executor: each command in its own process group, output to the stage log;
//! through `sh -c`, or started directly when the shell would only run one program (see
//! [`super::direct`]).

use super::control::{Control, GRACE, GroupEvent};
use super::executor::{Attempt, Executor, RunSpec};
use crate::failure::StageFailure;
use crate::process_group as group;
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

pub struct LocalExecutor;

impl Executor for LocalExecutor {
    fn run(&self, spec: &RunSpec, control: &Control) -> Attempt {
        for cmd in &spec.cmds {
            if control.cancelled.load(Ordering::SeqCst) {
                return Attempt::Interrupted;
            }
            match run_one(spec, cmd, control) {
                Ok(Attempt::Ok) => {}
                Ok(other) => return other,
                Err(e) => {
                    return Attempt::Failed {
                        exit_code: None,
                        failure: StageFailure::Spawn {
                            error: format!("{e:#}"),
                        },
                    };
                }
            }
        }
        Attempt::Ok
    }
}

/// `/bin/sh`, as make uses: looking `sh` up on `PATH` costs a failing `execve` per folder
/// before it (8 on a typical developer's `PATH`) for every stage.
fn shell() -> &'static str {
    static SH: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    SH.get_or_init(|| {
        if std::path::Path::new("/bin/sh").exists() {
            "/bin/sh"
        } else {
            "sh"
        }
    })
}

fn run_one(spec: &RunSpec, cmd: &str, control: &Control) -> Result<Attempt> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("cannot open log {}", spec.log.display()))?;
    let mut child = match start_direct(spec, cmd, &log) {
        Some(child) => child,
        None => {
            let err = log.try_clone().context("cannot share the log file")?;
            stage_command(shell().as_ref(), spec)
                .arg("-c")
                .arg(cmd)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start `sh -c` for stage `{}` in {}",
                        spec.stage,
                        spec.cwd.display()
                    )
                })?
        }
    };
    let pg = child.id() as i32;
    control.pgid.store(pg, Ordering::SeqCst);
    control.group(GroupEvent::Started(pg));
    let status = child.wait();
    // Whatever `sh` left in its group must not outlive the stage: TERM, then KILL.
    group::drain(pg, GRACE);
    control.pgid.store(0, Ordering::SeqCst);
    control.group(GroupEvent::Ended(pg));
    let status = status.context("cannot wait for the stage's process")?;
    if control.cancelled.load(Ordering::SeqCst) {
        return Ok(Attempt::Interrupted);
    }
    if control.timed_out.load(Ordering::SeqCst) {
        let t = spec
            .timeout
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default();
        return Ok(Attempt::Failed {
            exit_code: status.code(),
            failure: StageFailure::TimedOut {
                after: t,
                detail: None,
            },
        });
    }
    if status.success() {
        return Ok(Attempt::Ok);
    }
    let cmd = cmd.to_string();
    let failure = match (status.code(), status.signal()) {
        (Some(code), _) => StageFailure::Exit { cmd, code },
        (None, Some(signal)) => StageFailure::Signal { cmd, signal },
        _ => StageFailure::Exit { cmd, code: -1 },
    };
    Ok(Attempt::Failed {
        exit_code: status.code(),
        failure,
    })
}

/// `program` for `spec`'s stage: in its folder, with its environment, in a process group
/// of its own.
fn stage_command(program: &std::path::Path, spec: &RunSpec) -> Command {
    let mut c = Command::new(program);
    c.current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    c
}

/// Start `cmd` without a shell when it is one program with plain words and simple
/// redirections (opened here in the order written, as the shell would); `None` when it
/// needs a shell, or when a redirection or the start fails (the shell then runs it and says
/// what went wrong in its own words). The program gets what `sh` would pass on: the same
/// environment, with `PWD` the folder it runs in.
fn start_direct(spec: &RunSpec, cmd: &str, log: &std::fs::File) -> Option<std::process::Child> {
    let d = super::direct::parse(cmd)?;
    if spec.env.iter().any(|(k, _)| k == "PATH") {
        return None;
    }
    let program = super::direct::lookup(d.words[0], std::env::var_os("PATH").as_ref())?;
    let (mut stdin, mut stdout) = (None, None);
    for &r in &d.redirects {
        let f = super::direct::open(r, &spec.cwd).ok()?;
        match r {
            super::direct::Redirect::In(_) => stdin = Some(f),
            super::direct::Redirect::Out { .. } => stdout = Some(f),
        }
    }
    let stdout = match stdout {
        Some(f) => f,
        None => log.try_clone().ok()?,
    };
    let child = stage_command(&program, spec)
        .arg0(d.words[0])
        .args(&d.words[1..])
        .env("PWD", &spec.cwd)
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(log.try_clone().ok()?))
        .spawn()
        .ok()?;
    tracing::trace!(stage = %spec.stage, program = %program.display(), "started without a shell");
    Some(child)
}

/// Append a line to a stage log (attempt headers, pipe's own notes).
pub fn log_note(log: &std::path::Path, note: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "[pipe] {note}");
    }
}
