//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for dense 3x3 stride-1 convolutions (Lavin & Gray,
//! 2015).
//!
//! Each `m x m` block of outputs ("tile", `m` = 2 or 4) is computed from the `(m + 2)^2` input
//! patch under it: the patch is transformed to `V = Bᵀ d B`, the kernels once at load to
//! `U = G g Gᵀ`, and for each of the `(m + 2)^2` positions `ξ` of a transformed tile one GEMM
//! sums over input channels, `M_ξ[Cout, T] = U_ξ[Cout, Cin] · V_ξ[Cin, T]` over `T` tiles. The
//! output is `Aᵀ M A` plus bias and activation. F(2x2) takes 16 multiplies per input-output
//! channel pair and 4 outputs instead of 36 (2.25x fewer), F(4x4) 36 for 16 outputs instead of
//! 144 (4x fewer), for the price of the transforms. F(2x2)'s transforms use only additions
//! (and halves in `G`), so it differs from direct summation by rounding alone; F(4x4)'s
//! multiply by up to 8 and its `G` by 1/6 and 1/24, so it rounds somewhat more (the kernels'
//! tests and the RetinaFace golden tests bound it).
//!
//! Tiles run in blocks of at most [`BLOCK_FLOATS`] transformed inputs and GEMM outputs.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use super::{
    apply_epilogue, as_uninit, gemm_row_major, split_padded_columns, write_copy, Epilogue,
};

/// Floats in a cache line: see [`Plan::v_step`].
const SKEW: usize = 16;
/// Floats of transformed input plus GEMM output per block of tiles (1.5 MiB). Each GEMM call
/// repacks its position's weights, so fewer, larger blocks win: on RetinaFace's 30x40 layers one
/// block of all 80 4x4 tiles (1.4 MiB, more than a 1 MiB L2) ran 7-13% faster than two or
/// three blocks of at most 1 or 0.5 MiB, and its 15x20 layers 16% faster in one block of
/// 2x2 tiles than in two.
const BLOCK_FLOATS: usize = 384 * 1024;

/// Maps of at least this many 4x4 tiles run F(4x4), smaller ones F(2x2). Measured one layer at a
/// time on one thread: RetinaFace's 30x40 layers (80 tiles) ran 6-20% faster in F(4x4), its 15x20
/// ones (20 tiles) 4-50% slower, the 36 GEMMs then having too few columns each.
const MIN_TILES_4X4: usize = 40;

/// A tile size and its transforms.
#[derive(Clone, Copy)]
struct Variant {
    /// Outputs per tile side, `m`.
    m: usize,
    input: InputTransform,
    output: OutputTransform,
}

impl Variant {
    /// Patch side, `m + 2`.
    fn n(&self) -> usize {
        self.m + 2
    }

    /// Positions of a transformed tile: one GEMM each.
    fn positions(&self) -> usize {
        self.n() * self.n()
    }
}

/// F(2x2, 3x3)'s `G`.
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// F(4x4, 3x3)'s `G`, for the interpolation points 0, 1, -1, 2, -2 and infinity (as in
/// Lavin & Gray).
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// A layer's transformed kernels for both tile sizes (the input size, which picks one, is known
/// only when the layer runs): 52 floats per input-output channel pair, 4 MB for RetinaFace,
/// computed at load in 4.2 ms. (Computing each on first use instead made RetinaFace's forward
/// 0.2-0.3 ms slower in three alternating runs, for reasons not found.)
#[derive(Debug, Clone)]
pub(super) struct Weights {
    /// F(2x2): `[16, Cout, Cin]`.
    small: Vec<f32>,
    /// F(4x4): `[36, Cout, Cin]`.
    large: Vec<f32>,
}

impl Weights {
    /// The kernels of the `[Cout, Cin, 3, 3]` `weight` at both tile sizes.
    pub(super) fn new(weight: &[f32], cout: usize, cin: usize) -> Self {
        Self {
            small: transform_with(&G2, weight, cout, cin),
            large: transform_with(&G4, weight, cout, cin),
        }
    }

    /// `variant`'s kernels.
    fn get(&self, variant: &Variant) -> &[f32] {
        if variant.m == 2 {
            &self.small
        } else {
            &self.large
        }
    }
}

