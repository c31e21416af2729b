//! Hashing a big file through a memory map, as `b3sum` does (no copy out of the page cache:
//! twice the throughput of reading it on two cores), with the one danger of a map guarded:
//! a file cut shorter while it is mapped makes a read past its new end raise `SIGBUS`,
//! which would kill pipe.
//!
//! While a map is hashed its range is registered in a fixed table of atomics. pipe's
//! `SIGBUS` handler looks the faulting address up there: inside a registered range, it maps
//! zero pages over the rest of the range (`mmap` with `MAP_FIXED`, a system call and safe
//! in a signal handler), marks the range hit and returns, so the read is retried and sees
//! zeros. The hash is then thrown away and the caller is told the file shrank (an
//! `UnexpectedEof` error). A fault anywhere else restores the default action and raises the
//! signal again: the crash it would have been.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &TABLE {
        let (start, len) = (
            slot.start.load(Ordering::Acquire),
            slot.len.load(Ordering::Acquire),
        );
        if start != 0 && addr >= start && addr < start + len {
            let pg = page();
            let from = addr & !(pg - 1);
            let end = (start + len).div_ceil(pg) * pg;
            // SAFETY: [from, end) lies inside a live map registered by `hash`, which it
            // owns; zero pages replace the part of the file that is gone.
            unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
            }
            slot.hit.store(true, Ordering::Release);
            return;
        }
    }
    // Not a map being hashed: the default action (a crash, as without this handler).
    // SAFETY: signal and raise are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler of the SA_SIGINFO signature.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// A registered range; unregistered when dropped.
struct Registered(&'static Slot);

impl Registered {
    fn new(start: usize, len: usize) -> Option<Registered> {
        TABLE.iter().find_map(|slot| {
            slot.start
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
                .ok()?;
            slot.hit.store(false, Ordering::Release);
            slot.len.store(len, Ordering::Release);
            Some(Registered(slot))
        })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.len.store(0, Ordering::Release);
        self.0.start.store(0, Ordering::Release);
    }
}

/// The blake3 of `file` (of `len` bytes when mapped), hashed through a map on all cores;
/// `None` when it cannot be mapped (or every slot is taken), so the caller reads it instead.
/// `Some(Err(UnexpectedEof))` when the file shrank while it was hashed.
pub fn hash(file: &std::fs::File) -> Option<std::io::Result<blake3::Hash>> {
    hash_with(file, || {})
}

/// [`hash`], with `between` run after the file is mapped and before it is read (tests).
fn hash_with(
    file: &std::fs::File,
    between: impl FnOnce(),
) -> Option<std::io::Result<blake3::Hash>> {
    install();
    // SAFETY: the map is read only while registered, and a fault in it is caught above.
    let map = unsafe { memmap2::Mmap::map(file) }.ok()?;
    if map.is_empty() {
        return None;
    }
    let reg = Registered::new(map.as_ptr() as usize, map.len())?;
    between();
    let mut h = blake3::Hasher::new();
    h.update_rayon(&map);
    let hit = reg.0.hit.load(Ordering::Acquire);
    drop(reg);
    drop(map);
    Some(if hit {
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file shrank while it was hashed",
        ))
    } else {
        Ok(h.finalize())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_hashes_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(hash(&f).unwrap().unwrap(), blake3::hash(&bytes));
    }

    #[test]
    fn a_file_cut_short_while_mapped_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![7u8; 2 << 20]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let cut = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(4096)
                .unwrap()
        };
        let e = hash_with(&f, cut).unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        // The next map hashes normally.
        std::fs::write(&p, b"again").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(hash(&f).unwrap().unwrap(), blake3::hash(b"again"));
    }
}
