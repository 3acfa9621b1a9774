//! Pointwise (1x1) convolution of few input channels, with AVX2 and FMA.
//!
//! With 32 input channels or fewer, each output is a short sum, and `gemm`'s packing and the
//! loads and stores of its accumulator tiles weigh as much as the arithmetic: FaceMesh's
//! 16->16 layers at 96x96 ran at 55 GFLOP/s on `gemm`'s AVX-512 kernels.
//!
//! This kernel takes the positions in blocks. It copies the block's columns of every input row
//! into a contiguous scratch block: read in place, the rows of a 96x96 map lie 36 KiB apart,
//! all in the same L1 sets, and evicted each other. Then, for each tile of [`TILE_CHANNELS`]
//! output channels by `V` vectors of positions, it keeps the sums in registers; per input
//! channel it loads the tile's inputs once, broadcasts one weight per output channel, and does
//! one fused multiply-add per sum. Bias, shortcut and activation are applied in registers
//! before the one store.
//!
//! It is compiled twice. For AVX2 alone, tiles of 2 vectors of 8 positions: 3 (12 sums)
//! spilled sums to the stack, 16 registers being too few. On CPUs with AVX-512F (and the
//! `avx512` feature), with 512-bit vectors: 32 registers, each broadcast folded into its
//! multiply-add, tiles of 4 channels by 4 vectors of 16 positions (8 channels by 2 vectors
//! above 64 input channels), and layers of up to 128 input channels.
//!
//! Each output sums its input channels in order, one fused multiply-add each, starting from
//! zero (or from its shortcut value), then adds the bias: the same steps on every path, so
//! splitting the output channels between threads changes no value.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::depthwise_avx2::Vector;
use super::Epilogue;

/// Positions per AVX2 vector.
const LANES: usize = 8;
/// Positions per AVX-512 vector.
const LANES_512: usize = 16;
/// Output channels per tile.
const TILE_CHANNELS: usize = 4;
/// Floats of the scratch block (16 KiB, half of L1).
const SCRATCH_FLOATS: usize = 4096;
/// The most input channels the AVX2 build takes; `gemm` runs layers with more.
const MAX_INPUT_CHANNELS: usize = 32;
/// The most input channels the AVX-512 build takes.
pub(super) const MAX_INPUT_CHANNELS_512: usize = 128;
/// Above this many input channels, the AVX-512 build's tiles are 8 output channels by 2
/// vectors: a block of 64 positions of that many rows no longer fits in L1 beside the rest,
/// and 32 positions with 8 channels load as many values per multiply-add.
const WIDE_TILES_ABOVE: usize = 64;

/// Whether this kernel runs a pointwise layer of `in_channels` input channels and `positions`
/// outputs per channel (at least 8): at most
/// [`MAX_INPUT_CHANNELS`] on a CPU with AVX2 and FMA, at most [`MAX_INPUT_CHANNELS_512`] where
/// the AVX-512 build runs.
///
/// Timed in one process, alternating with `gemm` on the same data (Zen 4): against its AVX2
/// kernels the AVX2 build takes 0.46-0.62x the time for 16->16 at 96x96 and 0.82-0.92x for
/// the other layers of 8 to 32 input channels (level from 48 input channels, slower at 144).
/// On a Xeon with two 512-bit FMA units, the AVX-512 build against `gemm`'s AVX-512 kernels
/// (same kind of run, 300 calls each, medians): 0.55-0.75x up to 32 input channels (`liveness
/// bench --layers`), 0.84-0.86x for 64->64 at 30x40, 0.85-0.95x from 96 to 128 input channels
/// (1.15x for 128->512 on 25 and 64 positions); from 144, level to 1.6x slower.
pub(super) fn runs(in_channels: usize, positions: usize) -> bool {
    // One position (the squeeze-excitation layers' 1x1 maps) took 2-3x `gemm`'s time at 128
    // input channels: the scratch block and the masked vectors are all overhead there.
    positions >= LANES
        && (in_channels <= MAX_INPUT_CHANNELS
            || (in_channels <= MAX_INPUT_CHANNELS_512 && super::avx512f()))
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// One pointwise layer's operands: `dst[c][p] = act(sum_i weight[c][i] * src[i][p] + bias_c)`
/// for the `m = epilogues.len()` output channels and `n` positions; with `accumulate`,
/// `dst[c][p]`'s value is added before the activation. `weight` is `m x k`, row-major; rows of
/// `dst` are `dst_stride` apart.
pub(super) struct Operands<'a> {
    pub(super) weight: &'a [f32],
    pub(super) k: usize,
    pub(super) epilogues: &'a [Epilogue],
    pub(super) n: usize,
    pub(super) src: Source<'a>,
    pub(super) dst_stride: usize,
    pub(super) accumulate: bool,
}

