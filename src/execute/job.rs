//! One stage's work on a worker thread: run its commands (with retries and backoff) or
//! restore it from the cache, then hash and store its outs. Reports back by message; never
//! touches the lock, the records or the terminal.

use super::control::Control;
use super::executor::{Attempt, Executor, RunSpec};
use crate::cache::{Cache, CachedOut, Corrupt, RunEntry};
use crate::failure::StageFailure;
use crate::graph::Stage;
use crate::hash::{Hasher, PathHash};
use crate::state::StatCache;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a worker does.
pub enum Work {
    Run(RunSpec),
    Restore(RunEntry),
}

/// Messages from a worker to the dispatcher.
pub enum Msg {
    Retry {
        stage: usize,
        attempt: u32,
        delay: Duration,
        failure: StageFailure,
    },
    Done(Done),
}

pub enum Outcome {
    Ran,
    Restored,
    Failed(StageFailure),
    Interrupted,
    /// The cache entry was bad: report it, then run the stage.
    Corrupt(String),
}

pub struct Done {
    pub stage: usize,
    pub outcome: Outcome,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub duration: Duration,
    /// Each out as stored (hash, size, folder flag, the file's real mode).
    pub outs: BTreeMap<String, CachedOut>,
    pub job_id: Option<String>,
}

/// Everything a worker needs, borrowed from the dispatcher's scope.
pub struct Job<'a> {
    pub index: usize,
    pub stage: &'a Stage,
    pub root: &'a Path,
    pub fingerprint: String,
    pub exec: &'a dyn Executor,
    pub control: &'a Control,
    pub cache: &'a Cache,
    pub stat: &'a StatCache,
    /// Upload what was stored (`build --push`).
    pub push: Option<&'a crate::remote::Remote>,
}

