//! Pixel geometry shared by the networks: the anti-spoof crop rules, OpenCV-compatible resizing
//! (8-bit `INTER_LINEAR`, `INTER_AREA`, `INTER_LANCZOS4`), and conversion to planar tensors.

use candle_core::{Device, Result, Tensor};
use image::RgbImage;

/// The upstream Silent-Face crop rectangle for a face box `x, y, w, h` at `scale`.
///
/// The scale is capped so the crop fits (`min(scale, `[`max_context_scale`]`)`); the `w*s x h*s` box is
/// centred on the face, shifted (not padded) back inside the image, and its corners truncated to
/// integers. Returns inclusive `[left, top, right, bottom]`.
pub fn antispoof_crop_box(img_w: u32, img_h: u32, face_xywh: [f32; 4], scale: f32) -> [i32; 4] {
    let (src_w, src_h) = (img_w as f64, img_h as f64);
    let [x, y, box_w, box_h] = face_xywh.map(|v| v as f64);
    let scale = (scale as f64).min(max_context_scale(img_w, img_h, box_w, box_h));
    let (new_w, new_h) = (box_w * scale, box_h * scale);
    let (cx, cy) = (x + box_w / 2.0, y + box_h / 2.0);
    let (mut left, mut top) = (cx - new_w / 2.0, cy - new_h / 2.0);
    let (mut right, mut bottom) = (cx + new_w / 2.0, cy + new_h / 2.0);
    if left < 0.0 {
        right -= left;
        left = 0.0;
    }
    if top < 0.0 {
        bottom -= top;
        top = 0.0;
    }
    if right > src_w - 1.0 {
        left -= right - src_w + 1.0;
        right = src_w - 1.0;
    }
    if bottom > src_h - 1.0 {
        top -= bottom - src_h + 1.0;
        bottom = src_h - 1.0;
    }
    [left as i32, top as i32, right as i32, bottom as i32]
}

/// The largest multiple of a `box_w x box_h` face box that fits in the image,
/// `min((H-1)/h, (W-1)/w)`: the cap of the anti-spoof crop scale.
pub fn max_context_scale(img_w: u32, img_h: u32, box_w: f64, box_h: f64) -> f64 {
    ((img_h as f64 - 1.0) / box_h).min((img_w as f64 - 1.0) / box_w)
}

/// A rectangular window `x, y, w, h` (pixels) of an interleaved 8-bit image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

const COEF_BITS: i32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Per-destination-index source positions and fixed-point weights, as OpenCV's INTER_LINEAR
/// computes them: position `(d + 0.5) * (1 / (dst / src)) - 0.5` (double, then float), weights
/// `(1 - frac) * 2048` and `frac * 2048` rounded half to even, source indices clamped to the image.
/// Horizontally (`horizontal`), a position outside `[0, src - 1)` also gets the weights (2048, 0);
/// vertically OpenCV keeps the unclamped weights and only clamps the rows, which can differ by one
/// grey level after its fixed-point rounding.
fn linear_taps(src_len: u32, dst_len: u32, horizontal: bool) -> Vec<(u32, u32, i32, i32)> {
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    let last = src_len as i64 - 1;
    (0..dst_len)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            let mut frac = f - s;
            let s = s as i64;
            if horizontal && (s < 0 || s >= last) {
                frac = 0.0;
            }
            let w0 = ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32;
            let w1 = (frac * COEF_SCALE).round_ties_even() as i32;
            let clamp = |i: i64| i.clamp(0, last) as u32;
            (clamp(s), clamp(s + 1), w0, w1)
        })
        .collect()
}

/// Resizes `window` of an RGB image to `dst_w x dst_h` with OpenCV's `INTER_LINEAR` rule for
/// 8-bit images (fixed-point weights, rounded result). Returns interleaved RGB bytes.
pub fn resize_bilinear(img: &RgbImage, window: Window, dst_w: u32, dst_h: u32) -> Vec<u8> {
    const CN: usize = 3;
    let src = img.as_raw();
    let stride = img.width() as usize * CN;
    let xs = linear_taps(window.w, dst_w, true);
    let ys = linear_taps(window.h, dst_h, false);
    let row_len = dst_w as usize * CN;
    let columns = LinearColumns::new(xs);
    // Horizontal pass for one source row into an i32 buffer.
    let hpass = |sy: u32, buf: &mut [i32]| {
        let row = &src[(window.y + sy) as usize * stride + window.x as usize * CN..];
        columns.pass(row, buf);
    };
    // Output rows `ys` into `out`, keeping the last two horizontal passes for the next row.
    let rows = |ys: &[(u32, u32, i32, i32)], out: &mut [u8]| {
        // One spare value for the AVX2 pass's 4-lane stores.
        let (mut buf0, mut buf1) = (vec![0i32; row_len + 1], vec![0i32; row_len + 1]);
        let mut cached: (Option<u32>, Option<u32>) = (None, None);
        for (dst, &(sy0, sy1, b0, b1)) in out.chunks_exact_mut(row_len).zip(ys) {
            if cached.0 != Some(sy0) {
                if cached.1 == Some(sy0) {
                    std::mem::swap(&mut buf0, &mut buf1);
                    cached.1 = None;
                } else {
                    hpass(sy0, &mut buf0);
                }
                cached.0 = Some(sy0);
            }
            if cached.1 != Some(sy1) {
                hpass(sy1, &mut buf1);
                cached.1 = Some(sy1);
            }
            blend_rows(dst, (&buf0, b0), (&buf1, b1));
        }
    };
    let mut out = vec![0u8; row_len * dst_h as usize];
    // On two threads, the halves of a large output (the detector's input) go side by side.
    if rayon::current_num_threads() > 1 && out.len() >= PARALLEL_MIN_BYTES {
        let half = ys.len() / 2;
        let (top, bottom) = out.split_at_mut(half * row_len);
        rayon::join(|| rows(&ys[..half], top), || rows(&ys[half..], bottom));
    } else {
        rows(&ys, &mut out);
    }
    out
}

