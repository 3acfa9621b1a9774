//! MediaPipe FaceMesh (468 landmarks, float32 `face_landmark.tflite`) as native candle code.
//!
//! The graph (see `face_landmark_468_fp32.ops.json`) is a BlazeFace-style residual network:
//!
//! ```text
//! 192x192x3 -> conv2d 3x3/2 + PReLU -> 96x96x16
//!   residual blocks: depthwise 3x3 (stride 1 or 2) -> 1x1 conv -> + shortcut -> PReLU
//!   (stride-2 shortcut: 2x2 max-pool, then zero channels appended when the width grows)
//!   16@96 x2, 32@48 x3, 64@24 x3, 128@12 x3, 128@6 x3                 -> p_re_lu_14 (6x6x128)
//! mesh head:     block 128@3 (s2), 2 blocks 128@3, 1x1 128->32 + PReLU, block 32@3,
//!                conv 3x3/3 valid -> 1404 = 468 x (x, y, z) in crop pixels
//! presence head: block 128@3 (s2), 1x1 128->32 + PReLU, block 32@3, conv 3x3/3 valid -> logit
//! ```
//!
//! Weights come from `models/face_landmark_468.safetensors` (`convert-facemesh landmarks`), named
//! after the TFLite layers: `conv2d_N.{weight,bias}` (OIHW), `depthwise_conv2d_N.{weight,bias}`
//! (`[C,1,3,3]`), `p_re_lu_N.alpha` (`[C]`). Every convolution runs through
//! [`FusedConv2d`]; a stride-1 block adds its shortcut and applies its PReLU inside the pointwise
//! convolution, a stride-2 block does the shortcut (max-pool, channel padding), the add and the
//! PReLU in one pass ([`PooledResidualPRelu`]). The network runs NCHW.
//!
//! [`mesh_input`] builds the network input from a photo and a detector box, and [`RoiTransform`]
//! maps the landmarks back to image pixels.

use crate::nn::conv::{contiguous_f32, Activation, ConvGeometry, FusedConv2d};
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Side of the square network input, in pixels.
pub const INPUT_SIZE: usize = 192;
/// Number of landmarks the network predicts.
pub const NUM_LANDMARKS: usize = 468;
/// Scale of the square region of interest relative to the detector box (MediaPipe: 1.5).
pub const ROI_SCALE: f32 = 1.5;

/// TFLite layer names: `base` for index 0, `base_N` otherwise.
fn layer(base: &str, index: usize) -> String {
    if index == 0 {
        base.to_string()
    } else {
        format!("{base}_{index}")
    }
}

/// TensorFlow "SAME" padding `[top, left, bottom, right]` of a square `k`x`k`, stride-`s` window
/// on a square `size`x`size` input (the extra pixel goes to the bottom/right).
fn same_padding(size: usize, k: usize, s: usize) -> [usize; 4] {
    let out = size.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(size);
    let (before, after) = (total / 2, total - total / 2);
    [before, before, after, after]
}

fn prelu_slopes(vb: &VarBuilder, index: usize, channels: usize) -> Result<Vec<f32>> {
    vb.pp(layer("p_re_lu", index))
        .get(channels, "alpha")?
        .to_vec1()
}

/// A `conv2d_N` layer (bias included) followed by the activation.
fn conv(
    vb: &VarBuilder,
    index: usize,
    shape: (usize, usize, usize, usize),
    geometry: ConvGeometry,
    activation: Activation,
) -> Result<FusedConv2d> {
    let vb = vb.pp(layer("conv2d", index));
    let weight = vb.get(shape, "weight")?;
    let bias = vb.get(shape.0, "bias")?;
    FusedConv2d::new(&weight, Some(&bias), geometry, activation)
}

/// Add + PReLU after a stride-2 residual block, with the shortcut taken from the block input
/// 2x2 max-pooled; channels the shortcut lacks count as zeros (TFLite PAD on the channel axis).
/// Inputs: `(branch [N,C,H,W], block input [N,Cs,2H,2W])`. (Stride-1 blocks add their shortcut
/// inside the pointwise convolution instead.)
#[derive(Debug, Clone)]
struct PooledResidualPRelu {
    slopes: Vec<f32>,
}

