//! Hand-written CPU kernels used by every network.
//!
//! candle's generic CPU convolution is 10-50x slower than the arithmetic needs for the small,
//! mostly depthwise layers of our networks, so convolution (with bias and activation fused) runs
//! through [`conv::FusedConv2d`], a candle `CustomOp1`. Everything else stays plain candle.

pub mod conv;

/// Caps the thread pools of rayon and candle (element-wise ops) at `n` threads by setting
/// `RAYON_NUM_THREADS` when the caller has not set it. The kernels here are single-threaded; the
/// pipeline uses a second thread to run the gate beside the anti-spoof networks.
///
/// Call at the very start of `main`, before any other thread exists: changing the environment
/// while other threads may read it is a data race.
pub fn limit_thread_pools_at_startup(n: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
}