/// The horizontal pass of [`resize_bilinear`]: per destination column with taps
/// `(s0, s1, w0, w1)`, `w0 * pixel s0 + w1 * pixel s1` for each channel.
struct LinearColumns {
    taps: Vec<(u32, u32, i32, i32)>,
    /// Per pair of destination columns, the AVX2 pass's weights: `w0 w1` three times and `0 0`,
    /// for each column of the pair.
    #[cfg(target_arch = "x86_64")]
    pair_weights: Vec<[i16; 16]>,
}

impl LinearColumns {
    fn new(taps: Vec<(u32, u32, i32, i32)>) -> Self {
        // `linear_taps` clamps only where the second weight is 0: the second tap can always be
        // read as the pixel after the first.
        assert!(taps.iter().all(|&(s0, s1, _, w1)| s1 == s0 + 1 || w1 == 0));
        #[cfg(target_arch = "x86_64")]
        let pair_weights = taps
            .chunks_exact(2)
            .map(|pair| {
                let lanes = |(_, _, w0, w1): (u32, u32, i32, i32)| {
                    let (w0, w1) = (w0 as i16, w1 as i16);
                    [w0, w1, w0, w1, w0, w1, 0, 0]
                };
                let (a, b) = (lanes(pair[0]), lanes(pair[1]));
                std::array::from_fn(|i| if i < 8 { a[i] } else { b[i - 8] })
            })
            .collect();
        Self {
            taps,
            #[cfg(target_arch = "x86_64")]
            pair_weights,
        }
    }

    /// `buf[3 d + c]` for every destination column `d` from `row` (RGB bytes from the window's
    /// left edge); `buf` has one value more than the `3 * columns` it receives.
    fn pass(&self, row: &[u8], buf: &mut [i32]) {
        assert_eq!(buf.len(), self.taps.len() * 3 + 1);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; `buf`'s length was checked above.
            return unsafe { self.pass_avx2(row, buf) };
        }
        self.pass_columns(0, row, buf);
    }

    /// The portable pass, from destination column `d0` on.
    fn pass_columns(&self, d0: usize, row: &[u8], buf: &mut [i32]) {
        for (d, &(s0, s1, w0, w1)) in self.taps.iter().enumerate().skip(d0) {
            let (p0, p1) = (s0 as usize * 3, s1 as usize * 3);
            for c in 0..3 {
                buf[d * 3 + c] = row[p0 + c] as i32 * w0 + row[p1 + c] as i32 * w1;
            }
        }
    }

    /// [`Self::pass`] two destination columns at a time: each column's two pixels are 8 bytes
    /// from the first, shuffled into `(p0, p1)` pairs per channel and summed with their weights
    /// by one `pmaddwd` (exact: 8-bit pixels and weights of at most 2048). Columns whose 8 bytes
    /// would run past the end of `row` (the photo's last pixels) take the portable pass.
    ///
    /// # Safety
    /// The CPU must support AVX2; `buf` as [`Self::pass`] checks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pass_avx2(&self, row: &[u8], buf: &mut [i32]) {
        use std::arch::x86_64::*;
        let shuffle = _mm_setr_epi8(0, 3, 1, 4, 2, 5, -1, -1, 8, 11, 9, 12, 10, 13, -1, -1);
        let mut d = 0;
        for (pair, weights) in self.taps.chunks_exact(2).zip(&self.pair_weights) {
            let (a, b) = (pair[0].0 as usize * 3, pair[1].0 as usize * 3);
            if a.max(b) + 8 > row.len() {
                break;
            }
            // SAFETY: both 8-byte reads end within `row` (checked above); the 4-lane stores
            // end at `3 d + 7 <= 3 * columns + 1` (`buf`'s length, checked by `pass`).
            unsafe {
                let a = row.as_ptr().add(a).cast::<i64>().read_unaligned();
                let b = row.as_ptr().add(b).cast::<i64>().read_unaligned();
                let pixels = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_set_epi64x(b, a), shuffle));
                let weights = _mm256_loadu_si256(weights.as_ptr().cast());
                let sums = _mm256_madd_epi16(pixels, weights);
                let at = buf.as_mut_ptr().add(3 * d);
                _mm_storeu_si128(at.cast(), _mm256_castsi256_si128(sums));
                _mm_storeu_si128(at.add(3).cast(), _mm256_extracti128_si256::<1>(sums));
            }
            d += 2;
        }
        self.pass_columns(d, row, buf);
    }
}