impl CustomOp2 for PooledResidualPRelu {
    fn name(&self) -> &'static str {
        "facemesh-pooled-residual-prelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (n2, cs, hs, ws) = l2.shape().dims4()?;
        if n2 != n || cs > c || hs / 2 != h || ws / 2 != w || self.slopes.len() != c {
            candle_core::bail!(
                "residual shapes do not match: {:?} and {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let (branch, shortcut) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        // Written as a select (not a conditional store) so that it vectorises.
        let prelu = |v: f32, a: f32| if v < 0.0 { v * a } else { v };
        let plane = h * w;
        let mut out = vec![0f32; n * c * plane];
        for (i, (dst, src)) in out
            .chunks_exact_mut(plane)
            .zip(branch.chunks_exact(plane))
            .enumerate()
        {
            let (b, ch) = (i / c, i % c);
            let a = self.slopes[ch];
            if ch >= cs {
                // Channel padding: the shortcut contributes zeros.
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d = prelu(v, a));
                continue;
            }
            let short = &shortcut[(b * cs + ch) * hs * ws..][..hs * ws];
            for y in 0..h {
                let r0 = &short[2 * y * ws..][..2 * w];
                let r1 = &short[(2 * y + 1) * ws..][..2 * w];
                let row = dst[y * w..(y + 1) * w]
                    .iter_mut()
                    .zip(&src[y * w..(y + 1) * w])
                    .zip(r0.chunks_exact(2).zip(r1.chunks_exact(2)));
                for ((d, &v), (p0, p1)) in row {
                    *d = prelu(v + p0[0].max(p0[1]).max(p1[0].max(p1[1])), a);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// Residual block: depthwise 3x3 -> 1x1 conv -> add shortcut -> PReLU.
#[derive(Debug, Clone)]
struct Block {
    depthwise: FusedConv2d,
    pointwise: FusedConv2d,
    /// The add and PReLU of a stride-2 block. `None` for stride 1 (equal channels):
    /// `pointwise` then carries the PReLU and adds the shortcut in its GEMM.
    pooled: Option<PooledResidualPRelu>,
}

impl Block {
    /// Layers `depthwise_conv2d_{dw}`, `conv2d_{pw}`, `p_re_lu_{act}`; `size` is the input side.
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: &VarBuilder,
        (dw, pw, act): (usize, usize, usize),
        size: usize,
        stride: usize,
        cin: usize,
        cout: usize,
    ) -> Result<Self> {
        let dvb = vb.pp(layer("depthwise_conv2d", dw));
        let depthwise = FusedConv2d::new(
            &dvb.get((cin, 1, 3, 3), "weight")?,
            Some(&dvb.get(cin, "bias")?),
            ConvGeometry {
                stride,
                padding: same_padding(size, 3, stride),
                groups: cin,
            },
            Activation::Identity,
        )?;
        let slopes = prelu_slopes(vb, act, cout)?;
        let (activation, pooled) = match (stride, cin == cout) {
            (1, true) => (Activation::PRelu(slopes), None),
            (2, _) => (Activation::Identity, Some(PooledResidualPRelu { slopes })),
            _ => candle_core::bail!("no FaceMesh block has stride {stride} and {cin}->{cout}"),
        };
        let pointwise = conv(
            vb,
            pw,
            (cout, cin, 1, 1),
            ConvGeometry::new(1, 0, 1),
            activation,
        )?;
        Ok(Self {
            depthwise,
            pointwise,
            pooled,
        })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.depthwise.forward(x)?;
        match &self.pooled {
            None => self.pointwise.forward_with_shortcut(&hidden, x),
            Some(pooled) => self.pointwise.forward(&hidden)?.apply_op2_no_bwd(x, pooled),
        }
    }
}

/// One output head at 3x3: 128-channel blocks (the first one downsamples), a 1x1 conv + PReLU
/// to 32 channels, one 32-channel block, then the final 3x3/3 valid conv.
#[derive(Debug, Clone)]
struct Head {
    wide: Vec<Block>,
    narrow: FusedConv2d,
    tail: Block,
    out: FusedConv2d,
}

impl Module for Head {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.wide {
            x = block.forward(&x)?;
        }
        let x = self.tail.forward(&self.narrow.forward(&x)?)?;
        self.out.forward(&x)
    }
}

/// The FaceMesh network.
#[derive(Debug, Clone)]
pub struct FaceMesh {
    stem: FusedConv2d,
    backbone: Vec<Block>,
    mesh: Head,
    presence: Head,
}

/// Landmarks and face-presence logit of one face.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshOutput {
    /// 468 x (x, y, z) in pixels of the 192x192 input crop (x right, y down, z: smaller = closer).
    pub landmarks: Vec<[f32; 3]>,
    /// Face-presence logit; `sigmoid > 0.5` (logit > 0) means a face. A low value on a detected
    /// face is evidence of a false detection.
    pub presence_logit: f32,
}

impl FaceMesh {
    /// Builds the network from weights named as written by `convert-facemesh landmarks`.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let stem = conv(
            &vb,
            0,
            (16, 3, 3, 3),
            ConvGeometry {
                stride: 2,
                padding: same_padding(INPUT_SIZE, 3, 2),
                groups: 1,
            },
            Activation::PRelu(prelu_slopes(&vb, 0, 16)?),
        )?;
        // Block i uses depthwise_conv2d_i, conv2d_{i+1}, p_re_lu_{i+1}: (stride, cin, cout).
        let stages: [(usize, usize, usize); 14] = [
            (1, 16, 16),
            (1, 16, 16),
            (2, 16, 32),
            (1, 32, 32),
            (1, 32, 32),
            (2, 32, 64),
            (1, 64, 64),
            (1, 64, 64),
            (2, 64, 128),
            (1, 128, 128),
            (1, 128, 128),
            (2, 128, 128),
            (1, 128, 128),
            (1, 128, 128),
        ];
        let mut size = INPUT_SIZE / 2;
        let mut backbone = Vec::new();
        for (i, &(stride, cin, cout)) in stages.iter().enumerate() {
            backbone.push(Block::new(&vb, (i, i + 1, i + 1), size, stride, cin, cout)?);
            size /= stride;
        }
        let head_out = |index: usize, channels: usize| {
            conv(
                &vb,
                index,
                (channels, 32, 3, 3),
                ConvGeometry::new(3, 0, 1),
                Activation::Identity,
            )
        };
        let narrow = |index: usize, act: usize| {
            conv(
                &vb,
                index,
                (32, 128, 1, 1),
                ConvGeometry::new(1, 0, 1),
                Activation::PRelu(prelu_slopes(&vb, act, 32)?),
            )
        };
        let half = size / 2;
        let mesh = Head {
            wide: vec![
                Block::new(&vb, (14, 15, 15), size, 2, 128, 128)?,
                Block::new(&vb, (15, 16, 16), half, 1, 128, 128)?,
                Block::new(&vb, (16, 17, 17), half, 1, 128, 128)?,
            ],
            narrow: narrow(18, 18)?,
            tail: Block::new(&vb, (17, 19, 19), half, 1, 32, 32)?,
            out: head_out(20, 3 * NUM_LANDMARKS)?,
        };
        let presence = Head {
            wide: vec![Block::new(&vb, (22, 27, 25), size, 2, 128, 128)?],
            narrow: narrow(28, 26)?,
            tail: Block::new(&vb, (23, 29, 27), half, 1, 32, 32)?,
            out: head_out(30, 1)?,
        };
        Ok(Self {
            stem,
            backbone,
            mesh,
            presence,
        })
    }

