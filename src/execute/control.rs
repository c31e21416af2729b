//! What a running stage shares with the dispatcher: the process group to signal, the
//! attempt's deadline, and why it was stopped. Timeouts and interrupts are enforced from
//! outside through it, so waiting on a child is a plain blocking `wait`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Time between SIGTERM and SIGKILL for a stage's process group.
pub const GRACE: Duration = Duration::from_secs(5);

/// A stage's process group started or ended (all its processes gone).
pub enum GroupEvent {
    Started(i32),
    Ended(i32),
}

/// Shared between a running stage and the scheduler: the process group to signal, the
/// attempt's deadline, and why it was stopped.
#[derive(Default)]
pub struct Control {
    /// Told when a command's process group starts and ends (watchdog, running marker).
    pub on_group: Option<Box<dyn Fn(GroupEvent) + Send + Sync>>,
    pub pgid: AtomicI32,
    pub deadline: Mutex<Option<Instant>>,
    pub cancelled: AtomicBool,
    pub timed_out: AtomicBool,
    pub term_sent: Mutex<Option<Instant>>,
    /// Slurm job id of the current attempt, when the stage runs on Slurm.
    pub job_id: Mutex<Option<String>>,
}

impl Control {
    pub fn group(&self, e: GroupEvent) {
        if let Some(f) = &self.on_group {
            f(e);
        }
    }

    /// Start an attempt: its deadline (`None`: no timeout), nothing sent yet.
    pub fn arm(&self, limit: Option<Duration>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            limit.map(|t| Instant::now() + t);
        self.timed_out.store(false, Ordering::SeqCst);
        *self.term_sent.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The Slurm job id of the current attempt, if any.
    pub fn job_id(&self) -> Option<String> {
        self.job_id.lock().ok().and_then(|j| j.clone())
    }

    /// Sleep for `d` (a retry's backoff), waking early when cancelled; false if cancelled.
    pub fn sleep_unless_cancelled(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.cancelled.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
            );
        }
        !self.cancelled.load(Ordering::SeqCst)
    }

    /// SIGTERM the whole process group (first time), remembering when.
    pub fn terminate(&self) {
        let pg = self.pgid.load(Ordering::SeqCst);
        if pg > 0 {
            let mut t = self.term_sent.lock().unwrap_or_else(|e| e.into_inner());
            if t.is_none() {
                unsafe { libc::killpg(pg, libc::SIGTERM) };
                *t = Some(Instant::now());
            }
        }
    }
    pub fn kill(&self) {
        let pg = self.pgid.load(Ordering::SeqCst);
        if pg > 0 {
            unsafe { libc::killpg(pg, libc::SIGKILL) };
        }
    }
    /// Called on every scheduler tick: enforce the deadline and the grace period.
    pub fn tick(&self, grace: Duration) {
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = deadline
            && Instant::now() >= d
            && !self.timed_out.swap(true, Ordering::SeqCst)
        {
            self.terminate();
        }
        let sent = *self.term_sent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = sent
            && t.elapsed() >= grace
        {
            self.kill();
        }
    }
}