/// The vertical pass of [`resize_bilinear`]: one output row from the horizontal passes `a` and
/// `b` of its two source rows and their weights. With AVX2 where the CPU has it (baseline
/// x86-64 has no 32-bit vector multiply): 700x700 -> 224x224 took 0.19 instead of 0.23 ms.
fn blend_rows(out: &mut [u8], a: (&[i32], i32), b: (&[i32], i32)) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { blend_rows_avx2(out, a, b) };
    }
    blend_rows_portable(out, a, b)
}

#[inline(always)]
fn blend_rows_portable(out: &mut [u8], (a, wa): (&[i32], i32), (b, wb): (&[i32], i32)) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        // OpenCV's SIMD rounding (VResizeLinearVec_32s8u), which is what cv2 runs for every
        // pixel of a 3-channel row: drop 4 bits, multiply-high by the 16-bit weight, then round
        // off the last 2 bits. The scalar `(a*b0 + b*b1 + 2^21) >> 22` differs by 1 on ~12% of
        // the pixels of the golden mask crop.
        let v = (((a >> 4) * wa) >> 16) + (((b >> 4) * wb) >> 16);
        *o = ((v + 2) >> 2).clamp(0, 255) as u8;
    }
}

/// [`blend_rows_portable`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blend_rows_avx2(out: &mut [u8], a: (&[i32], i32), b: (&[i32], i32)) {
    blend_rows_portable(out, a, b)
}

/// Output bytes from which [`resize_bilinear`] splits its rows between two threads (about
/// 0.2 ms of work: 640x480 -> 320x240 takes 0.6 ms).
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// The square crop of face-antispoof-128's preprocessing for a face box `[x1, y1, x2, y2]`:
/// side `s = int(scale * m)` with `m = max(w, h)`, top-left `int(c - scale / 2 * m)` per axis
/// around the box centre `c` (`int` truncates toward zero, as Python's). Returns `[x, y, s]`; the
/// square may extend past the image, whose missing part [`resize_square_reflect101`] mirrors in.
pub fn reflect_square_box(face_xyxy: [f32; 4], scale: f32) -> [i32; 3] {
    let [x1, y1, x2, y2] = face_xyxy.map(f64::from);
    let (w, h) = (x2 - x1, y2 - y1);
    let m = w.max(h);
    let half = scale as f64 / 2.0 * m;
    let (cx, cy) = (x1 + w / 2.0, y1 + h / 2.0);
    [
        (cx - half) as i32,
        (cy - half) as i32,
        (scale as f64 * m) as i32,
    ]
}

/// OpenCV's `BORDER_REFLECT_101` index: mirror at the edges without repeating the edge pixel
/// (`-1 -> 1`, `len -> len - 2`), folding again when the index is more than a length away.
fn reflect101(mut i: i64, len: u32) -> u32 {
    let len = len as i64;
    if len == 1 {
        return 0;
    }
    while i < 0 || i >= len {
        i = if i < 0 { -i } else { 2 * len - 2 - i };
    }
    i as u32
}

/// The `s x s` square at `x, y` of an RGB image (mirrored in with `BORDER_REFLECT_101` where it
/// leaves the image) resized to `dst x dst`, as face-antispoof-128's preprocessing does it with
/// OpenCV on 8-bit pixels: `INTER_AREA` when `s >= dst`, `INTER_LANCZOS4` when `s < dst`.
/// Returns interleaved RGB bytes.
pub fn resize_square_reflect101(img: &RgbImage, square: [i32; 3], dst: u32) -> Vec<u8> {
    let [x, y, s] = square;
    let side = s.max(1) as u32;
    let view = MappedView::new(img, x, y, side);
    if side == dst {
        let mut out = Vec::with_capacity(side as usize * side as usize * 3);
        let mut row = vec![0u8; side as usize * 3];
        for r in 0..side {
            view.copy_row(r, &mut row);
            out.extend_from_slice(&row);
        }
        out
    } else if side > dst {
        resize_area(&view, dst, dst)
    } else {
        resize_lanczos4(&view, dst, dst)
    }
}

