//! Process groups: every stage command runs in its own group, and no group outlives the
//! stage or pipe.
//!
//! - When a stage's `sh` exits, whatever it left in its group (a background child, a
//!   grandchild that ignores SIGTERM) is stopped: SIGTERM, then SIGKILL after the grace
//!   period ([`drain`]). So a stage's processes never write after it was recorded.
//! - A [`Watchdog`] is forked when a build starts, before any thread exists. It sits in its own
//!   session, ignores signals, and sleeps on a pipe. The build registers its groups in a
//!   table of atomics in memory shared with the watchdog (no system call, no wake-up per
//!   stage; through the pipe only if the table is full). If pipe dies without saying goodbye
//!   (`kill -9`, the OOM killer), the pipe reaches EOF and the watchdog stops every group in
//!   the table (TERM, then KILL after 2 s), then exits.
//! - Running markers also record the group and its leader's start time, so a later build
//!   stops anything an earlier run of a stage left alive before starting it again
//!   ([`stop_leftover`]); this covers a watchdog that was killed too.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Groups the shared table holds; more at once go through the pipe.
const SLOTS: usize = 1024;

/// Whether any process of group `pg` is alive.
pub fn alive(pg: i32) -> bool {
    pg > 0 && unsafe { libc::kill(-pg, 0) } == 0
}

fn signal(pg: i32, sig: libc::c_int) {
    if pg > 0 {
        unsafe { libc::killpg(pg, sig) };
    }
}

/// Wait until group `pg` is gone, at most `limit`; true if it is gone.
fn wait_gone(pg: i32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while alive(pg) {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Stop every process left in group `pg`: SIGTERM, SIGKILL after `grace`, and wait (briefly)
/// for them to be gone. Returns whether anything was left.
pub fn drain(pg: i32, grace: Duration) -> bool {
    if !alive(pg) {
        return false;
    }
    signal(pg, libc::SIGTERM);
    if !wait_gone(pg, grace) {
        signal(pg, libc::SIGKILL);
        wait_gone(pg, Duration::from_secs(2));
    }
    true
}

/// The start time of process `pid` (clock ticks since boot, field 22 of /proc/PID/stat), to
/// tell a process from a later one that reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A group recorded in a running marker: the leader's pid is the group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub pgid: i32,
    pub start: u64,
}

impl Recorded {
    pub fn of(pgid: i32) -> Recorded {
        Recorded {
            pgid,
            start: start_time(pgid).unwrap_or(0),
        }
    }

    /// The same group still has live processes (and its id was not reused by another).
    pub fn is_alive(&self) -> bool {
        if !alive(self.pgid) {
            return false;
        }
        // While any member lives the id cannot be reused for a new group; if the leader
        // itself is still there, it must be the same process.
        match start_time(self.pgid) {
            Some(t) => self.start == 0 || t == self.start,
            None => true,
        }
    }
}

/// Stop a group an earlier run left behind. Returns true if something had to be stopped.
pub fn stop_leftover(g: Recorded, grace: Duration) -> bool {
    g.is_alive() && drain(g.pgid, grace)
}

/// The build's side of the watchdog: register groups as they start and end.
pub struct Watchdog {
    tx: Mutex<std::fs::File>,
    /// Live groups, 0 for a free slot: memory the watchdog shares.
    table: &'static [AtomicI32],
}

/// A zeroed table of `SLOTS` atomics in an anonymous shared mapping (kept for the life of
/// the process), which a forked child sees as it is written.
fn shared_table() -> Option<&'static [AtomicI32]> {
    let bytes = SLOTS * std::mem::size_of::<AtomicI32>();
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: a fresh, zero-filled, page-aligned mapping of `bytes` bytes that is never
    // unmapped; `AtomicI32` has the size and alignment of `i32`.
    Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicI32>(), SLOTS) })
}

impl Watchdog {
    /// Fork the watchdog. Must be called while the process has one thread (at the start of a
    /// build): the child only reads a pipe, sends signals and sleeps. `None` if it cannot be
    /// started (the build then still drains groups itself; only `kill -9` is uncovered).
    pub fn start() -> Option<Watchdog> {
        let table = shared_table()?;
        let mut fds = [0 as libc::c_int; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        match unsafe { libc::fork() } {
            -1 => None,
            0 => {
                // The child: never returns.
                drop(wr);
                watch(rd.as_raw_fd(), table)
            }
            _ => {
                drop(rd);
                Some(Watchdog {
                    tx: Mutex::new(std::fs::File::from(wr)),
                    table,
                })
            }
        }
    }

    fn send(&self, line: &str) {
        if let Ok(mut f) = self.tx.lock() {
            // A line is far below PIPE_BUF, so it is written whole; a dead watchdog is ignored.
            let _ = f.write_all(line.as_bytes());
        }
    }

    pub fn register(&self, pg: i32) {
        let free = self.table.iter().any(|slot| {
            slot.compare_exchange(0, pg, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if !free {
            self.send(&format!("+{pg}\n"));
        }
    }

    pub fn unregister(&self, pg: i32) {
        let found = self.table.iter().any(|slot| {
            slot.compare_exchange(pg, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if !found {
            self.send(&format!("-{pg}\n"));
        }
    }

    /// The build ended normally: the watchdog exits without touching anything.
    pub fn dismiss(self) {
        self.send("done\n");
    }
}

/// The watchdog process: read the pipe until EOF; on EOF without `done`, stop every group
/// still registered (in the table, or by a message when it was full). Runs in the forked
/// child only.
fn watch(fd: libc::c_int, table: &[AtomicI32]) -> ! {
    unsafe {
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Hold no other descriptor of the parent's (terminal, files) open: two
        // `close_range` calls around `fd` (Linux 5.9), else one `close` per descriptor.
        let below = fd.max(0) as libc::c_uint;
        let done = (below == 0 || libc::syscall(libc::SYS_close_range, 0u32, below - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, below + 1, libc::c_uint::MAX, 0) == 0;
        if !done {
            for other in 0..1024 {
                if other != fd {
                    libc::close(other);
                }
            }
        }
    }
    let mut groups: Vec<i32> = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 512];
    let dismissed = loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break false;
        }
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break false;
        }
        let mut done = false;
        for &b in &buf[..n as usize] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if text == "done" {
                done = true;
            } else if let Some(pg) = text.strip_prefix('+').and_then(|x| x.parse().ok()) {
                groups.push(pg);
            } else if let Some(pg) = text.strip_prefix('-').and_then(|x| x.parse::<i32>().ok()) {
                groups.retain(|g| *g != pg);
            }
        }
        if done {
            break true;
        }
    };
    if !dismissed {
        groups.extend(
            table
                .iter()
                .map(|slot| slot.load(Ordering::SeqCst))
                .filter(|&pg| pg > 0),
        );
        for &pg in &groups {
            signal(pg, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(2);
        while groups.iter().any(|&g| alive(g)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &pg in &groups {
            signal(pg, libc::SIGKILL);
        }
    }
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_stable_and_none_for_no_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn drain_stops_a_child_that_ignores_sigterm() {
        use std::os::unix::process::CommandExt;
        // The leader exits at once and leaves a grandchild that ignores SIGTERM.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sh -c 'trap \"\" TERM; while :; do sleep 0.05; done' & exit 0",
            ])
            .process_group(0)
            .spawn()
            .unwrap();
        let pg = child.id() as i32;
        child.wait().unwrap();
        assert!(alive(pg), "the grandchild is still in the group");
        assert!(drain(pg, Duration::from_millis(200)));
        assert!(!alive(pg));
        assert!(!drain(pg, Duration::from_millis(200)));
    }
}