    /// Loads `face_landmark_468.safetensors`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(super::load_weights(path)?)
    }

    /// Runs the network on `[N,3,192,192]` RGB in `[0,1]` (NCHW). Returns the landmarks
    /// `[N,468,3]` in crop pixels and the presence logits `[N]`.
    pub fn forward(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = input.dim(0)?;
        let mut x = self.stem.forward(input)?;
        for block in &self.backbone {
            x = block.forward(&x)?;
        }
        let landmarks = self.mesh.forward(&x)?.reshape((n, NUM_LANDMARKS, 3))?;
        let presence = self.presence.forward(&x)?.reshape(n)?;
        Ok((landmarks, presence))
    }

    /// Runs one `[1,3,192,192]` input (e.g. from [`mesh_input`]).
    pub fn run(&self, input: &Tensor) -> Result<MeshOutput> {
        let (landmarks, presence) = self.forward(input)?;
        let flat: Vec<f32> = landmarks.flatten_all()?.to_vec1()?;
        Ok(MeshOutput {
            landmarks: flat.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(),
            presence_logit: presence.to_vec1::<f32>()?[0],
        })
    }
}

/// Where the 192x192 crop lies in the photo: a square of side `size` pixels centred on `centre`,
/// rotated by `angle` radians (image coordinates, y down; positive = clockwise as displayed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiTransform {
    /// ROI centre in image pixels (continuous coordinates: pixel `i` covers `[i, i+1)`).
    pub centre: [f32; 2],
    /// ROI side in image pixels.
    pub size: f32,
    /// Rotation of the ROI's x axis from the image x axis, in radians.
    pub angle: f32,
}