/// A virtual `side x side` source: the square at `x, y` of an image, mirrored in
/// (`BORDER_REFLECT_101`) where it leaves the image. Nothing is copied until a row is asked for.
struct MappedView<'a> {
    img: &'a RgbImage,
    /// Image row of each source row.
    rows: Vec<u32>,
    /// Runs of consecutive image columns: `(first source column, first image column, length)`.
    col_runs: Vec<(usize, usize, usize)>,
    side: u32,
}

impl<'a> MappedView<'a> {
    fn new(img: &'a RgbImage, x: i32, y: i32, side: u32) -> Self {
        let mut col_runs: Vec<(usize, usize, usize)> = Vec::new();
        for i in 0..side as usize {
            let c = reflect101(x as i64 + i as i64, img.width()) as usize;
            match col_runs.last_mut() {
                Some((start, first, len)) if *first + *len == c && *start + *len == i => *len += 1,
                _ => col_runs.push((i, c, 1)),
            }
        }
        Self {
            img,
            rows: (0..side)
                .map(|i| reflect101(y as i64 + i as i64, img.height()))
                .collect(),
            col_runs,
            side,
        }
    }

    fn width(&self) -> u32 {
        self.side
    }

    fn height(&self) -> u32 {
        self.side
    }

    /// Copies the interleaved RGB bytes of source row `r` into `out` (`3 * width` bytes).
    fn copy_row(&self, r: u32, out: &mut [u8]) {
        let stride = self.img.width() as usize * 3;
        let row = &self.img.as_raw()[self.rows[r as usize] as usize * stride..][..stride];
        for &(start, first, len) in &self.col_runs {
            out[start * 3..(start + len) * 3].copy_from_slice(&row[first * 3..(first + len) * 3]);
        }
    }
}

/// The 256 byte values as floats, indexed by the byte. Converting with `as f32` compiles to
/// `cvtsi2ss` on baseline x86-64, which writes only part of its register and so waits for the
/// register's previous value: in a per-pixel loop that chains every pixel to the one before.
pub(crate) struct Levels([f32; 256]);

impl Levels {
    pub(crate) fn new() -> Self {
        Self(std::array::from_fn(|i| i as f32))
    }
}

impl std::ops::Index<u8> for Levels {
    type Output = f32;

    #[inline]
    fn index(&self, byte: u8) -> &f32 {
        &self.0[byte as usize]
    }
}

/// One contribution of a source index to a destination index in OpenCV's area resize.
#[derive(Debug, Clone, Copy)]
struct AreaTap {
    dst: usize,
    src: usize,
    weight: f32,
}

/// OpenCV's `computeResizeAreaTab`: each destination cell covers `scale` source pixels starting at
/// `d * scale`; partly covered pixels at either end get their covered fraction.
fn area_taps(src_len: u32, dst_len: u32) -> Vec<AreaTap> {
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    let src_len_f = src_len as f64;
    let mut taps = Vec::with_capacity(src_len as usize * 2);
    for d in 0..dst_len as usize {
        let fs1 = d as f64 * scale;
        let fs2 = fs1 + scale;
        let cell = scale.min(src_len_f - fs1);
        let mut s2 = fs2.floor() as i64;
        s2 = s2.min(src_len as i64 - 1);
        let s1 = (fs1.ceil() as i64).min(s2);
        if s1 as f64 - fs1 > 1e-3 {
            taps.push(AreaTap {
                dst: d,
                src: (s1 - 1) as usize,
                weight: ((s1 as f64 - fs1) / cell) as f32,
            });
        }
        for s in s1..s2 {
            taps.push(AreaTap {
                dst: d,
                src: s as usize,
                weight: (1.0 / cell) as f32,
            });
        }
        if fs2 - s2 as f64 > 1e-3 {
            taps.push(AreaTap {
                dst: d,
                src: s2 as usize,
                weight: ((fs2 - s2 as f64).min(1.0).min(cell) / cell) as f32,
            });
        }
    }
    taps
}

/// The horizontal pass of [`resize_area`]'s general path: per destination column, its taps
/// (consecutive source columns) summed in order from zero, as OpenCV accumulates them into its
/// zeroed buffer. Every column has `per_column` taps, the shorter ones padded with zero weights
/// (adding `0 * p` leaves the non-negative sums as they are), so that the AVX2 pass can sum two
/// columns' three channels in one register, tap by tap.
struct AreaColumns {
    per_column: usize,
    /// Bytes `pixels` must hold: past the last column's first pixel, its taps and a 4-byte read.
    pixels_len: usize,
    levels: Levels,
    /// First source column of each destination column.
    first: Vec<usize>,
    /// `per_column` weights per destination column.
    weights: Vec<f32>,
}

