//! Pointwise (1x1) convolution of many input channels, with AVX-512F: output channels along the
//! vector lanes.
//!
//! Above 128 input channels, `gemm` ran our layers (the direct kernel of [`super::pointwise_avx2`]
//! is slower there), and on the 14x14 and 7x7 maps of the deep layers it lost to onnxruntime
//! (1.1-1.4x its time per layer): it repacks the weights on every call, and its tiles of 64
//! positions run part-empty on small maps. Here the weights are packed once, at load, in panels
//! of [`PANEL`] output channels (for each input channel, the panel's 16 weights, contiguous). A
//! tile keeps the sums of up to 3 panels by 7 positions (or 2 by 12, where 12 divides the map
//! better) in 21-24 registers: per input channel, one vector load of weights per panel, then
//! one broadcast input per position, each feeding one multiply-add per panel. The weights of a
//! 7x7 layer are read once per tile from L2 and were cold the first time (they are 0.6-1.2 MiB
//! each), so the tiles prefetch them [`PREFETCH_AHEAD`] ahead: without it, the 7x7 projections
//! took 1.20-1.34x `gemm`'s time, with it 0.93-0.97x. The sums are channel-major in registers while the
//! output is position-major per channel, so each panel's sums are transposed in registers
//! (16x16, 64 shuffles) and leave as one row of positions per output channel, with bias,
//! shortcut and activation applied there (a gather from a buffer instead was far slower).
//!
//! There is no AVX2 build: one with panels of 8, tiles of 2 panels by 6 positions and 8x8
//! transposes (bench --layers of the `--no-default-features` build, 5 alternating rounds on
//! Zen 5) was level with `gemm`'s AVX2 kernels above 128 input channels (0.96-1.05x) and
//! 1.04-1.38x slower from 33 to 128 (shorter sums for the same transposition, I assume).
//!
//! Each output sums its input channels in order, one fused multiply-add each, from zero; then
//! the shortcut (if any) and the bias are added: the same steps for every tile shape, so
//! splitting the output channels between threads (at multiples of [`PANEL`]) changes no value.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::depthwise_avx2::Vector;
use super::pointwise_avx2::MAX_INPUT_CHANNELS_512;
use super::Epilogue;

/// Output channels per panel (one 512-bit vector).
pub(super) const PANEL: usize = 16;

/// Whether this kernel runs pointwise layers of `in_channels` to `out_channels`: those the
/// direct kernel leaves to `gemm` (more than [`MAX_INPUT_CHANNELS_512`] input channels), on
/// CPUs with AVX-512F, whose output channels fill whole panels, except expansions to 4 or more
/// times as many channels. Measured against `gemm` (`bench --layers`, alternating, Zen 5):
/// - expansions (the mask classifier's 160->960 at 7x7 took 1.06-1.12x `gemm`'s time,
///   320->1280 1.03-1.08x, where 960->160 took 0.93-0.96x; my guess, not measured: the
///   transposition, paid per output, weighs more against their short sums);
/// - the one other layer that was slower, the mask classifier's 144->24 at 56x56, has a
///   half-empty second panel (and 1.8 MiB of input): 1.22x read in place, 1.70x with its input
///   copied in blocks of positions.
pub(super) fn runs(in_channels: usize, out_channels: usize) -> bool {
    in_channels > MAX_INPUT_CHANNELS_512
        && out_channels.is_multiple_of(PANEL)
        && out_channels < 4 * in_channels
        && super::avx512f()
}

/// Floats ahead of the weights being read that the tiles prefetch: 64 input channels of a panel
/// (32 did as well).
const PREFETCH_AHEAD: usize = 64 * PANEL;

/// A pointwise layer's `m x k` weights in panels: panel `j` holds, for each input channel `i`,
/// the weights of output channels `16j..16j + 16` (zero past the last one).
#[derive(Debug, Clone)]
pub(super) struct Panels {
    data: Vec<f32>,
    k: usize,
    m: usize,
}

impl Panels {
    /// Packs the row-major `m x k` `weight`.
    pub(super) fn new(weight: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(weight.len(), m * k);
        let mut data = vec![0.0; m.div_ceil(PANEL) * k * PANEL];
        for (c, row) in weight.chunks_exact(k).enumerate() {
            let panel = &mut data[c / PANEL * k * PANEL..][..k * PANEL];
            for (i, &w) in row.iter().enumerate() {
                panel[i * PANEL + c % PANEL] = w;
            }
        }
        Self { data, k, m }
    }
}