/// Where input row `i`'s value at position `p` is.
pub(super) enum Source<'a> {
    /// `data[i * stride + p]`.
    Rows { data: &'a [f32], stride: usize },
    /// A convolution's taps read in place (see `FusedConv2d::im2col_gemm`): position `p` is
    /// output `(p / width, p % width)`, and row `i` is the tap whose value for output
    /// `(y, x)` is `data[starts[i] + y * pitch + x]`.
    Taps {
        data: &'a [f32],
        starts: &'a [usize],
        width: usize,
        pitch: usize,
    },
}

impl Source<'_> {
    /// Asserts that every value of rows `0..k` at positions `0..n` is inside the data.
    fn check(&self, k: usize, n: usize) {
        match *self {
            Source::Rows { data, stride } => {
                assert!(n <= stride && data.len() >= (k - 1) * stride + n)
            }
            Source::Taps {
                data,
                starts,
                width,
                pitch,
            } => {
                assert!(starts.len() >= k && width > 0 && width <= pitch);
                // The last position is the farthest from a row's start (`width <= pitch`).
                let last = (n - 1) / width * pitch + (n - 1) % width;
                assert!(starts[..k].iter().all(|&start| start + last < data.len()));
            }
        }
    }

    /// Copies positions `p0..p0 + row.len()` of input row `i` into `row`.
    fn copy(&self, i: usize, p0: usize, row: &mut [f32]) {
        match *self {
            Source::Rows { data, stride } => {
                row.copy_from_slice(&data[i * stride + p0..][..row.len()])
            }
            Source::Taps {
                data,
                starts,
                width,
                pitch,
            } => {
                let mut p = p0;
                let mut done = 0;
                while done < row.len() {
                    let (y, x) = (p / width, p % width);
                    let run = (width - x).min(row.len() - done);
                    row[done..done + run]
                        .copy_from_slice(&data[starts[i] + y * pitch + x..][..run]);
                    done += run;
                    p += run;
                }
            }
        }
    }
}

/// Writes the layer of `operands` into `dst`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`runs`]). With `accumulate`, the values of `dst` it
/// addresses must be initialised.
pub(super) unsafe fn convolve(operands: &Operands, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: the caller's promises; the AVX-512 build only where the CPU has AVX-512F.
    unsafe {
        if super::avx512f() {
            convolve_avx512(operands, dst)
        } else {
            convolve_avx2(operands, dst)
        }
    }
}

/// [`convolve`] compiled for AVX2 and FMA: tiles of 2 vectors of 8 positions.
///
/// # Safety
/// As for [`convolve`].
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_avx2(operands: &Operands, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: as for `convolve`.
    unsafe {
        blocks::<{ 2 * LANES }, TILE_CHANNELS>(operands, dst, |layer, c, columns, epilogues| {
            match epilogues.len() {
                TILE_CHANNELS => layer.channels::<__m256, TILE_CHANNELS, 2>(c, columns, epilogues),
                3 => layer.channels::<__m256, 3, 2>(c, columns, epilogues),
                2 => layer.channels::<__m256, 2, 2>(c, columns, epilogues),
                _ => layer.channels::<__m256, 1, 2>(c, columns, epilogues),
            }
        })
    }
}

/// [`convolve`] with 512-bit vectors (32 registers, broadcasts folded into the multiply-adds):
/// tiles of 4 channels by 4 vectors of 16 positions, or 8 by 2 above [`WIDE_TILES_ABOVE`]
/// input channels.
///
/// # Safety
/// As for [`convolve`], and the CPU must support AVX-512F.
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn convolve_avx512(operands: &Operands, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: as for `convolve`.
    unsafe {
        if operands.k > WIDE_TILES_ABOVE {
            blocks::<{ 2 * LANES_512 }, 8>(operands, dst, |layer, c, columns, epilogues| {
                match epilogues.len() {
                    8 => layer.channels::<__m512, 8, 2>(c, columns, epilogues),
                    7 => layer.channels::<__m512, 7, 2>(c, columns, epilogues),
                    6 => layer.channels::<__m512, 6, 2>(c, columns, epilogues),
                    5 => layer.channels::<__m512, 5, 2>(c, columns, epilogues),
                    4 => layer.channels::<__m512, 4, 2>(c, columns, epilogues),
                    3 => layer.channels::<__m512, 3, 2>(c, columns, epilogues),
                    2 => layer.channels::<__m512, 2, 2>(c, columns, epilogues),
                    _ => layer.channels::<__m512, 1, 2>(c, columns, epilogues),
                }
            })
        } else {
            blocks::<{ 4 * LANES_512 }, TILE_CHANNELS>(
                operands,
                dst,
                |layer, c, columns, epilogues| match epilogues.len() {
                    TILE_CHANNELS => {
                        layer.channels::<__m512, TILE_CHANNELS, 4>(c, columns, epilogues)
                    }
                    3 => layer.channels::<__m512, 3, 4>(c, columns, epilogues),
                    2 => layer.channels::<__m512, 2, 4>(c, columns, epilogues),
                    _ => layer.channels::<__m512, 1, 4>(c, columns, epilogues),
                },
            )
        }
    }
}