impl AreaColumns {
    fn new(taps: &[AreaTap], dst_len: usize) -> Self {
        let mut counts = vec![0; dst_len];
        let mut first = vec![usize::MAX; dst_len];
        for tap in taps {
            counts[tap.dst] += 1;
            first[tap.dst] = first[tap.dst].min(tap.src);
        }
        let per_column = counts.iter().copied().max().unwrap_or(0);
        let mut weights = vec![0f32; dst_len * per_column];
        let mut slots = vec![0; dst_len];
        for tap in taps {
            debug_assert_eq!(tap.src, first[tap.dst] + slots[tap.dst]);
            weights[tap.dst * per_column + slots[tap.dst]] = tap.weight;
            slots[tap.dst] += 1;
        }
        let last_first = first.iter().copied().max().unwrap_or(0);
        Self {
            per_column,
            pixels_len: (last_first + per_column + 1) * 3,
            levels: Levels::new(),
            first,
            weights,
        }
    }

    /// `buf[3 d + c]` = the sum over destination column `d`'s taps of weight times channel `c`
    /// of `pixels` (an RGB row followed by at least `3 (per_column + 1)` zero bytes); `buf` has
    /// one float more than the `3 * columns` it receives.
    fn pass(&self, pixels: &[u8], buf: &mut [f32]) {
        assert!(pixels.len() >= self.pixels_len);
        assert_eq!(buf.len(), self.first.len() * 3 + 1);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; the lengths were checked above.
            return unsafe { self.pass_avx2(pixels, buf) };
        }
        self.pass_columns(0, pixels, buf);
    }

    /// The portable pass, from destination column `d0` on.
    fn pass_columns(&self, d0: usize, pixels: &[u8], buf: &mut [f32]) {
        let levels = &self.levels;
        let columns = self
            .first
            .iter()
            .zip(self.weights.chunks_exact(self.per_column));
        for (b, (first, taps)) in buf[3 * d0..].chunks_exact_mut(3).zip(columns.skip(d0)) {
            let mut acc = [0f32; 3];
            for (p, &weight) in pixels[first * 3..].chunks_exact(3).zip(taps) {
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a += levels[v] * weight;
                }
            }
            b.copy_from_slice(&acc);
        }
    }

    /// [`Self::pass`] two destination columns at a time: lanes 0-2 the first column's
    /// channels, 4-6 the second's, each tap read as 4 bytes (the 4th, the next pixel's first
    /// channel, lands in a lane that is not stored). Products and sums are rounded as the
    /// portable pass rounds them (multiply, then add; no FMA).
    ///
    /// # Safety
    /// The CPU must support AVX2; `pixels` and `buf` as [`Self::pass`] checks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pass_avx2(&self, pixels: &[u8], buf: &mut [f32]) {
        use std::arch::x86_64::*;
        let per_column = self.per_column;
        let pairs = self.first.len() / 2;
        for pair in 0..pairs {
            let d = 2 * pair;
            let (a0, b0) = (self.first[d] * 3, self.first[d + 1] * 3);
            let (wa, wb) = (
                &self.weights[d * per_column..][..per_column],
                &self.weights[(d + 1) * per_column..][..per_column],
            );
            let mut acc = _mm256_setzero_ps();
            for (t, (&wa, &wb)) in wa.iter().zip(wb).enumerate() {
                // SAFETY: `first + t + 1` pixels lie within `pixels` (checked by `pass`).
                let (a, b) = unsafe {
                    (
                        pixels
                            .as_ptr()
                            .add(a0 + 3 * t)
                            .cast::<i32>()
                            .read_unaligned(),
                        pixels
                            .as_ptr()
                            .add(b0 + 3 * t)
                            .cast::<i32>()
                            .read_unaligned(),
                    )
                };
                let bytes = _mm_set_epi32(0, 0, b, a);
                let values = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                let weights = _mm256_setr_m128(_mm_set1_ps(wa), _mm_set1_ps(wb));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(values, weights));
            }
            // SAFETY: 4 floats from `3 d` and from `3 d + 3` lie within `buf` (one spare float
            // after the last column); the second store overwrites the first's 4th lane.
            unsafe {
                _mm_storeu_ps(buf.as_mut_ptr().add(3 * d), _mm256_castps256_ps128(acc));
                _mm_storeu_ps(
                    buf.as_mut_ptr().add(3 * d + 3),
                    _mm256_extractf128_ps::<1>(acc),
                );
            }
        }
        self.pass_columns(2 * pairs, pixels, buf);
    }
}

