//! One module per subcommand; each loads what it needs and returns an exit code.

pub mod clean;
pub mod completions;
pub mod dag;
pub mod gc;
pub mod import_dvc;
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
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct Ctx {
    pub file: Option<PathBuf>,
    pub verbose: u8,
    /// Look for Pipeline.toml in the parent folders too (no `-C` and no `-f` given).
    pub search_up: bool,
}

/// The name of the pipeline file pipe looks for.
pub const PIPELINE_FILE: &str = "Pipeline.toml";

/// The nearest folder, from `start` up to the filesystem root, that holds Pipeline.toml.
pub fn find_workspace(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join(PIPELINE_FILE).is_file())
        .map(Path::to_path_buf)
}

impl Ctx {
    /// The pipeline file in the current folder (or `-f`) and the name errors use for it:
    /// where `pipe init` writes.
    pub fn pipeline_file(&self) -> (PathBuf, String) {
        match &self.file {
            Some(f) => (f.clone(), f.display().to_string()),
            None => (PathBuf::from(PIPELINE_FILE), PIPELINE_FILE.to_string()),
        }
    }

    /// The pipeline file to read: `-f FILE`, else Pipeline.toml here or, without `-C`, in
    /// the nearest parent folder that has one (like git and cargo). When it is in a parent,
    /// pipe moves there so every relative path means what it means in the file.
    pub fn locate(&self) -> Result<(PathBuf, String)> {
        let (file, display) = self.pipeline_file();
        if self.file.is_some() || file.exists() {
            return Ok((file, display));
        }
        let cwd = std::env::current_dir()
            .map_err(|e| invalid(format!("cannot read the current folder: {e}")))?;
        if self.search_up
            && let Some(dir) = find_workspace(&cwd)
        {
            std::env::set_current_dir(&dir)
                .map_err(|e| invalid(format!("cannot enter {}: {e}", dir.display())))?;
            tracing::info!("using {}", dir.join(PIPELINE_FILE).display());
            return Ok((file, display));
        }
        let where_ = if self.search_up {
            format!("{} or any parent folder", cwd.display())
        } else {
            cwd.display().to_string()
        };
        Err(invalid(format!(
            "no {display} in {where_}; run `pipe init` to create one, or pass -C DIR / -f FILE"
        )))
    }

    pub fn load(&self, sets: &[String]) -> Result<Pipeline> {
        self.load_with(sets, None)
    }

    /// Load with `--set` values and a `--params-file` (relative to the folder pipe was
    /// started in, before the upward search moves to the workspace).
    pub fn load_with(&self, sets: &[String], params_file: Option<&Path>) -> Result<Pipeline> {
        let (file, display, opts) = self.load_options(sets, params_file)?;
        Pipeline::load(&file, display, &opts)
    }

    /// The pipeline file, its name for errors and how to load it.
    pub fn load_options(
        &self,
        sets: &[String],
        params_file: Option<&Path>,
    ) -> Result<(PathBuf, String, LoadOptions)> {
        let params_file = match params_file {
            Some(f) if f.is_relative() => Some(
                std::env::current_dir()
                    .map_err(|e| invalid(format!("cannot read the current folder: {e}")))?
                    .join(f),
            ),
            f => f.map(Path::to_path_buf),
        };
        let (file, display) = self.locate()?;
        let mut opts = LoadOptions {
            params_file,
            ..LoadOptions::default()
        };
        for s in sets {
            opts.overrides
                .push(crate::params::parse_set(s).map_err(invalid)?);
        }
        Ok((file, display, opts))
    }
}

