//! `[hooks]`: after a build, `on_success`, `on_failure` (a stage failed, a gate failed, or
//! the build was interrupted) and `on_release` run with `sh -c` from the workspace root, with
//! `PIPE_RUN_ID`, `PIPE_RUN_DIR`, `PIPE_RUN_STATUS` and `PIPE_FAILED_STAGES` set. A hook that
//! fails or runs past 60 s is a warning; it never changes pipe's exit code.

use crate::graph::Pipeline;
use crate::record::{Manifest, RunStatus};
use crate::report::Reporter;
use crate::stage_state::StageState;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the hooks that apply to this finished run. `released`: a release manifest was written.
pub fn run(p: &Pipeline, m: &Manifest, run_dir: &Path, released: bool, rep: &Reporter) {
    let h = &p.hooks;
    let failed = matches!(
        m.status,
        RunStatus::Failed | RunStatus::GateFailed | RunStatus::Interrupted
    );
    let mut todo: Vec<(&str, &str)> = Vec::new();
    if m.status == RunStatus::Success
        && let Some(c) = &h.on_success
    {
        todo.push(("on_success", c));
    }
    if failed && let Some(c) = &h.on_failure {
        todo.push(("on_failure", c));
    }
    if released && let Some(c) = &h.on_release {
        todo.push(("on_release", c));
    }
    let failed_stages: Vec<&str> = m
        .stages
        .iter()
        .filter(|(_, r)| r.status == StageState::Failed)
        .map(|(n, _)| n.as_str())
        .collect();
    for (name, cmd) in todo {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .current_dir(&p.root)
            .env("PIPE_RUN_ID", &m.run_id)
            .env("PIPE_RUN_DIR", run_dir)
            .env("PIPE_RUN_STATUS", m.status.as_str())
            .env("PIPE_FAILED_STAGES", failed_stages.join(" "))
            .stdin(Stdio::null())
            .process_group(0);
        if let Err(e) = run_one(c, HOOK_TIMEOUT) {
            rep.warn(&format!(
                "hook {name} (`{cmd}`) {e}; the build's exit code is unchanged"
            ));
        }
    }
}

fn run_one(mut c: Command, limit: Duration) -> Result<(), String> {
    let mut child = c.spawn().map_err(|e| format!("could not start: {e}"))?;
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                return Err(match st.code() {
                    Some(code) => format!("failed with exit code {code}"),
                    None => "was killed by a signal".into(),
                });
            }
            Ok(None) if Instant::now() >= until => {
                crate::process_group::drain(child.id() as i32, Duration::from_secs(2));
                let _ = child.wait();
                return Err(format!("ran past {}s and was stopped", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    }
}
