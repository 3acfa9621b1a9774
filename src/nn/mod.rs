//! Hand-written CPU kernels used by every network.
//!
//! candle's generic CPU convolution is 10-50x slower than the arithmetic needs for the small,
//! mostly depthwise layers of our networks, so convolution (with bias and activation fused) runs
//! through [`conv::FusedConv2d`], a candle `CustomOp1`. Everything else stays plain candle.

pub mod conv;
pub mod parallel;

/// Sizes the thread pools at start-up, unless the caller set them: rayon's at `n` threads
/// (`RAYON_NUM_THREADS`; with two, the pipeline runs the gate beside the anti-spoof networks
/// and the kernels share large layers, see [`parallel`]) and candle's own element-wise pool at
/// 1 (`CANDLE_NUM_THREADS`). candle's ops on our tensor sizes are too small to share: with a
/// second candle worker, that worker spins after every op and takes the CPU the pipeline's
/// second thread needs.
///
/// Call at the very start of `main`, before any other thread exists: changing the environment
/// while other threads may read it is a data race.
pub fn limit_thread_pools_at_startup(n: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
