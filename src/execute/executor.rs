//! The executor seam: something that runs one attempt of a stage's commands (the local
//! shell or Slurm), given a [`RunSpec`] and a [`Control`].

use super::control::Control;
use crate::failure::StageFailure;
use std::path::PathBuf;
use std::time::Duration;

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
        failure: StageFailure,
    },
    Interrupted,
}

/// Something that can run one attempt of a stage's commands: the local shell or Slurm.
pub trait Executor: Send + Sync {
    fn run(&self, spec: &RunSpec, control: &Control) -> Attempt;
}
