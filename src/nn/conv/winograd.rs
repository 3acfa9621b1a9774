//! Winograd F(2x2, 3x3) for dense 3x3 stride-1 convolutions (Lavin & Gray, 2015).
//!
//! Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch under it with 16
//! multiplies per input-output channel pair instead of 36: the patch is transformed to
//! `V = Bᵀ d B`, the kernels once at load to `U = G g Gᵀ`, and for each of the 16 positions `ξ`
//! of the 4x4 transformed tile one GEMM sums over input channels, `M_ξ[Cout, T] = U_ξ[Cout, Cin]
//! · V_ξ[Cin, T]` over `T` tiles. The output is `Aᵀ M A` plus bias and activation. The
//! transforms use only additions (and halves in `G`), so the result differs from direct
//! summation by rounding alone: 2.25x fewer multiply-adds for the price of the transforms.
//!
//! Tiles run in blocks sized so that the block's transformed inputs and GEMM outputs stay in L2.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use super::{
    apply_epilogue, as_uninit, gemm_row_major, split_padded_columns, write_copy, Epilogue,
};

/// Positions of a transformed 4x4 tile: one GEMM each.
const POSITIONS: usize = 16;
/// Floats in a cache line: see [`Plan::v_step`].
const SKEW: usize = 16;
/// Floats of transformed input plus GEMM output per block of tiles (512 KiB).
const BLOCK_FLOATS: usize = 128 * 1024;

/// `U = G g Gᵀ` for every `[Cout, Cin, 3, 3]` kernel `g`, laid out `[16, Cout, Cin]` so that
/// position `ξ`'s matrix is the contiguous left operand of its GEMM. Computed in f64.
pub(super) fn transform_weights(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0f32; POSITIONS * cout * cin];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // G g: 4x3.
        let mut gg = [[0f64; 3]; 4];
        for (i, row) in gg.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| G[i][k] * f64::from(g[k * 3 + j])).sum();
            }
        }
        // (G g) Gᵀ: 4x4.
        for i in 0..4 {
            for j in 0..4 {
                let v: f64 = (0..3).map(|k| gg[i][k] * G[j][k]).sum();
                u[(i * 4 + j) * cout * cin + pair] = v as f32;
            }
        }
    }
    u
}