impl Job<'_> {
    pub fn execute(&self, work: Work, tx: &mpsc::Sender<Msg>) -> Done {
        let started = Instant::now();
        let mut done = Done {
            stage: self.index,
            outcome: Outcome::Ran,
            attempts: 0,
            exit_code: None,
            duration: Duration::ZERO,
            outs: BTreeMap::new(),
            job_id: None,
        };
        match work {
            Work::Restore(entry) => {
                done.outcome = match self.restore(&entry) {
                    Ok(()) => {
                        done.outs = entry.outs;
                        Outcome::Restored
                    }
                    Err(e) => Outcome::Corrupt(e),
                };
            }
            Work::Run(spec) => {
                done.outcome = self.run_with_retries(&spec, tx, &mut done);
                if let Outcome::Ran = done.outcome {
                    match self.collect_outs() {
                        Ok(outs) => done.outs = outs,
                        Err(f) => {
                            super::local::log_note(&spec.log, &f.to_string());
                            done.outcome = Outcome::Failed(f);
                        }
                    }
                }
                if !matches!(done.outcome, Outcome::Ran) && !self.stage.persist {
                    for o in &self.stage.outs {
                        let _ = crate::fsutil::remove_path(&self.root.join(&o.path));
                    }
                }
            }
        }
        done.duration = started.elapsed();
        done
    }

    fn restore(&self, entry: &RunEntry) -> Result<(), String> {
        // A cache entry (shared, maybe pulled) may only write the stage's declared outs.
        let declared: BTreeSet<&str> = self.stage.outs.iter().map(|o| o.path.as_str()).collect();
        if !entry
            .outs
            .keys()
            .map(String::as_str)
            .eq(declared.iter().copied())
        {
            return Err(
                "its cache entry lists other outs than the stage declares; not restoring it".into(),
            );
        }
        self.cache
            .restore(self.root, entry, self.stat)
            .map_err(|e| match e.downcast_ref::<Corrupt>() {
                Some(_) => format!("{e:#}"),
                None => format!("restore failed: {e:#}"),
            })
    }

    fn run_with_retries(&self, spec: &RunSpec, tx: &mpsc::Sender<Msg>, done: &mut Done) -> Outcome {
        let s = self.stage;
        // Old outs must never pass as new output.
        if !s.persist {
            for o in &s.outs {
                if let Err(e) = crate::fsutil::remove_path(&self.root.join(&o.path)) {
                    return Outcome::Failed(StageFailure::Outs {
                        error: format!("cannot remove old out: {e:#}"),
                    });
                }
            }
        }
        for o in &s.outs {
            let full = self.root.join(&o.path);
            let dir = if o.dir_hint {
                Some(full.as_path())
            } else {
                full.parent()
            };
            // A `stat` first: `create_dir_all` starts with a `mkdir`, which locks the parent
            // folder for writing even when the folder exists (as it does for all but the
            // first stage writing there).
            if let Some(d) = dir
                && !d.is_dir()
                && let Err(e) = std::fs::create_dir_all(d)
            {
                return Outcome::Failed(StageFailure::Outs {
                    error: format!("cannot create folder {}: {e}", d.display()),
                });
            }
        }
        let (exec, control) = (self.exec, self.control);
        let total = s.retries + 1;
        let mut attempt = 1;
        loop {
            done.attempts = attempt;
            if total > 1 {
                super::local::log_note(
                    &spec.log,
                    &format!(
                        "attempt {attempt} of {total} at {}",
                        crate::fsutil::now_rfc3339()
                    ),
                );
            }
            control.arm(s.timeout);
            let result = exec.run(spec, control);
            if let Some(j) = control.job_id() {
                done.job_id = Some(j);
            }
            match result {
                Attempt::Ok => {
                    done.exit_code = Some(0);
                    return Outcome::Ran;
                }
                Attempt::Interrupted => return Outcome::Interrupted,
                Attempt::Failed { exit_code, failure } => {
                    done.exit_code = exit_code;
                    if total > 1 {
                        super::local::log_note(
                            &spec.log,
                            &format!("attempt {attempt} failed: {failure}"),
                        );
                    }
                    if attempt >= total || control.cancelled.load(Ordering::SeqCst) {
                        return Outcome::Failed(if total > 1 {
                            StageFailure::Retried {
                                attempts: attempt,
                                last: Box::new(failure),
                            }
                        } else {
                            failure
                        });
                    }
                    let delay = backoff(s.retry_delay, attempt);
                    let _ = tx.send(Msg::Retry {
                        stage: self.index,
                        attempt: attempt + 1,
                        delay,
                        failure,
                    });
                    if !control.sleep_unless_cancelled(delay) {
                        return Outcome::Interrupted;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// After a successful run: every declared out must exist; hash them, store them in the
    /// cache (with the run-cache entry, and upload with `--push`).
    fn collect_outs(&self) -> Result<BTreeMap<String, CachedOut>, StageFailure> {
        let s = self.stage;
        let outs_err = |e: anyhow::Error| StageFailure::Outs {
            error: format!("{e:#}"),
        };
        let hasher = Hasher::new(self.root, self.stat);
        let mut outs = BTreeMap::new();
        let mut missing = Vec::new();
        for o in &s.outs {
            let h = hasher.path(&o.path).map_err(outs_err)?;
            if h == PathHash::Missing {
                missing.push(o.path.clone());
                continue;
            }
            let out = if s.cacheable() {
                // `store_out` refuses an out that escapes the workspace (it checks once).
                self.cache
                    .store_out(self.root, &o.path, &h)
                    .map_err(outs_err)?
            } else {
                check_no_escape(self.root, &o.path)?;
                let mode = std::fs::metadata(self.root.join(&o.path))
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o644);
                CachedOut {
                    hash: h
                        .text()
                        .parse()
                        .map_err(|error| StageFailure::Outs { error })?,
                    size: h.size(),
                    dir: matches!(h, PathHash::Dir { .. }),
                    mode,
                    link: None,
                }
            };
            outs.insert(o.path.clone(), out);
        }
        if !missing.is_empty() {
            return Err(StageFailure::OutMissing { outs: missing });
        }
        if s.cacheable() {
            let entry = RunEntry::new(&s.name, &self.fingerprint, outs.clone());
            self.cache.put_run(&entry).map_err(outs_err)?;
            if let Some(r) = self.push {
                r.push_entry(self.cache, &entry).map_err(outs_err)?;
            }
        }
        Ok(outs)
    }
}

/// Exponential backoff: `base`, doubled per attempt, capped at 10 minutes.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(Duration::from_secs(600))
}

/// An out that is (or sits under) a symlink leading outside the workspace is refused.
fn check_no_escape(root: &Path, rel: &str) -> Result<(), StageFailure> {
    if let Some(real) = crate::fsutil::escapes(root, rel) {
        return Err(StageFailure::Outs {
            error: format!(
                "out `{rel}` resolves to {} through a symlink, outside the workspace; refusing it",
                real.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(5);
        assert_eq!(backoff(b, 1), Duration::from_secs(5));
        assert_eq!(backoff(b, 3), Duration::from_secs(20));
        assert_eq!(backoff(b, 40), Duration::from_secs(600));
    }
}
