//! 3x3 depthwise convolution, stride 1 or 2, read straight from the `NCHW` input with AVX2 and
//! FMA.
//!
//! Each output row is computed in chunks of 8 outputs, and each chunk in up to 3 output rows
//! at once: independent chains of multiply-adds, and each input row's columns loaded once for
//! every output row that uses it. A chunk loads its input columns with masked loads where it
//! reaches over the left or right edge of the row (the masked lanes read as the zero padding)
//! and with plain loads elsewhere; tap rows in the top or bottom padding read a row of zeros.
//! Stride 2 loads 16 consecutive columns and keeps the even or the odd ones, in the lane order
//! one in-lane shuffle gives; each sum is put in order once, before its store (a cross-lane
//! permute per load had made the 112x112 layer of the mask classifier shuffle-bound, 0.29-0.45
//! ms against 0.19-0.33 now). Nothing is copied: the phase planes of the portable kernel cost
//! more than the arithmetic on the small maps of the late layers. Bias and activation are
//! applied in registers.
//!
//! Each output sums `bias` then its 9 taps in row-major order, one fused multiply-add each (a
//! padded tap adds `tap * 0`), as the portable kernel does.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::Epilogue;

/// Lanes per AVX2 vector.
const LANES: usize = 8;

/// Whether this kernel runs a depthwise layer: a 3x3 kernel, stride 1 or 2, and a CPU with
/// AVX2 and FMA.
pub(super) fn runs(kernel: (usize, usize), stride: usize) -> bool {
    kernel == (3, 3)
        && matches!(stride, 1 | 2)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// A vector of `f32` lanes the row kernel sums in: `__m256` (AVX2 and FMA) or `__m512`
/// (AVX-512F). Every method requires a CPU with the vector's instruction set.
pub(super) trait Vector: Copy {
    /// Lanes per vector.
    const LANES: usize;
    /// Which lanes a masked load reads.
    type Mask: Copy;

    /// The mask of the lanes `l` for which `inside(l)`.
    fn mask(inside: impl Fn(usize) -> bool) -> Self::Mask;
    unsafe fn splat(value: f32) -> Self;
    unsafe fn load(at: *const f32) -> Self;
    /// Loads the lanes of `mask` (the others read as zero and are not touched).
    unsafe fn load_masked(at: *const f32, mask: Self::Mask) -> Self;
    /// The lanes of `mask`, the others zeroed.
    unsafe fn keep(self, mask: Self::Mask) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `a * b + c`, rounded once.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// The even and the odd lanes of `a ++ b`, in a lane order [`Vector::in_order`] restores.
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self);
    /// The lanes of a sum of [`Vector::deinterleave`]d values back in order.
    unsafe fn in_order(self) -> Self;
    /// [`Epilogue::activate`] on every lane (`slope` and `max` splatted).
    unsafe fn activate(self, slope: Self, max: Self) -> Self;
    unsafe fn store(self, at: *mut f32);
    /// Stores the first `count` lanes, `count < LANES`.
    unsafe fn store_part(self, at: *mut f32, count: usize);

    /// Stores the first `count` lanes (`1..=LANES`): a plain store when that is all of them.
    #[inline(always)]
    unsafe fn store_first(self, at: *mut f32, count: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            if count == Self::LANES {
                self.store(at);
            } else {
                self.store_part(at, count);
            }
        }
    }
}

impl Vector for __m256 {
    const LANES: usize = LANES;
    type Mask = __m256i;

