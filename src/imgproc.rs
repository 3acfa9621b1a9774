//! Pixel geometry shared by the networks: the anti-spoof crop rule, OpenCV-compatible bilinear
//! resizing, and conversion to planar BGR tensors.

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
    // Horizontal pass for one source row into an i32 buffer.
    let hpass = |sy: u32, buf: &mut [i32]| {
        let row = &src[(window.y + sy) as usize * stride + window.x as usize * CN..];
        for (d, &(s0, s1, w0, w1)) in xs.iter().enumerate() {
            let (p0, p1) = (s0 as usize * CN, s1 as usize * CN);
            for c in 0..CN {
                buf[d * CN + c] = row[p0 + c] as i32 * w0 + row[p1 + c] as i32 * w1;
            }
        }
    };
    let mut out = vec![0u8; row_len * dst_h as usize];
    let (mut buf0, mut buf1) = (vec![0i32; row_len], vec![0i32; row_len]);
    let mut cached: (Option<u32>, Option<u32>) = (None, None);
    for (dy, &(sy0, sy1, b0, b1)) in ys.iter().enumerate() {
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
        let dst = &mut out[dy * row_len..(dy + 1) * row_len];
        for ((o, &a), &b) in dst.iter_mut().zip(&buf0).zip(&buf1) {
            // OpenCV's SIMD rounding (VResizeLinearVec_32s8u), which is what cv2 runs for every
            // pixel of a 3-channel row: drop 4 bits, multiply-high by the 16-bit weight, then
            // round off the last 2 bits. The scalar `(a*b0 + b*b1 + 2^21) >> 22` differs by 1 on
            // ~12% of the pixels of the golden mask crop.
            let v = (((a >> 4) * b0) >> 16) + (((b >> 4) * b1) >> 16);
            *o = ((v + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    out
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