/// OpenCV's 8-bit `INTER_AREA` downscale. An integer scale factor takes OpenCV's fast path (block
/// means); any other uses its float area weights, accumulated in the same order.
fn resize_area(src: &MappedView, dst_w: u32, dst_h: u32) -> Vec<u8> {
    const CN: usize = 3;
    let (src_w, src_h) = (src.width(), src.height());
    let row_len = dst_w as usize * CN;
    let mut out = vec![0u8; row_len * dst_h as usize];
    if src_w % dst_w == 0 && src_h % dst_h == 0 {
        let (kx, ky) = ((src_w / dst_w) as usize, (src_h / dst_h) as usize);
        let area = (kx * ky) as i32;
        let inv_area = 1.0 / area as f32;
        let mut sums = vec![0i32; row_len];
        let mut pixels = vec![0u8; src_w as usize * CN];
        for dy in 0..dst_h as usize {
            sums.fill(0);
            for sy in dy * ky..(dy + 1) * ky {
                src.copy_row(sy as u32, &mut pixels);
                for (sx, px) in pixels.chunks_exact(CN).enumerate() {
                    let d = sx / kx * CN;
                    for c in 0..CN {
                        sums[d + c] += px[c] as i32;
                    }
                }
            }
            let dst = &mut out[dy * row_len..(dy + 1) * row_len];
            for (o, &sum) in dst.iter_mut().zip(&sums) {
                // A 2x2 mean runs OpenCV's SIMD path, which rounds half up; the generic path
                // rounds `sum * (1 / area)` to nearest even.
                *o = if area == 4 {
                    ((sum + 2) >> 2) as u8
                } else {
                    (sum as f32 * inv_area).round_ties_even().clamp(0.0, 255.0) as u8
                };
            }
        }
        return out;
    }
    let columns = AreaColumns::new(&area_taps(src_w, dst_w), dst_w as usize);
    let ytaps = area_taps(src_h, dst_h);
    // Room past the row for the zero-weight taps of the last columns and a 4-byte read.
    let mut pixels = vec![0u8; columns.pixels_len.max(src_w as usize * CN)];
    // The horizontal pass of the current source row (a row feeding two destination rows is
    // passed once), with one float of room for the AVX2 pass's 4-lane stores.
    let mut buf = vec![0f32; row_len + 1];
    let mut buf_row = None;
    let mut sum = vec![0f32; row_len];
    let store = |dst: &mut [u8], sum: &[f32]| {
        for (o, &v) in dst.iter_mut().zip(sum) {
            *o = v.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    };
    let mut current = ytaps[0].dst;
    for tap in &ytaps {
        if buf_row != Some(tap.src) {
            src.copy_row(tap.src as u32, &mut pixels[..src_w as usize * CN]);
            columns.pass(&pixels, &mut buf);
            buf_row = Some(tap.src);
        }
        if tap.dst != current {
            store(&mut out[current * row_len..][..row_len], &sum);
            for (s, &b) in sum.iter_mut().zip(&buf) {
                *s = tap.weight * b;
            }
            current = tap.dst;
        } else {
            for (s, &b) in sum.iter_mut().zip(&buf) {
                *s += tap.weight * b;
            }
        }
    }
    store(&mut out[current * row_len..][..row_len], &sum);
    out
}

/// OpenCV's `interpolateLanczos4`: the 8 Lanczos (a = 4) weights for taps `-3..=4` around a
/// fractional offset `x` in `[0, 1)`, normalised to sum to 1.
fn lanczos4_weights(x: f32) -> [f32; 8] {
    const S45: f64 = std::f64::consts::FRAC_1_SQRT_2;
    const CS: [[f64; 2]; 8] = [
        [1.0, 0.0],
        [-S45, -S45],
        [0.0, 1.0],
        [S45, -S45],
        [-1.0, 0.0],
        [S45, S45],
        [0.0, -1.0],
        [-S45, S45],
    ];
    let y0 = -(x as f64 + 3.0) * std::f64::consts::PI * 0.25;
    let (s0, c0) = (y0.sin(), y0.cos());
    let mut coeffs = [0f32; 8];
    let mut sum = 0f32;
    for (i, coeff) in coeffs.iter_mut().enumerate() {
        let yi = x + 3.0 - i as f32;
        *coeff = if yi.abs() >= 1e-6 {
            let y = -yi as f64 * std::f64::consts::PI * 0.25;
            ((CS[i][0] * s0 + CS[i][1] * c0) / (y * y)) as f32
        } else {
            1e30
        };
        sum += *coeff;
    }
    let inv = 1.0 / sum;
    coeffs.map(|c| c * inv)
}

/// Per destination index: the first of 8 source taps (may be negative) and the 11-bit fixed-point
/// Lanczos weights, as OpenCV computes them for 8-bit images.
fn lanczos4_taps(src_len: u32, dst_len: u32) -> Vec<(i64, [i32; 8])> {
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    (0..dst_len)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            let weights = lanczos4_weights(f - s)
                .map(|w| (w * COEF_SCALE).round_ties_even().clamp(-32768.0, 32767.0) as i32);
            (s as i64 - 3, weights)
        })
        .collect()
}