    fn mask(inside: impl Fn(usize) -> bool) -> __m256i {
        let lanes: [i32; LANES] = std::array::from_fn(|l| -i32::from(inside(l)));
        // SAFETY: `[i32; 8]` and `__m256i` have the same size; unaligned load.
        unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) }
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        // SAFETY: the caller's CPU has AVX2.
        unsafe { _mm256_set1_ps(value) }
    }

    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        // SAFETY: the caller's promise.
        unsafe { _mm256_loadu_ps(at) }
    }

    #[inline(always)]
    unsafe fn load_masked(at: *const f32, mask: __m256i) -> Self {
        // SAFETY: the caller's promise.
        unsafe { _mm256_maskload_ps(at, mask) }
    }

    #[inline(always)]
    unsafe fn keep(self, mask: __m256i) -> Self {
        // SAFETY: the caller's CPU has AVX2.
        unsafe { _mm256_and_ps(self, _mm256_castsi256_ps(mask)) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller's CPU has AVX2.
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's CPU has FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    /// Both in the lane order `0 1 4 5 2 3 6 7`: per 128-bit half, `a0 a2 b0 b2 | a4 a6 b4
    /// b6`. One in-lane shuffle per load, and the sum is put in order once, at the store.
    #[inline(always)]
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self) {
        // SAFETY: the caller's CPU has AVX2.
        unsafe {
            (
                _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
                _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
            )
        }
    }

    /// 64-bit pairs 0 2 1 3.
    #[inline(always)]
    unsafe fn in_order(self) -> Self {
        // SAFETY: the caller's CPU has AVX2.
        unsafe {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                self,
            )))
        }
    }

    #[inline(always)]
    unsafe fn activate(self, slope: Self, max: Self) -> Self {
        // SAFETY: the caller's CPU has AVX2.
        unsafe {
            let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(self, _mm256_setzero_ps());
            let u = _mm256_blendv_ps(self, _mm256_mul_ps(self, slope), negative);
            // `max < u ? max : u`: a NaN stays NaN, as in the scalar form.
            _mm256_min_ps(max, u)
        }
    }

    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        // SAFETY: the caller's promise.
        unsafe { _mm256_storeu_ps(at, self) }
    }

    /// Through the stack: a masked store was slower on AMD Zen 4.
    #[inline(always)]
    unsafe fn store_part(self, at: *mut f32, count: usize) {
        let mut lanes = [0f32; LANES];
        // SAFETY: the caller's promise.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), self);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), at, count);
        }
    }
}

/// Lanes per AVX-512 vector.
const LANES_512: usize = 16;

impl Vector for __m512 {
    const LANES: usize = LANES_512;
    type Mask = __mmask16;

    fn mask(inside: impl Fn(usize) -> bool) -> __mmask16 {
        (0..LANES_512)
            .filter(|&l| inside(l))
            .fold(0, |bits, l| bits | 1 << l)
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_set1_ps(value) }
    }

    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        // SAFETY: the caller's promise.
        unsafe { _mm512_loadu_ps(at) }
    }

    #[inline(always)]
    unsafe fn load_masked(at: *const f32, mask: __mmask16) -> Self {
        // SAFETY: the caller's promise.
        unsafe { _mm512_maskz_loadu_ps(mask, at) }
    }

    #[inline(always)]
    unsafe fn keep(self, mask: __mmask16) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_maskz_mov_ps(mask, self) }
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    /// In order: one two-source permute each.
    #[inline(always)]
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self) {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            (
                _mm512_permutex2var_ps(a, even, b),
                _mm512_permutex2var_ps(a, odd, b),
            )
        }
    }

    #[inline(always)]
    unsafe fn in_order(self) -> Self {
        self
    }

    #[inline(always)]
    unsafe fn activate(self, slope: Self, max: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe {
            let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self, _mm512_setzero_ps());
            let u = _mm512_mask_mul_ps(self, negative, self, slope);
            // `max < u ? max : u`: a NaN stays NaN, as in the scalar form.
            _mm512_min_ps(max, u)
        }
    }

    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        // SAFETY: the caller's promise.
        unsafe { _mm512_storeu_ps(at, self) }
    }

    #[inline(always)]
    unsafe fn store_part(self, at: *mut f32, count: usize) {
        // SAFETY: the caller's promise; lanes past `count` are not written.
        unsafe { _mm512_mask_storeu_ps(at, ((1u32 << count) - 1) as __mmask16, self) }
    }
}

/// A load of one vector of consecutive input columns from `start` (relative to the row),
/// masked to the columns inside the row unless all of them are.
#[derive(Clone, Copy)]
struct Load<V: Vector> {
    start: isize,
    /// The lanes whose column is in `0..w`.
    mask: V::Mask,
    full: bool,
}

impl<V: Vector> Load<V> {
    fn new(start: isize, w: usize) -> Self {
        let inside = |lane: usize| (0..w as isize).contains(&(start + lane as isize));
        Self {
            start,
            mask: V::mask(inside),
            full: (0..V::LANES).all(inside),
        }
    }
}