impl RoiTransform {
    /// Crop coordinates (pixels of the 192x192 input, continuous) to image coordinates.
    /// `z` is scaled like x and y.
    pub fn to_image(&self, p: [f32; 3]) -> [f32; 3] {
        let k = self.size as f64 / INPUT_SIZE as f64;
        let (sin, cos) = (self.angle as f64).sin_cos();
        let u = (p[0] as f64 - INPUT_SIZE as f64 / 2.0) * k;
        let v = (p[1] as f64 - INPUT_SIZE as f64 / 2.0) * k;
        [
            (self.centre[0] as f64 + u * cos - v * sin) as f32,
            (self.centre[1] as f64 + u * sin + v * cos) as f32,
            (p[2] as f64 * k) as f32,
        ]
    }

    /// Image coordinates to crop coordinates (inverse of [`RoiTransform::to_image`]).
    pub fn to_crop(&self, p: [f32; 3]) -> [f32; 3] {
        let k = INPUT_SIZE as f64 / self.size as f64;
        let (sin, cos) = (self.angle as f64).sin_cos();
        let dx = p[0] as f64 - self.centre[0] as f64;
        let dy = p[1] as f64 - self.centre[1] as f64;
        [
            ((dx * cos + dy * sin) * k + INPUT_SIZE as f64 / 2.0) as f32,
            ((-dx * sin + dy * cos) * k + INPUT_SIZE as f64 / 2.0) as f32,
            (p[2] as f64 * k) as f32,
        ]
    }
}

/// Output rows ahead of the current one whose source lines [`mesh_input`] prefetches.
const PREFETCH_ROWS_AHEAD: usize = 1;
/// Output columns between prefetched samples: at most a cache line apart for ROIs up to about
/// 4 x 192 pixels wide (nearer lines are fetched twice, which costs little).
const PREFETCH_STEP: usize = 4;