/// The body of [`convolve`]: copies each block of positions to the scratch block, then runs
/// `group(layer, c, columns, epilogues)` for each group of `GROUP` output channels from `c`. Blocks are a multiple of `TILE` positions (one tile's width), or the whole of `n`
/// rounded up to 16.
#[inline(always)]
unsafe fn blocks<const TILE: usize, const GROUP: usize>(
    operands: &Operands,
    dst: &mut [MaybeUninit<f32>],
    group: impl Fn(&Layer, usize, usize, &[Epilogue]),
) {
    let &Operands {
        weight,
        k,
        epilogues,
        n,
        ref src,
        dst_stride,
        accumulate,
    } = operands;
    let m = epilogues.len();
    assert!(m > 0 && k > 0 && n > 0);
    assert!(n <= dst_stride && weight.len() >= m * k);
    assert!(dst.len() >= (m - 1) * dst_stride + n);
    src.check(k, n);
    // Vectors are loaded whole from the scratch block; past a short last block's columns they
    // hold earlier values, whose sums are not stored.
    let block = (SCRATCH_FLOATS / k / TILE * TILE)
        .max(TILE)
        .min(n.next_multiple_of(LANES_512));
    let mut scratch = vec![0f32; block * k];
    for p0 in (0..n).step_by(block) {
        let columns = block.min(n - p0);
        for (i, row) in scratch.chunks_exact_mut(block).enumerate() {
            src.copy(i, p0, &mut row[..columns]);
        }
        let layer = Layer {
            weight: weight.as_ptr(),
            k,
            src: scratch.as_ptr(),
            src_stride: block,
            dst: dst[p0..].as_mut_ptr().cast(),
            dst_stride,
            accumulate,
        };
        // The tiles read rows `0..k` of the scratch block and write output rows `0..m` at
        // positions `p0..p0 + columns`: all within bounds.
        for c in (0..m).step_by(GROUP) {
            group(&layer, c, columns, &epilogues[c..(c + GROUP).min(m)]);
        }
    }
}

/// One block's operands as pointers (see [`convolve`]): `src` is the scratch block, rows
/// `src_stride` apart, and `dst` points at the block's first position.
struct Layer {
    weight: *const f32,
    k: usize,
    src: *const f32,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
}

impl Layer {
    /// Output channels `c..c + C` at the block's first `columns` positions: tiles of `N`
    /// vectors, then single vectors, the last one partial if the block ends inside it.
    #[inline(always)]
    unsafe fn channels<V: Vector, const C: usize, const N: usize>(
        &self,
        c: usize,
        columns: usize,
        epilogues: &[Epilogue],
    ) {
        // SAFETY: as in `convolve`.
        unsafe {
            let mut p = 0;
            while p + N * V::LANES <= columns {
                self.sums::<V, C, N>(c, p, epilogues, V::LANES);
                p += N * V::LANES;
            }
            while p + V::LANES <= columns {
                self.sums::<V, C, 1>(c, p, epilogues, V::LANES);
                p += V::LANES;
            }
            if p < columns {
                self.sums::<V, C, 1>(c, p, epilogues, columns - p);
            }
        }
    }

