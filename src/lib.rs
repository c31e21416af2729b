//! pipe: a declarative, content-hashed build tool for ML pipelines.
//!
//! The flow: `Pipeline.toml` → [`spec`] (raw) → [`graph`] (validated) → [`hash`] +
//! [`state`] (fingerprints) → [`plan`] (observe, then judge: verdicts with reasons) →
//! [`execute`] (pure scheduler, dispatcher, executors) → [`event`]s → sinks: [`record`]
//! (lock, manifest, events.jsonl, gates, releases) and [`report`] (the terminal).

pub mod cache;
pub mod cli;
pub mod commands;
pub mod error;
pub mod event;
pub mod execute;
pub mod failure;
pub mod fresh;
pub mod fsutil;
pub mod gate;
pub mod graph;
pub mod hash;
pub mod html;
pub mod lockfile;
pub mod mapped;
pub mod output;
pub mod params;
pub mod plan;
pub mod process_group;
pub mod record;
pub mod release;
pub mod remote;
pub mod report;
pub mod signal;
pub mod snapshot;
pub mod source;
pub mod spec;
pub mod stage_state;
pub mod state;
pub mod walked;
pub mod wslock;

use cli::{Cli, Command};

/// Leave big structures (a 1,000-stage pipeline, its lock, the plan) to the process's exit
/// instead of freeing them an allocation at a time: that was a tenth of a no-op `status`.
/// Only for what a command holds until it returns to `main`.
pub fn keep_until_exit<T>(v: T) {
    std::mem::forget(v);
}

/// Run one command line; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Some(dir) = &cli.dir {
        std::env::set_current_dir(dir)
            .map_err(|e| error::invalid(format!("-C {}: {e}", dir.display())))?;
    }
    let mut rep = report::Reporter::new(cli.quiet, cli.verbose > 0, cli.color);
    let ctx = commands::Ctx {
        file: cli.file.clone(),
        verbose: cli.verbose,
        search_up: cli.dir.is_none() && cli.file.is_none(),
    };
    match cli.command {
        Command::Init => commands::init::run(&ctx, &rep),
        Command::Validate(a) => commands::validate(&ctx, &rep, &a),
        Command::Status(a) => commands::status::run(&ctx, &rep, &a),
        Command::Build(a) => commands::build_cmd(&ctx, &mut rep, &a),
        Command::Dag(a) => commands::dag::run(&ctx, &a),
        Command::Report(a) => commands::report::run(&ctx, &a),
        Command::Runs(a) => commands::runs::runs(&ctx, &rep, &a),
        Command::Log(a) => commands::runs::log(&ctx, &a),
        Command::Gc(a) => commands::gc::run(&ctx, &rep, &a),
        Command::Metrics(a) => commands::metrics::metrics(&ctx, &a),
        Command::Params(a) => commands::metrics::params(&ctx, &a),
        Command::Releases(a) => commands::releases::list(&ctx, &a),
        Command::Rollback(a) => commands::releases::rollback(&ctx, &rep, &a),
        Command::Clean(a) => commands::clean::run(&ctx, &rep, &a),
        Command::Push(a) => commands::transfer::push(&ctx, &rep, &a),
        Command::Pull(a) => commands::transfer::pull(&ctx, &rep, &a),
        Command::Completions(a) => commands::completions::completions(&a),
        Command::Import(a) => commands::import_dvc::run(&rep, &a),
        Command::Schema => commands::completions::schema(),
        Command::Man(a) => commands::completions::man(&a),
    }
}