/// One chunk of up to one vector of outputs of a row, from output column `x0`, and the loads
/// its taps need: for stride 1, columns `x0 - pl + kx` for `kx` in 0..3; for stride 2, the
/// pairs of loads at `2 x0 - pl` and `2 x0 - pl + 2` whose even and odd columns are the taps.
struct Chunk<V: Vector> {
    x0: usize,
    loads: [Load<V>; 4],
    /// Outputs of the chunk inside the row: `min(lanes, ow - x0)`.
    valid: usize,
}

impl<V: Vector> Chunk<V> {
    fn new(x0: usize, stride: usize, pl: usize, w: usize, ow: usize) -> Self {
        let base = (stride * x0) as isize - pl as isize;
        let lanes = V::LANES as isize;
        let starts = if stride == 1 {
            // Three loads; the fourth repeats the third and is not read.
            [base, base + 1, base + 2, base + 2]
        } else {
            [base, base + lanes, base + 2, base + lanes + 2]
        };
        Self {
            x0,
            loads: starts.map(|start| Load::new(start, w)),
            valid: (ow - x0).min(V::LANES),
        }
    }

    /// The three tap columns of input row `row` (`kx` = 0, 1, 2) for this chunk's outputs.
    ///
    /// # Safety
    /// The CPU must support `V`'s instructions; `row` holds the `w` floats the loads were made
    /// for.
    #[inline(always)]
    unsafe fn columns<const S: usize, const MASKED: bool>(&self, row: *const f32) -> [V; 3] {
        let read = |load: &Load<V>| {
            // Masked lanes are never touched, so the address may lie outside the row.
            let at = row.wrapping_offset(load.start);
            // SAFETY: every lane read is inside the row (all of them unless `MASKED`).
            unsafe {
                if MASKED {
                    V::load_masked(at, load.mask)
                } else {
                    V::load(at)
                }
            }
        };
        let [l0, l1, l2, l3] = &self.loads;
        if S == 1 {
            [read(l0), read(l1), read(l2)]
        } else {
            // SAFETY: the caller's CPU has `V`'s instructions.
            unsafe {
                let (even, odd) = V::deinterleave(read(l0), read(l1));
                let (shifted, _) = V::deinterleave(read(l2), read(l3));
                [even, odd, shifted]
            }
        }
    }
}

/// Output rows summed side by side, for one chunk of columns: independent chains of
/// multiply-adds, and each input row's columns loaded once for every output row that uses it.
///
/// Three, measured (`liveness bench --layers`, alternating, Zen 5): with 4, the AVX2 build
/// spilled its sums to the stack (233 spill stores in the function; 53 with 3), and 3 rows took
/// 0.62-0.68x the time of 4 on stride-1 maps of 32 columns or more and 0.70-0.79x on stride 2;
/// 2 rows were level with 3 on stride 1 and slower on stride 2. The AVX-512 build, which did
/// not spill with 4, also gained (stride 2 0.73-0.86x, stride 1 0.81-1.0x); 6 rows were slower
/// there (stride 2 1.25-1.54x).
const ROWS: usize = 3;

/// One channel's taps, bias and activation, splatted.
#[derive(Clone, Copy)]
struct Channel<V> {
    taps: [V; 9],
    bias: V,
    slope: V,
    max: V,
}

impl<V: Vector> Channel<V> {
    /// The channel's 9 `taps` (row-major) and its epilogue, splatted.
    ///
    /// # Safety
    /// The CPU must support `V`'s instructions.
    #[inline(always)]
    unsafe fn new(taps: &[f32], epilogue: Epilogue) -> Self {
        // SAFETY: the caller's promise.
        unsafe {
            Self {
                taps: std::array::from_fn(|t| V::splat(taps[t])),
                bias: V::splat(epilogue.bias),
                slope: V::splat(epilogue.slope),
                max: V::splat(epilogue.max),
            }
        }
    }
}