/// OpenCV's 8-bit `INTER_LANCZOS4` resize (used here to upscale): 8x8 taps, edge pixels repeated
/// outside the source, fixed-point weights, result rounded from 22 fraction bits.
fn resize_lanczos4(src: &MappedView, dst_w: u32, dst_h: u32) -> Vec<u8> {
    const CN: usize = 3;
    let (src_w, src_h) = (src.width(), src.height());
    let xtaps = lanczos4_taps(src_w, dst_w);
    let ytaps = lanczos4_taps(src_h, dst_h);
    let row_len = dst_w as usize * CN;
    let clamp = |i: i64, len: u32| i.clamp(0, len as i64 - 1) as usize;
    // Horizontal pass of every source row once (the sources are small: s < dst).
    let mut pixels = vec![0u8; src_w as usize * CN];
    let rows: Vec<Vec<i32>> = (0..src_h)
        .map(|r| {
            src.copy_row(r, &mut pixels);
            let mut h = vec![0i32; row_len];
            for (d, (first, weights)) in xtaps.iter().enumerate() {
                for c in 0..CN {
                    h[d * CN + c] = (0..8)
                        .map(|k| {
                            pixels[clamp(first + k, src_w) * CN + c] as i32 * weights[k as usize]
                        })
                        .sum();
                }
            }
            h
        })
        .collect();
    let mut out = vec![0u8; row_len * dst_h as usize];
    for (dy, (first, weights)) in ytaps.iter().enumerate() {
        let taps: [&Vec<i32>; 8] = std::array::from_fn(|k| &rows[clamp(first + k as i64, src_h)]);
        for (x, o) in out[dy * row_len..][..row_len].iter_mut().enumerate() {
            let v: i32 = (0..8).map(|k| taps[k][x] * weights[k]).sum();
            *o = ((v + (1 << 21)) >> 22).clamp(0, 255) as u8;
        }
    }
    out
}

/// Planar `1x3xHxW` f32 tensor in **RGB** order from interleaved RGB bytes, each value times
/// `scale`.
pub fn rgb_tensor(rgb: &[u8], w: usize, h: usize, scale: f32) -> Result<Tensor> {
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px[c] as f32 * scale;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)
}