/// A 3x3 stride-1 convolution of one `[Cin, h, w]` image with zero padding `[top, left, bottom,
/// right]`: output channels `channels` of the `cout` whose kernels `u` holds
/// ([`transform_weights`]), into `dst` (`[channels, oh, ow]`), `epilogues` one per channel of
/// `channels`.
pub(super) fn convolve(
    (u, cin, cout): (&[f32], usize, usize),
    channels: std::ops::Range<usize>,
    src: &[f32],
    (h, w): (usize, usize),
    padding: [usize; 4],
    epilogues: &[Epilogue],
    dst: &mut [MaybeUninit<f32>],
) {
    let [pt, pl, pb, pr] = padding;
    let plan = Plan::new((cin, channels.len()), (h + pt + pb - 2, w + pl + pr - 2));
    let padded_len = Padded::len(cin, &plan.tiles);
    SCRATCH.with_borrow_mut(|scratch| {
        let needed = padded_len + POSITIONS * (plan.v_step + plan.m_step);
        if scratch.len() < needed {
            scratch.resize(needed, 0.0);
        }
        // Only the padded input must start at zero: the GEMMs read no more of `v` than the
        // input transform wrote, and overwrite `m`.
        let (padded, rest) = scratch.split_at_mut(padded_len);
        let (v, m) = rest.split_at_mut(POSITIONS * plan.v_step);
        let padded = Padded::new(padded, src, cin, (h, w), (pt, pl), &plan.tiles);
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
    cin: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    tiles: Tiles,
    /// Tiles per block.
    block: usize,
    /// Position ξ's transformed inputs start at `ξ * v_step` in `v`, its GEMM outputs at
    /// `ξ * m_step` in `m`: one cache line more than their size, as a power-of-two distance
    /// put all 16 streams of a transform in one L1 set.
    v_step: usize,
    m_step: usize,
}

impl Plan {
    fn new((cin, cout): (usize, usize), (oh, ow): (usize, usize)) -> Self {
        let tiles = Tiles::new(oh, ow);
        let count = tiles.rows * tiles.cols;
        // Blocks of equal size (a last block of a few tiles made for slow GEMMs).
        let largest = (BLOCK_FLOATS / (POSITIONS * (cin + cout))).max(LANES);
        let block = count
            .div_ceil(count.div_ceil(largest))
            .next_multiple_of(LANES);
        Self {
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

    /// Block of tiles by block: input transform, 16 GEMMs, output transform.
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
        let count = tiles.rows * tiles.cols;
        let kernels = transforms();
        let mut rows = [vec![0f32; tiles.cols * 2], vec![0f32; tiles.cols * 2]];
        for t0 in (0..count).step_by(block) {
            let nb = block.min(count - t0);
            for c in 0..cin {
                for run in tiles.runs(t0, nb) {
                    // Position ξ of tile j of channel c goes to v[ξ * v_step + c * block + j].
                    let out = &mut v[c * block + run.offset..];
                    let rows =
                        std::array::from_fn(|i| padded.row(c, 2 * run.row + i, run.col, run.len));
                    (kernels.input)(rows, run.len, v_step, out);
                }
            }
            for xi in 0..POSITIONS {
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
                    let [top, bottom] = &mut rows;
                    let sums = &m[co * block + run.offset..];
                    (kernels.output)(sums, m_step, run.len, top, bottom);
                    // Columns of this run that exist in the output (the last tile may overhang).
                    let (x0, x1) = (2 * run.col, (2 * (run.col + run.len)).min(ow));
                    for (dy, values) in rows.iter().enumerate() {
                        let y = 2 * run.row + dy;
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

/// The output's grid of 2x2 tiles, numbered row by row.
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
    fn new(oh: usize, ow: usize) -> Self {
        Self {
            rows: oh.div_ceil(2),
            cols: ow.div_ceil(2),
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
/// padded row split into its even and odd columns: tile `j`'s four columns are then
/// `even[j], odd[j], even[j + 1], odd[j + 1]`, all contiguous runs over `j`.
struct Padded<'a> {
    values: &'a [f32],
    /// Floats per half row (even or odd columns): tile columns + 1.
    half: usize,
    /// Padded rows per channel.
    rows: usize,
}

impl<'a> Padded<'a> {
    /// Floats of `cin` padded channels for the output tiles `tiles`.
    fn len(cin: usize, tiles: &Tiles) -> usize {
        cin * (2 * tiles.rows + 2) * 2 * (tiles.cols + 1)
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
    ) -> Self {
        let (rows, half) = (2 * tiles.rows + 2, tiles.cols + 1);
        buffer.fill(0.0);
        let planes = buffer.chunks_exact_mut(rows * 2 * half);
        for (channel, plane) in src.chunks_exact(h * w).take(cin).zip(planes) {
            let padded_rows = plane[pt * 2 * half..].chunks_exact_mut(2 * half);
            for (row, dst) in channel.chunks_exact(w).zip(padded_rows) {
                let (even, odd) = dst.split_at_mut(half);
                split_padded_columns(row, pl, even, odd);
            }
        }
        Self {
            values: buffer,
            half,
            rows,
        }
    }

    /// Padded row `y` of channel `c` from tile column `col`, for `len` tiles: `(even, odd)`,
    /// `len + 1` values each.
    fn row(&self, c: usize, y: usize, col: usize, len: usize) -> (&[f32], &[f32]) {
        let start = (c * self.rows + y) * 2 * self.half;
        let (even, odd) = self.values[start..start + 2 * self.half].split_at(self.half);
        (&even[col..col + len + 1], &odd[col..col + len + 1])
    }
}

/// `Bᵀ d B` for `len` tiles side by side: the four patch rows as [`Padded::row`] gives them;
/// tile `j`'s position `ξ` goes to `out[ξ * stride + j]`.
type InputTransform = fn([(&[f32], &[f32]); 4], usize, usize, &mut [f32]);
/// `Aᵀ M A` for `len` tiles side by side: position `ξ` of tile `j` is `sums[ξ * stride + j]`;
/// the 2x2 result goes to `top[2 j..2 j + 2]` and `bottom[2 j..2 j + 2]`.
type OutputTransform = fn(&[f32], usize, usize, &mut [f32], &mut [f32]);

/// The transforms, compiled for the best instruction set this CPU has.
struct Transforms {
    input: InputTransform,
    output: OutputTransform,
}

fn transforms() -> Transforms {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        return Transforms {
            // SAFETY (both): only chosen after checking the CPU has AVX2.
            input: |rows, len, stride, out| unsafe { input_avx2(rows, len, stride, out) },
            output: |s, stride, len, top, bottom| unsafe {
                output_avx2(s, stride, len, top, bottom)
            },
        };
    }
    Transforms {
        input: input_portable,
        output: output_portable,
    }
}

/// [`input_transform`] on CPUs without a dedicated build (aarch64: NEON by auto-vectorisation).
/// Never inlined, so that it keeps a symbol `tools/check_neon.sh` can inspect.
#[inline(never)]
fn input_portable(rows: [(&[f32], &[f32]); 4], len: usize, stride: usize, out: &mut [f32]) {
    input_transform(rows, len, stride, out)
}

/// [`output_transform`] on CPUs without a dedicated build.
#[inline(never)]
fn output_portable(sums: &[f32], stride: usize, len: usize, top: &mut [f32], bottom: &mut [f32]) {
    output_transform(sums, stride, len, top, bottom)
}

/// [`input_transform`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn input_avx2(rows: [(&[f32], &[f32]); 4], len: usize, stride: usize, out: &mut [f32]) {
    input_transform(rows, len, stride, out)
}

/// [`output_transform`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn output_avx2(
    sums: &[f32],
    stride: usize,
    len: usize,
    top: &mut [f32],
    bottom: &mut [f32],
) {
    output_transform(sums, stride, len, top, bottom)
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

/// `W` values of `values` from `start`.
#[inline(always)]
fn load<const W: usize>(values: &[f32], start: usize) -> [f32; W] {
    values[start..start + W].try_into().expect("W values")
}

/// See [`InputTransform`]: [`LANES`] tiles at a time (one by one when fewer).
#[inline(always)]
fn input_transform(rows: [(&[f32], &[f32]); 4], len: usize, stride: usize, out: &mut [f32]) {
    if len < LANES {
        (0..len).for_each(|j| input_tiles::<1>(&rows, j, stride, out));
        return;
    }
    // The last group ends at `len` and may overlap the one before (rewriting equal values).
    for j in (0..len).step_by(LANES) {
        input_tiles::<LANES>(&rows, j.min(len - LANES), stride, out);
    }
}

/// [`InputTransform`] of tiles `j..j + W`. With `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]`, along each row first (`d B`), then down the columns.
#[inline(always)]
fn input_tiles<const W: usize>(
    rows: &[(&[f32], &[f32]); 4],
    j: usize,
    stride: usize,
    out: &mut [f32],
) {
    // Row i of tile j's patch is even[j], odd[j], even[j + 1], odd[j + 1].
    #[inline(always)]
    fn row<const W: usize>((even, odd): (&[f32], &[f32]), j: usize) -> [[f32; W]; 4] {
        let (e0, o0) = (load::<W>(even, j), load::<W>(odd, j));
        let (e1, o1) = (load::<W>(even, j + 1), load::<W>(odd, j + 1));
        [sub(e0, e1), add(o0, e1), sub(e1, o0), sub(o0, o1)]
    }
    let t = [
        row::<W>(rows[0], j),
        row::<W>(rows[1], j),
        row::<W>(rows[2], j),
        row::<W>(rows[3], j),
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

/// See [`OutputTransform`]: [`LANES`] tiles at a time (one by one when fewer).
#[inline(always)]
fn output_transform(sums: &[f32], stride: usize, len: usize, top: &mut [f32], bottom: &mut [f32]) {
    if len < LANES {
        (0..len).for_each(|j| output_tiles::<1>(sums, stride, j, top, bottom));
        return;
    }
    for j in (0..len).step_by(LANES) {
        output_tiles::<LANES>(sums, stride, j.min(len - LANES), top, bottom);
    }
}

/// [`OutputTransform`] of tiles `j..j + W`, with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
#[inline(always)]
fn output_tiles<const W: usize>(
    sums: &[f32],
    stride: usize,
    j: usize,
    top: &mut [f32],
    bottom: &mut [f32],
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
    for (row, a) in [top, bottom].into_iter().zip(a) {
        let left = add(add(a[0], a[1]), a[2]);
        let right = sub(sub(a[1], a[2]), a[3]);
        let pairs = &mut row[2 * j..2 * (j + W)];
        for (w, pair) in pairs.chunks_exact_mut(2).enumerate() {
            pair[0] = left[w];
            pair[1] = right[w];
        }
    }
}
