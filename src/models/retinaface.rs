//! RetinaFace with a MobileNetV1-0.25 backbone (biubug6/Pytorch_Retinaface layout), BatchNorm
//! already folded into the convolutions.
//!
//! Weight names mirror the module paths of the ONNX export (`fx.stage1.0.0.weight`,
//! `fpn.output1.0.bias`, `ssh1.conv3X3.0.weight`, `class_head.0.weight`, ...), written by
//! `convert-retinaface`. Input: `1x3xHxW` BGR minus (104, 117, 123), any size.

use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::nn::conv::{contiguous_f32, Activation, ConvGeometry, FusedConv2d};

/// Negative slope of every LeakyReLU in the network.
const LEAKY: f32 = 0.1;
/// Anchor sizes (pixels of the network input) per level, strides 8, 16, 32.
pub const MIN_SIZES: [[f32; 2]; 3] = [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]];
/// Feature strides of the three levels.
pub const STRIDES: [usize; 3] = [8, 16, 32];
/// Per-channel mean subtracted from BGR input pixels.
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
const VARIANCE: [f32; 2] = [0.1, 0.2];

fn conv(vb: &VarBuilder, geometry: ConvGeometry, activation: Activation) -> Result<FusedConv2d> {
    let weight = vb.get_unchecked("weight")?;
    let bias = vb.get_unchecked("bias")?;
    FusedConv2d::new(&weight, Some(&bias), geometry, activation)
}

/// Convolutions of one input run as one layer, their output channels stacked in order: each
/// part is `(weights, output channels, activation)`, the activations combined by
/// [`Activation::stacked`]. Outputs are split again with `narrow`.
fn stacked(
    parts: &[(&VarBuilder, usize, Activation)],
    geometry: ConvGeometry,
) -> Result<FusedConv2d> {
    let tensors = |name: &str| -> Result<Vec<Tensor>> {
        parts
            .iter()
            .map(|(vb, ..)| vb.get_unchecked(name))
            .collect()
    };
    let (weight, bias) = (
        Tensor::cat(&tensors("weight")?, 0)?,
        Tensor::cat(&tensors("bias")?, 0)?,
    );
    let activations: Vec<(Activation, usize)> = parts
        .iter()
        .map(|(_, channels, activation)| (activation.clone(), *channels))
        .collect();
    FusedConv2d::new(
        &weight,
        Some(&bias),
        geometry,
        Activation::stacked(&activations)?,
    )
}

/// A 3x3 depthwise + 1x1 pointwise pair of the MobileNetV1 backbone.
struct DepthwiseSeparable {
    depthwise: FusedConv2d,
    pointwise: FusedConv2d,
}

impl DepthwiseSeparable {
    fn new(vb: VarBuilder, channels: usize, stride: usize) -> Result<Self> {
        let leaky = Activation::LeakyRelu(LEAKY);
        Ok(Self {
            depthwise: conv(
                &vb.pp("0.0"),
                ConvGeometry::new(stride, 1, channels),
                leaky.clone(),
            )?,
            pointwise: conv(&vb.pp("1.0"), ConvGeometry::new(1, 0, 1), leaky)?,
        })
    }
}

impl Module for DepthwiseSeparable {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.pointwise.forward(&self.depthwise.forward(xs)?)
    }
}

/// MobileNetV1-0.25 in three stages; returns the stride 8, 16 and 32 feature maps.
struct Backbone {
    stem: FusedConv2d,
    stages: [Vec<DepthwiseSeparable>; 3],
}

