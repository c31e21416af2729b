//! The command line: global flags and one struct per subcommand (clap derive).

use crate::report::ColorChoice;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `pipe --version`: the package version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PIPE_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "pipe",
    version = VERSION,
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
    #[command(
        after_help = "Examples:\n  pipe init                   Pipeline.toml here, then `pipe status`\n  \
pipe -C project init        in another folder\n  pipe -f smoke.toml init     a second pipeline file beside the first"
    )]
    Init,
    /// Parse and check the pipeline; errors name the file, line and stage
    #[command(
        after_help = "Examples:\n  pipe validate               check Pipeline.toml (exit 2 with file:line when invalid)\n\n  \
pipe -f smoke.toml validate another pipeline file"
    )]
    Validate(ValidateArgs),
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
    #[command(
        after_help = "Examples:\n  pipe dag                    one line per stage: name <- upstream [flags]\n  \
pipe dag -v                 matrix members unfolded\n  \
pipe dag --format dot | dot -Tsvg > dag.svg\n  pipe dag --format svg > dag.svg   without Graphviz\n  pipe dag --format mermaid    paste into Markdown"
    )]
    Dag(DagArgs),
    /// Write one self-contained HTML report of a run (graph, timeline, metrics, gates, releases)
    #[command(
        after_help = "Examples:\n  pipe report                 the newest run, to .pipe/report.html\n  \
pipe report latest -o r.html\n  pipe report 20261122-083000-123\n\n\
The file opens offline: no network, no CDN, everything inline."
    )]
    Report(ReportArgs),
    /// List past runs, newest first
    #[command(
        after_help = "Examples:\n  pipe runs                   newest first: status, duration, stages ran/restored/failed\n  \
pipe runs --stats           per stage: success rate, mean and last duration\n  \
pipe runs --json            for scripts"
    )]
    Runs(RunsArgs),
    /// Show a stage's log from a run (default: the latest run)
    #[command(
        after_help = "Examples:\n  pipe log                    every log of the latest run\n  \
pipe log train              train's log from the latest run\n  \
pipe log 20260101T120000Z-ab12 train   train's log from that run"
    )]
    Log(LogArgs),
    /// Remove cache objects that no lock, kept run or release references
    #[command(
        after_help = "Examples:\n  pipe gc --dry-run           what would be removed, and how many bytes\n  \
pipe gc --keep-runs 5       keep only what the newest 5 runs (and the lock, releases) use"
    )]
    Gc(GcArgs),
    /// Show the metrics files of stages that declare `metrics`
    #[command(
        after_help = "Examples:\n  pipe metrics                one row per metric, one column per stage or matrix member\n  \
pipe metrics --runs         the last 10 runs with metrics, one row each, changes against the first\n  \
pipe metrics --runs A B C --baseline B --sort acc --desc\n  pipe metrics --runs --csv > sweep.csv\n  pipe metrics --json"
    )]
    Metrics(MetricsArgs),
    /// Compare params between runs
    #[command(
        after_help = "Examples:\n  pipe params diff A B        params that differ between runs A and B\n  \
pipe params diff A B --json"
    )]
    Params(ParamsArgs),
    /// List releases, newest first
    #[command(
        after_help = "Examples:\n  pipe releases               run, date, stage, artifacts, gates\n  \
pipe releases --json        for scripts\n  pipe rollback RUN           restore an earlier release"
    )]
    Releases(JsonArg),
    /// Put the artifacts of an earlier release back from the cache
    #[command(
        after_help = "Examples:\n  pipe releases               find the run to go back to\n  \
pipe rollback 20260101T120000Z-ab12"
    )]
    Rollback(RollbackArgs),
    /// Reset stages: remove their outs (persist ones too) and lock entries; the cache stays
    #[command(
        after_help = "Examples:\n  pipe clean train            train starts from scratch (no checkpoint) next build\n  \
pipe clean --dry-run        what a full reset would remove\n  pipe clean                  every stage"
    )]
    Clean(CleanArgs),
    /// Upload cache objects the lock references to the remote cache
    #[command(
        after_help = "Examples:\n  pipe push                   what Pipeline.lock references, 8 transfers at once\n  \
pipe push --all -j 16       every object in the local cache\n  pipe push --json            counts and bytes for scripts\n\n\
The remote is [remote] in Pipeline.toml; credentials come from AWS_* variables."
    )]
    Push(TransferArgs),
    /// Download cache objects the lock references from the remote cache
    #[command(
        after_help = "Examples:\n  pipe pull                   what Pipeline.lock references\n  \
pipe pull --all             every run-cache entry on the remote"
    )]
    Pull(TransferArgs),
    /// Print shell completions for SHELL on stdout
    #[command(after_help = "Examples:\n  \
pipe completions bash > ~/.local/share/bash-completion/completions/pipe\n  \
pipe completions zsh > ~/.zfunc/_pipe        (with fpath+=~/.zfunc before compinit)\n  \
pipe completions fish > ~/.config/fish/completions/pipe.fish\n  \
pipe completions powershell >> $PROFILE\n  \
eval \"$(pipe completions bash)\"               for the current shell only")]
    Completions(CompletionsArgs),
    /// Write Pipeline.toml from another tool's pipeline (DVC's dvc.yaml)
    #[command(
        after_help = "Examples:\n  pipe import dvc             ./dvc.yaml (+ params.yaml) -> ./Pipeline.toml\n  \
pipe import dvc ../project  ../project/dvc.yaml -> ../project/Pipeline.toml\n\n\
Never overwrites a Pipeline.toml; lists on stderr what could not be converted."
    )]
    Import(ImportArgs),
    /// Print the JSON Schema of Pipeline.toml (for editors: taplo, Even Better TOML)
    #[command(after_help = "Examples:\n  pipe schema > pipeline.schema.json\n  \
