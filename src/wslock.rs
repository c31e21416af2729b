//! The workspace lock: one `pipe build` at a time, through an OS file lock that the kernel
//! releases when its holder dies, so a dead holder never blocks.

use crate::error::failed;
use crate::fsutil::{Layout, atomic_write, now_rfc3339};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;

#[derive(Serialize, Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    since: String,
    command: String,
}

/// Held for the life of a build; dropping it releases the lock.
pub struct WorkspaceLock {
    _file: File,
}

fn describe(layout: &Layout) -> String {
    let info = std::fs::read(layout.dot.join("holder.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
    match info {
        Some(h) => format!(
            "pid {} on {}, since {}, running `{}`",
            h.pid, h.host, h.since, h.command
        ),
        None => "another process".to_string(),
    }
}

pub fn acquire(
    layout: &Layout,
    wait: bool,
    command: &str,
    mut on_wait: impl FnMut(&str),
) -> Result<WorkspaceLock> {
    std::fs::create_dir_all(&layout.dot)
        .with_context(|| format!("cannot create {}", layout.dot.display()))?;
    let path = layout.build_lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = describe(layout);
            if !wait {
                return Err(failed(format!(
                    "another build holds this workspace ({who}); not waiting because of --no-wait"
                )));
            }
            on_wait(&format!("waiting for another build to finish ({who})"));
            // Poll rather than block, so Ctrl-C / SIGTERM (counted by the build's handlers,
            // which restart a blocking flock) still ends a waiting build.
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(std::fs::TryLockError::WouldBlock) => {}
                    Err(std::fs::TryLockError::Error(e)) => {
                        return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                    }
                }
                if crate::signal::received() > 0 {
                    return Err(crate::error::UserError {
                        code: crate::error::exit::INTERRUPTED,
                        message: "interrupted while waiting for another build".into(),
                    }
                    .into());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    let holder = Holder {
        pid: std::process::id(),
        host: crate::record::hostname(),
        since: now_rfc3339(),
        command: command.to_string(),
    };
    atomic_write(
        &layout.dot.join("holder.json"),
        &serde_json::to_vec(&holder)?,
    )?;
    Ok(WorkspaceLock { _file: file })
}