impl Backbone {
    fn new(vb: VarBuilder) -> Result<Self> {
        let stem = conv(
            &vb.pp("stage1.0.0"),
            ConvGeometry::new(2, 1, 1),
            Activation::LeakyRelu(LEAKY),
        )?;
        // (input channels, stride) of each depthwise-separable block, per stage.
        let plan: [&[(usize, usize)]; 3] = [
            &[(8, 1), (16, 2), (32, 1), (32, 2), (64, 1)],
            &[(64, 2), (128, 1), (128, 1), (128, 1), (128, 1), (128, 1)],
            &[(128, 2), (256, 1)],
        ];
        let mut stages: [Vec<DepthwiseSeparable>; 3] = Default::default();
        for (s, blocks) in plan.iter().enumerate() {
            let vb = vb.pp(format!("stage{}", s + 1));
            let first = if s == 0 { 1 } else { 0 };
            for (i, &(channels, stride)) in blocks.iter().enumerate() {
                stages[s].push(DepthwiseSeparable::new(
                    vb.pp((first + i).to_string()),
                    channels,
                    stride,
                )?);
            }
        }
        Ok(Self { stem, stages })
    }

    fn forward(&self, xs: &Tensor) -> Result<[Tensor; 3]> {
        let mut x = self.stem.forward(xs)?;
        let mut outs = Vec::with_capacity(3);
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x)?;
            }
            outs.push(x.clone());
        }
        Ok([outs[0].clone(), outs[1].clone(), outs[2].clone()])
    }
}

/// Feature pyramid: lateral 1x1 convs, nearest upsampling, 3x3 merges.
struct Fpn {
    lateral: [FusedConv2d; 3],
    merge2: FusedConv2d,
    merge1: FusedConv2d,
}

impl Fpn {
    fn new(vb: VarBuilder) -> Result<Self> {
        let leaky = Activation::LeakyRelu(LEAKY);
        let lateral = |name: &str| conv(&vb.pp(name), ConvGeometry::new(1, 0, 1), leaky.clone());
        Ok(Self {
            lateral: [
                lateral("output1.0")?,
                lateral("output2.0")?,
                lateral("output3.0")?,
            ],
            merge2: conv(
                &vb.pp("merge2.0"),
                ConvGeometry::new(1, 1, 1),
                leaky.clone(),
            )?,
            merge1: conv(
                &vb.pp("merge1.0"),
                ConvGeometry::new(1, 1, 1),
                leaky.clone(),
            )?,
        })
    }

    fn forward(&self, features: &[Tensor; 3]) -> Result<[Tensor; 3]> {
        let out1 = self.lateral[0].forward(&features[0])?;
        let out2 = self.lateral[1].forward(&features[1])?;
        let out3 = self.lateral[2].forward(&features[2])?;
        let out2 = self
            .merge2
            .forward(&out2.apply_op2_no_bwd(&out3, &AddUpsampled)?)?;
        let out1 = self
            .merge1
            .forward(&out1.apply_op2_no_bwd(&out2, &AddUpsampled)?)?;
        Ok([out1, out2, out3])
    }
}

/// The FPN's top-down step in one pass: `fine + coarse` upsampled (nearest) to `fine`'s size.
/// Output row `y` reads coarse row `min(floor(y * hc / h), hc - 1)` with the ratio in f64, and
/// likewise for columns, as candle's `upsample_nearest2d` (checked against the ONNX graph's
/// Resize by the oracle tests).
struct AddUpsampled;

impl CustomOp2 for AddUpsampled {
    fn name(&self) -> &'static str {
        "retinaface-add-upsampled"
    }

    fn cpu_fwd(
        &self,
        fine: &CpuStorage,
        fine_layout: &Layout,
        coarse: &CpuStorage,
        coarse_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = fine_layout.shape().dims4()?;
        let (cn, cc, hc, wc) = coarse_layout.shape().dims4()?;
        if (cn, cc) != (n, c) || hc == 0 || wc == 0 {
            candle_core::bail!(
                "cannot upsample {:?} onto {:?}",
                coarse_layout.shape(),
                fine_layout.shape()
            );
        }
        let (fine, coarse) = (
            contiguous_f32(fine, fine_layout)?,
            contiguous_f32(coarse, coarse_layout)?,
        );
        let source = |i: usize, from: usize, to: usize| {
            ((i as f64 * (from as f64 / to as f64)) as usize).min(from - 1)
        };
        let columns: Vec<usize> = (0..w).map(|x| source(x, wc, w)).collect();
        let mut out = Vec::with_capacity(fine.len());
        for (fine, coarse) in fine.chunks_exact(h * w).zip(coarse.chunks_exact(hc * wc)) {
            for (y, row) in fine.chunks_exact(w).enumerate() {
                let coarse_row = &coarse[source(y, hc, h) * wc..][..wc];
                out.extend(row.iter().zip(&columns).map(|(&v, &x)| v + coarse_row[x]));
            }
        }
        Ok((CpuStorage::F32(out), fine_layout.shape().clone()))
    }
}

