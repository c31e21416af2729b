//! The integration tests: one binary, so a change in `src/` relinks one test executable
//! instead of one per file. Run one module with `cargo test --test it <module>::`.
//!
//! A new test file goes here as `tests/it/<name>.rs` plus a `mod` line below; a file left
//! at `tests/<name>.rs` is not built at all (`autotests = false`), and the test
//! `harness::every_test_file_is_a_module_of_this_binary` says so.

/// Shared helpers: `Ws` (a temporary workspace), `Run` (one `pipe` invocation), the `Test`
/// builder, child processes with deadlines, polling, clock-free scheduling checks, snapshot
/// redaction, servers.
mod harness;

/// The content-addressed cache: restore, verification, folders and modes, sharing, gc.
mod cache;
/// The core engine: staleness reasons, what `pipe build` runs, -j, the lock, dag, init, -C/-f.
mod core_build;
/// The no-op proof: a status or build answered from the stats of what the last no-op saw.
mod fresh;
/// Property tests over hostile Pipeline.toml / Pipeline.lock (`PIPE_FUZZ_CASES`, default 64).
mod fuzz;
/// Hostile caches, remotes and values: tampered entries, full disks, special files, bounds.
mod hardening;
/// A first-class CLI: completions, man page, schema, versioned --json, closed pipes,
/// upward search, DVC import, terminal manners.
mod manners;
/// Sweeps: matrix and foreach stages, params files, metrics across members, params diff.
mod matrix;
/// Comparing runs: metrics recorded per run, `pipe metrics --runs`, NaN, `--params-file`.
mod metrics_runs;
/// Operating day to day: --follow, log --follow, no-op history, run references, hooks.
mod operations;
/// Exact output (insta snapshots in snapshots/): the status table, the build summary, the
/// dry-run plan, the main validation errors.
mod output;
/// Files written once per build: the journal of running markers, the run-cache pack.
mod per_build;
/// Run records, quality gates, releases and rollback, and the views of them.
mod records;
/// Releases that stick: sticky overrides, manifests with the story, rollbacks, clean.
mod releases;
/// Releases that travel (push/pull), gates of sweep members, external deps, symlink outs.
mod releases_travel;
/// kill -9, Ctrl-C, two builds at once, retries, timeouts, resource pools, escaping outs.
mod reliability;
/// The remote cache against a real S3 server on 127.0.0.1 (tests/servers/s3.sh).
mod remote_s3;
/// `pipe report` (rendered in headless Chromium) and `pipe dag --format svg`.
mod report;
/// No stage outlives pipe (kill -9, SIGHUP, leftovers), live and dead builds, the queue.
mod safety;
/// The Slurm executor against a real one-node Slurm (tests/servers/slurm.sh).
mod slurm;
/// One build, then a no-op rebuild: the quickest sign of life.
mod smoke;
/// Every validation error exits 2 with file:line and the stage; broken input never panics.
mod validate;