/// Planar `1x3xHxW` f32 tensor in **BGR** order from interleaved RGB bytes, minus `mean_bgr`.
pub fn bgr_tensor(rgb: &[u8], w: usize, h: usize, mean_bgr: [f32; 3]) -> Result<Tensor> {
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    let (b, rest) = data.split_at_mut(plane);
    let (g, r) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 - mean_bgr[2];
        g[i] = px[1] as f32 - mean_bgr[1];
        b[i] = px[2] as f32 - mean_bgr[0];
    }
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_box_is_shifted_inside_the_image() {
        // A face near the top-left corner: the crop keeps its size and moves right/down.
        let [l, t, r, b] = antispoof_crop_box(640, 480, [10.0, 10.0, 100.0, 100.0], 2.7);
        assert_eq!((l, t), (0, 0));
        assert_eq!((r, b), (270, 270));
        // A face too big for the scale: the scale shrinks to fit the image height.
        let [_, t, _, b] = antispoof_crop_box(640, 480, [200.0, 100.0, 200.0, 300.0], 2.7);
        assert_eq!((t, b), (0, 479));
    }

    #[test]
    fn reflect101_mirrors_without_repeating_the_edge() {
        let folded: Vec<u32> = (-3..7).map(|i| reflect101(i, 4)).collect();
        assert_eq!(folded, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect101(-5, 1), 0);
    }

    #[test]
    fn square_box_truncates_toward_zero() {
        // m = 100, s = 150, centre (40, 60): top-left (-35, -15).
        assert_eq!(
            reflect_square_box([0.0, 10.0, 80.0, 110.0], 1.5),
            [-35, -15, 150]
        );
        // -0.9 truncates to 0, not -1.
        assert_eq!(reflect_square_box([0.0, 0.0, 1.4, 1.4], 1.5)[0], 0);
    }

    #[test]
    fn area_weights_cover_each_cell_once() {
        // 5 -> 2: each cell covers 2.5 source pixels; the middle pixel is shared half/half.
        let taps = area_taps(5, 2);
        for d in 0..2 {
            let total: f32 = taps.iter().filter(|t| t.dst == d).map(|t| t.weight).sum();
            assert!((total - 1.0).abs() < 1e-6, "cell {d} sums to {total}");
        }
        assert!(taps
            .iter()
            .any(|t| t.dst == 1 && t.src == 2 && (t.weight - 0.2).abs() < 1e-6));
    }

    /// OpenCV's area resize read literally, pixel by pixel: each destination pixel is the sum, over
    /// its row taps in order, of the row weight times that row's horizontal sum (its column taps
    /// in order, from zero). [`resize_area`] must give the same bytes however it is organised.
    fn area_by_definition(src: &MappedView, dst_w: u32, dst_h: u32) -> Vec<u8> {
        let (xtaps, ytaps) = (
            area_taps(src.width(), dst_w),
            area_taps(src.height(), dst_h),
        );
        let mut rows = vec![vec![0u8; src.width() as usize * 3]; src.height() as usize];
        for (r, row) in rows.iter_mut().enumerate() {
            src.copy_row(r as u32, row);
        }
        let mut out = Vec::new();
        for dy in 0..dst_h as usize {
            for dx in 0..dst_w as usize {
                for c in 0..3 {
                    let mut sum: Option<f32> = None;
                    for ty in ytaps.iter().filter(|t| t.dst == dy) {
                        let mut across = 0f32;
                        for tx in xtaps.iter().filter(|t| t.dst == dx) {
                            across += rows[ty.src][tx.src * 3 + c] as f32 * tx.weight;
                        }
                        let term = ty.weight * across;
                        sum = Some(sum.map_or(term, |s| s + term));
                    }
                    out.push(sum.unwrap().round_ties_even().clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    /// Split between two threads (a large output), the bilinear resize gives the bytes it gives
    /// on one, shrinking and enlarging, from a window inside the photo.
    #[test]
    fn bilinear_resize_on_two_threads_gives_the_bytes_of_one() {
        let img = RgbImage::from_fn(643, 481, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (x * y / 5) as u8])
        });
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let full = Window {
            x: 0,
            y: 0,
            w: 643,
            h: 481,
        };
        let inside = Window {
            x: 17,
            y: 9,
            w: 300,
            h: 250,
        };
        for (window, w, h) in [(full, 320, 240), (full, 211, 377), (inside, 400, 333)] {
            assert!((w * h * 3) as usize >= PARALLEL_MIN_BYTES);
            let one = pool(1).install(|| resize_bilinear(&img, window, w, h));
            let two = pool(2).install(|| resize_bilinear(&img, window, w, h));
            assert!(one == two, "{window:?} -> {w}x{h}");
        }
    }

    /// The vector horizontal pass of the bilinear resize gives the portable pass's values:
    /// down- and upscales, windows ending at the row's end (the last columns' 8-byte reads would
    /// run past it) and an odd column count.
    #[test]
    fn bilinear_passes_agree() {
        let row: Vec<u8> = (0..3 * 101).map(|i| (i * 89 % 256) as u8).collect();
        for (src, dst) in [(101, 23), (101, 40), (37, 101), (101, 101), (2, 9)] {
            let columns = LinearColumns::new(linear_taps(src, dst, true));
            let row = &row[row.len() - 3 * src as usize..];
            let (mut vector, mut portable) =
                (vec![0; 3 * dst as usize + 1], vec![0; 3 * dst as usize + 1]);
            columns.pass(row, &mut vector);
            columns.pass_columns(0, row, &mut portable);
            assert_eq!(
                vector[..3 * dst as usize],
                portable[..3 * dst as usize],
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn area_resize_gives_the_bytes_of_its_definition() {
        // Non-integer scales (OpenCV's general path), one with a mirrored border.
        let img = RgbImage::from_fn(97, 83, |x, y| {
            image::Rgb([
                (x * 7 + y * 3) as u8,
                (x * y % 251) as u8,
                ((x ^ y) * 5) as u8,
            ])
        });
        for (square, dst) in [([3, 5, 70], 16), ([-9, 40, 61], 13), ([20, 1, 128], 30)] {
            let [x, y, side] = square;
            let view = MappedView::new(&img, x, y, side as u32);
            assert_eq!(
                resize_area(&view, dst, dst),
                area_by_definition(&view, dst, dst),
                "square {square:?} -> {dst}"
            );
        }
    }

    #[test]
    fn lanczos_weights_interpolate() {
        // At offset 0 the source pixel itself carries all the weight.
        let w = lanczos4_weights(0.0);
        assert!((w[3] - 1.0).abs() < 1e-6 && w.iter().map(|v| v.abs()).sum::<f32>() < 1.0 + 1e-5);
        // A constant image stays constant through an upscale.
        let img = RgbImage::from_pixel(5, 5, image::Rgb([9, 99, 200]));
        let out = resize_square_reflect101(&img, [0, 0, 5], 12);
        assert!(out.chunks_exact(3).all(|p| p == [9, 99, 200]));
    }

    #[test]
    fn identity_resize_keeps_pixels_and_halving_averages() {
        let img = RgbImage::from_fn(4, 2, |x, y| image::Rgb([(x * 10 + y) as u8, 7, 200]));
        let full = Window {
            x: 0,
            y: 0,
            w: 4,
            h: 2,
        };
        assert_eq!(resize_bilinear(&img, full, 4, 2), img.as_raw().clone());
        let half = resize_bilinear(&img, full, 2, 1);
        // Each output pixel is the mean of a 2x2 block (half-pixel centres).
        assert_eq!(&half[..3], &[6, 7, 200]);
        assert_eq!(&half[3..], &[26, 7, 200]);
    }
}
