//! Human output on stderr: cargo-style status lines, progress bars on a terminal
//! (indicatif), plain line-per-event output otherwise. stdout is left for what was asked.

use crate::event::{Event, Sink};
use crate::graph::Pipeline;
use crate::plan::Planned;
use crate::record::{RunStatus, Summary};
use crate::stage_state::StageState;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Info,
    Warn,
    Bad,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

pub struct Reporter {
    pub quiet: bool,
    pub verbose: bool,
    color: bool,
    mp: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// After `end()` the bars are gone and lines go straight to stderr.
    ended: std::sync::atomic::AtomicBool,
    /// `--follow --json`: followed lines go to stderr, stdout is the JSON document's.
    pub follow_to_stderr: bool,
}

pub fn use_color(choice: ColorChoice, stream_is_tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stream_is_tty && plain_env_allows_decoration(),
    }
}

/// Neither `NO_COLOR`, `TERM=dumb` nor `CI` asks for plain output.
fn plain_env_allows_decoration() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
        && std::env::var_os("CI").is_none_or(|v| v.is_empty())
}

/// Progress bars redraw the terminal with escape codes: only on a terminal, and never with
/// `TERM=dumb`, `CI`, `NO_COLOR` or `--color never` (then lines are printed instead).
pub fn use_bars(choice: ColorChoice, stream_is_tty: bool) -> bool {
    stream_is_tty && choice != ColorChoice::Never && plain_env_allows_decoration()
}