/// `U = G g Gᵀ` for every `[Cout, Cin, 3, 3]` kernel `g`, laid out `[positions, Cout, Cin]` so
/// that position `ξ`'s matrix is the contiguous left operand of its GEMM. Computed in f64.
fn transform_with(g_matrix: &[[f64; 3]], weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let n = g_matrix.len();
    let mut u = vec![0f32; n * n * cout * cin];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // G g: n x 3 (n <= 6).
        let mut gg = [[0f64; 3]; 6];
        for (row, gg) in g_matrix.iter().zip(&mut gg) {
            *gg = std::array::from_fn(|j| (0..3).map(|k| row[k] * f64::from(g[k * 3 + j])).sum());
        }
        // (G g) Gᵀ: n x n.
        for (i, gg) in gg[..n].iter().enumerate() {
            for (j, g_row) in g_matrix.iter().enumerate() {
                let v: f64 = (0..3).map(|k| gg[k] * g_row[k]).sum();
                u[(i * n + j) * cout * cin + pair] = v as f32;
            }
        }
    }
    u
}

/// A 3x3 stride-1 convolution of one `[Cin, h, w]` image with zero padding `[top, left, bottom,
/// right]`: output channels `channels` of the `cout` whose kernels `weights` holds, into `dst`
/// (`[channels, oh, ow]`), `epilogues` one per channel of `channels`.
pub(super) fn convolve(
    (weights, cin, cout): (&Weights, usize, usize),
    channels: std::ops::Range<usize>,
    src: &[f32],
    (h, w): (usize, usize),
    padding: [usize; 4],
    epilogues: &[Epilogue],
    dst: &mut [MaybeUninit<f32>],
) {
    let [pt, pl, pb, pr] = padding;
    let (oh, ow) = (h + pt + pb - 2, w + pl + pr - 2);
    let variant = if oh.div_ceil(4) * ow.div_ceil(4) >= MIN_TILES_4X4 {
        variant4()
    } else {
        variant2()
    };
    let u = weights.get(&variant);
    let plan = Plan::new(variant, (cin, channels.len()), (oh, ow));
    let padded_len = Padded::len(cin, &plan.tiles, variant.m);
    let positions = variant.positions();
    SCRATCH.with_borrow_mut(|scratch| {
        let needed = padded_len + positions * (plan.v_step + plan.m_step);
        if scratch.len() < needed {
            scratch.resize(needed, 0.0);
        }
        // Only the padded input must start at zero: the GEMMs read no more of `v` than the
        // input transform wrote, and overwrite `m`.
        let (padded, rest) = scratch.split_at_mut(padded_len);
        let (v, m) = rest.split_at_mut(positions * plan.v_step);
        let padded = Padded::new(padded, src, cin, (h, w), (pt, pl), &plan.tiles, variant.m);
        // Position ξ's rows for `channels`.
        let weights = |xi: usize| &u[(xi * cout + channels.start) * cin..][..channels.len() * cin];
        plan.run(weights, &padded, epilogues, (v, m), dst);
    });
}