/// `dst[c][p] = act(sum_i w[c][i] * src[i][p] (+ dst[c][p]) + bias_c)` for output channels
/// `channels` (their rows in `dst`, `n` apart; `epilogues` theirs) and the `n` positions of
/// `src` (rows of `n`).
///
/// # Safety
/// The CPU must support AVX-512F. With `accumulate`, the values of `dst` must be initialised.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn convolve(
    panels: &Panels,
    channels: Range<usize>,
    epilogues: &[Epilogue],
    src: &[f32],
    n: usize,
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
) {
    let m = channels.len();
    assert!(channels.start.is_multiple_of(PANEL) && channels.end <= panels.m && n > 0);
    assert!(epilogues.len() == m && src.len() >= panels.k * n && dst.len() >= m * n);
    let (first, layer) = (channels.start / PANEL, (src, n, dst, accumulate));
    // SAFETY: as checked.
    unsafe {
        if n.div_ceil(7) * 7 * 12 <= n.div_ceil(12) * 12 * 7 {
            tiles::<3, 7>(panels, first, epilogues, layer)
        } else {
            tiles::<2, 12>(panels, first, epilogues, layer)
        }
    }
}

/// [`convolve`] in tiles of up to `P` panels by `R` positions, from panel `first`.
#[inline(always)]
unsafe fn tiles<const P: usize, const R: usize>(
    panels: &Panels,
    first: usize,
    epilogues: &[Epilogue],
    (src, n, dst, accumulate): (&[f32], usize, &mut [MaybeUninit<f32>], bool),
) {
    let k = panels.k;
    let m = epilogues.len();
    // The last, partial tile of positions reads its inputs from a copy padded to a whole tile.
    let full = n / R * R;
    let mut tail = vec![0f32; if full < n { k * R } else { 0 }];
    for (row, source) in tail.chunks_exact_mut(R).zip(src.chunks_exact(n)) {
        row[..n - full].copy_from_slice(&source[full..]);
    }
    for c in (0..m).step_by(P * PANEL) {
        let count = (m - c).min(P * PANEL);
        let tile = Tile {
            weights: panels.data[(first + c / PANEL) * k * PANEL..].as_ptr(),
            k,
            epilogues: &epilogues[c..c + count],
            dst: dst[c * n..].as_mut_ptr().cast(),
            dst_stride: n,
            accumulate,
        };
        for p in (0..n).step_by(R) {
            let (inputs, stride) = if p < full {
                (src[p..].as_ptr(), n)
            } else {
                (tail.as_ptr(), R)
            };
            let positions = R.min(n - p);
            // SAFETY: rows `0..k` of `inputs` hold a whole tile of positions; the panels hold
            // `count` channels from here; the tile writes rows `0..count` of `dst` at
            // `p..p + positions`.
            unsafe {
                match count.div_ceil(PANEL) {
                    3 => tile.sums::<3, R>(inputs, stride, p, positions),
                    2 => tile.sums::<2, R>(inputs, stride, p, positions),
                    _ => tile.sums::<1, R>(inputs, stride, p, positions),
                }
            }
        }
    }
}

/// The operands of the tiles of up to 3 panels from one output channel.
struct Tile<'a> {
    /// The first panel's weights; each next one follows `k * PANEL` floats on.
    weights: *const f32,
    k: usize,
    /// Of the tile's output channels (up to 3 panels).
    epilogues: &'a [Epilogue],
    /// Row of the tile's first output channel.
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
}

impl Tile<'_> {
    /// Outputs at positions `p..p + positions` of `P` panels, reading the inputs of position
    /// `p + j` from `inputs[i * stride + j]`.
    #[inline(always)]
    unsafe fn sums<const P: usize, const R: usize>(
        &self,
        inputs: *const f32,
        stride: usize,
        p: usize,
        positions: usize,
    ) {
        // SAFETY: as in `convolve`.
        unsafe {
            let mut sums = [[_mm512_setzero_ps(); R]; P];
            let mut weights = self.weights;
            let mut x = inputs;
            for _ in 0..self.k {
                let mut w = [_mm512_setzero_ps(); P];
                for (panel, w) in w.iter_mut().enumerate() {
                    let at = weights.add(panel * self.k * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_AHEAD).cast());
                    *w = _mm512_loadu_ps(at);
                }
                for j in 0..R {
                    let input = _mm512_set1_ps(*x.add(j));
                    for (sums, &w) in sums.iter_mut().zip(&w) {
                        sums[j] = _mm512_fmadd_ps(w, input, sums[j]);
                    }
                }
                weights = weights.add(PANEL);
                x = x.add(stride);
            }
            let lanes = (1u16 << positions) - 1;
            for (panel, sums) in sums.iter().enumerate() {
                let mut rows = [_mm512_setzero_ps(); PANEL];
                rows[..R].copy_from_slice(sums);
                let columns = transpose(rows);
                let first = panel * PANEL;
                let count = self.epilogues.len().saturating_sub(first).min(PANEL);
                for (c, epilogue) in self.epilogues[first..first + count].iter().enumerate() {
                    let mut value = columns[c];
                    let out = self.dst.add((first + c) * self.dst_stride + p);
                    if self.accumulate {
                        value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(lanes, out));
                    }
                    value = _mm512_add_ps(value, _mm512_set1_ps(epilogue.bias))
                        .activate(_mm512_set1_ps(epilogue.slope), _mm512_set1_ps(epilogue.max));
                    _mm512_mask_storeu_ps(out, lanes, value);
                }
            }
        }
    }
}