pub fn paint(color: bool, tone: Tone, text: &str) -> String {
    if !color {
        return text.to_string();
    }
    let code = match tone {
        Tone::Good => "1;32",
        Tone::Info => "1;36",
        Tone::Warn => "1;33",
        Tone::Bad => "1;31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

impl Reporter {
    pub fn new(quiet: bool, verbose: bool, color: ColorChoice) -> Reporter {
        let tty = std::io::stderr().is_terminal();
        Reporter {
            quiet,
            verbose,
            color: use_color(color, tty),
            mp: (use_bars(color, tty) && !quiet).then(MultiProgress::new),
            overall: None,
            bars: Mutex::new(HashMap::new()),
            ended: Default::default(),
            follow_to_stderr: false,
        }
    }

    pub fn color(&self) -> bool {
        self.color
    }

    /// `   Finished train in 1.2s`: the verb right-aligned in 12 columns.
    pub fn status(&self, verb: &str, tone: Tone, msg: &str) {
        if self.quiet && tone != Tone::Bad {
            return;
        }
        let line = format!("{} {msg}", paint(self.color, tone, &format!("{verb:>12}")));
        self.line(&line);
    }

    /// Print a line above the progress bars (or plainly).
    pub fn line(&self, line: &str) {
        match &self.mp {
            Some(mp) if !self.ended.load(std::sync::atomic::Ordering::Relaxed) => {
                let _ = mp.println(line);
            }
            _ => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{line}");
            }
        }
    }

    pub fn note(&self, msg: &str) {
        if !self.quiet {
            self.line(msg);
        }
    }

    pub fn warn(&self, msg: &str) {
        self.line(&format!(
            "{} {msg}",
            paint(self.color, Tone::Warn, "warning:")
        ));
    }

    pub fn begin(&mut self, total: u64) {
        if let Some(mp) = &self.mp {
            let bar = mp.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} stages, {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix("Building");
            bar.enable_steady_tick(Duration::from_millis(200));
            self.overall = Some(bar);
        }
    }

    /// A stage started: a spinner with its expected duration on a terminal, else a line.
    /// `why` (its reasons) is shown with `-v`.
    pub fn stage_started(&self, stage: &str, expected_s: Option<f64>, why: &str) {
        let why = if self.verbose && !why.is_empty() {
            format!(" ({why})")
        } else {
            String::new()
        };
        if let Some(mp) = &self.mp {
            let bar = mp.add(ProgressBar::new_spinner());
            let expected = expected_s
                .map(|s| format!(" (last run took {})", secs(s)))
                .unwrap_or_default();
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner:.cyan}} {{prefix}} {{elapsed}}{expected} {{wide_msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(stage.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            if let Ok(mut bars) = self.bars.lock() {
                bars.insert(stage.to_string(), bar);
            }
            if !why.is_empty() {
                self.status("Running", Tone::Info, &format!("{stage}{why}"));
            }
        } else {
            self.status("Running", Tone::Info, &format!("{stage}{why}"));
        }
    }

    /// The last line a running stage wrote, beside its spinner (terminal only).
    pub fn stage_output(&self, stage: &str, line: &str) {
        if let Ok(bars) = self.bars.lock()
            && let Some(b) = bars.get(stage)
        {
            b.set_message(format!("| {}", line.trim_end()));
        }
    }

    pub fn stage_finished(&self, stage: &str) {
        if let Ok(mut bars) = self.bars.lock()
            && let Some(b) = bars.remove(stage)
        {
            b.finish_and_clear();
            if let Some(mp) = &self.mp {
                mp.remove(&b);
            }
        }
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }

    pub fn skip_progress(&self, n: u64) {
        if let Some(o) = &self.overall {
            o.inc(n);
        }
    }

    pub fn end(&self) {
        if let Ok(mut bars) = self.bars.lock() {
            for (_, b) in bars.drain() {
                b.finish_and_clear();
            }
        }
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
        if let Some(mp) = &self.mp {
            mp.set_draw_target(ProgressDrawTarget::hidden());
        }
        self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Reporter {
    /// Whether running stages show on a terminal (spinners with their last line).
    pub fn live(&self) -> bool {
        self.mp.is_some()
    }

    /// `build --follow`: one line a stage wrote, `stage | line`, on stdout (stderr when
    /// stdout carries `--json`), printed above the progress bars.
    pub fn followed(&self, stage: &str, line: &str) {
        let text = format!("{stage} | {}", line.trim_end_matches(['\n', '\r']));
        if self.follow_to_stderr {
            self.line(&text);
        } else {
            match &self.mp {
                Some(mp) if !self.ended.load(std::sync::atomic::Ordering::Relaxed) => {
                    let _ = mp.suspend(|| writeln!(std::io::stdout(), "{text}"));
                }
                _ => {
                    let _ = writeln!(std::io::stdout(), "{text}");
                }
            }
        }
    }

    /// A bar for a push or pull, on a terminal only; the remote sets its length.
    pub fn transfer_bar(&self, verb: &str) -> Option<ProgressBar> {
        if self.quiet || self.mp.is_none() {
            return None;
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(verb.to_string());
        Some(b)
    }

    /// Another build holds the workspace (worded as cargo does: `Blocking waiting for …`).
    pub fn waiting(&self, message: &str) {
        self.status("Blocking", Tone::Warn, message);
    }

    /// `build --dry-run`: the plan, one line a stage, then what would happen.
    pub fn dry_run(&self, p: &Pipeline, planned: &[Planned]) {
        let mut would = 0;
        for pl in planned {
            let verb = match pl.state {
                StageState::Stale => "would run",
                StageState::Restorable => "would restore",
                other => other.label(),
            };
            if pl.needs_attention() {
                would += 1;
            }
            if !self.quiet {
                let detail = if pl.reasons.is_empty() {
                    String::new()
                } else {
                    let texts: Vec<String> = pl.reasons.iter().map(|r| r.to_string()).collect();
                    format!(" ({})", texts.join(", "))
                };
                self.status(
                    verb,
                    state_tone(pl.state),
                    &format!("{}{detail}", p.stages[pl.stage].name),
                );
            }
        }
        self.note(&format!(
            "dry run: {would} of {} stages would run or be restored; nothing was changed",
            planned.len()
        ));
    }

    /// The closing line of a build: counts per state, the time, the run id.
    pub fn summary(&self, s: &Summary) {
        let count = |st: StageState| s.stages.iter().filter(|(_, r)| r.status == st).count();
        let mut parts = vec![
            format!("{} ran", count(StageState::Ran)),
            format!("{} restored", count(StageState::Restored)),
            format!("{} up to date", count(StageState::UpToDate)),
        ];
        for st in [
            StageState::Failed,
            StageState::Blocked,
            StageState::Skipped,
            StageState::RolledBack,
        ] {
            let n = count(st);
            if n > 0 {
                parts.push(format!("{n} {}", st.label()));
            }
        }
        let (verb, tone) = match s.status {
            RunStatus::Success => ("Finished", Tone::Good),
            RunStatus::Interrupted => ("Interrupted", Tone::Bad),
            RunStatus::GateFailed => ("Gate failed", Tone::Bad),
            _ => ("Failed", Tone::Bad),
        };
        let run = s
            .run_id
            .as_deref()
            .map(|r| format!(" (run {r})"))
            .unwrap_or_default();
        self.status(
            verb,
            tone,
            &format!("{} in {}{run}", parts.join(", "), secs(s.duration_s)),
        );
    }
}

/// The tone a state is painted in.
pub fn state_tone(state: StageState) -> Tone {
    match state {
        StageState::UpToDate | StageState::Ran | StageState::Restored => Tone::Good,
        StageState::Frozen
        | StageState::Restorable
        | StageState::Running
        | StageState::RolledBack => Tone::Info,
        StageState::Blocked | StageState::Failed => Tone::Bad,
        StageState::Stale | StageState::Skipped => Tone::Warn,
    }
}

/// The terminal as a sink of build events: the only place that words a build's lines.
pub struct BuildView<'r> {
    rep: &'r mut Reporter,
    /// `--follow`: every line a stage writes is printed, prefixed with its name.
    follow: bool,
    run_dir: Option<PathBuf>,
    interrupted: bool,
}

impl<'r> BuildView<'r> {
    pub fn new(rep: &'r mut Reporter, follow: bool) -> BuildView<'r> {
        BuildView {
            rep,
            follow,
            run_dir: None,
            interrupted: false,
        }
    }

    fn failure(&self, stage: &str, error: &str) {
        let rep = &self.rep;
        rep.status("Failed", Tone::Bad, &format!("{stage}: {error}"));
        let Some(dir) = &self.run_dir else {
            return;
        };
        let log = crate::record::log_path(dir, stage);
        let tail = crate::record::log_tail(&log, 15);
        if !tail.is_empty() {
            let mut text = String::new();
            for l in &tail {
                text.push_str(&format!("             | {l}\n"));
            }
            text.push_str(&format!("             full log: {}", log.display()));
            rep.line(&text);
        }
    }
}

impl Sink for BuildView<'_> {
    fn on(&mut self, event: &Event) -> anyhow::Result<()> {
        match event {
            Event::RunStart {
                run_dir, stages, ..
            } => {
                self.run_dir = Some(run_dir.clone());
                self.rep.begin(*stages as u64);
            }
            Event::StageJudged {
                stage,
                state: StageState::RolledBack,
                reasons,
                ..
            } => {
                let why = reasons.first().map(|r| r.to_string()).unwrap_or_default();
                self.rep
                    .status("Held", Tone::Info, &format!("{stage} ({why})"));
                self.rep.skip_progress(1);
            }
            Event::StageJudged { stage, state, .. } if state.is_fresh() => {
                if self.rep.verbose {
                    self.rep.status("Fresh", Tone::Good, stage);
                }
                self.rep.skip_progress(1);
            }
            Event::StageJudged { .. } => {}
            Event::StageStart {
                stage,
                reasons,
                expected_s,
            } => {
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                self.rep.stage_started(stage, *expected_s, &why.join(", "));
            }
            Event::StageOutput { stage, line } => {
                if self.follow {
                    self.rep.followed(stage, line);
                } else {
                    self.rep.stage_output(stage, line);
                }
            }
            Event::StageRetry {
                stage,
                attempt,
                delay_s,
                error,
            } => self.rep.status(
                "Retrying",
                Tone::Warn,
                &format!("{stage} (attempt {attempt}) in {}: {error}", secs(*delay_s)),
            ),
            Event::StageOk {
                stage, duration_s, ..
            } => {
                self.rep.stage_finished(stage);
                self.rep.status(
                    "Finished",
                    Tone::Good,
                    &format!("{stage} in {}", secs(*duration_s)),
                );
            }
            Event::StageRestored { stage, .. } => {
                self.rep.stage_finished(stage);
                self.rep
                    .status("Restored", Tone::Good, &format!("{stage} from cache"));
            }
            Event::StageFail {
                stage,
                error,
                interrupted,
                ..
            } => {
                self.rep.stage_finished(stage);
                if !interrupted {
                    self.failure(stage, error);
                }
            }
            Event::CacheCorrupt { stage, error } => {
                self.rep
                    .warn(&format!("stage `{stage}`: {error}; running it instead"));
            }
            Event::StageSkipped { stage, reason } => {
                if !self.interrupted {
                    self.rep
                        .status("Skipped", Tone::Warn, &format!("{stage} ({reason})"));
                }
                self.rep.skip_progress(1);
            }
            Event::StageBlocked { stage, reason } => {
                self.rep
                    .status("Blocked", Tone::Bad, &format!("{stage} ({reason})"));
                self.rep.skip_progress(1);
            }
            Event::GatePass { result, fresh } => {
                if !fresh || result.overridden || self.rep.verbose {
                    let (note, tone) = if result.overridden {
                        (" (overridden with --override-gate)", Tone::Warn)
                    } else {
                        ("", Tone::Good)
                    };
                    self.rep
                        .status("Gate", tone, &format!("{} passed{note}", result.gate));
                }
            }
            Event::GateFail { result } => {
                self.rep.status(
                    "Gate failed",
                    Tone::Bad,
                    &format!("{} (stage {}):", result.gate, result.stage),
                );
                for f in result.failures() {
                    self.rep.line(&format!("             - {f}"));
                }
                self.rep.line(&format!(
                    "             downstream stages are blocked; fix the metric or threshold, or pass `--override-gate {}`",
                    result.gate
                ));
            }
            Event::Release {
                stage,
                artifacts,
                manifest,
            } => self.rep.status(
                "Released",
                Tone::Good,
                &format!(
                    "{stage} ({artifacts} {}, run {})",
                    if *artifacts == 1 {
                        "artifact"
                    } else {
                        "artifacts"
                    },
                    manifest.run_id
                ),
            ),
            Event::Warning { stage, message } => match stage {
                Some(s) => self.rep.warn(&format!("stage `{s}`: {message}")),
                None => self.rep.warn(message),
            },
            Event::Interrupt => {
                self.interrupted = true;
                self.rep.status(
                    "Interrupted",
                    Tone::Bad,
                    "stopping running stages (Ctrl-C again to kill them at once)",
                );
            }
            Event::RunDone { .. } => self.rep.end(),
            Event::RollbackStart { .. } | Event::Rollback { .. } => {}
        }
        Ok(())
    }
}

/// Seconds as a short human duration: `0.3s`, `12.0s`, `3m05s`, `1h02m`.
pub fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}