thread_local! {
    /// Scratch for the padded input, the transformed input and the GEMM outputs, kept between
    /// calls (about 1 MiB per thread for RetinaFace): fresh buffers this size cost page faults
    /// on every call.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Sizes of one [`convolve`] call.
struct Plan {
    variant: Variant,
    cin: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    tiles: Tiles,
    /// Tiles per block.
    block: usize,
    /// Position ξ's transformed inputs start at `ξ * v_step` in `v`, its GEMM outputs at
    /// `ξ * m_step` in `m`: one cache line more than their size, as a power-of-two distance
    /// put all the streams of a transform in one L1 set.
    v_step: usize,
    m_step: usize,
}

impl Plan {
    fn new(variant: Variant, (cin, cout): (usize, usize), (oh, ow): (usize, usize)) -> Self {
        let tiles = Tiles::new(oh, ow, variant.m);
        let count = tiles.rows * tiles.cols;
        // Blocks of equal size (a last block of a few tiles made for slow GEMMs).
        let largest = (BLOCK_FLOATS / (variant.positions() * (cin + cout))).max(LANES);
        let block = count
            .div_ceil(count.div_ceil(largest))
            .next_multiple_of(LANES);
        Self {
            variant,
            cin,
            cout,
            oh,
            ow,
            tiles,
            block,
            v_step: cin * block + SKEW,
            m_step: cout * block + SKEW,
        }
    }

    /// Block of tiles by block: input transform, one GEMM per position, output transform.
    fn run<'u>(
        &self,
        weights: impl Fn(usize) -> &'u [f32],
        padded: &Padded,
        epilogues: &[Epilogue],
        (v, m): (&mut [f32], &mut [f32]),
        dst: &mut [MaybeUninit<f32>],
    ) {
        let (cin, cout, block, tiles) = (self.cin, self.cout, self.block, &self.tiles);
        let (oh, ow, v_step, m_step) = (self.oh, self.ow, self.v_step, self.m_step);
        let variant = self.variant;
        let tm = variant.m;
        let count = tiles.rows * tiles.cols;
        // `tm` output rows of a run of tiles, `pitch` apart.
        let pitch = tiles.cols * tm;
        let mut rows = vec![0f32; tm * pitch];
        for t0 in (0..count).step_by(block) {
            let nb = block.min(count - t0);
            for c in 0..cin {
                for run in tiles.runs(t0, nb) {
                    // Position ξ of tile j of channel c goes to v[ξ * v_step + c * block + j].
                    let out = &mut v[c * block + run.offset..];
                    (variant.input)(padded.patch(c, tm * run.row, run.col), run.len, v_step, out);
                }
            }
            for xi in 0..variant.positions() {
                // SAFETY: no `accumulate`; the view of `m` is only written, with `f32`s.
                unsafe {
                    gemm_row_major(
                        cout,
                        nb,
                        cin,
                        (block, block),
                        weights(xi),
                        &v[xi * v_step..],
                        as_uninit(&mut m[xi * m_step..]),
                        false,
                    )
                };
            }
            for (co, &epilogue) in epilogues.iter().enumerate() {
                let out_plane = &mut dst[co * oh * ow..(co + 1) * oh * ow];
                for run in tiles.runs(t0, nb) {
                    let sums = &m[co * block + run.offset..];
                    (variant.output)(sums, m_step, run.len, pitch, &mut rows);
                    // Columns of this run that exist in the output (the last tile may overhang).
                    let (x0, x1) = (tm * run.col, (tm * (run.col + run.len)).min(ow));
                    for (dy, values) in rows.chunks_exact(pitch).enumerate() {
                        let y = tm * run.row + dy;
                        if y < oh {
                            let row = &mut out_plane[y * ow + x0..y * ow + x1];
                            apply_epilogue(epilogue, write_copy(row, &values[..x1 - x0]));
                        }
                    }
                }
            }
        }
    }
}

/// The output's grid of `m x m` tiles, numbered row by row.
struct Tiles {
    rows: usize,
    cols: usize,
}

/// Consecutive tiles of one tile row: `len` tiles from `(row, col)`, the first being tile
/// `offset` of its block.
struct Run {
    row: usize,
    col: usize,
    len: usize,
    offset: usize,
}

impl Tiles {
    fn new(oh: usize, ow: usize, m: usize) -> Self {
        Self {
            rows: oh.div_ceil(m),
            cols: ow.div_ceil(m),
        }
    }

    /// Tiles `t0..t0 + n` as runs within tile rows.
    fn runs(&self, t0: usize, n: usize) -> impl Iterator<Item = Run> + '_ {
        let end = t0 + n;
        let first_row = t0 / self.cols;
        (first_row..end.div_ceil(self.cols)).map(move |row| {
            let start = (row * self.cols).max(t0);
            let stop = ((row + 1) * self.cols).min(end);
            Run {
                row,
                col: start - row * self.cols,
                len: stop - start,
                offset: start - t0,
            }
        })
    }
}

/// The input channels zero-padded to whole tiles (so a patch never needs bounds tests), each
/// padded row split into its `m` column phases (column `m i + q` is value `i` of phase `q`):
/// tile `j`'s `m + 2` columns are then values `j` of phases `0..m`, then values `j + 1` of
/// phases 0 and 1, all contiguous runs over `j`.
struct Padded<'a> {
    values: &'a [f32],
    /// Column phases, `m`.
    phases: usize,
    /// Floats per phase of a row: tile columns + 1.
    part: usize,
    /// Padded rows per channel.
    rows: usize,
}