pub fn validate(ctx: &Ctx, rep: &Reporter, a: &crate::cli::ValidateArgs) -> Result<i32> {
    if a.json {
        return validate_json(ctx);
    }
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

/// `pipe validate --json`: `{"version":1,"valid":true,...}` (exit 0) or the problems as
/// objects with file, line, column, stage, message, help (exit 2). Nothing on stderr.
fn validate_json(ctx: &Ctx) -> Result<i32> {
    let display = ctx
        .file
        .as_ref()
        .map_or(PIPELINE_FILE.to_string(), |f| f.display().to_string());
    match ctx.load(&[]) {
        Ok(p) => {
            let edges: usize = p.stages.iter().map(|s| s.upstream.len()).sum();
            crate::output::print_json(&serde_json::json!({
                "valid": true,
                "file": p.source.display,
                "stages": p.stages.len(),
                "edges": edges,
                "dag": dag::json(&p),
                "errors": [],
            }))?;
            Ok(exit::OK)
        }
        Err(e) if crate::output::is_closed_pipe(&e) => Err(e),
        Err(e) => {
            let code = crate::error::exit_code(&e);
            crate::output::print_json(&serde_json::json!({
                "valid": false,
                "file": display,
                "errors": diagnostics(&format!("{e:#}")),
            }))?;
            Ok(code)
        }
    }
}

/// Problems from the worded error text: each starts at column 0 as
/// `FILE:LINE:COL: [stage `S`: ]MESSAGE`, followed by an indented snippet and `help:` lines.
fn diagnostics(text: &str) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("  ") {
            if let (Some(help), Some(last)) =
                (rest.trim_start().strip_prefix("help: "), out.last_mut())
            {
                last["help"] = help.into();
            }
            continue;
        }
        if line.ends_with("problems found in the pipeline") {
            continue;
        }
        // "file:12:5: message": split off the location when it has line and column.
        let mut file = None;
        let mut pos = (None, None);
        let mut message = line.to_string();
        let parts: Vec<&str> = line.splitn(4, ':').collect();
        if parts.len() == 4
            && let (Ok(l), Ok(c)) = (parts[1].parse::<u64>(), parts[2].parse::<u64>())
        {
            file = Some(parts[0].to_string());
            pos = (Some(l), Some(c));
            message = parts[3].trim_start().to_string();
        }
        let mut stage = None;
        if let Some(rest) = message.strip_prefix("stage `")
            && let Some((name, msg)) = rest.split_once("`: ")
        {
            stage = Some(name.to_string());
            message = msg.to_string();
        }
        out.push(serde_json::json!({
            "file": file, "line": pos.0, "column": pos.1, "stage": stage,
            "message": message, "help": null, "text": line,
        }));
    }
    out
}

/// A build with nothing to do, as a [`crate::fresh`] proof still says: only for a plain
/// build (no `--force`, `--pull`, `--push`, gate override or dry run).
fn proven_noop(
    file: &Path,
    load: &LoadOptions,
    opts: &BuildOptions,
) -> Option<crate::fresh::Proof> {
    let t = &opts.targets;
    if t.force || t.force_all || opts.pull || opts.push || opts.dry_run {
        return None;
    }
    if !opts.override_gates.is_empty() {
        return None;
    }
    let sel = crate::fresh::Selection {
        names: &t.names,
        downstream: t.downstream,
    };
    crate::fresh::check(file, load, &sel).filter(|proof| proof.build)
}

/// Every `--override-gate` names a gate of the pipeline.
fn check_gate_names(p: &Pipeline, gates: &[String]) -> Result<()> {
    for g in gates {
        if !p
            .stages
            .iter()
            .any(|s| s.gate.as_ref().is_some_and(|x| &x.name == g))
        {
            let names = p
                .stages
                .iter()
                .filter_map(|s| s.gate.as_ref().map(|x| x.name.as_str()));
            return Err(crate::error::unknown(
                "gate",
                g,
                " (--override-gate)",
                names,
            ));
        }
    }
    Ok(())
}

pub fn build_cmd(ctx: &Ctx, rep: &mut Reporter, a: &BuildArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let (file, display, load) = ctx.load_options(&a.set, a.params_file.as_deref())?;
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
        name: a.name.clone(),
        follow: a.follow,
        reason: a.reason.clone(),
    };
    rep.follow_to_stderr = a.json;
    let (summary, p) = match proven_noop(&file, &load, &opts) {
        Some(proof) => {
            let stages = proof.stages.into_iter().map(|(name, _)| {
                let state = crate::stage_state::StageState::UpToDate;
                (name, state, Vec::new(), None)
            });
            let summary = execute::announce_noop(rep, a.follow, &proof.runs, stages)?;
            let summary = crate::record::Summary {
                duration_s: started.elapsed().as_secs_f64(),
                ..summary
            };
            rep.summary(&summary);
            (summary, None)
        }
        None => {
            let p = Pipeline::load(&file, display, &load)?;
            check_gate_names(&p, &a.override_gate)?;
            if !a.dry_run {
                // A dry run changes nothing, so Ctrl-C may simply end it.
                crate::signal::install();
            }
            (execute::build(&p, &opts, rep)?, Some(p))
        }
    };
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
            run_id: Option<&'a str>,
            status: crate::record::RunStatus,
            exit_code: i32,
            duration_s: f64,
            stages: Vec<Stage<'a>>,
        }
        let doc = Doc {
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
        if let Err(e) = crate::output::print_json(&doc)
            && !crate::output::is_closed_pipe(&e)
        {
            return Err(e);
        }
    }
    let code = summary.exit_code;
    crate::keep_until_exit((p, summary));
    Ok(code)
}
