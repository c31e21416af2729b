//! One module per subcommand; each loads what it needs and returns an exit code.

pub mod dag;
pub mod gc;
pub mod init;
pub mod metrics;
pub mod releases;
pub mod report;
pub mod runs;
pub mod status;
pub mod transfer;

use crate::cli::BuildArgs;
use crate::error::{exit, invalid};
use crate::execute::{self, BuildOptions};
use crate::graph::Targets;
use crate::graph::{LoadOptions, Pipeline};
use crate::report::{Reporter, Tone};
use anyhow::Result;
use std::path::PathBuf;

pub struct Ctx {
    pub file: Option<PathBuf>,
    pub verbose: u8,
}

impl Ctx {
    /// The pipeline file and the name errors use for it.
    pub fn pipeline_file(&self) -> (PathBuf, String) {
        match &self.file {
            Some(f) => (f.clone(), f.display().to_string()),
            None => (PathBuf::from("Pipeline.toml"), "Pipeline.toml".to_string()),
        }
    }

    pub fn load(&self, sets: &[String]) -> Result<Pipeline> {
        let (file, display) = self.pipeline_file();
        if !file.exists() {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            return Err(invalid(format!(
                "no {display} in {cwd}; run `pipe init` to create one, or pass -C DIR / -f FILE"
            )));
        }
        let mut opts = LoadOptions::default();
        for s in sets {
            opts.overrides
                .push(crate::params::parse_set(s).map_err(invalid)?);
        }
        Pipeline::load(&file, display, &opts)
    }
}

pub fn validate(ctx: &Ctx, rep: &Reporter) -> Result<i32> {
    let p = ctx.load(&[])?;
    let edges: usize = p.stages.iter().map(|s| s.upstream.len()).sum();
    rep.status(
        "Valid",
        Tone::Good,
        &format!(
            "{}: {} stages, {edges} {}",
            p.source.display,
            p.stages.len(),
            if edges == 1 { "edge" } else { "edges" }
        ),
    );
    Ok(exit::OK)
}

pub fn build_cmd(ctx: &Ctx, rep: &mut Reporter, a: &BuildArgs) -> Result<i32> {
    let p = ctx.load(&a.set)?;
    for g in &a.override_gate {
        if !p
            .stages
            .iter()
            .any(|s| s.gate.as_ref().is_some_and(|x| &x.name == g))
        {
            let names = p
                .stages
                .iter()
                .filter_map(|s| s.gate.as_ref().map(|x| x.name.as_str()));
            let hint = crate::error::suggest(g, names)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "--override-gate {g}: no gate named `{g}`{hint}"
            )));
        }
    }
    if !a.dry_run {
        // A dry run changes nothing, so Ctrl-C may simply end it.
        crate::signal::install();
    }
    let opts = BuildOptions {
        targets: Targets {
            names: a.stages.clone(),
            downstream: a.downstream,
            force: a.force,
            force_all: a.force_all,
        },
        jobs: a.jobs.map(|j| j as usize),
        keep_going: a.keep_going,
        use_cache: !a.no_cache,
        dry_run: a.dry_run,
        override_gates: a.override_gate.clone(),
        pull: a.pull,
        push: a.push,
        wait: !a.no_wait,
        command: std::env::args().collect(),
    };
    let summary = execute::build(&p, &opts, rep)?;
    if a.json {
        #[derive(serde::Serialize)]
        struct Stage<'a> {
            name: &'a str,
            status: crate::stage_state::StageState,
            reasons: &'a [crate::plan::Reason],
            duration_s: f64,
            attempts: u32,
            exit_code: Option<i32>,
            error: Option<&'a str>,
        }
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            version: u32,
            run_id: Option<&'a str>,
            status: crate::record::RunStatus,
            exit_code: i32,
            duration_s: f64,
            stages: Vec<Stage<'a>>,
        }
        let doc = Doc {
            version: 1,
            run_id: summary.run_id.as_deref(),
            status: summary.status,
            exit_code: summary.exit_code,
            duration_s: summary.duration_s,
            stages: summary
                .stages
                .iter()
                .map(|(name, r)| Stage {
                    name,
                    status: r.status,
                    reasons: &r.reasons,
                    duration_s: r.duration_s,
                    attempts: r.attempts,
                    exit_code: r.exit_code,
                    error: r.error.as_deref(),
                })
                .collect(),
        };
        crate::report::print_json(&doc)?;
    }
    Ok(summary.exit_code)
}
