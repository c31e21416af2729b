//! The Slurm executor: a stage's commands become a batch script submitted with
//! `sbatch --parsable`; pipe follows the job with `scontrol show job` until it ends and
//! takes its exit code. Everything else (hashing, lock, records) stays on this machine.

use super::control::Control;
use super::executor::{Attempt, Executor, RunSpec};
use crate::failure::StageFailure;
use crate::graph::SlurmConfig;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub struct SlurmExecutor {
    cfg: SlurmConfig,
}

impl SlurmExecutor {
    pub fn new(cfg: SlurmConfig) -> SlurmExecutor {
        SlurmExecutor { cfg }
    }
}

/// Cancel a job; errors are ignored (it may have ended already).
pub fn cancel(job_id: &str) {
    let _ = Command::new("scancel")
        .arg(job_id)
        .stderr(std::process::Stdio::null())
        .status();
}

/// `--time` text for a timeout, rounded up to whole minutes (Slurm's granularity).
pub fn time_limit(d: Duration) -> String {
    let mins = d.as_secs().div_ceil(60).max(1);
    format!("{}:{:02}:00", mins / 60, mins % 60)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The fields of `scontrol show job` we need: state and exit code.
pub fn parse_scontrol(text: &str) -> (Option<String>, Option<(i32, i32)>) {
    let mut state = None;
    let mut exit = None;
    for tok in text.split_whitespace() {
        if let Some(v) = tok.strip_prefix("JobState=") {
            state = Some(v.to_string());
        } else if let Some(v) = tok.strip_prefix("ExitCode=")
            && let Some((a, b)) = v.split_once(':')
        {
            exit = a.parse().ok().zip(b.parse().ok());
        }
    }
    (state, exit)
}

impl SlurmExecutor {
    fn sbatch_args(&self, spec: &RunSpec, resources: &[(String, String)]) -> Vec<String> {
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=pipe-{}", spec.stage),
            format!("--output={}", spec.log.display()),
            "--open-mode=append".into(),
        ];
        args.push(format!("--chdir={}", spec.cwd.display()));
        if let Some(p) = &self.cfg.partition {
            args.push(format!("--partition={p}"));
        }
        for (k, v) in resources {
            match k.as_str() {
                "gpu" => args.push(format!("--gres=gpu:{v}")),
                "cpus" => args.push(format!("--cpus-per-task={v}")),
                "mem" => args.push(format!("--mem={v}M")),
                _ => {}
            }
        }
        if let Some(t) = spec.timeout {
            args.push(format!("--time={}", time_limit(t)));
        }
        args.extend(self.cfg.extra_args.iter().cloned());
        args
    }
}

impl Executor for SlurmExecutor {
    fn run(&self, spec: &RunSpec, control: &Control) -> Attempt {
        let script_path = spec.log.with_extension("sbatch.sh");
        let mut script = String::from("#!/bin/sh\nset -e\n");
        for c in &spec.cmds {
            script.push_str(&format!("sh -c {}\n", shell_quote(c)));
        }
        if let Err(e) = std::fs::write(&script_path, &script) {
            return Attempt::Failed {
                exit_code: None,
                failure: StageFailure::Executor {
                    error: format!("cannot write batch script {}: {e}", script_path.display()),
                },
            };
        }
        let resources: Vec<(String, String)> = spec
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let args = self.sbatch_args(spec, &resources);
        let out = Command::new("sbatch")
            .args(&args)
            .arg(&script_path)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                return Attempt::Failed {
                    exit_code: None,
                    failure: StageFailure::Executor {
                        error: format!(
                            "cannot run `sbatch` ({e}); is Slurm installed and on PATH?"
                        ),
                    },
                };
            }
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Attempt::Failed {
                exit_code: None,
                failure: StageFailure::Executor {
                    error: format!("Slurm rejected the job: {err}"),
                },
            };
        }
        let job = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        if job.is_empty() {
            return Attempt::Failed {
                exit_code: None,
                failure: StageFailure::Executor {
                    error: "sbatch printed no job id".to_string(),
                },
            };
        }
        super::local::log_note(&spec.log, &format!("submitted Slurm job {job}"));
        if let Ok(mut j) = control.job_id.lock() {
            *j = Some(job.clone());
        }
        let mut missing = 0;
        loop {
            if control.cancelled.load(Ordering::SeqCst) {
                cancel(&job);
                return Attempt::Interrupted;
            }
            if control.timed_out.load(Ordering::SeqCst) {
                cancel(&job);
                let t = spec
                    .timeout
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_default();
                return Attempt::Failed {
                    exit_code: None,
                    failure: StageFailure::TimedOut {
                        after: t,
                        detail: Some(format!("(Slurm job {job} cancelled)")),
                    },
                };
            }
            let show = Command::new("scontrol")
                .args(["show", "job", &job])
                .output();
            let text = show
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let (state, exit) = parse_scontrol(&text);
            match state.as_deref() {
                Some("COMPLETED") => return Attempt::Ok,
                Some(
                    "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
                    | "RESIZING",
                ) => missing = 0,
                Some(other) => {
                    let code = exit.map(|(c, _)| c);
                    let message = match other {
                        "TIMEOUT" => {
                            let t = spec
                                .timeout
                                .map(|d| humantime::format_duration(d).to_string())
                                .unwrap_or_default();
                            format!(
                                "timed out after {t}: Slurm ended job {job} at its time limit (TIMEOUT)"
                            )
                        }
                        "CANCELLED" => format!("Slurm job {job} was cancelled"),
                        "OUT_OF_MEMORY" => format!("Slurm job {job} ran out of memory"),
                        _ => match code {
                            Some(c) => format!("Slurm job {job} ended {other} with exit code {c}"),
                            None => format!("Slurm job {job} ended {other}"),
                        },
                    };
                    return Attempt::Failed {
                        exit_code: code,
                        failure: StageFailure::Executor { error: message },
                    };
                }
                None => {
                    missing += 1;
                    if missing > 5 {
                        return Attempt::Failed {
                            exit_code: None,
                            failure: StageFailure::Executor {
                                error: format!(
                                    "Slurm job {job} disappeared before pipe saw it end (raise MinJobAge)"
                                ),
                            },
                        };
                    }
                }
            }
            std::thread::sleep(self.cfg.poll_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scontrol_and_time() {
        let t = "JobId=5 JobName=x\n   JobState=FAILED Reason=NonZeroExitCode Dependency=(null)\n   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0";
        assert_eq!(parse_scontrol(t), (Some("FAILED".into()), Some((3, 0))));
        assert_eq!(time_limit(Duration::from_secs(1)), "0:01:00");
        assert_eq!(time_limit(Duration::from_secs(7200)), "2:00:00");
    }
}