/// Single-stage headless context module: 3x3, 5x5 and 7x7 receptive fields, concatenated.
///
/// The final ReLU over the concatenation is fused into the three branch outputs. Convolutions
/// of the same input run as one ([`stacked`]): `conv3X3` with `conv5X5_1`, then `conv5X5_2`
/// with `conv7X7_2`.
struct Ssh {
    /// `conv3X3` (ReLU, 32 channels, a branch) and `conv5X5_1` (LeakyReLU, 16).
    first: FusedConv2d,
    /// `conv5X5_2` (ReLU, 16, a branch) and `conv7X7_2` (LeakyReLU, 16).
    second: FusedConv2d,
    conv7x7_3: FusedConv2d,
}

/// Output channels of SSH's 3x3 branch and of each of its 5x5 and 7x7 branches.
const SSH_BRANCH3: usize = 32;
const SSH_BRANCH: usize = 16;

impl Ssh {
    fn new(vb: VarBuilder) -> Result<Self> {
        let g = ConvGeometry::new(1, 1, 1);
        let leaky = Activation::LeakyRelu(LEAKY);
        let relu = Activation::Relu;
        let part = |name: &str| vb.pp(name);
        Ok(Self {
            first: stacked(
                &[
                    (&part("conv3X3.0"), SSH_BRANCH3, relu.clone()),
                    (&part("conv5X5_1.0"), SSH_BRANCH, leaky.clone()),
                ],
                g,
            )?,
            second: stacked(
                &[
                    (&part("conv5X5_2.0"), SSH_BRANCH, relu.clone()),
                    (&part("conv7X7_2.0"), SSH_BRANCH, leaky),
                ],
                g,
            )?,
            conv7x7_3: conv(&part("conv7x7_3.0"), g, relu)?,
        })
    }
}

impl Module for Ssh {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let first = self.first.forward(xs)?;
        let branch3 = first.narrow(1, 0, SSH_BRANCH3)?;
        let mid = first.narrow(1, SSH_BRANCH3, SSH_BRANCH)?;
        let second = self.second.forward(&mid)?;
        let branch5 = second.narrow(1, 0, SSH_BRANCH)?;
        let branch7 = self
            .conv7x7_3
            .forward(&second.narrow(1, SSH_BRANCH, SSH_BRANCH)?)?;
        Tensor::cat(&[branch3, branch5, branch7], 1)
    }
}

/// Raw network outputs: per pyramid level (strides 8, 16, 32), the stacked heads
/// `[1, A * (2 + 4 + 10), H, W]`: the class logits of the `A` anchors of each position, then
/// their box regressions, then their landmark regressions. [`decode`] reads them in place;
/// [`Self::loc`], [`Self::conf`] and [`Self::landmarks`] give them in the ONNX layout.
#[derive(Debug, Clone)]
pub struct RawOutputs {
    heads: [Tensor; 3],
}

