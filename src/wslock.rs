//! The workspace lock: one `pipe build` at a time, through an OS file lock that the kernel
//! releases when its holder dies, so a dead holder never blocks. Builds that wait queue up
//! with a ticket each (`.pipe/queue/<time>-<pid>`) and take the lock in the order they
//! started. `holder.json` names the holder (pid, its start time, host, command, run id), so
//! read-only commands can tell a live build from a dead one without taking the lock.

use crate::error::failed;
use crate::fsutil::{Layout, now_rfc3339, quick_write};
use crate::process_group::start_time;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub since: String,
    pub command: String,
    /// The holder's process start time (to tell it from a later process with its pid).
    #[serde(default)]
    pub start: u64,
    /// The run the holder is recording, once it has started one.
    #[serde(default)]
    pub run_id: Option<String>,
}

impl Holder {
    /// The holding process is still alive (on another host this cannot be checked: assumed).
    pub fn is_alive(&self) -> bool {
        if self.host != host() {
            return true;
        }
        match start_time(self.pid as i32) {
            Some(t) => self.start == 0 || t == self.start,
            None => false,
        }
    }
}

fn host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn holder_path(layout: &Layout) -> PathBuf {
    layout.dot.join("holder.json")
}

fn read_holder(layout: &Layout) -> Option<Holder> {
    let bytes = std::fs::read(holder_path(layout)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The build holding the workspace right now, if one is alive.
pub fn live_holder(layout: &Layout) -> Option<Holder> {
    read_holder(layout).filter(Holder::is_alive)
}

/// Held for the life of a build; dropping it releases the lock.
pub struct WorkspaceLock {
    _file: File,
    holder: Holder,
    path: PathBuf,
}

impl WorkspaceLock {
    /// Name the run this build records, for `status` and `runs` in other terminals.
    pub fn set_run(&mut self, run_id: &str) -> Result<()> {
        self.holder.run_id = Some(run_id.to_string());
        quick_write(&self.path, &serde_json::to_vec(&self.holder)?)
    }
}

fn describe(layout: &Layout) -> String {
    match read_holder(layout) {
        Some(h) => format!(
            "pid {} on {}, since {}, running `{}`",
            h.pid, h.host, h.since, h.command
        ),
        None => "another process".to_string(),
    }
}

/// A waiting build's place in the queue; removed when dropped.
struct Ticket {
    path: PathBuf,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Ticket {
    fn take(dir: &std::path::Path) -> Result<Ticket> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("{nanos:024}-{}", std::process::id()));
        std::fs::write(&path, b"").with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Ticket { path })
    }

    /// No live ticket is older than this one (tickets of dead processes are swept).
    fn first(&self, dir: &std::path::Path) -> bool {
        let mine = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let mut names: Vec<String> = live_tickets(dir);
        names.sort();
        names.first().cloned() == mine || names.is_empty()
    }
}

/// Tickets of live waiters, oldest first; a dead waiter's ticket is removed.
fn live_tickets(dir: &std::path::Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid: Option<i32> = name.rsplit('-').next().and_then(|p| p.parse().ok());
        match pid {
            Some(pid) if start_time(pid).is_some() => names.push(name),
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    names.sort();
    names
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
    let queue = layout.dot.join("queue");
    // Builds already waiting go first: a newcomer queues even if the lock is free this instant.
    let got = live_tickets(&queue).is_empty() && try_lock(&file, &path)?;
    if !got {
        if !wait {
            return Err(failed(format!(
                "another build holds this workspace ({}); not waiting because of --no-wait",
                describe(layout)
            )));
        }
        on_wait(&format!(
            "waiting for another build to finish ({})",
            describe(layout)
        ));
        let ticket = Ticket::take(&queue)?;
        // Poll rather than block, so Ctrl-C / SIGTERM (counted by the build's handlers,
        // which restart a blocking flock) still ends a waiting build.
        loop {
            if ticket.first(&queue) && try_lock(&file, &path)? {
                break;
            }
            if crate::signal::received() > 0 {
                return Err(crate::error::interrupted(
                    "interrupted while waiting for another build",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let me = std::process::id();
    let holder = Holder {
        pid: me,
        host: host(),
        since: now_rfc3339(),
        command: command.to_string(),
        start: start_time(me as i32).unwrap_or(0),
        run_id: None,
    };
    let hp = holder_path(layout);
    // No fsync: after a power cut no holder is alive, whatever the file says.
    quick_write(&hp, &serde_json::to_vec(&holder)?)?;
    Ok(WorkspaceLock {
        _file: file,
        holder,
        path: hp,
    })
}

fn try_lock(file: &File, path: &std::path::Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}