/// Output rows `oy0..oy0 + R` of one chunk: `rows` are the input rows `S * oy0 - pt + i`
/// (the zero row where that is padding), `out` the chunk's first output in row `oy0`.
///
/// # Safety
/// The CPU must support `V`'s instructions; `rows` hold the `w` floats the chunk's loads were
/// made for; `out + r * ow` is the chunk's first output in row `oy0 + r` for `r < R`.
#[inline(always)]
unsafe fn chunk_rows<V: Vector, const R: usize, const S: usize, const MASKED: bool>(
    rows: &[*const f32; 2 * ROWS + 1],
    chunk: &Chunk<V>,
    channel: &Channel<V>,
    out: *mut f32,
    ow: usize,
) {
    let mut acc = [channel.bias; R];
    for (i, &row) in rows.iter().enumerate().take(S * (R - 1) + 3) {
        // SAFETY: see the function's contract.
        let columns = unsafe { chunk.columns::<S, MASKED>(row) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // Input row `i` is tap row `i - S r` of output row `r`: rows in tap order.
            let ky = i.wrapping_sub(S * r);
            if ky < 3 {
                for (tap, x) in channel.taps[3 * ky..3 * ky + 3].iter().zip(columns) {
                    // SAFETY: the caller's CPU has `V`'s instructions.
                    *acc = unsafe { V::fmadd(*tap, x, *acc) };
                }
            }
        }
    }
    for (r, acc) in acc.into_iter().enumerate() {
        // SAFETY: see the function's contract.
        unsafe {
            let sums = if S == 2 { acc.in_order() } else { acc };
            let values = sums.activate(channel.slope, channel.max);
            values.store_first(out.add(r * ow), chunk.valid);
        }
    }
}

/// One depthwise layer's operands for [`convolve`]: channels `channels` of `src` (an `NCHW`
/// image of `input = (h, w)` planes), output rows `out_rows` of `output = (oh, ow)`, stride
/// `stride` (1 or 2), top and left padding `padding = (pt, pl)`; `weight` holds 9 taps per
/// channel of the whole layer, `epilogues` one per channel of `channels`.
pub(super) struct Layer<'a> {
    pub(super) stride: usize,
    pub(super) channels: Range<usize>,
    pub(super) weight: &'a [f32],
    pub(super) epilogues: &'a [Epilogue],
    pub(super) src: &'a [f32],
    pub(super) input: (usize, usize),
    pub(super) output: (usize, usize),
    pub(super) padding: (usize, usize),
    pub(super) out_rows: Range<usize>,
}

/// Depthwise 3x3 convolution of `layer` into `dst` (the channels' `out_rows.len() x ow`
/// planes).
///
/// On CPUs with AVX-512F (and the `avx512` feature) the same code runs on 512-bit vectors of
/// 16 outputs, with 32 registers (the 9 taps, the rows of sums and 3 input columns do not
/// spill, as some do in AVX2's 16), masked loads zeroing the lanes past the row's edges and a
/// masked store for a row's last outputs.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`runs`]); `dst` must hold
/// `channels.len() * out_rows.len() * ow` values and `src` all channels of `channels`.
pub(super) unsafe fn convolve(layer: &Layer, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: the caller's promises; the AVX-512 build only where the CPU has AVX-512F.
    unsafe {
        if super::avx512f() {
            convolve_avx512(layer, dst)
        } else {
            convolve_avx2(layer, dst)
        }
    }
}

/// [`convolve`] with AVX2 and FMA: vectors of 8 outputs.
///
/// # Safety
/// As for [`convolve`].
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_avx2(layer: &Layer, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: as for `convolve`.
    unsafe { convolve_strided::<__m256>(layer, dst) }
}

/// [`convolve`] with AVX-512F: vectors of 16 outputs.
///
/// # Safety
/// As for [`convolve`], and the CPU must support AVX-512F.
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn convolve_avx512(layer: &Layer, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: as for `convolve`.
    unsafe { convolve_strided::<__m512>(layer, dst) }
}

/// The body of [`convolve`], for the layer's stride.
#[inline(always)]
unsafe fn convolve_strided<V: Vector>(layer: &Layer, dst: &mut [MaybeUninit<f32>]) {
    // SAFETY: as for `convolve`.
    unsafe {
        match layer.stride {
            1 => convolve_rows::<V, 1>(layer, dst),
            _ => convolve_rows::<V, 2>(layer, dst),
        }
    }
}