impl RawOutputs {
    /// Values `start..start + width` of each anchor, levels concatenated: `[1, anchors, width]`,
    /// anchors ordered level, row, column, anchor size.
    fn onnx_layout(&self, start: usize, width: usize) -> Result<Tensor> {
        let levels = self
            .heads
            .iter()
            .map(|heads| {
                let n = heads.dim(0)?;
                heads
                    .narrow(1, ANCHORS * start, ANCHORS * width)?
                    .permute((0, 2, 3, 1))?
                    .contiguous()?
                    .reshape((n, (), width))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&levels, 1)
    }

    /// ONNX output `loc`: `[1, anchors, 4]` box regressions.
    pub fn loc(&self) -> Result<Tensor> {
        self.onnx_layout(HEAD_WIDTHS[0], HEAD_WIDTHS[1])
    }

    /// ONNX output `conf`: `[1, anchors, 2]` class probabilities (background, face), by the
    /// softmax [`decode`] scores anchors with.
    pub fn conf(&self) -> Result<Tensor> {
        let logits = self.onnx_layout(0, HEAD_WIDTHS[0])?;
        let shape = logits.shape().clone();
        let probabilities: Vec<f32> = logits
            .flatten_all()?
            .to_vec1::<f32>()?
            .chunks_exact(2)
            .flat_map(|pair| softmax2([pair[0], pair[1]]))
            .collect();
        Tensor::from_vec(probabilities, shape, logits.device())
    }

    /// ONNX output `landmarks`: `[1, anchors, 10]` landmark regressions.
    pub fn landmarks(&self) -> Result<Tensor> {
        self.onnx_layout(HEAD_WIDTHS[0] + HEAD_WIDTHS[1], HEAD_WIDTHS[2])
    }
}

/// The RetinaFace network.
pub struct RetinaFace {
    backbone: Backbone,
    fpn: Fpn,
    ssh: [Ssh; 3],
    /// Per level, the class, box and landmark heads (1x1, linear) stacked ([`stacked`]).
    heads: [FusedConv2d; 3],
}

/// Values per anchor of the class, box and landmark heads.
const HEAD_WIDTHS: [usize; 3] = [2, 4, 10];
/// Anchors per position.
const ANCHORS: usize = 2;

impl RetinaFace {
    /// Builds the network from converted weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let heads = |level: usize| -> Result<FusedConv2d> {
            let names = ["class_head", "bbox_head", "landmark_head"];
            let vbs = names.map(|name| vb.pp(name).pp(level.to_string()));
            let parts: Vec<_> = vbs
                .iter()
                .zip(HEAD_WIDTHS)
                .map(|(vb, width)| (vb, ANCHORS * width, Activation::Identity))
                .collect();
            stacked(&parts, ConvGeometry::new(1, 0, 1))
        };
        Ok(Self {
            backbone: Backbone::new(vb.pp("fx"))?,
            fpn: Fpn::new(vb.pp("fpn"))?,
            ssh: [
                Ssh::new(vb.pp("ssh1"))?,
                Ssh::new(vb.pp("ssh2"))?,
                Ssh::new(vb.pp("ssh3"))?,
            ],
            heads: [heads(0)?, heads(1)?, heads(2)?],
        })
    }

    /// Runs the network on a `1x3xHxW` mean-subtracted BGR tensor.
    pub fn forward(&self, xs: &Tensor) -> Result<RawOutputs> {
        let features = self.backbone.forward(xs)?;
        let pyramid = self.fpn.forward(&features)?;
        let level = |i: usize| self.heads[i].forward(&self.ssh[i].forward(&pyramid[i])?);
        Ok(RawOutputs {
            heads: [level(0)?, level(1)?, level(2)?],
        })
    }
}

/// One detected face in pixels of the image the detector saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Eye (image-left), eye (image-right), nose tip, mouth corner left, mouth corner right.
    pub landmarks: [[f32; 2]; 5],
    /// Index of the anchor the detection came from.
    pub anchor: usize,
}

impl Detection {
    /// Box width.
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }

    /// Box height.
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }

    /// The same detection with x coordinates multiplied by `sx` and y coordinates by `sy`.
    pub fn scaled(&self, sx: f32, sy: f32) -> Self {
        let [x1, y1, x2, y2] = self.bbox;
        Self {
            bbox: [x1 * sx, y1 * sy, x2 * sx, y2 * sy],
            landmarks: self.landmarks.map(|[x, y]| [x * sx, y * sy]),
            ..self.clone()
        }
    }
}