/// Asks the CPU to bring the cache line holding `byte` into cache (a hint; no-op off x86-64).
#[inline(always)]
fn prefetch(byte: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, and `byte` is a valid reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((byte as *const u8).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

/// `x.floor() as i64` without a libm call (baseline x86-64 has no rounding instruction).
#[inline]
fn floor(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) > x {
        t - 1
    } else {
        t
    }
}

/// Builds the FaceMesh input for one detected face: a square ROI of [`ROI_SCALE`] x the longer
/// side of `face_ltrb` around the box centre, rotated so that the line from `left_eye` to
/// `right_eye` (the detector's image-left and image-right eyes) is horizontal, sampled bilinearly
/// to 192x192 (pixel centres; outside the photo reads as black) and scaled to `[0,1]`.
/// Returns the `[1,3,192,192]` tensor and the transform that maps landmarks back to the photo.
pub fn mesh_input(
    img: &image::RgbImage,
    face_ltrb: [f32; 4],
    left_eye: [f32; 2],
    right_eye: [f32; 2],
) -> Result<(Tensor, RoiTransform)> {
    let [l, t, r, b] = face_ltrb;
    let roi = RoiTransform {
        centre: [(l + r) / 2.0, (t + b) / 2.0],
        size: ROI_SCALE * (r - l).max(b - t),
        angle: (right_eye[1] - left_eye[1]).atan2(right_eye[0] - left_eye[0]),
    };
    if !(roi.size.is_finite() && roi.size > 0.0 && roi.angle.is_finite()) {
        candle_core::bail!("degenerate face box {face_ltrb:?} or eyes {left_eye:?} {right_eye:?}");
    }
    let plane = INPUT_SIZE * INPUT_SIZE;
    let mut out = vec![0f32; 3 * plane];
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    let sampler = Sampler::new(img, &roi);
    for v in 0..INPUT_SIZE {
        let row = v * INPUT_SIZE..(v + 1) * INPUT_SIZE;
        sampler.row(
            v,
            [
                &mut red[row.clone()],
                &mut green[row.clone()],
                &mut blue[row],
            ],
        );
    }
    let tensor = Tensor::from_vec(out, (1, 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu)?;
    Ok((tensor, roi))
}

/// The bilinear sampling of [`mesh_input`]: crop pixel `(u, v)`'s centre lies at image position
/// `origin + u * step_u + v * step_v` (pixel-centre positions: image pixel `i` has its centre at
/// `i + 0.5`); a 2x2 neighbourhood outside the photo reads as black.
struct Sampler<'a> {
    raw: &'a [u8],
    /// Bytes per image row.
    stride: usize,
    w: i64,
    h: i64,
    origin: [f64; 2],
    step_u: [f64; 2],
    step_v: [f64; 2],
    /// Bytes to floats by table (see `Levels`), and the in-photo neighbourhoods read as two
    /// 6-byte runs: 1.30 -> 0.51 ms for a face of a 1080p photo (0.59 with the table alone).
    levels: crate::imgproc::Levels,
    /// Whether [`Self::row`] runs `row_avx2`: the CPU has AVX2 and every byte offset in the
    /// photo fits the gathers' `i32`.
    #[cfg(target_arch = "x86_64")]
    vectorised: bool,
}

impl<'a> Sampler<'a> {
    fn new(img: &'a image::RgbImage, roi: &RoiTransform) -> Self {
        let k = roi.size as f64 / INPUT_SIZE as f64;
        let (sin, cos) = (roi.angle as f64).sin_cos();
        let [x, y, _] = roi.to_image([0.5, 0.5, 0.0]).map(|c| c as f64 - 0.5);
        let raw = img.as_raw();
        Self {
            raw,
            stride: img.width() as usize * 3,
            w: img.width() as i64,
            h: img.height() as i64,
            origin: [x, y],
            step_u: [k * cos, k * sin],
            step_v: [-k * sin, k * cos],
            levels: crate::imgproc::Levels::new(),
            #[cfg(target_arch = "x86_64")]
            vectorised: is_x86_feature_detected!("avx2") && raw.len() <= i32::MAX as usize,
        }
    }

    /// Image position of crop pixel `(u, v)`'s centre.
    #[inline(always)]
    fn position(&self, u: usize, v: usize) -> (f64, f64) {
        let (u, v) = (u as f64, v as f64);
        (
            self.origin[0] + u * self.step_u[0] + v * self.step_v[0],
            self.origin[1] + u * self.step_u[1] + v * self.step_v[1],
        )
    }

    /// The photo is usually out of cache by now, and a row of samples crosses many lines: each
    /// sample row fetches the lines of the next one, a sample in 4. For a face of a 1080p photo,
    /// 30 runs after writing 64 MiB, in a throwaway harness: 1.76 -> 0.81-0.86 ms (warm: 0.51 ->
    /// 0.47); 2 to 16 rows ahead, or a whole row's lines at once, did worse. `liveness bench
    /// --preprocessing` times this step, caches warm and flushed.
    #[inline(always)]
    fn prefetch_for(&self, u: usize, v: usize) {
        let ahead = v + PREFETCH_ROWS_AHEAD;
        if !u.is_multiple_of(PREFETCH_STEP) || ahead >= INPUT_SIZE {
            return;
        }
        let (x, y) = self.position(u, ahead);
        let (x0, y0) = (floor(x), floor(y));
        if x0 >= 0 && y0 >= 0 && x0 < self.w && y0 + 1 < self.h {
            let i = y0 as usize * self.stride + x0 as usize * 3;
            prefetch(&self.raw[i]);
            prefetch(&self.raw[i + self.stride]);
        }
    }

    fn pixel(&self, x: i64, y: i64) -> [f32; 3] {
        if x < 0 || y < 0 || x >= self.w || y >= self.h {
            [0.0; 3]
        } else {
            let i = y as usize * self.stride + x as usize * 3;
            let levels = &self.levels;
            [
                levels[self.raw[i]],
                levels[self.raw[i + 1]],
                levels[self.raw[i + 2]],
            ]
        }
    }

    /// Crop pixel `(u, v)`: red, green and blue in `[0, 1]`.
    #[inline(always)]
    fn sample(&self, u: usize, v: usize) -> [f32; 3] {
        let (x, y) = self.position(u, v);
        let (x0, y0) = (floor(x), floor(y));
        let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
        // The 2x2 neighbourhood: two 6-byte runs when it lies inside the photo.
        let [p00, p10, p01, p11] = if x0 >= 0 && y0 >= 0 && x0 + 1 < self.w && y0 + 1 < self.h {
            let i = y0 as usize * self.stride + x0 as usize * 3;
            let (top, bottom) = (
                &self.raw[i..i + 6],
                &self.raw[i + self.stride..i + self.stride + 6],
            );
            let levels = &self.levels;
            let rgb = |p: &[u8]| [levels[p[0]], levels[p[1]], levels[p[2]]];
            [rgb(top), rgb(&top[3..]), rgb(bottom), rgb(&bottom[3..])]
        } else {
            [
                self.pixel(x0, y0),
                self.pixel(x0 + 1, y0),
                self.pixel(x0, y0 + 1),
                self.pixel(x0 + 1, y0 + 1),
            ]
        };
        std::array::from_fn(|c| {
            let top = p00[c] * (1.0 - fx) + p10[c] * fx;
            let bottom = p01[c] * (1.0 - fx) + p11[c] * fx;
            (top * (1.0 - fy) + bottom * fy) / 255.0
        })
    }

    /// Crop row `v` into `rows` (red, green, blue; [`INPUT_SIZE`] values each).
    fn row(&self, v: usize, rows: [&mut [f32]; 3]) {
        #[cfg(target_arch = "x86_64")]
        if self.vectorised {
            // SAFETY: the CPU supports AVX2; the photo's byte offsets fit the gathers' i32.
            return unsafe { self.row_avx2(v, rows) };
        }
        self.row_one_by_one(v, rows);
    }

    /// [`Self::row`] one sample at a time.
    fn row_one_by_one(&self, v: usize, [red, green, blue]: [&mut [f32]; 3]) {
        for u in 0..INPUT_SIZE {
            self.prefetch_for(u, v);
            [red[u], green[u], blue[u]] = self.sample(u, v);
        }
    }

    /// [`Self::row`] 8 samples at a time: positions in `f64` as [`Self::sample`] computes them,
    /// the four neighbours gathered as 4 bytes each (the 4th byte is not used) where all 8
    /// neighbourhoods lie inside the photo with a column to spare (so that no gather reads past
    /// its end), [`Self::sample`] for the 8 otherwise. Products and sums are rounded as
    /// [`Self::sample`] rounds them (multiply, then add; no FMA), so the crop is the same.
    ///
    /// # Safety
    /// The CPU must support AVX2; the photo must hold at most `i32::MAX` bytes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn row_avx2(&self, v: usize, rows: [&mut [f32]; 3]) {
        use std::arch::x86_64::*;
        const LANES: usize = 8;
        const _: () = assert!(INPUT_SIZE.is_multiple_of(LANES));
        let (vf, stride) = (v as f64, self.stride as i32);
        // `origin + u * step_u` plus `v * step_v`, summed in the scalar order.
        let row_x = _mm256_set1_pd(vf * self.step_v[0]);
        let row_y = _mm256_set1_pd(vf * self.step_v[1]);
        let (origin_x, origin_y) = (
            _mm256_set1_pd(self.origin[0]),
            _mm256_set1_pd(self.origin[1]),
        );
        let (step_x, step_y) = (
            _mm256_set1_pd(self.step_u[0]),
            _mm256_set1_pd(self.step_u[1]),
        );
        // Neighbourhoods inside with a column to spare: x0 >= 0, x0 + 2 < w, y0 >= 0, y0 + 1 < h.
        let (x_max, y_max) = (
            _mm256_set1_pd((self.w - 2) as f64),
            _mm256_set1_pd((self.h - 1) as f64),
        );
        let zero = _mm256_setzero_pd();
        let half = |u: __m256d| {
            let x = _mm256_add_pd(_mm256_add_pd(origin_x, _mm256_mul_pd(u, step_x)), row_x);
            let y = _mm256_add_pd(_mm256_add_pd(origin_y, _mm256_mul_pd(u, step_y)), row_y);
            let (x0, y0) = (_mm256_floor_pd(x), _mm256_floor_pd(y));
            let inside = _mm256_and_pd(
                _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_GE_OQ>(x0, zero),
                    _mm256_cmp_pd::<_CMP_LT_OQ>(x0, x_max),
                ),
                _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_GE_OQ>(y0, zero),
                    _mm256_cmp_pd::<_CMP_LT_OQ>(y0, y_max),
                ),
            );
            let fractions = (
                _mm256_cvtpd_ps(_mm256_sub_pd(x, x0)),
                _mm256_cvtpd_ps(_mm256_sub_pd(y, y0)),
            );
            (x0, y0, fractions, _mm256_movemask_pd(inside) == 0b1111)
        };
        let channel = |bytes: __m256i, c: usize| {
            let shifted = _mm256_srlv_epi32(bytes, _mm256_set1_epi32(8 * c as i32));
            _mm256_cvtepi32_ps(_mm256_and_si256(shifted, _mm256_set1_epi32(0xff)))
        };
        let (one, scale) = (_mm256_set1_ps(1.0), _mm256_set1_ps(255.0));
        let base = self.raw.as_ptr().cast::<i32>();
        let [red, green, blue] = rows;
        for u0 in (0..INPUT_SIZE).step_by(LANES) {
            self.prefetch_for(u0, v);
            self.prefetch_for(u0 + PREFETCH_STEP, v);
            let u = |k: usize| (u0 + k) as f64;
            let (x0a, y0a, (fxa, fya), inside_a) = half(_mm256_setr_pd(u(0), u(1), u(2), u(3)));
            let (x0b, y0b, (fxb, fyb), inside_b) = half(_mm256_setr_pd(u(4), u(5), u(6), u(7)));
            if !(inside_a && inside_b) {
                for u in u0..u0 + LANES {
                    [red[u], green[u], blue[u]] = self.sample(u, v);
                }
                continue;
            }
            let x0 = _mm256_set_m128i(_mm256_cvtpd_epi32(x0b), _mm256_cvtpd_epi32(x0a));
            let y0 = _mm256_set_m128i(_mm256_cvtpd_epi32(y0b), _mm256_cvtpd_epi32(y0a));
            let (fx, fy) = (_mm256_set_m128(fxb, fxa), _mm256_set_m128(fyb, fya));
            let top = _mm256_add_epi32(
                _mm256_mullo_epi32(y0, _mm256_set1_epi32(stride)),
                _mm256_mullo_epi32(x0, _mm256_set1_epi32(3)),
            );
            let bottom = _mm256_add_epi32(top, _mm256_set1_epi32(stride));
            let three = _mm256_set1_epi32(3);
            // SAFETY: every neighbourhood lies inside the photo with a column to spare, so the
            // 4 bytes read at each offset (the last: a pixel's 3 and the next pixel's first)
            // are the photo's; offsets fit i32 (the caller's promise).
            let [p00, p10, p01, p11] = unsafe {
                [
                    _mm256_i32gather_epi32::<1>(base, top),
                    _mm256_i32gather_epi32::<1>(base, _mm256_add_epi32(top, three)),
                    _mm256_i32gather_epi32::<1>(base, bottom),
                    _mm256_i32gather_epi32::<1>(base, _mm256_add_epi32(bottom, three)),
                ]
            };
            let (rest_x, rest_y) = (_mm256_sub_ps(one, fx), _mm256_sub_ps(one, fy));
            for (c, plane) in [&mut *red, &mut *green, &mut *blue].into_iter().enumerate() {
                let lerp = |a: __m256i, b: __m256i| {
                    _mm256_add_ps(
                        _mm256_mul_ps(channel(a, c), rest_x),
                        _mm256_mul_ps(channel(b, c), fx),
                    )
                };
                let (top, bottom) = (lerp(p00, p10), lerp(p01, p11));
                let value = _mm256_div_ps(
                    _mm256_add_ps(_mm256_mul_ps(top, rest_y), _mm256_mul_ps(bottom, fy)),
                    scale,
                );
                // SAFETY: `u0 + 8 <= INPUT_SIZE` values of the row.
                unsafe { _mm256_storeu_ps(plane[u0..u0 + LANES].as_mut_ptr(), value) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(192, 3, 2), [0, 0, 1, 1]);
        assert_eq!(same_padding(96, 3, 1), [1, 1, 1, 1]);
        assert_eq!(same_padding(7, 3, 2), [1, 1, 1, 1]);
        assert_eq!(same_padding(3, 3, 3), [0, 0, 0, 0]);
    }

    #[test]
    fn floor_matches_std() {
        for x in [-2.5, -1.0, -0.5, -0.0, 0.0, 0.25, 1.0, 2.7, 191.99] {
            assert_eq!(floor(x), x.floor() as i64, "{x}");
        }
    }

    /// The vectorised rows give the crop one sample at a time gives, bit for bit: ROIs inside
    /// the photo, across each of its edges and corners, turned and not, larger and smaller than
    /// the crop. Only where the rows are vectorised (x86-64 with AVX2).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sampled_rows_match_one_sample_at_a_time() {
        let (w, h) = (301u32, 203u32);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503);
            image::Rgb([(v >> 3) as u8, (v >> 11) as u8, (v >> 19) as u8])
        });
        let rois = [
            ([150.0, 100.0], 120.0, 0.0),
            ([150.0, 100.0], 150.0, 0.37),
            ([20.0, 30.0], 90.0, -1.2),
            ([290.0, 195.0], 60.0, 2.9),
            ([150.0, 5.0], 400.0, 0.01),
            ([299.7, 100.2], 33.3, 1.5),
        ];
        for (centre, size, angle) in rois {
            let roi = RoiTransform {
                centre,
                size,
                angle,
            };
            let sampler = Sampler::new(&img, &roi);
            if !sampler.vectorised {
                return;
            }
            for v in 0..INPUT_SIZE {
                let mut fast = vec![[0f32; INPUT_SIZE]; 3];
                let mut slow = fast.clone();
                let [r, g, b] = &mut fast[..] else {
                    unreachable!()
                };
                sampler.row(v, [r, g, b]);
                let [r, g, b] = &mut slow[..] else {
                    unreachable!()
                };
                sampler.row_one_by_one(v, [r, g, b]);
                for c in 0..3 {
                    for u in 0..INPUT_SIZE {
                        assert_eq!(
                            fast[c][u].to_bits(),
                            slow[c][u].to_bits(),
                            "roi {centre:?} {size} {angle}: row {v}, column {u}, channel {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn roi_transform_round_trips() {
        let roi = RoiTransform {
            centre: [120.0, 80.5],
            size: 150.0,
            angle: 0.3,
        };
        for p in [[0.0, 0.0, 1.0], [96.0, 96.0, -3.0], [191.5, 12.25, 0.0]] {
            let back = roi.to_crop(roi.to_image(p));
            for k in 0..3 {
                assert!((back[k] - p[k]).abs() < 1e-4, "{p:?} -> {back:?}");
            }
        }
        // The crop centre is the ROI centre; the crop x axis follows the angle.
        assert_eq!(roi.to_image([96.0, 96.0, 0.0])[..2], [120.0, 80.5]);
        let right = roi.to_image([96.0 + 192.0, 96.0, 0.0]);
        assert!((right[0] - (120.0 + 150.0 * 0.3f32.cos())).abs() < 1e-3);
        assert!((right[1] - (80.5 + 150.0 * 0.3f32.sin())).abs() < 1e-3);
    }

    #[test]
    fn residual_pools_pads_and_activates() -> Result<()> {
        let dev = Device::Cpu;
        // branch [1,2,1,1]; shortcut [1,1,2,2] pooled to 1x1, second channel padded with zero.
        let branch = Tensor::new(&[-10f32, -2.0], &dev)?.reshape((1, 2, 1, 1))?;
        let shortcut = Tensor::new(&[1f32, 4.0, -3.0, 2.0], &dev)?.reshape((1, 1, 2, 2))?;
        let op = PooledResidualPRelu {
            slopes: vec![0.5, 0.25],
        };
        let out: Vec<f32> = branch
            .apply_op2_no_bwd(&shortcut, &op)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(out, vec![-3.0, -0.5]);
        Ok(())
    }
}
