//! Worker threads: run a stage (with retries) or restore it, then hash and store its outs.

use super::engine::{Done, Msg, Outcome, Work};
use crate::cache::{Cache, Corrupt};
use crate::graph::Stage;
use crate::hash::{Hasher, PathHash};
use crate::lockfile::OutRecord;
use crate::runner::{Attempt, Control, Executor, RunSpec};
use crate::state::StatCache;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Worker: run or restore one stage, then hash and store its outs.
#[allow(clippy::too_many_arguments)]
pub(super) fn execute(
    i: usize,
    s: &Stage,
    root: &std::path::Path,
    work: Work,
    spec: Option<RunSpec>,
    fingerprint: String,
    exec: &dyn Executor,
    control: &Control,
    cache: &Cache,
    stat: &StatCache,
    remote: Option<&crate::remote::Remote>,
    tx: &mpsc::Sender<Msg>,
) -> Done {
    let started = Instant::now();
    let mut done = Done {
        i,
        outcome: Outcome::Ran,
        attempts: 0,
        exit_code: None,
        duration: Duration::ZERO,
        outs: BTreeMap::new(),
        job_id: None,
    };
    match work {
        Work::Restore(entry) => {
            // A cache entry (shared, maybe pulled) may only write the stage's declared outs.
            let declared: BTreeSet<&str> = s.outs.iter().map(|o| o.path.as_str()).collect();
            let matches = entry
                .outs
                .keys()
                .map(String::as_str)
                .eq(declared.iter().copied());
            done.outcome = match if matches {
                cache.restore(root, &entry, stat)
            } else {
                Err(anyhow::anyhow!(
                    "its cache entry lists other outs than the stage declares; not restoring it"
                ))
            } {
                Ok(()) => {
                    done.outs = entry
                        .outs
                        .iter()
                        .map(|(k, o)| {
                            (
                                k.clone(),
                                OutRecord {
                                    hash: o.hash.to_string(),
                                    size: o.size,
                                    dir: o.dir,
                                },
                            )
                        })
                        .collect();
                    Outcome::Restored
                }
                Err(e) if e.downcast_ref::<Corrupt>().is_some() => {
                    Outcome::Corrupt(format!("{e:#}"))
                }
                Err(e) => Outcome::Corrupt(format!("restore failed: {e:#}")),
            };
        }
        Work::Run => {
            let Some(spec) = spec else {
                done.outcome = Outcome::Failed("internal error: no run spec".into());
                return done;
            };
            done.outcome = run_with_retries(i, s, root, &spec, exec, control, tx, &mut done);
            if let Outcome::Ran = done.outcome {
                match collect_outs(s, root, cache, stat, remote, &fingerprint) {
                    Ok(outs) => done.outs = outs,
                    Err(e) => {
                        crate::runner::log_note(&spec.log, &format!("{e:#}"));
                        done.outcome = Outcome::Failed(format!("{e:#}"));
                    }
                }
            }
            if !matches!(done.outcome, Outcome::Ran) && !s.persist {
                for o in &s.outs {
                    let _ = crate::fsutil::remove_path(&root.join(&o.path));
                }
            }
        }
    }
    done.duration = started.elapsed();
    done
}

