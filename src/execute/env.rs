//! What a stage's process gets: its command, working folder, log file and environment
//! (the stage's `env`, `PIPE_*`, `PIPE_PARAM_*`, `PIPE_MATRIX_*`, and the pool units it holds
//! as `PIPE_RESOURCE_*` and, for `gpu`, `CUDA_VISIBLE_DEVICES`).

use super::executor::RunSpec;
use super::pools::Units;
use crate::graph::{Pipeline, Stage};
use crate::record::Recorder;

pub fn run_spec(p: &Pipeline, s: &Stage, rec: &Recorder, units: &Units) -> RunSpec {
    let mut env: Vec<(String, String)> =
        s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push(("PIPE_STAGE".into(), s.name.clone()));
    env.push(("PIPE_RUN_ID".into(), rec.run_id.clone()));
    env.push(("PIPE_RUN_DIR".into(), rec.dir.display().to_string()));
    env.push(("PIPE_ROOT".into(), p.root.display().to_string()));
    for (k, v) in &s.params {
        env.push((crate::params::env_name(k), crate::params::value_text(v)));
    }
    for (k, v) in &s.matrix {
        env.push((format!("PIPE_MATRIX_{}", k.to_ascii_uppercase()), v.clone()));
    }
    for (pool, held) in units {
        let list = held
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if pool == "gpu" {
            env.push(("CUDA_VISIBLE_DEVICES".into(), list.clone()));
        }
        env.push((format!("PIPE_RESOURCE_{}", pool.to_ascii_uppercase()), list));
    }
    RunSpec {
        stage: s.name.clone(),
        cmds: s.cmds.clone(),
        cwd: match &s.wdir {
            Some(w) => p.root.join(w),
            None => p.root.clone(),
        },
        env,
        log: rec.log_path(&s.name),
        timeout: s.timeout,
        resources: s.resources.clone(),
    }
}
