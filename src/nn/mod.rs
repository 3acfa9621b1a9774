//! Hand-written CPU kernels used by every network.
//!
//! candle's generic CPU convolution is 10-50x slower than the arithmetic needs for the small,
//! mostly depthwise layers of our networks, so convolution (with bias and activation fused) runs
//! through [`conv::FusedConv2d`], a candle `CustomOp1`. Everything else stays plain candle.

pub mod conv;

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Caps the thread pools of rayon and candle (element-wise ops) at `n` threads by setting
/// `RAYON_NUM_THREADS` when the caller has not set it.
///
/// Call at the very start of `main`, before any other thread exists: changing the environment
/// while other threads may read it is a data race.
pub fn limit_thread_pools_at_startup(n: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
}

/// Sets how many threads the kernels may use (1 = single-threaded, the default).
pub fn set_num_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// The number of threads the kernels may use.
pub fn num_threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    match num_threads() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}
