//! The command line: global flags and one struct per subcommand (clap derive).

use crate::report::ColorChoice;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pipe",
    version,
    about = "A declarative, content-hashed build tool for ML pipelines",
    long_about = "pipe reads Pipeline.toml (stages with cmd, deps, outs, params), decides from content \
hashes which stages are stale and why, and reruns only those, in parallel, restoring outputs from \
its cache when their inputs match an earlier run.\n\n\
Start with `pipe init`, then `pipe status` and `pipe build`.",
    after_help = "Exit codes: 0 success, 1 a stage failed (status: something is stale), 2 invalid pipeline \
or command line, 3 a gate failed, 130 interrupted.\nEnvironment: PIPE_CACHE_DIR (cache folder), PIPE_LOG \
(tracing filter, e.g. PIPE_LOG=debug), NO_COLOR."
)]
pub struct Cli {
    /// Run as if pipe was started in DIR
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Use FILE instead of Pipeline.toml (its folder is the workspace)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more: up-to-date stages, hashing counters, debug logs
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// When to use colours (honours NO_COLOR)
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a starter Pipeline.toml (never overwrites one) and ignore .pipe/ in git
    Init,
    /// Parse and check the pipeline; errors name the file, line and stage
    Validate,
    /// Show which stages are stale and why (exit 1 when any is)
    #[command(
        after_help = "Examples:\n  pipe status                 every stage, with all its reasons\n  \
pipe status evaluate        evaluate and its upstream\n  pipe status --json          for scripts\n  \
pipe status --set train.lr=0.05   what a param change would rerun\n\n\
States: up to date, stale, restorable (the cache has outs for these inputs), frozen, blocked (a gate upstream failed)."
    )]
    Status(StatusArgs),
    /// Bring stages up to date: run what is stale, restore what the cache has
    #[command(
        after_help = "Examples:\n  pipe build                  everything that is stale\n  \
pipe build train -j 4       train and its upstream, 4 stages at once\n  \
pipe build --dry-run        the plan with reasons; nothing runs\n  \
pipe build --set train.lr=0.05 --force train\n  \
pipe build --pull --push    share the remote cache (CI)\n\n\
Exit codes: 0 success, 1 a stage failed, 2 invalid pipeline or flags, 3 a gate failed, 130 interrupted.\n\
Records: .pipe/runs/<run-id>/ (manifest.json, events.jsonl, logs/, gates/); see `pipe runs`, `pipe log`."
    )]
    Build(BuildArgs),
    /// Print the stage graph
    Dag(DagArgs),
    /// Write one self-contained HTML report of a run (graph, timeline, metrics, gates, releases)
    #[command(
        after_help = "Examples:\n  pipe report                 the newest run, to .pipe/report.html\n  \
pipe report latest -o r.html\n  pipe report 20261122-083000-123\n\n\
The file opens offline: no network, no CDN, everything inline."
    )]
    Report(ReportArgs),
    /// List past runs, newest first
    Runs(RunsArgs),
    /// Show a stage's log from a run (default: the latest run)
    Log(LogArgs),
    /// Remove cache objects that no lock, kept run or release references
    Gc(GcArgs),
    /// Show the metrics files of stages that declare `metrics`
    Metrics(MetricsArgs),
    /// Compare params between runs
    Params(ParamsArgs),
    /// List releases, newest first
    Releases(JsonArg),
    /// Put the artifacts of an earlier release back from the cache
    Rollback(RollbackArgs),
    /// Upload cache objects the lock references to the remote cache
    Push(TransferArgs),
    /// Download cache objects the lock references from the remote cache
    Pull(TransferArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Stages (or matrix groups) to show, with their upstream; default all
    pub stages: Vec<String>,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
    /// Exit 0 even when something is stale
    #[arg(long)]
    pub exit_zero: bool,
    /// Override a param for this check (KEY=VALUE, the value read as TOML)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Stages (or matrix groups) to build, with their upstream; default all
    pub stages: Vec<String>,
    /// Run at most N stages at once (default: `jobs` in the pipeline, else the number of CPUs)
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// Print the plan with reasons; run and write nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Rerun the named stages (all when none is named) even if up to date
    #[arg(long)]
    pub force: bool,
    /// Rerun the named stages and everything upstream of them
    #[arg(long)]
    pub force_all: bool,
    /// Also rebuild the stages downstream of the named ones
    #[arg(long)]
    pub downstream: bool,
    /// After a failure, keep running stages that do not depend on it
    #[arg(short = 'k', long)]
    pub keep_going: bool,
    /// Override a param for this run (KEY=VALUE, the value read as TOML)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run stages instead of restoring their outs from the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Print a machine-readable summary on stdout
    #[arg(long)]
    pub json: bool,
    /// Fail at once if another build holds the workspace
    #[arg(long)]
    pub no_wait: bool,
    /// Let a failed gate pass anyway (recorded in the gate file and manifest)
    #[arg(long = "override-gate", value_name = "GATE")]
    pub override_gate: Vec<String>,
    /// Fetch from the remote cache what can be restored instead of running
    #[arg(long)]
    pub pull: bool,
    /// Upload what this build ran to the remote cache
    #[arg(long)]
    pub push: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DagFormat {
    Ascii,
    Dot,
    Mermaid,
    /// A standalone SVG picture, laid out left to right
    Svg,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run to report: a run id or `latest` (default: the newest run)
    pub run: Option<String>,
    /// Where to write the HTML (default: .pipe/report.html in the workspace)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DagArgs {
    #[arg(long, value_enum, default_value = "ascii")]
    pub format: DagFormat,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    #[arg(long)]
    pub json: bool,
    /// Per stage: success rate, mean and last duration over the kept runs
    #[arg(long)]
    pub stats: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Run id (default: the latest run), or a stage name
    pub run: Option<String>,
    /// Stage whose log to show (default: every stage of the run that has one)
    pub stage: Option<String>,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Keep the objects referenced by the newest N runs
    #[arg(long, default_value_t = 20)]
    pub keep_runs: usize,
    /// Say what would be removed and how many bytes; remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Compare two runs (ids) instead of the workspace's current metrics
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub runs: Option<Vec<String>>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ParamsArgs {
    #[command(subcommand)]
    pub command: ParamsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ParamsCommand {
    /// Params that differ between two runs
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The run id of the release to restore
    pub run: String,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Every object in the local cache (push) or every run-cache entry (pull), not only the lock's
    #[arg(long)]
    pub all: bool,
    /// Parallel transfers
    #[arg(short = 'j', long = "jobs", default_value_t = 8)]
    pub jobs: usize,
}
