//! Process-wide signal counting: SIGINT, SIGTERM, SIGHUP (a lost terminal) and SIGQUIT
//! only bump a counter, which the build's dispatcher and a waiting workspace lock read.
//! Nothing else happens in a handler.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many of those signals this process has received.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Count these signals from now on instead of dying at once.
pub fn install() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
        // Safety: the handler only does an atomic increment, which is async-signal-safe.
        let _ = unsafe {
            signal_hook::low_level::register(sig, || {
                SIGNALS.fetch_add(1, Ordering::SeqCst);
            })
        };
    }
}

/// Signals received so far.
pub fn received() -> usize {
    SIGNALS.load(Ordering::SeqCst)
}
