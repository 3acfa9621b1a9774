//! Two threads on one request. The kernels split large layers into two halves with
//! `rayon::join` (see `conv`); a half is only worth handing over if another thread is awake to
//! take it at once, and rayon's idle workers go to sleep after a few dozen yields, while a
//! layer takes 10 to 500 µs. So the pipeline runs its stages through [`join_helping`] or
//! [`with_helper`], where a thread with nothing left to do keeps taking pending halves
//! (`rayon::yield_now`) until the other is done.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `a` and `b` on two threads of rayon's pool, like `rayon::join`, but whichever finishes
/// first then runs the pool's pending work (the other's halves) until both are done. With a
/// one-thread pool, runs `a` then `b`.
pub fn join_helping<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    if rayon::current_num_threads() < 2 {
        return (a(), b());
    }
    let (a_done, b_done) = (AtomicBool::new(false), AtomicBool::new(false));
    rayon::join(
        || finish_then_help(a, &a_done, &b_done),
        || finish_then_help(b, &b_done, &a_done),
    )
}

/// Runs `f` with a second thread of the pool taking its halves (see [`join_helping`]).
pub fn with_helper<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    join_helping(f, || ()).0
}

/// Runs `f`, marks `done` (also if `f` panics), then runs pending pool work, spinning in
/// between, until `other` is done.
fn finish_then_help<R>(f: impl FnOnce() -> R, done: &AtomicBool, other: &AtomicBool) -> R {
    struct MarkDone<'a>(&'a AtomicBool);
    impl Drop for MarkDone<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let result = {
        let _mark = MarkDone(done);
        f()
    };
    while !other.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    fn busy(micros: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(micros) {
            std::hint::spin_loop();
        }
    }

    /// Under `with_helper`, the second thread takes halves the first offers with `rayon::join`
    /// (within 2 s, however slowly the helper is scheduled), and each half runs once.
    #[test]
    fn the_helper_takes_halves() {
        let (seconds, elsewhere) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut runs = 0;
        pool(2).install(|| {
            with_helper(|| {
                let here = std::thread::current().id();
                let start = Instant::now();
                while runs < 200
                    || (elsewhere.load(Ordering::Relaxed) == 0 && start.elapsed().as_secs() < 2)
                {
                    runs += 1;
                    rayon::join(
                        || busy(50),
                        || {
                            seconds.fetch_add(1, Ordering::Relaxed);
                            if std::thread::current().id() != here {
                                elsewhere.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                    );
                }
            })
        });
        assert_eq!(seconds.into_inner(), runs);
        assert!(
            elsewhere.into_inner() > 0,
            "no half ran on the helping thread"
        );
    }

    /// A side that panics panics the caller once the other side is done; the pool survives.
    #[test]
    fn a_panicking_side_reaches_the_caller() {
        let pool = pool(2);
        for panicking_first in [true, false] {
            let caught = pool.install(|| {
                panic::catch_unwind(|| {
                    let side = |panics: bool| {
                        move || {
                            busy(200);
                            assert!(!panics, "this side panics");
                        }
                    };
                    join_helping(side(panicking_first), side(!panicking_first))
                })
            });
            assert!(caught.is_err());
        }
        assert_eq!(pool.install(|| join_helping(|| 1, || 2)), (1, 2));
    }

    /// With one thread, both sides run in order on the caller's.
    #[test]
    fn one_thread_runs_both_sides_in_order() {
        let here = std::thread::current().id();
        let order = std::sync::Mutex::new(Vec::new());
        pool(1).install(|| {
            let record = |n| {
                let order = &order;
                move || {
                    let on = std::thread::current().id();
                    order.lock().unwrap().push(n);
                    on
                }
            };
            let (a, b) = join_helping(record(1), record(2));
            assert_eq!(a, b);
            assert_ne!(a, here, "ran on the pool's thread");
        });
        assert_eq!(order.into_inner().unwrap(), vec![1, 2]);
    }
}