/// [`convolve_strided`] for stride `S`.
#[inline(always)]
unsafe fn convolve_rows<V: Vector, const S: usize>(layer: &Layer, dst: &mut [MaybeUninit<f32>]) {
    let &Layer {
        weight,
        epilogues,
        src,
        input: (h, w),
        output: (oh, ow),
        padding: (pt, pl),
        ..
    } = layer;
    let (channels, out_rows) = (layer.channels.clone(), layer.out_rows.clone());
    debug_assert!(layer.stride == S && out_rows.end <= oh);
    let chunks: Vec<(Chunk<V>, bool)> = (0..ow)
        .step_by(V::LANES)
        .map(|x0| {
            let chunk = Chunk::new(x0, S, pl, w, ow);
            let masked = !chunk.loads.iter().all(|load| load.full);
            (chunk, masked)
        })
        .collect();
    let zeros = vec![0f32; w];
    let planes = src[channels.start * h * w..channels.end * h * w].chunks_exact(h * w);
    let out_plane = out_rows.len() * ow;
    let outputs = dst[..channels.len() * out_plane].chunks_exact_mut(out_plane);
    for (((c, plane), out), &epilogue) in channels.zip(planes).zip(outputs).zip(epilogues) {
        // SAFETY: the caller's CPU has `V`'s instructions.
        let channel = unsafe { Channel::<V>::new(&weight[9 * c..9 * c + 9], epilogue) };
        let out = out.as_mut_ptr().cast::<f32>();
        let mut oy = out_rows.start;
        while oy < out_rows.end {
            let rows: [*const f32; 2 * ROWS + 1] =
                std::array::from_fn(|i| match (S * oy + i).checked_sub(pt) {
                    Some(y) if y < h => plane[y * w..].as_ptr(),
                    _ => zeros.as_ptr(),
                });
            let count = (out_rows.end - oy).min(ROWS);
            for (chunk, masked) in &chunks {
                let at = out.wrapping_add((oy - out_rows.start) * ow + chunk.x0);
                // SAFETY: `rows` are input rows of `w` floats or `zeros`; the chunk's outputs
                // in rows `oy..oy + count` are in the plane.
                unsafe {
                    match (count, masked) {
                        (3, false) => chunk_rows::<V, 3, S, false>(&rows, chunk, &channel, at, ow),
                        (3, true) => chunk_rows::<V, 3, S, true>(&rows, chunk, &channel, at, ow),
                        (2, false) => chunk_rows::<V, 2, S, false>(&rows, chunk, &channel, at, ow),
                        (2, true) => chunk_rows::<V, 2, S, true>(&rows, chunk, &channel, at, ow),
                        (_, false) => chunk_rows::<V, 1, S, false>(&rows, chunk, &channel, at, ow),
                        (_, true) => chunk_rows::<V, 1, S, true>(&rows, chunk, &channel, at, ow),
                    }
                }
            }
            oy += count;
        }
    }
}

/// Whether [`convolve_small`] runs a depthwise layer: a 3x3 kernel, stride 1, padding 1 on
/// every side, and rows narrower than [`SMALL_MAP_COLUMNS`].
pub(super) fn runs_small(
    kernel: (usize, usize),
    stride: usize,
    padding: [usize; 4],
    w: usize,
) -> bool {
    runs(kernel, stride) && stride == 1 && padding == [1; 4] && w < SMALL_MAP_COLUMNS
}

/// Maps narrower than this run [`convolve_small`].
const SMALL_MAP_COLUMNS: usize = 32;

/// [`convolve`] for small maps (stride 1, padding 1): each channel's plane is one run of
/// `h * w` outputs, summed 8 at a time whatever the row boundaries, instead of rows of 8-wide
/// chunks whose edge chunks are masked (a 7- or 14-column row is all edge chunks). The plane is
/// copied once between zeros, so the rows above and below read as padding; the left and right
/// tap of an output in the first or last column would read the neighbouring row, and are
/// masked to zero instead. The sums are those of [`convolve`], in the same order.
///
/// On CPUs with AVX-512F (and the `avx512` feature), vectors of 16 outputs, 4 of them summed
/// side by side, and maps of up to [`IN_PLACE_MAX_OUTPUTS`] read in place, every tap's load
/// masked to the lanes whose input lies inside the map. Both builds are one body
/// ([`small_planes`]) over [`Vector`].
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`runs_small`]); `dst` must hold `channels.len() * h * w`
/// values and `src` all channels of `channels`.
pub(super) unsafe fn convolve_small(
    channels: Range<usize>,
    weight: &[f32],
    epilogues: &[Epilogue],
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    map: (usize, usize),
) {
    // SAFETY: the caller's promises; the AVX-512 build only where the CPU has AVX-512F.
    unsafe {
        if super::avx512f() {
            convolve_small_avx512(channels, weight, epilogues, src, dst, map)
        } else {
            convolve_small_avx2(channels, weight, epilogues, src, dst, map)
        }
    }
}

