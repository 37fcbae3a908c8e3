//! The threads that apply a group's shards beside the processing thread, started once and kept.
//!
//! A thread started for every group (as `std::thread::scope` does) cost, every group, its start,
//! a fresh stack and a fresh allocator heap — pages the kernel has to zero again each time. These
//! threads wait for work instead. A call still borrows what it works on, like a scoped thread:
//! [`run`] returns only once every job it handed out has finished or been dropped.

use parking_lot::{Condvar, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

/// A job as a worker receives it. Dropping it (run or not) counts its call's latch down, after
/// the job itself is gone: nothing the job borrowed is touched once the latch reaches zero.
struct Task {
    job: Option<Box<dyn FnOnce() + Send + 'static>>,
    latch: Arc<Latch>,
}

impl Drop for Task {
    fn drop(&mut self) {
        drop(self.job.take());
        self.latch.count_down();
    }
}

/// How many of a call's jobs have not yet finished.
struct Latch {
    left: Mutex<usize>,
    zero: Condvar,
}

impl Latch {
    fn count_down(&self) {
        let mut left = self.left.lock();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.zero.notify_all();
        }
    }

    fn wait(&self) {
        let mut left = self.left.lock();
        while *left > 0 {
            self.zero.wait(&mut left);
        }
    }
}

/// The pool: one queue, as many threads as the largest call has needed.
struct Pool {
    queue: mpsc::Sender<Task>,
    /// Shared by the threads; each takes the next task.
    tasks: Arc<Mutex<mpsc::Receiver<Task>>>,
    /// Threads started so far (they never stop: they wait on the queue).
    started: Mutex<usize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (queue, tasks) = mpsc::channel();
        Pool {
            queue,
            tasks: Arc::new(Mutex::new(tasks)),
            started: Mutex::new(0),
        }
    })
}

impl Pool {
    /// Starts threads until `n` run (or one cannot be started); returns how many run.
    fn grow_to(&self, n: usize) -> usize {
        let mut started = self.started.lock();
        while *started < n {
            let tasks = self.tasks.clone();
            let spawned = std::thread::Builder::new()
                .name("forewarn-apply".into())
                .spawn(move || loop {
                    // The lock is held only while taking a task, not while running it.
                    let next = tasks.lock().recv();
                    match next {
                        Ok(mut task) => {
                            if let Some(job) = task.job.take() {
                                job();
                            }
                        }
                        Err(_) => return,
                    }
                });
            match spawned {
                Ok(_) => *started += 1,
                Err(e) => {
                    tracing::debug!("apply thread not started ({e}): its shards run in turn");
                    break;
                }
            }
        }
        *started
    }
}

/// The job with its borrows' lifetime erased, to travel through the pool's queue.
fn erase<'a>(job: Box<dyn FnOnce() + Send + 'a>) -> Box<dyn FnOnce() + Send + 'static> {
    // SAFETY: only the lifetime changes (the same fat pointer). [`run`], the only caller, does
    // not return (nor unwind) before its latch is zero, and every task handed to the queue counts
    // the latch down when dropped, after dropping its job, whether a worker ran it or the queue
    // dropped it unrun: no job, run or not, outlives what it borrows (the job's own captures and
    // the result slot on `run`'s stack).
    unsafe {
        std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Box<dyn FnOnce() + Send + 'static>>(
            job,
        )
    }
}

/// Runs `jobs` on the pool's threads and `mine` on this one, and returns their results in the
/// order given (`mine` first). What no thread can take (none could be started) runs here after
/// `mine`. A panic in any of them is resumed here once all have finished.
pub(super) fn run<'env, R: Send + 'env>(
    mine: impl FnOnce() -> R,
    jobs: Vec<Box<dyn FnOnce() -> R + Send + 'env>>,
) -> Vec<R> {
    let pool = pool();
    let threads = pool.grow_to(jobs.len());
    let n = jobs.len();
    let slots: Vec<Mutex<Option<std::thread::Result<R>>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    let latch = Arc::new(Latch {
        left: Mutex::new(0),
        zero: Condvar::new(),
    });
    let mut here = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let slot = &slots[i];
        let wrapped: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            *slot.lock() = Some(catch_unwind(AssertUnwindSafe(job)));
        });
        if i >= threads {
            here.push(wrapped);
            continue;
        }
        let job = erase(wrapped);
        *latch.left.lock() += 1;
        let task = Task {
            job: Some(job),
            latch: latch.clone(),
        };
        if let Err(back) = pool.queue.send(task) {
            // No thread listens: this thread runs it (the task's drop counts the latch down).
            let mut task = back.0;
            if let Some(job) = task.job.take() {
                job();
            }
        }
    }
    let own = catch_unwind(AssertUnwindSafe(mine));
    for job in here {
        job();
    }
    latch.wait();
    let mut out = Vec::with_capacity(n + 1);
    let mut panicked = None;
    match own {
        Ok(r) => out.push(r),
        Err(p) => panicked = Some(p),
    }
    for slot in slots {
        match slot.into_inner() {
            Some(Ok(r)) => out.push(r),
            Some(Err(p)) => {
                panicked.get_or_insert(p);
            }
            // Dropped unrun: cannot happen while the pool's threads live (they never stop).
            None => {}
        }
    }
    if let Some(p) = panicked {
        std::panic::resume_unwind(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_borrow_and_change_what_the_caller_owns_and_return_in_order() {
        let mut parts: Vec<Vec<u64>> = (0..4).map(|i| vec![i; 1000]).collect();
        let step = 3u64;
        for round in 1..=50u64 {
            let (first, rest) = parts.split_first_mut().expect("four parts");
            let jobs: Vec<Box<dyn FnOnce() -> u64 + Send + '_>> = rest
                .iter_mut()
                .map(|p| {
                    let step = &step;
                    Box::new(move || {
                        p.iter_mut().for_each(|x| *x += step);
                        p.iter().sum::<u64>()
                    }) as Box<dyn FnOnce() -> u64 + Send + '_>
                })
                .collect();
            let sums = run(
                || {
                    first.iter_mut().for_each(|x| *x += step);
                    first.iter().sum::<u64>()
                },
                jobs,
            );
            let want: Vec<u64> = (0..4).map(|i| (i + round * step) * 1000).collect();
            assert_eq!(sums, want, "round {round}");
        }
    }

    #[test]
    fn a_panic_in_a_job_reaches_the_caller_after_every_job_finished() {
        let finished = std::sync::atomic::AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let jobs: Vec<Box<dyn FnOnce() + Send + '_>> = vec![
                Box::new(|| panic!("a shard failed")),
                Box::new(|| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }),
            ];
            run(|| (), jobs)
        }));
        assert!(caught.is_err());
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The pool still works afterwards.
        let jobs: Vec<Box<dyn FnOnce() -> u8 + Send>> = vec![Box::new(|| 2), Box::new(|| 3)];
        assert_eq!(run(|| 1, jobs), vec![1, 2, 3]);
    }
}