/// The rows of the patches of consecutive tiles of one tile row, from tile column `col`:
/// phase `q` of patch row `i` is [`Patch::phase`]`(i, q)`, its value `j` belonging to tile
/// `col + j` (and, for phases 0 and 1, value `j + 1` too).
#[derive(Clone, Copy)]
struct Patch<'a> {
    values: &'a [f32],
    /// Where phase 0 of patch row 0 starts, at tile column `col`.
    start: usize,
    part: usize,
    phases: usize,
}

impl<'a> Patch<'a> {
    #[inline(always)]
    fn phase(&self, i: usize, q: usize) -> &'a [f32] {
        &self.values[self.start + (i * self.phases + q) * self.part..]
    }
}

impl<'a> Padded<'a> {
    /// Floats of `cin` padded channels for the output tiles `tiles` of `m x m`.
    fn len(cin: usize, tiles: &Tiles, m: usize) -> usize {
        cin * (m * tiles.rows + 2) * m * (tiles.cols + 1)
    }

    /// Pads `src` (`cin` channels of `h x w`) into `buffer` ([`Padded::len`] floats), with
    /// `pt` rows and `pl` columns of zeros before the input.
    fn new(
        buffer: &'a mut [f32],
        src: &[f32],
        cin: usize,
        (h, w): (usize, usize),
        (pt, pl): (usize, usize),
        tiles: &Tiles,
        m: usize,
    ) -> Self {
        let (rows, part) = (m * tiles.rows + 2, tiles.cols + 1);
        buffer.fill(0.0);
        let planes = buffer.chunks_exact_mut(rows * m * part);
        for (channel, plane) in src.chunks_exact(h * w).take(cin).zip(planes) {
            let padded_rows = plane[pt * m * part..].chunks_exact_mut(m * part);
            for (row, dst) in channel.chunks_exact(w).zip(padded_rows) {
                if m == 2 {
                    let (even, odd) = dst.split_at_mut(part);
                    split_padded_columns(row, pl, even, odd);
                } else {
                    split_padded_columns4(row, pl, dst, part);
                }
            }
        }
        Self {
            values: buffer,
            phases: m,
            part,
            rows,
        }
    }

    /// The patch rows of channel `c` from padded row `y`, tile column `col`.
    fn patch(&self, c: usize, y: usize, col: usize) -> Patch<'_> {
        Patch {
            values: self.values,
            start: (c * self.rows + y) * self.phases * self.part + col,
            part: self.part,
            phases: self.phases,
        }
    }
}

/// Writes an input row into the 4 column phases of its zero-padded row (`part` floats each,
/// one after the other in `phases`), input column `x` being padded column `x + pl`: value `i`
/// of phase `q` is padded column `4 i + q`.
fn split_padded_columns4(row: &[f32], pl: usize, phases: &mut [f32], part: usize) {
    // One input column to its phase.
    let put = |phases: &mut [f32], x: usize, value: f32| {
        let column = x + pl;
        phases[(column % 4) * part + column / 4] = value;
    };
    // Input columns before the first one in phase 0, one by one; then 4 at a time, one to
    // each phase; then the last few.
    let head = ((4 - pl % 4) % 4).min(row.len());
    for (x, &value) in row[..head].iter().enumerate() {
        put(phases, x, value);
    }
    let quads = row[head..].chunks_exact(4);
    let tail = head + 4 * quads.len();
    let first = (head + pl) / 4;
    let (p0, rest) = phases.split_at_mut(part);
    let (p1, rest) = rest.split_at_mut(part);
    let (p2, p3) = rest.split_at_mut(part);
    for (i, quad) in quads.enumerate() {
        p0[first + i] = quad[0];
        p1[first + i] = quad[1];
        p2[first + i] = quad[2];
        p3[first + i] = quad[3];
    }
    for (x, &value) in row.iter().enumerate().skip(tail) {
        put(phases, x, value);
    }
}