/// Anchor centres and sizes `(cx, cy, w, h)` in pixels for an `H x W` input, in output order.
pub fn priors(height: usize, width: usize) -> Vec<[f32; 4]> {
    let mut out = Vec::new();
    for (level, &stride) in STRIDES.iter().enumerate() {
        let (rows, cols) = (height.div_ceil(stride), width.div_ceil(stride));
        for i in 0..rows {
            for j in 0..cols {
                for &size in &MIN_SIZES[level] {
                    let cx = (j as f32 + 0.5) * stride as f32;
                    let cy = (i as f32 + 0.5) * stride as f32;
                    out.push([cx, cy, size, size]);
                }
            }
        }
    }
    out
}

/// Decodes raw outputs into detections with score strictly above `score_threshold`, then greedy
/// NMS dropping boxes with IoU strictly above `nms_iou`. Sorted by score, best first.
pub fn decode(
    raw: &RawOutputs,
    height: usize,
    width: usize,
    score_threshold: f32,
    nms_iou: f32,
) -> Result<Vec<Detection>> {
    let priors = priors(height, width);
    let anchors: usize = raw
        .heads
        .iter()
        .map(|heads| heads.dims4().map(|(_, _, h, w)| h * w * ANCHORS))
        .sum::<Result<usize>>()?;
    if anchors != priors.len() {
        candle_core::bail!("{} anchors for {anchors} head outputs", priors.len());
    }
    let [class, bbox, _] = HEAD_WIDTHS.map(|width| ANCHORS * width);
    let mut candidates: Vec<Detection> = Vec::new();
    let mut anchor = 0;
    for heads in &raw.heads {
        let (_, _, h, w) = heads.dims4()?;
        let plane = h * w;
        // One copy of the level's heads (`[channels, plane]`), read in place.
        let values = heads.flatten_all()?.to_vec1::<f32>()?;
        let at = |channel: usize, position: usize| values[channel * plane + position];
        for position in 0..plane {
            for a in 0..ANCHORS {
                let prior = priors[anchor];
                anchor += 1;
                let [_, score] = softmax2([at(2 * a, position), at(2 * a + 1, position)]);
                if score <= score_threshold {
                    continue;
                }
                let [pcx, pcy, pw, ph] = prior;
                let l: [f32; 4] = std::array::from_fn(|i| at(class + 4 * a + i, position));
                let cx = pcx + l[0] * VARIANCE[0] * pw;
                let cy = pcy + l[1] * VARIANCE[0] * ph;
                let w = pw * (l[2] * VARIANCE[1]).exp();
                let h = ph * (l[3] * VARIANCE[1]).exp();
                let m = |i: usize| at(class + bbox + 10 * a + i, position);
                let landmarks = std::array::from_fn(|k| {
                    [
                        pcx + m(2 * k) * VARIANCE[0] * pw,
                        pcy + m(2 * k + 1) * VARIANCE[0] * ph,
                    ]
                });
                candidates.push(Detection {
                    score,
                    bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                    landmarks,
                    anchor: anchor - 1,
                });
            }
        }
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in candidates {
        if kept
            .iter()
            .all(|k| iou(&k.bbox, &candidate.bbox) <= nms_iou)
        {
            kept.push(candidate);
        }
    }
    Ok(kept)
}

/// Softmax of one anchor's two class logits `[background, face]`, as the ONNX graph's
/// `Softmax` computes it (exponentials of the logits minus their maximum, over their sum).
fn softmax2(logits: [f32; 2]) -> [f32; 2] {
    let max = logits[0].max(logits[1]);
    let [e0, e1] = logits.map(|l| (l - max).exp());
    [e0 / (e0 + e1), e1 / (e0 + e1)]
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}