/// The 16x16 transpose of `rows`: lane `j` of the result's vector `c` is lane `c` of `rows[j]`.
#[inline(always)]
unsafe fn transpose(rows: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: the caller's CPU has AVX-512F.
    unsafe {
        // Pairs of rows interleaved within 128-bit blocks: `a[2i]` holds columns 0, 1, 4, 5, 8,
        // 9, 12, 13 of rows 2i and 2i + 1, `a[2i + 1]` the others.
        let mut a = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
        }
        // `b[4g + q]`: rows 4g..4g + 4 of columns q, q + 4, q + 8, q + 12, one per block.
        let mut b = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (lo, hi) = (_mm512_castps_pd(a[4 * g]), _mm512_castps_pd(a[4 * g + 2]));
            b[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
            b[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
            let (lo, hi) = (
                _mm512_castps_pd(a[4 * g + 1]),
                _mm512_castps_pd(a[4 * g + 3]),
            );
            b[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
            b[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
        }
        // Column q + 4L gathers block L of b[q], b[4 + q], b[8 + q], b[12 + q].
        let mut columns = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let low = _mm512_shuffle_f32x4::<0x44>(b[q], b[4 + q]);
            let high = _mm512_shuffle_f32x4::<0xEE>(b[q], b[4 + q]);
            let low2 = _mm512_shuffle_f32x4::<0x44>(b[8 + q], b[12 + q]);
            let high2 = _mm512_shuffle_f32x4::<0xEE>(b[8 + q], b[12 + q]);
            columns[q] = _mm512_shuffle_f32x4::<0x88>(low, low2);
            columns[q + 4] = _mm512_shuffle_f32x4::<0xDD>(low, low2);
            columns[q + 8] = _mm512_shuffle_f32x4::<0x88>(high, high2);
            columns[q + 12] = _mm512_shuffle_f32x4::<0xDD>(high, high2);
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::super::pointwise_avx2::tests::{epilogue, value};
    use super::*;

    /// The kernel against the same steps in scalar code (`f32::mul_add` rounds as the vector
    /// FMA does), so every value must match bit for bit: 1 to 3 panels per tile with the last
    /// one partial, both tile shapes (7 and 12 positions) with and without a partial last
    /// tile, channel ranges starting past the first panel, and a shortcut.
    #[test]
    fn sums_as_the_scalar_steps() {
        if !super::super::avx512f() {
            return;
        }
        for (k, m, n, first) in [
            (129, 1, 1, 0),
            (130, 17, 7, 0),
            (144, 24, 49, 0),
            (200, 48, 13, 16),
            (160, 50, 196, 0),
            (300, 33, 24, 32),
            (257, 64, 25, 16),
            (136, 96, 80, 48),
        ] {
            let weight: Vec<f32> = (0..m * k).map(|i| value(1, i)).collect();
            let panels = Panels::new(&weight, m, k);
            let src: Vec<f32> = (0..k * n).map(|i| value(2, i) * 4.0).collect();
            let epilogues: Vec<Epilogue> = (first..m).map(epilogue).collect();
            for accumulate in [false, true] {
                let start: Vec<f32> = (0..(m - first) * n).map(|i| value(4, i)).collect();
                let mut dst: Vec<MaybeUninit<f32>> =
                    start.iter().map(|&v| MaybeUninit::new(v)).collect();
                // SAFETY: the CPU has AVX-512F (checked above); `dst` is initialised.
                unsafe { convolve(&panels, first..m, &epilogues, &src, n, &mut dst, accumulate) };
                for c in first..m {
                    for p in 0..n {
                        let at = (c - first) * n + p;
                        // SAFETY: initialised above.
                        let got = unsafe { dst[at].assume_init() };
                        let sum = (0..k)
                            .fold(0.0, |sum, i| weight[c * k + i].mul_add(src[i * n + p], sum));
                        let sum = if accumulate { sum + start[at] } else { sum };
                        let epilogue = epilogues[c - first];
                        let want = epilogue.activate(sum + epilogue.bias);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "k {k} m {m} n {n} accumulate {accumulate}: channel {c} position {p}"
                        );
                    }
                }
            }
        }
    }
}
