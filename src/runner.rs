//! Running a stage's commands: `sh -c` in its own process group, environment, log file,
//! retries with backoff. Timeouts and interrupts are enforced from outside through
//! [`Control`], so waiting on a child is a plain blocking `wait`.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Shared between a running stage and the scheduler: the process group to signal, the
/// attempt's deadline, and why it was stopped.
#[derive(Default)]
pub struct Control {
    pub pgid: AtomicI32,
    pub deadline: Mutex<Option<Instant>>,
    pub cancelled: AtomicBool,
    pub timed_out: AtomicBool,
    pub term_sent: Mutex<Option<Instant>>,
    /// Slurm job id of the current attempt, when the stage runs on Slurm.
    pub job_id: Mutex<Option<String>>,
}

impl Control {
    /// SIGTERM the whole process group (first time), remembering when.
    pub fn terminate(&self) {
        let pg = self.pgid.load(Ordering::SeqCst);
        if pg > 0 {
            let mut t = self.term_sent.lock().unwrap_or_else(|e| e.into_inner());
            if t.is_none() {
                unsafe { libc::killpg(pg, libc::SIGTERM) };
                *t = Some(Instant::now());
            }
        }
    }
    pub fn kill(&self) {
        let pg = self.pgid.load(Ordering::SeqCst);
        if pg > 0 {
            unsafe { libc::killpg(pg, libc::SIGKILL) };
        }
    }
    /// Called on every scheduler tick: enforce the deadline and the grace period.
    pub fn tick(&self, grace: Duration) {
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = deadline
            && Instant::now() >= d
            && !self.timed_out.swap(true, Ordering::SeqCst)
        {
            self.terminate();
        }
        let sent = *self.term_sent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = sent
            && t.elapsed() >= grace
        {
            self.kill();
        }
    }
}

/// One stage's execution request.
pub struct RunSpec {
    pub stage: String,
    pub cmds: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub timeout: Option<Duration>,
    /// The stage's resource requests (`gpu`, `cpus`, `mem`, pools): Slurm maps them to flags.
    pub resources: std::collections::BTreeMap<String, u32>,
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub enum Attempt {
    Ok,
    Failed {
        exit_code: Option<i32>,
        message: String,
    },
    Interrupted,
}

/// Something that can run one attempt of a stage's commands: the local shell or Slurm.
pub trait Executor: Send + Sync {
    fn run(&self, spec: &RunSpec, control: &Control) -> Attempt;
    /// Extra time pipe allows past a stage's `timeout` before it steps in itself: zero when
    /// pipe enforces the limit, more when the executor's scheduler enforces it.
    fn timeout_grace(&self) -> Duration {
        Duration::ZERO
    }
}

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
                        message: format!("{e:#}"),
                    };
                }
            }
        }
        Attempt::Ok
    }
}

fn run_one(spec: &RunSpec, cmd: &str, control: &Control) -> Result<Attempt> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("cannot open log {}", spec.log.display()))?;
    let err = log.try_clone().context("cannot share the log file")?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .process_group(0);
    let mut child = command.spawn().with_context(|| {
        format!(
            "cannot start `sh -c` for stage `{}` in {}",
            spec.stage,
            spec.cwd.display()
        )
    })?;
    control.pgid.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait();
    control.pgid.store(0, Ordering::SeqCst);
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
            message: format!("timed out after {t}"),
        });
    }
    if status.success() {
        return Ok(Attempt::Ok);
    }
    let message = match (status.code(), status.signal()) {
        (Some(c), _) => format!("`{}` exited with code {c}", short(cmd)),
        (None, Some(s)) => format!("`{}` was killed by signal {s}", short(cmd)),
        _ => format!("`{}` failed", short(cmd)),
    };
    Ok(Attempt::Failed {
        exit_code: status.code(),
        message,
    })
}

fn short(cmd: &str) -> String {
    let first = cmd.lines().next().unwrap_or("");
    if first.chars().count() > 60 || cmd.contains('\n') {
        format!("{}…", first.chars().take(60).collect::<String>())
    } else {
        first.to_string()
    }
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

/// The last `n` lines of a log, for the failure message.
pub fn tail(log: &std::path::Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(log) else {
        return vec![];
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