then put `#:schema ./pipeline.schema.json` on the first line of Pipeline.toml,\n  \
or map it in .taplo.toml (see docs/pipeline-toml.md, \"Editor support\").")]
    Schema,
    /// Print the manual page (roff) on stdout
    #[command(
        after_help = "Examples:\n  pipe man | man -l -                         read it now\n  \
pipe man > ~/.local/share/man/man1/pipe.1    then `man pipe`\n  \
pipe man build > ~/.local/share/man/man1/pipe-build.1"
    )]
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Print a JSON document (stages and edges, or the errors) on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub command: ImportCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// Convert a DVC project's dvc.yaml (+ params.yaml, params files, vars) into DIR/Pipeline.toml
    #[command(
        after_help = "Examples:\n  pipe import dvc             the DVC project in the current folder\n  \
pipe import dvc path/to/project\n\n\
Converted: stages, cmd, deps, outs (cache: false, persist), params (keys and files), metrics,\n\
wdir, frozen, always_changed, foreach/do, matrix, vars, ${...} interpolation. Data tracked by\n\
.dvc files becomes a `dvc pull` stage. Not converted (and listed): plots definitions, dvc.lock\n\
hashes, meta, unknown keys. See docs/import-dvc.md."
    )]
    Dvc {
        /// The DVC project folder holding dvc.yaml (default: the current folder)
        #[arg(value_name = "DIR")]
        project: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// A subcommand whose own page to print (pipe-SUBCOMMAND(1)); default: pipe(1)
    #[arg(value_name = "SUBCOMMAND")]
    pub command: Option<String>,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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
    /// Override params from a TOML, JSON or YAML file (by extension); --set wins
    #[arg(long = "params-file", value_name = "FILE")]
    pub params_file: Option<std::path::PathBuf>,
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
    /// Override params for this run from a TOML, JSON or YAML file (by extension); --set wins
    #[arg(long = "params-file", value_name = "FILE")]
    pub params_file: Option<std::path::PathBuf>,
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
    /// Print every line each stage writes, prefixed with its stage name
    #[arg(long)]
    pub follow: bool,
    /// A label for this run, shown by `pipe runs` and usable wherever a RUN is taken
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Why a gate is overridden (recorded with --override-gate in the gate file and release)
    #[arg(long, value_name = "TEXT", requires = "override_gate")]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DagFormat {
    /// One line per stage: name <- upstream
    Ascii,
    /// Graphviz (`dot -Tsvg`)
    Dot,
    /// Mermaid flowchart (Markdown)
    Mermaid,
    /// A standalone SVG picture, laid out left to right (no Graphviz needed)
    Svg,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run to report: a run id, a unique prefix, `latest`, `latest~N` or a --name
    /// (default: the newest run)
    pub run: Option<String>,
    /// Where to write the HTML (default: .pipe/report.html in the workspace)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DagArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "ascii")]
    pub format: DagFormat,
    /// Print a JSON document (stages with their upstream, and the edges) instead
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    /// One run (id, unique prefix, `latest`, `latest~N` or a --name): its stages in detail
    pub run: Option<String>,
    /// Print a JSON document on stdout
    #[arg(long)]
    pub json: bool,
    /// Per stage: success rate, mean and last duration over the kept runs
    #[arg(long)]
    pub stats: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// A run (id, unique prefix, `latest`, `latest~N` or a --name), or a stage name
    pub run: Option<String>,
    /// Stage whose log to show (default: every stage of the run that has one)
    pub stage: Option<String>,
    /// Keep printing what a running stage writes until it ends
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Keep the objects referenced by the newest N runs
    #[arg(long, default_value_t = 20)]
    pub keep_runs: usize,
    /// Say what would be removed and how many bytes; remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON document (counts and bytes) on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Compare runs, one row each (id, unique prefix, `latest`, `latest~N` or a --name;
    /// default: the last 10 runs with metrics, oldest first)
    #[arg(long, num_args = 0.., value_name = "RUN")]
    pub runs: Option<Vec<String>>,
    /// Compare runs (implies --runs) showing changes against this one (default: the first row)
    #[arg(long, value_name = "RUN")]
    pub baseline: Option<String>,
    /// Compare runs (implies --runs) ordered by this metric (ascending; see --desc)
    #[arg(long, value_name = "METRIC")]
    pub sort: Option<String>,
    /// With --sort: largest first
    #[arg(long, requires = "sort")]
    pub desc: bool,
    /// Print a JSON document on stdout
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Compare runs as CSV (one row per run) on stdout
    #[arg(long)]
    pub csv: bool,
}

#[derive(Args, Debug)]
pub struct ParamsArgs {
    #[command(subcommand)]
    pub command: ParamsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ParamsCommand {
    /// Params that differ between two runs
    #[command(after_help = "Examples:\n  pipe params diff A B\n  pipe params diff A B --json")]
    Diff {
        /// The first run id
        a: String,
        /// The second run id
        b: String,
        /// Print a JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Print a JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CleanArgs {
    /// Stages (or matrix groups) to reset; default all
    pub stages: Vec<String>,
    /// Say what would be removed; remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The release's run: a run id, a unique prefix, `latest`, `latest~N` or a --name
    pub run: String,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Every object in the local cache (push) or every run-cache entry (pull), not only the lock's
    #[arg(long)]
    pub all: bool,
    /// Parallel transfers
    #[arg(short = 'j', long = "jobs", default_value_t = 8, value_name = "N")]
    pub jobs: usize,
    /// Print a JSON document (counts and bytes) on stdout
    #[arg(long)]
    pub json: bool,
}