    /// Output channels `c..c + C` at positions `p..p + N * V::LANES` of the block, the last
    /// vector's outputs limited to its first `last` lanes.
    #[inline(always)]
    unsafe fn sums<V: Vector, const C: usize, const N: usize>(
        &self,
        c: usize,
        p: usize,
        epilogues: &[Epilogue],
        last: usize,
    ) {
        // SAFETY: as in `convolve`; the last vector's outputs past `last` are neither read nor
        // written.
        unsafe {
            let partial = |v: usize| v + 1 == N && last < V::LANES;
            let out = self.dst.add(c * self.dst_stride + p);
            let mut sums = [[V::splat(0.0); N]; C];
            if self.accumulate {
                for (row, sums) in sums.iter_mut().enumerate() {
                    let at = out.add(row * self.dst_stride);
                    for (v, sum) in sums.iter_mut().enumerate() {
                        let at = at.add(v * V::LANES);
                        *sum = if partial(v) {
                            V::load_masked(at, V::mask(|l| l < last))
                        } else {
                            V::load(at)
                        };
                    }
                }
            }
            let weights = self.weight.add(c * self.k);
            let mut inputs = self.src.add(p);
            for i in 0..self.k {
                let mut x = [V::splat(0.0); N];
                for (v, x) in x.iter_mut().enumerate() {
                    *x = V::load(inputs.add(v * V::LANES));
                }
                for (row, sums) in sums.iter_mut().enumerate() {
                    let w = V::splat(*weights.add(row * self.k + i));
                    for (sum, &x) in sums.iter_mut().zip(&x) {
                        *sum = V::fmadd(w, x, *sum);
                    }
                }
                inputs = inputs.add(self.src_stride);
            }
            for (row, (sums, &epilogue)) in sums.iter().zip(epilogues).enumerate() {
                let at = out.add(row * self.dst_stride);
                let bias = V::splat(epilogue.bias);
                let (slope, max) = (V::splat(epilogue.slope), V::splat(epilogue.max));
                for (v, &sum) in sums.iter().enumerate() {
                    let value = V::add(sum, bias).activate(slope, max);
                    if partial(v) {
                        value.store_part(at.add(v * V::LANES), last);
                    } else {
                        value.store(at.add(v * V::LANES));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// [`convolve_avx2`] or [`convolve_avx512`].
    type Kernel = unsafe fn(&Operands, &mut [MaybeUninit<f32>]);

    /// A deterministic value in [-1, 1) for index `i` of a stream `seed`.
    pub(in crate::nn::conv) fn value(seed: u64, i: usize) -> f32 {
        let x = (i as u64 ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Output channel `c`'s bias and activation in the kernels' tests: a bias from stream 3 and,
    /// by `c % 3`, ReLU, ReLU6 with a leak, or a plain clamp at 0.5.
    pub(in crate::nn::conv) fn epilogue(c: usize) -> Epilogue {
        Epilogue {
            bias: value(3, c),
            slope: [0.0, 0.25, 1.0][c % 3],
            max: [f32::INFINITY, 6.0, 0.5][c % 3],
        }
    }

    /// The kernel against the same steps in scalar code (`f32::mul_add` rounds as the vector
    /// FMA does), so every value must match bit for bit: tiles of 1 to 4 channels, full and
    /// masked vectors, blocks of the scratch with a short last one, strides longer than the
    /// rows, and a shortcut.
    #[test]
    fn sums_as_the_scalar_steps() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut kernels: Vec<(&str, Kernel)> = vec![("AVX2", convolve_avx2)];
        if is_x86_feature_detected!("avx512f") {
            kernels.push(("AVX-512", convolve_avx512));
        }
        for (name, kernel) in kernels {
            sum_shapes(name, kernel);
        }
    }

    fn sum_shapes(name: &str, kernel: Kernel) {
        for (k, m, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (8, 16, 17),
            (13, 3, 40),
            (16, 6, 300),
            (32, 9, 131),
            (32, 4, 8),
            (48, 3, 129),
            (64, 7, 300),
            (103, 6, 200),
            (128, 11, 70),
        ] {
            for accumulate in [false, true] {
                let (src_stride, dst_stride) = (n + 3, n + 5);
                let weight: Vec<f32> = (0..m * k).map(|i| value(1, i)).collect();
                let src: Vec<f32> = (0..k * src_stride).map(|i| value(2, i) * 4.0).collect();
                let epilogues: Vec<Epilogue> = (0..m).map(epilogue).collect();
                let start: Vec<f32> = (0..m * dst_stride).map(|i| value(4, i)).collect();
                let mut dst: Vec<MaybeUninit<f32>> =
                    start.iter().map(|&v| MaybeUninit::new(v)).collect();
                // SAFETY: the CPU has the kernel's features (checked by the caller); `dst` is
                // initialised.
                unsafe {
                    let operands = Operands {
                        weight: &weight,
                        k,
                        epilogues: &epilogues,
                        n,
                        src: Source::Rows {
                            data: &src,
                            stride: src_stride,
                        },
                        dst_stride,
                        accumulate,
                    };
                    kernel(&operands, &mut dst)
                };
                for c in 0..m {
                    for p in 0..dst_stride {
                        // SAFETY: initialised above.
                        let got = unsafe { dst[c * dst_stride + p].assume_init() };
                        let want = if p < n {
                            let init = if accumulate {
                                start[c * dst_stride + p]
                            } else {
                                0.0
                            };
                            let sum = (0..k).fold(init, |sum, i| {
                                weight[c * k + i].mul_add(src[i * src_stride + p], sum)
                            });
                            epilogues[c].activate(sum + epilogues[c].bias)
                        } else {
                            start[c * dst_stride + p]
                        };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{name}: k {k} m {m} n {n} accumulate {accumulate}: channel {c} position {p}"
                        );
                    }
                }
            }
        }
    }
}
