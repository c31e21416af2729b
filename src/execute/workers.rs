//! Threads that run jobs, reused from stage to stage: a build of 1,000 stages starts as many
//! threads as stages ever ran at once (restores take no `-j` unit, so that is not fixed in
//! advance), instead of a thread per stage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::Scope;

type Task<'scope, M> = Box<dyn FnOnce() -> M + Send + 'scope>;

pub struct Workers<'scope, 'env, M: Send + 'scope> {
    scope: &'scope Scope<'scope, 'env>,
    tasks: mpsc::Sender<Task<'scope, M>>,
    queue: Arc<Mutex<mpsc::Receiver<Task<'scope, M>>>>,
    /// Where each task's result goes.
    results: mpsc::Sender<M>,
    /// Workers waiting for a task and not yet promised one.
    idle: Arc<AtomicUsize>,
    /// Threads started so far.
    pub started: usize,
}

impl<'scope, 'env, M: Send + 'scope> Workers<'scope, 'env, M> {
    pub fn new(scope: &'scope Scope<'scope, 'env>, results: mpsc::Sender<M>) -> Self {
        let (tasks, queue) = mpsc::channel();
        Workers {
            scope,
            tasks,
            queue: Arc::new(Mutex::new(queue)),
            results,
            idle: Arc::new(AtomicUsize::new(0)),
            started: 0,
        }
    }

    /// Run `task` on an idle worker, or on a new one when none is idle; its result is sent
    /// to `results`. A worker counts itself idle before it sends the result, so the task the
    /// result lets start finds it.
    pub fn run(&mut self, task: impl FnOnce() -> M + Send + 'scope) {
        let promised = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !promised {
            let (queue, idle, results) =
                (self.queue.clone(), self.idle.clone(), self.results.clone());
            self.started += 1;
            self.scope.spawn(move || {
                loop {
                    let task = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok(task) = task else {
                        return; // the dispatcher is done
                    };
                    let m = task();
                    idle.fetch_add(1, Ordering::SeqCst);
                    if results.send(m).is_err() {
                        return;
                    }
                }
            });
        }
        // The receiving end lives as long as the workers that hold it.
        let _ = self.tasks.send(Box::new(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_task_at_a_time_needs_one_thread() {
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let mut w = Workers::new(s, tx);
            for i in 0..100 {
                w.run(move || i * 2);
                assert_eq!(rx.recv().unwrap(), i * 2);
            }
            assert_eq!(w.started, 1);
        });
    }

    #[test]
    fn tasks_at_once_get_a_thread_each() {
        let (tx, rx) = mpsc::channel();
        let gate = std::sync::Barrier::new(3);
        std::thread::scope(|s| {
            let mut w = Workers::new(s, tx);
            for i in 0..3 {
                let gate = &gate;
                // All three wait for each other: they finish only if they run side by side.
                w.run(move || {
                    gate.wait();
                    i
                });
            }
            let mut got: Vec<i32> = (0..3).map(|_| rx.recv().unwrap()).collect();
            got.sort();
            assert_eq!(got, vec![0, 1, 2]);
            assert_eq!(w.started, 3);
            // Now all three are idle: three more tasks start no thread.
            for i in 0..3 {
                w.run(move || i);
            }
            for _ in 0..3 {
                rx.recv().unwrap();
            }
            assert_eq!(w.started, 3);
        });
    }
}