/// `Bᵀ d B` for `len` tiles side by side: tile `j`'s position `ξ` goes to
/// `out[ξ * stride + j]`.
type InputTransform = fn(Patch, usize, usize, &mut [f32]);
/// `Aᵀ M A` for `len` tiles side by side: position `ξ` of tile `j` is `sums[ξ * stride + j]`;
/// output row `dy` of the tiles goes to `rows[dy * pitch..]`, `m` values per tile.
type OutputTransform = fn(&[f32], usize, usize, usize, &mut [f32]);

/// F(2x2)'s transforms, compiled for the best instruction set this CPU has.
fn variant2() -> Variant {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        return Variant {
            m: 2,
            // SAFETY (both): only chosen after checking the CPU has AVX2.
            input: |patch, len, stride, out| unsafe { input2_avx2(patch, len, stride, out) },
            output: |s, stride, len, pitch, rows| unsafe {
                output2_avx2(s, stride, len, pitch, rows)
            },
        };
    }
    Variant {
        m: 2,
        input: input2_portable,
        output: output2_portable,
    }
}

/// F(4x4)'s transforms, compiled for the best instruction set this CPU has.
fn variant4() -> Variant {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        return Variant {
            m: 4,
            // SAFETY (both): only chosen after checking the CPU has AVX2.
            input: |patch, len, stride, out| unsafe { input4_avx2(patch, len, stride, out) },
            output: |s, stride, len, pitch, rows| unsafe {
                output4_avx2(s, stride, len, pitch, rows)
            },
        };
    }
    Variant {
        m: 4,
        input: input4_portable,
        output: output4_portable,
    }
}

/// The transforms on CPUs without a dedicated build (aarch64: NEON by auto-vectorisation).
/// Never inlined, so that they keep symbols `tools/check_neon.sh` can inspect.
#[inline(never)]
fn input2_portable(patch: Patch, len: usize, stride: usize, out: &mut [f32]) {
    input_transform::<2>(patch, len, stride, out)
}

#[inline(never)]
fn output2_portable(sums: &[f32], stride: usize, len: usize, pitch: usize, rows: &mut [f32]) {
    output_transform::<2>(sums, stride, len, pitch, rows)
}

#[inline(never)]
fn input4_portable(patch: Patch, len: usize, stride: usize, out: &mut [f32]) {
    input_transform::<4>(patch, len, stride, out)
}

#[inline(never)]
fn output4_portable(sums: &[f32], stride: usize, len: usize, pitch: usize, rows: &mut [f32]) {
    output_transform::<4>(sums, stride, len, pitch, rows)
}

