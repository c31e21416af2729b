//! Human output on stderr: cargo-style status lines, progress bars on a terminal
//! (indicatif), plain line-per-event output otherwise. stdout is left for what was asked.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
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
}

pub fn use_color(choice: ColorChoice, stream_is_tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            stream_is_tty
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map_or(true, |t| t != "dumb")
        }
    }
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
            mp: (tty && !quiet).then(MultiProgress::new),
            overall: None,
            bars: Mutex::new(HashMap::new()),
            ended: Default::default(),
        }
    }

    /// A reporter that prints nothing (for library use and tests).
    pub fn silent() -> Reporter {
        Reporter {
            quiet: true,
            verbose: false,
            color: false,
            mp: None,
            overall: None,
            bars: Mutex::new(HashMap::new()),
            ended: Default::default(),
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

    pub fn stage_started(&self, stage: &str) {
        if let Some(mp) = &self.mp {
            let bar = mp.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(stage.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            if let Ok(mut bars) = self.bars.lock() {
                bars.insert(stage.to_string(), bar);
            }
        } else {
            self.status("Running", Tone::Info, stage);
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