/// [`convolve_small`] with AVX2 and FMA: vectors of 8 outputs.
///
/// # Safety
/// As for [`convolve_small`].
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_small_avx2(
    channels: Range<usize>,
    weight: &[f32],
    epilogues: &[Epilogue],
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    map: (usize, usize),
) {
    // One chain: two side by side were slower here (bench --layers, e.g. 231@10x10 1.14x).
    // SAFETY: as for `convolve_small`.
    unsafe { small_planes::<__m256, 1, false>(channels, weight, epilogues, src, dst, map) }
}

/// Maps of at most this many outputs run [`small_planes`] in place in the AVX-512 build: masked
/// loads (a mask per tap) instead of a zero-padded copy per channel (`bench --layers`, 6
/// alternating rounds, Zen 5: 960@7x7 0.70-0.73x the time, 256@8x10 0.73x, 154@10x10 0.75x,
/// 231@10x10 0.82x, 128@6x6 0.75x, 576@14x14 0.92-0.95x, 384@14x14 0.96x, 128@12x12
/// 0.86-1.00x; but 128@15x20 1.33x and 64@24x24 1.58x). Why the copy costs most on the smallest
/// maps I did not measure; the loads waiting for its stores is my guess.
const IN_PLACE_MAX_OUTPUTS: usize = 196;

/// [`convolve_small`] with AVX-512F: vectors of 16 outputs.
///
/// # Safety
/// As for [`convolve_small`], and the CPU must support AVX-512F.
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn convolve_small_avx512(
    channels: Range<usize>,
    weight: &[f32],
    epilogues: &[Epilogue],
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    map: (usize, usize),
) {
    // SAFETY: as for `convolve_small`.
    unsafe {
        if map.0 * map.1 <= IN_PLACE_MAX_OUTPUTS {
            small_planes::<__m512, 4, true>(channels, weight, epilogues, src, dst, map)
        } else {
            small_planes::<__m512, 4, false>(channels, weight, epilogues, src, dst, map)
        }
    }
}

/// The body of [`convolve_small`], in vectors `V`, `G` vectors of outputs summed side by side
/// (independent chains); `IN_PLACE`, reading the channels where they are through masked loads
/// (only for vectors whose masked loads do not fault on the lanes they leave out: AVX-512).
#[inline(always)]
unsafe fn small_planes<V: Vector, const G: usize, const IN_PLACE: bool>(
    channels: Range<usize>,
    weight: &[f32],
    epilogues: &[Epilogue],
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    (h, w): (usize, usize),
) {
    let plane = h * w;
    let vectors = plane.div_ceil(V::LANES);
    // Zeros before the plane for the row above the first, after it for the row below the last
    // and the last vector's lanes past the plane (not needed in place).
    let lead = w + 1;
    let mut padded = vec![
        0f32;
        if IN_PLACE {
            0
        } else {
            lead + vectors * V::LANES + w + 1
        }
    ];
    // Per vector of outputs: in place, for each tap `(ky, kx)`, the lanes whose tap lies inside
    // the map; else the lanes not in the first column (for kx = 0) and not in the last (kx = 2).
    let taps = if IN_PLACE { 9 } else { 2 };
    let mut masks = Vec::with_capacity(vectors * taps);
    for v in 0..vectors {
        // Row and column of each lane's output (one division per lane, not per tap); 16 lanes
        // is the widest build's vector.
        let mut lanes = [(0, 0); LANES_512];
        for (l, lane) in lanes.iter_mut().enumerate().take(V::LANES) {
            let p = v * V::LANES + l;
            *lane = (p / w, p % w);
        }
        let inside = |ky: usize, kx: usize| {
            V::mask(|l| {
                let (y, x) = lanes[l];
                let column = (kx != 0 || x > 0) && (kx != 2 || x + 1 < w);
                let row = (ky != 0 || y > 0) && (ky != 2 || y + 1 < h);
                column && (!IN_PLACE || (y < h && row))
            })
        };
        if IN_PLACE {
            masks.extend((0..9).map(|tap| inside(tap / 3, tap % 3)));
        } else {
            masks.extend([inside(0, 0), inside(0, 2)]);
        }
    }
    let planes = src[channels.start * plane..channels.end * plane].chunks_exact(plane);
    let outputs = dst[..channels.len() * plane].chunks_exact_mut(plane);
    for (((c, input), out), &epilogue) in channels.zip(planes).zip(outputs).zip(epilogues) {
        let first = if IN_PLACE {
            input.as_ptr()
        } else {
            padded[lead..lead + plane].copy_from_slice(input);
            padded[lead..].as_ptr()
        };
        let step = SmallPlane {
            // SAFETY: the caller's CPU has `V`'s instructions.
            channel: unsafe { Channel::<V>::new(&weight[9 * c..9 * c + 9], epilogue) },
            // The first output's position, minus one row and one column.
            corner: first.wrapping_sub(w + 1),
            w,
            plane,
            out: out.as_mut_ptr().cast::<f32>(),
        };
        let mut groups = masks.chunks_exact(G * taps);
        let mut v = 0;
        for group in &mut groups {
            // SAFETY: in place, the masks keep every tap inside the plane; else `lead` zeros
            // before the plane and `w + 1` after the last vector keep every tap inside
            // `padded`; stores stay inside the plane.
            unsafe { step.vectors::<G, IN_PLACE>(v, group) };
            v += G;
        }
        for masks in groups.remainder().chunks(taps) {
            // SAFETY: as above.
            unsafe { step.vectors::<1, IN_PLACE>(v, masks) };
            v += 1;
        }
    }
}