#[allow(clippy::too_many_arguments)]
fn run_with_retries(
    i: usize,
    s: &Stage,
    root: &std::path::Path,
    spec: &RunSpec,
    exec: &dyn Executor,
    control: &Control,
    tx: &mpsc::Sender<Msg>,
    done: &mut Done,
) -> Outcome {
    // Old outs must never pass as new output.
    if !s.persist {
        for o in &s.outs {
            if let Err(e) = crate::fsutil::remove_path(&root.join(&o.path)) {
                return Outcome::Failed(format!("cannot remove old out: {e:#}"));
            }
        }
    }
    for o in &s.outs {
        let full = root.join(&o.path);
        let dir = if o.dir_hint {
            Some(full.as_path())
        } else {
            full.parent()
        };
        if let Some(d) = dir
            && let Err(e) = std::fs::create_dir_all(d)
        {
            return Outcome::Failed(format!("cannot create folder {}: {e}", d.display()));
        }
    }
    let total = s.retries + 1;
    let mut attempt = 1;
    loop {
        done.attempts = attempt;
        if total > 1 {
            crate::runner::log_note(
                &spec.log,
                &format!(
                    "attempt {attempt} of {total} at {}",
                    crate::fsutil::now_rfc3339()
                ),
            );
        }
        let limit = s.timeout.map(|t| t + exec.timeout_grace());
        *control.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            limit.map(|t| Instant::now() + t);
        control.timed_out.store(false, Ordering::SeqCst);
        *control.term_sent.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let result = exec.run(spec, control);
        if let Ok(j) = control.job_id.lock()
            && j.is_some()
        {
            done.job_id = j.clone();
        }
        match result {
            Attempt::Ok => {
                done.exit_code = Some(0);
                return Outcome::Ran;
            }
            Attempt::Interrupted => return Outcome::Interrupted,
            Attempt::Failed { exit_code, message } => {
                done.exit_code = exit_code;
                if total > 1 {
                    crate::runner::log_note(
                        &spec.log,
                        &format!("attempt {attempt} failed: {message}"),
                    );
                }
                if attempt >= total || control.cancelled.load(Ordering::SeqCst) {
                    let msg = if total > 1 {
                        format!("{message} (after {attempt} attempts)")
                    } else {
                        message
                    };
                    return Outcome::Failed(msg);
                }
                let delay = backoff(s.retry_delay, attempt);
                let _ = tx.send(Msg::Retry {
                    i,
                    attempt: attempt + 1,
                    delay,
                    message,
                });
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if control.cancelled.load(Ordering::SeqCst) {
                        return Outcome::Interrupted;
                    }
                    std::thread::sleep(
                        Duration::from_millis(20)
                            .min(until.saturating_duration_since(Instant::now())),
                    );
                }
                attempt += 1;
            }
        }
    }
}

/// Exponential backoff: `base`, doubled per attempt, capped at 10 minutes.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(Duration::from_secs(600))
}

/// After a successful run: every declared out must exist; hash them, store them in the cache.
fn collect_outs(
    s: &Stage,
    root: &std::path::Path,
    cache: &Cache,
    stat: &StatCache,
    remote: Option<&crate::remote::Remote>,
    fingerprint: &str,
) -> Result<BTreeMap<String, OutRecord>> {
    let hasher = Hasher::new(root, stat);
    let mut outs = BTreeMap::new();
    let mut cached = BTreeMap::new();
    let mut missing = Vec::new();
    for o in &s.outs {
        let h = hasher.path(&o.path)?;
        if h == PathHash::Missing {
            missing.push(o.path.clone());
            continue;
        }
        if let Err(e) = check_no_escape(root, &o.path) {
            anyhow::bail!("{e}");
        }
        if s.cacheable() {
            cached.insert(o.path.clone(), cache.store_out(root, &o.path, &h)?);
        }
        outs.insert(
            o.path.clone(),
            OutRecord {
                hash: h.text(),
                size: h.size(),
                dir: matches!(h, PathHash::Dir { .. }),
            },
        );
    }
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ");
        anyhow::bail!("the command succeeded but did not create declared out {list}");
    }
    if s.cacheable() {
        let entry = crate::cache::RunEntry::new(&s.name, fingerprint, cached);
        cache.put_run(&entry)?;
        if let Some(r) = remote {
            r.push_entry(cache, &entry)?;
        }
    }
    Ok(outs)
}

/// An out that is (or sits under) a symlink leading outside the workspace is refused.
fn check_no_escape(root: &std::path::Path, rel: &str) -> Result<()> {
    let full = root.join(rel);
    if let Ok(real) = full.canonicalize()
        && !real.starts_with(root)
    {
        anyhow::bail!(
            "out `{rel}` resolves to {} through a symlink, outside the workspace; refusing it",
            real.display()
        );
    }
    Ok(())
}
