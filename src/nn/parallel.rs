//! Two threads on one request: the kernels split large layers in halves ([`join_halves`]), and
//! a second thread, spinning in [`join_helping`] or [`with_helper`], takes the second half.
//!
//! A half is offered in one global slot rather than through `rayon::join`: a layer takes 10 to
//! 500 µs, and a rayon worker waiting for a stolen half goes to sleep after a few dozen yields,
//! then wakes late (measured: RetinaFace twice as *slow* on two threads once its small layers
//! were split through rayon). Here the thread that offered a half spins until the half is done,
//! or takes it back if no thread has started it, so an offer never waits for a thread that is
//! busy elsewhere.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, PoisonError};

/// The half on offer, if any.
static OFFER: AtomicPtr<Offer> = AtomicPtr::new(ptr::null_mut());

/// A half offered to a helping thread. It lives on the offering thread's stack, and that thread
/// does not leave [`join_halves`] while another thread may still run it.
struct Offer {
    /// Runs the closure behind `data` (an `Option<B>`, taken once).
    run: unsafe fn(*mut ()),
    data: *mut (),
    done: AtomicBool,
    /// The payload if the half panicked on the helping thread, re-raised by the offering one.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Runs `a` here and `b` on a helping thread if one takes it while `a` runs, else `b` here
/// after `a` (always so in a one-thread pool). `b` must not call `join_halves` itself.
pub(crate) fn join_halves<A: FnOnce(), B: FnOnce() + Send>(a: A, b: B) {
    if rayon::current_num_threads() < 2 {
        a();
        return b();
    }
    let mut b = Some(b);
    let offer = Offer {
        run: run_offered::<B>,
        data: ptr::addr_of_mut!(b).cast(),
        done: AtomicBool::new(false),
        panic: Mutex::new(None),
    };
    let offered = ptr::addr_of!(offer).cast_mut();
    let published = OFFER
        .compare_exchange(
            ptr::null_mut(),
            offered,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok();
    if !published {
        // Another half is on offer: run both here.
        a();
        return (b.take().expect("not offered"))();
    }
    let settle = Settle { offer: &offer };
    a();
    if settle.take_back_or_wait() {
        (b.take().expect("taken back before it ran"))();
    } else if let Some(payload) = offer
        .panic
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        panic::resume_unwind(payload);
    }
}

/// # Safety
/// `data` is the `Option<B>` of an [`Offer`] this thread has just taken from [`OFFER`].
unsafe fn run_offered<B: FnOnce()>(data: *mut ()) {
    // SAFETY: the offering thread does not touch `data` until the offer is done.
    let b = unsafe { &mut *data.cast::<Option<B>>() };
    (b.take().expect("an offer runs once"))()
}

/// Ends an offer: takes it back from [`OFFER`] if no thread took it, else waits until it is
/// done. Also on unwinding, so that the offer never outlives the stack frame it is on.
struct Settle<'a> {
    offer: &'a Offer,
}

impl Settle<'_> {
    /// Settles the offer; `true` if it was taken back (not run).
    fn take_back_or_wait(self) -> bool {
        let taken_back = self.settle();
        std::mem::forget(self);
        taken_back
    }

    fn settle(&self) -> bool {
        let offered = ptr::from_ref(self.offer).cast_mut();
        let taken_back = OFFER
            .compare_exchange(
                offered,
                ptr::null_mut(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
        if !taken_back {
            while !self.offer.done.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
        taken_back
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Runs offered halves until `stop` is set.
fn help_until(stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        if OFFER.load(Ordering::Relaxed).is_null() {
            std::hint::spin_loop();
            continue;
        }
        let taken = OFFER.swap(ptr::null_mut(), Ordering::AcqRel);
        if taken.is_null() {
            continue;
        }
        // SAFETY: the offering thread keeps the offer alive until `done`, as it can no longer
        // take it back (it is no longer in `OFFER`).
        let offer = unsafe { &*taken };
        // SAFETY: the offer was just taken from `OFFER`, by this thread only.
        let ran = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (offer.run)(offer.data) }));
        if let Err(payload) = ran {
            *offer.panic.lock().unwrap_or_else(PoisonError::into_inner) = Some(payload);
        }
        offer.done.store(true, Ordering::Release);
    }
}

/// Runs `a` and `b` on two threads of rayon's pool, like `rayon::join`, but whichever finishes
/// first then takes the other's offered halves until both are done. With a one-thread pool,
/// runs `a` then `b`.
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

/// Runs `f` with a second thread of the pool taking its offered halves (see [`join_helping`]).
pub fn with_helper<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    join_helping(f, || ()).0
}

/// Runs `f`, marks `done` (also if `f` panics), then helps until `other` is done.
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
    help_until(other);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    fn two_threads() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    fn busy(micros: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(micros) {
            std::hint::spin_loop();
        }
    }

    /// Each half runs exactly once, and a helping thread takes second halves (within 2 s,
    /// however slowly the helper is scheduled).
    #[test]
    fn halves_run_once_and_are_shared() {
        let (firsts, seconds, elsewhere) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let mut runs = 0;
        two_threads().install(|| {
            with_helper(|| {
                let here = std::thread::current().id();
                let start = Instant::now();
                while runs < 200
                    || (elsewhere.load(Ordering::Relaxed) == 0 && start.elapsed().as_secs() < 2)
                {
                    runs += 1;
                    join_halves(
                        || {
                            busy(50);
                            firsts.fetch_add(1, Ordering::Relaxed);
                        },
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
        assert_eq!(firsts.into_inner(), runs);
        assert_eq!(seconds.into_inner(), runs);
        assert!(
            elsewhere.into_inner() > 0,
            "no half ran on the helping thread"
        );
    }

    /// A half that panics, here or on the helping thread, panics the caller; the pool survives.
    #[test]
    fn a_panicking_half_reaches_the_caller() {
        let pool = two_threads();
        for _ in 0..20 {
            let caught = pool.install(|| {
                with_helper(|| {
                    panic::catch_unwind(|| join_halves(|| busy(200), || panic!("second half")))
                })
            });
            let payload = caught.expect_err("the panic was lost");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"second half"));
        }
        let caught = pool.install(|| {
            with_helper(|| panic::catch_unwind(|| join_halves(|| panic!("first half"), || ())))
        });
        assert!(caught.is_err());
        assert_eq!(pool.install(|| join_helping(|| 1, || 2)), (1, 2));
    }

    /// Without a second thread, both halves run in order on the caller's.
    #[test]
    fn one_thread_runs_both_halves_in_order() {
        let order = Mutex::new(Vec::new());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            with_helper(|| {
                join_halves(
                    || order.lock().unwrap().push(1),
                    || order.lock().unwrap().push(2),
                )
            })
        });
        assert_eq!(order.into_inner().unwrap(), vec![1, 2]);
    }
}