/// One channel's plane in [`small_planes`].
struct SmallPlane<V> {
    channel: Channel<V>,
    corner: *const f32,
    w: usize,
    plane: usize,
    out: *mut f32,
}

impl<V: Vector> SmallPlane<V> {
    /// Output vectors `v..v + G`, with their masks (per vector, 9 in place, else 2; see
    /// [`small_planes`]).
    ///
    /// # Safety
    /// The CPU must support `V`'s instructions; the taps' loads must stay inside the padded
    /// plane.
    #[inline(always)]
    unsafe fn vectors<const G: usize, const IN_PLACE: bool>(&self, v: usize, masks: &[V::Mask]) {
        // SAFETY: the caller's promises; stores are limited to the plane.
        unsafe {
            let mut acc = [self.channel.bias; G];
            for ky in 0..3 {
                for kx in 0..3 {
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let at = self
                            .corner
                            .wrapping_add((v + g) * V::LANES + ky * self.w + kx);
                        // Copied planes need only the column masks, the same in every row.
                        let mask = if IN_PLACE {
                            masks[9 * g + 3 * ky + kx]
                        } else {
                            masks[2 * g + kx / 2]
                        };
                        let x = match kx {
                            _ if IN_PLACE => V::load_masked(at, mask),
                            1 => V::load(at),
                            _ => V::load(at).keep(mask),
                        };
                        *acc = V::fmadd(self.channel.taps[3 * ky + kx], x, *acc);
                    }
                }
            }
            for (g, acc) in acc.into_iter().enumerate() {
                let values = acc.activate(self.channel.slope, self.channel.max);
                let first = (v + g) * V::LANES;
                values.store_first(self.out.add(first), (self.plane - first).min(V::LANES));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three channels' taps and epilogues (one with a clamp, one ReLU, one identity-like).
    fn three_channels() -> (usize, Vec<f32>, [Epilogue; 3]) {
        let weight = (0..27).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.4).collect();
        let epilogues = [
            (0.5, 0.1, 6.0),
            (-0.25, 0.0, f32::INFINITY),
            (0.0, 1.0, 2.0),
        ]
        .map(|(bias, slope, max)| Epilogue { bias, slope, max });
        (3, weight, epilogues)
    }

    /// The AVX-512 build gives the AVX2 build's values bit for bit (the same multiply-adds in
    /// the same order, 16 outputs per vector instead of 8): stride 1 and 2, rows with masked
    /// and partial chunks of either width, output rows in blocks of 4 and a short last one, and
    /// a band of rows inside the map.
    #[test]
    fn builds_agree() {
        if !(runs((3, 3), 1) && is_x86_feature_detected!("avx512f")) {
            return;
        }
        let (channels, weight, epilogues) = three_channels();
        for (h, w, padding) in [
            (23, 37, (1, 1)),
            (26, 42, (0, 0)),
            (9, 8, (1, 1)),
            (11, 70, (1, 1)),
            (8, 33, (0, 0)),
        ] {
            let src: Vec<f32> = (0..channels * h * w)
                .map(|i| ((i * 37) % 23) as f32 * 0.17 - 1.9)
                .collect();
            for stride in [1, 2] {
                let (oh, ow) = (
                    (h + 2 * padding.0 - 3) / stride + 1,
                    (w + 2 * padding.1 - 3) / stride + 1,
                );
                for out_rows in [0..oh, 1..oh - 1] {
                    let layer = Layer {
                        stride,
                        channels: 0..channels,
                        weight: &weight,
                        epilogues: &epilogues,
                        src: &src,
                        input: (h, w),
                        output: (oh, ow),
                        padding,
                        out_rows: out_rows.clone(),
                    };
                    let len = channels * out_rows.len() * ow;
                    let run = |build: unsafe fn(&Layer, &mut [MaybeUninit<f32>])| {
                        let mut dst = vec![MaybeUninit::new(f32::NAN); len];
                        // SAFETY: the CPU has both builds' features (checked above); `dst`
                        // holds the band's planes.
                        unsafe {
                            build(&layer, &mut dst);
                            dst.iter()
                                .map(|v| v.assume_init().to_bits())
                                .collect::<Vec<u32>>()
                        }
                    };
                    assert_eq!(
                        run(convolve_avx2),
                        run(convolve_avx512),
                        "{h}x{w} stride {stride} rows {out_rows:?}"
                    );
                }
            }
        }
    }

    /// A build of the small-map kernel.
    type SmallKernel = unsafe fn(
        Range<usize>,
        &[f32],
        &[Epilogue],
        &[f32],
        &mut [MaybeUninit<f32>],
        (usize, usize),
    );

    /// Both builds of the small-map kernel give the row kernel's values bit for bit (same sums,
    /// same order): rows narrower than, as wide as and wider than a vector, planes that end
    /// inside one, and planes of 1 to 5 groups of 4 vectors (the 512-bit build's read in place
    /// up to 196 outputs, copied above).
    #[test]
    fn small_maps_sum_as_the_row_kernel() {
        if !runs((3, 3), 1) {
            return;
        }
        let (channels, weight, epilogues) = three_channels();
        for (h, w) in [
            (1, 1),
            (3, 2),
            (3, 3),
            (7, 7),
            (5, 12),
            (14, 14),
            (8, 8),
            (9, 31),
            (19, 17),
            (20, 16),
        ] {
            let src: Vec<f32> = (0..channels * h * w)
                .map(|i| ((i * 37) % 23) as f32 * 0.17 - 1.9)
                .collect();
            let run = |small: Option<SmallKernel>| {
                let mut dst = vec![MaybeUninit::new(f32::NAN); channels * h * w];
                // SAFETY: `runs` checked the CPU (and the caller the AVX-512 build's); `dst`
                // holds every channel's plane.
                unsafe {
                    if let Some(small) = small {
                        small(0..channels, &weight, &epilogues, &src, &mut dst, (h, w));
                    } else {
                        let layer = Layer {
                            stride: 1,
                            channels: 0..channels,
                            weight: &weight,
                            epilogues: &epilogues,
                            src: &src,
                            input: (h, w),
                            output: (h, w),
                            padding: (1, 1),
                            out_rows: 0..h,
                        };
                        convolve(&layer, &mut dst);
                    }
                    dst.iter()
                        .map(|v| v.assume_init().to_bits())
                        .collect::<Vec<u32>>()
                }
            };
            let row_kernel = run(None);
            assert_eq!(run(Some(convolve_small_avx2)), row_kernel, "AVX2 {h}x{w}");
            if is_x86_feature_detected!("avx512f") {
                let avx512 = run(Some(convolve_small_avx512));
                assert_eq!(avx512, row_kernel, "AVX-512 {h}x{w}");
            }
        }
    }
}
