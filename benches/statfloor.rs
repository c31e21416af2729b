//! The stat floor of a no-op status: list every folder under DIR and `stat` every entry
//! (relative to its open folder, as `DirEntry::metadata` does on Linux), on all cores, and
//! nothing else. No tool that must look at every file can be faster on the same files;
//! `benches/run.sh` times it beside `pipe status` (W1, W6).
//!
//!   rustc -O benches/statfloor.rs -o statfloor && ./statfloor DIR
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

struct Queue {
    dirs: Mutex<(Vec<PathBuf>, usize)>, // folders to list, folders being listed
    ready: Condvar,
}

fn main() {
    let root = std::env::args().nth(1).expect("usage: statfloor DIR");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let q = Arc::new(Queue {
        dirs: Mutex::new((vec![PathBuf::from(root)], 0)),
        ready: Condvar::new(),
    });
    let files = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (q, files) = (q.clone(), files.clone());
            std::thread::spawn(move || {
                loop {
                    let dir = {
                        let mut g = q.dirs.lock().unwrap();
                        loop {
                            if let Some(d) = g.0.pop() {
                                g.1 += 1;
                                break d;
                            }
                            if g.1 == 0 {
                                q.ready.notify_all();
                                return;
                            }
                            g = q.ready.wait(g).unwrap();
                        }
                    };
                    let mut found = Vec::new();
                    if let Ok(rd) = std::fs::read_dir(&dir) {
                        for e in rd.flatten() {
                            if let Ok(m) = e.metadata() {
                                if m.is_dir() {
                                    found.push(e.path());
                                } else {
                                    files.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    let mut g = q.dirs.lock().unwrap();
                    g.0.extend(found);
                    g.1 -= 1;
                    q.ready.notify_all();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    println!("{}", files.load(Ordering::Relaxed));
}