/// The transforms compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn input2_avx2(patch: Patch, len: usize, stride: usize, out: &mut [f32]) {
    input_transform::<2>(patch, len, stride, out)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn output2_avx2(sums: &[f32], stride: usize, len: usize, pitch: usize, rows: &mut [f32]) {
    output_transform::<2>(sums, stride, len, pitch, rows)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn input4_avx2(patch: Patch, len: usize, stride: usize, out: &mut [f32]) {
    input_transform::<4>(patch, len, stride, out)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn output4_avx2(sums: &[f32], stride: usize, len: usize, pitch: usize, rows: &mut [f32]) {
    output_transform::<4>(sums, stride, len, pitch, rows)
}

/// Tiles the transforms handle at once (one AVX2 register of each value).
const LANES: usize = 8;

/// `[f32; W]` arithmetic, element by element (compiled to vector instructions).
#[inline(always)]
fn add<const W: usize>(a: [f32; W], b: [f32; W]) -> [f32; W] {
    std::array::from_fn(|i| a[i] + b[i])
}

#[inline(always)]
fn sub<const W: usize>(a: [f32; W], b: [f32; W]) -> [f32; W] {
    std::array::from_fn(|i| a[i] - b[i])
}

#[inline(always)]
fn times<const W: usize>(a: [f32; W], k: f32) -> [f32; W] {
    std::array::from_fn(|i| a[i] * k)
}

/// `W` values of `values` from `start`.
#[inline(always)]
fn load<const W: usize>(values: &[f32], start: usize) -> [f32; W] {
    values[start..start + W].try_into().expect("W values")
}

/// See [`InputTransform`]: [`LANES`] tiles at a time (one by one when fewer); `M` = 2 or 4.
/// (Plain calls, not closures: a closure is not compiled for its caller's target features.)
#[inline(always)]
fn input_transform<const M: usize>(patch: Patch, len: usize, stride: usize, out: &mut [f32]) {
    if len < LANES {
        for j in 0..len {
            if M == 2 {
                input_tiles2::<1>(&patch, j, stride, out);
            } else {
                input_tiles4::<1>(&patch, j, stride, out);
            }
        }
        return;
    }
    // The last group ends at `len` and may overlap the one before (rewriting equal values).
    for j in (0..len).step_by(LANES) {
        let j = j.min(len - LANES);
        if M == 2 {
            input_tiles2::<LANES>(&patch, j, stride, out);
        } else {
            input_tiles4::<LANES>(&patch, j, stride, out);
        }
    }
}

/// F(2x2)'s input transform of tiles `j..j + W`. With `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0],
/// [0, -1, 1, 0], [0, 1, 0, -1]]`, along each row first (`d B`), then down the columns.
#[inline(always)]
fn input_tiles2<const W: usize>(patch: &Patch, j: usize, stride: usize, out: &mut [f32]) {
    // Row i of tile j's patch is even[j], odd[j], even[j + 1], odd[j + 1].
    #[inline(always)]
    fn row<const W: usize>(patch: &Patch, i: usize, j: usize) -> [[f32; W]; 4] {
        let (even, odd) = (patch.phase(i, 0), patch.phase(i, 1));
        let (e0, o0) = (load::<W>(even, j), load::<W>(odd, j));
        let (e1, o1) = (load::<W>(even, j + 1), load::<W>(odd, j + 1));
        [sub(e0, e1), add(o0, e1), sub(e1, o0), sub(o0, o1)]
    }
    let t = [
        row::<W>(patch, 0, j),
        row::<W>(patch, 1, j),
        row::<W>(patch, 2, j),
        row::<W>(patch, 3, j),
    ];
    for k in 0..4 {
        let columns = [
            sub(t[0][k], t[2][k]),
            add(t[1][k], t[2][k]),
            sub(t[2][k], t[1][k]),
            sub(t[1][k], t[3][k]),
        ];
        for (r, values) in columns.iter().enumerate() {
            out[(r * 4 + k) * stride + j..][..W].copy_from_slice(values);
        }
    }
}

/// `Bᵀ d` for F(4x4), `d` being 6 values down a column or along a row: `Bᵀ = [[4, 0, -5, 0, 1,
/// 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
/// [0, 4, 0, -5, 0, 1]]`.
#[inline(always)]
fn b4<const W: usize>(d: [[f32; W]; 6]) -> [[f32; W]; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    // Shared terms: d4 - 4 d2, d3 - 4 d1, d4 - d2 and 2 (d3 - d1).
    let p = sub(d4, times(d2, 4.0));
    let q = sub(d3, times(d1, 4.0));
    let r = sub(d4, d2);
    let t = times(sub(d3, d1), 2.0);
    [
        add(sub(times(d0, 4.0), times(d2, 5.0)), d4),
        add(p, q),
        sub(p, q),
        add(r, t),
        sub(r, t),
        add(sub(times(d1, 4.0), times(d3, 5.0)), d5),
    ]
}

/// F(4x4)'s input transform of tiles `j..j + W`: along each row first (`d B`), then down the
/// columns.
#[inline(always)]
fn input_tiles4<const W: usize>(patch: &Patch, j: usize, stride: usize, out: &mut [f32]) {
    // Row i of tile j's patch is phases 0..4 at j, then phases 0 and 1 at j + 1.
    #[inline(always)]
    fn row<const W: usize>(patch: &Patch, i: usize, j: usize) -> [[f32; W]; 6] {
        let phase = |q: usize, at: usize| load::<W>(patch.phase(i, q), at);
        b4([
            phase(0, j),
            phase(1, j),
            phase(2, j),
            phase(3, j),
            phase(0, j + 1),
            phase(1, j + 1),
        ])
    }
    let t = [
        row::<W>(patch, 0, j),
        row::<W>(patch, 1, j),
        row::<W>(patch, 2, j),
        row::<W>(patch, 3, j),
        row::<W>(patch, 4, j),
        row::<W>(patch, 5, j),
    ];
    for k in 0..6 {
        let columns = b4([t[0][k], t[1][k], t[2][k], t[3][k], t[4][k], t[5][k]]);
        for (r, values) in columns.iter().enumerate() {
            out[(r * 6 + k) * stride + j..][..W].copy_from_slice(values);
        }
    }
}

/// See [`OutputTransform`]: [`LANES`] tiles at a time (one by one when fewer); `M` = 2 or 4.
#[inline(always)]
fn output_transform<const M: usize>(
    sums: &[f32],
    stride: usize,
    len: usize,
    pitch: usize,
    rows: &mut [f32],
) {
    if len < LANES {
        for j in 0..len {
            if M == 2 {
                output_tiles2::<1>(sums, stride, j, pitch, rows);
            } else {
                output_tiles4::<1>(sums, stride, j, pitch, rows);
            }
        }
        return;
    }
    for j in (0..len).step_by(LANES) {
        let j = j.min(len - LANES);
        if M == 2 {
            output_tiles2::<LANES>(sums, stride, j, pitch, rows);
        } else {
            output_tiles4::<LANES>(sums, stride, j, pitch, rows);
        }
    }
}

/// F(2x2)'s output transform of tiles `j..j + W`, with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
#[inline(always)]
fn output_tiles2<const W: usize>(
    sums: &[f32],
    stride: usize,
    j: usize,
    pitch: usize,
    rows: &mut [f32],
) {
    // Aᵀ M, column k: rows 0 and 1.
    let mut a = [[[0f32; W]; 4]; 2];
    let [a0, a1] = &mut a;
    for (k, (a0, a1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
        let m = |r: usize| load::<W>(sums, (r * 4 + k) * stride + j);
        let (m0, m1, m2, m3) = (m(0), m(1), m(2), m(3));
        *a0 = add(add(m0, m1), m2);
        *a1 = sub(sub(m1, m2), m3);
    }
    for (row, a) in rows.chunks_exact_mut(pitch).zip(a) {
        let left = add(add(a[0], a[1]), a[2]);
        let right = sub(sub(a[1], a[2]), a[3]);
        let pairs = &mut row[2 * j..2 * (j + W)];
        for (w, pair) in pairs.chunks_exact_mut(2).enumerate() {
            pair[0] = left[w];
            pair[1] = right[w];
        }
    }
}

/// `Aᵀ m` for F(4x4), `m` being 6 values: `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
/// [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`.
#[inline(always)]
fn a4<const W: usize>(m: [[f32; W]; 6]) -> [[f32; W]; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12) = (add(m1, m2), sub(m1, m2));
    let (s34, d34) = (add(m3, m4), sub(m3, m4));
    [
        add(add(m0, s12), s34),
        add(d12, times(d34, 2.0)),
        add(s12, times(s34, 4.0)),
        add(add(d12, times(d34, 8.0)), m5),
    ]
}

/// F(4x4)'s output transform of tiles `j..j + W`.
#[inline(always)]
fn output_tiles4<const W: usize>(
    sums: &[f32],
    stride: usize,
    j: usize,
    pitch: usize,
    rows: &mut [f32],
) {
    // Aᵀ M: column k gives rows 0..4 of column k.
    #[inline(always)]
    fn column<const W: usize>(sums: &[f32], stride: usize, j: usize, k: usize) -> [[f32; W]; 4] {
        let m = |r: usize| load::<W>(sums, (r * 6 + k) * stride + j);
        a4([m(0), m(1), m(2), m(3), m(4), m(5)])
    }
    let a = [
        column::<W>(sums, stride, j, 0),
        column::<W>(sums, stride, j, 1),
        column::<W>(sums, stride, j, 2),
        column::<W>(sums, stride, j, 3),
        column::<W>(sums, stride, j, 4),
        column::<W>(sums, stride, j, 5),
    ];
    for (dy, row) in rows.chunks_exact_mut(pitch).enumerate().take(4) {
        let values = a4([a[0][dy], a[1][dy], a[2][dy], a[3][dy], a[4][dy], a[5][dy]]);
        let quads = &mut row[4 * j..4 * (j + W)];
        for (w, quad) in quads.chunks_exact_mut(4).enumerate() {
            for (x, v) in quad.iter_mut().zip(&values) {
                *x = v[w];
            }
        }
    }
}
