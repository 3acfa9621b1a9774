//! MiniFASNet, the passive anti-spoof classifier family of minivision-ai/Silent-Face-Anti-Spoofing.
//!
//! Three published networks share one layout and differ in channel widths, squeeze-excitation,
//! input size and head ([`Variant`]):
//! - [`Variant::V2`] (MiniFASNetV2) and [`Variant::V1Se`] (MiniFASNetV1SE), upstream's pair: an
//!   80x80 BGR crop with raw 0..255 values in, 3 logits out, softmax index 1 is "live";
//! - [`Variant::V2Se128`] (MiniFASNetV2-SE trained on CelebA-Spoof by
//!   johnraivenolazo/face-antispoof-onnx): a 128x128 RGB crop scaled to 0..1 in, 2 logits
//!   `[real, spoof]` out, softmax index 0 is "live".
//!
//! Layout (module names mirror the checkpoint's tensor names):
//! `conv1` (3x3/2) -> `conv2_dw` (3x3 depthwise) -> `conv_23` (down) -> `conv_3` (residual)
//! -> `conv_34` (down) -> `conv_4` (residual) -> `conv_45` (down) -> `conv_5` (residual)
//! -> `conv_6_sep` (1x1) -> `conv_6_dw` (depthwise over the whole map, no padding, no activation)
//! -> flatten -> `linear` + `bn` (BatchNorm1d) -> head (`prob` or `logits`).
//! Every BatchNorm is folded into the layer before it when the model is built (or was folded by
//! the exporter: a conv with a bias and no `bn`); channel widths, kernel sizes and residual block
//! counts are read from the checkpoint.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::nn::conv::{Activation, ConvGeometry, FusedConv2d};

/// BatchNorm epsilon used by every normalisation layer of the published models.
const BN_EPS: f64 = 1e-5;

/// Which of the published anti-spoof networks a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// MiniFASNetV2, trained on crops 2.7x the face box (`2.7_80x80_MiniFASNetV2.pth`).
    V2,
    /// MiniFASNetV1SE, trained on crops 4.0x the face box (`4_0_0_80x80_MiniFASNetV1SE.pth`).
    V1Se,
    /// MiniFASNetV2-SE at 128x128, trained on 1.5x square crops of CelebA-Spoof
    /// (`face_antispoof_minifasv2se_128.onnx`).
    V2Se128,
}

/// How the crop's pixels become the network's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEncoding {
    /// Planar BGR, raw 0..255 values.
    BgrRaw,
    /// Planar RGB, values divided by 255.
    RgbUnit,
}

impl Variant {
    /// Every variant, in the order the pipeline runs them.
    pub const ALL: [Variant; 3] = [Variant::V2, Variant::V1Se, Variant::V2Se128];

    /// Short name used in diagnostics, reports and fusion weights.
    pub fn name(self) -> &'static str {
        match self {
            Variant::V2 => "minifasnet_v2",
            Variant::V1Se => "minifasnet_v1se",
            Variant::V2Se128 => "minifasnet_v2se_128",
        }
    }

    /// Side of the square input crop, in pixels.
    pub fn input_size(self) -> usize {
        match self {
            Variant::V2 | Variant::V1Se => 80,
            Variant::V2Se128 => 128,
        }
    }

    /// How the crop is turned into the input tensor.
    pub fn input_encoding(self) -> InputEncoding {
        match self {
            Variant::V2 | Variant::V1Se => InputEncoding::BgrRaw,
            Variant::V2Se128 => InputEncoding::RgbUnit,
        }
    }

    /// How many times the face box the crop fed to this network spans (see
    /// [`crate::imgproc::antispoof_crop_box`] and [`crate::imgproc::reflect_square_box`] for how
    /// each variant's crop rule uses it).
    pub fn crop_scale(self) -> f32 {
        match self {
            Variant::V2 => 2.7,
            Variant::V1Se => 4.0,
            Variant::V2Se128 => 1.5,
        }
    }

    /// Index of the "live" class in the logits.
    pub fn live_class(self) -> usize {
        match self {
            Variant::V2 | Variant::V1Se => 1,
            Variant::V2Se128 => 0,
        }
    }

    /// Number of logits the head produces.
    fn classes(self) -> usize {
        match self {
            Variant::V2 | Variant::V1Se => 3,
            Variant::V2Se128 => 2,
        }
    }

    /// Name of the classification head in the checkpoint.
    fn head(self) -> &'static str {
        match self {
            Variant::V2 | Variant::V1Se => "prob",
            Variant::V2Se128 => "logits",
        }
    }

    /// Whether the last block of each residual stage carries a squeeze-excitation module.
    fn has_se(self) -> bool {
        matches!(self, Variant::V1Se | Variant::V2Se128)
    }
}

/// How the input channels of a conv are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Groups {
    /// One group: every output sees every input channel.
    Dense,
    /// One input channel per group (`groups = channels`).
    Depthwise,
}

/// Upstream's `Conv_block`: conv (no bias) + BatchNorm + PReLU, BN folded.
fn conv_block(
    vb: &VarBuilder,
    stride: usize,
    padding: usize,
    groups: Groups,
) -> Result<FusedConv2d> {
    conv_bn(vb, stride, padding, groups, true)
}

/// Upstream's `Linear_block`: conv (no bias) + BatchNorm, BN folded.
fn linear_block(
    vb: &VarBuilder,
    stride: usize,
    padding: usize,
    groups: Groups,
) -> Result<FusedConv2d> {
    conv_bn(vb, stride, padding, groups, false)
}

/// `vb.conv` + `vb.bn` (+ `vb.prelu`), with the kernel size and channel counts from the weights.
fn conv_bn(
    vb: &VarBuilder,
    stride: usize,
    padding: usize,
    groups: Groups,
    prelu: bool,
) -> Result<FusedConv2d> {
    let weight = vb.pp("conv").get_unchecked("weight")?;
    let (out_channels, in_per_group, _, _) = weight.dims4()?;
    let groups = match groups {
        Groups::Dense => 1,
        Groups::Depthwise if in_per_group == 1 => out_channels,
        Groups::Depthwise => {
            candle_core::bail!(
                "{}: depthwise conv with {in_per_group} inputs per group",
                vb.prefix()
            )
        }
    };
    let activation = if prelu {
        Activation::PRelu(vb.pp("prelu").get(out_channels, "weight")?.to_vec1()?)
    } else {
        Activation::Identity
    };
    let geometry = ConvGeometry::new(stride, padding, groups);
    conv_with_folded_bn(&vb.pp("conv"), &vb.pp("bn"), weight, geometry, activation)
}

/// A conv whose BatchNorm is either stored beside it (`bn.*`, folded here) or was folded by the
/// exporter (`conv.bias`, no `bn`).
fn conv_with_folded_bn(
    conv: &VarBuilder,
    bn: &VarBuilder,
    weight: Tensor,
    geometry: ConvGeometry,
    activation: Activation,
) -> Result<FusedConv2d> {
    let channels = weight.dim(0)?;
    if !bn.contains_tensor("weight") {
        let bias = conv.get(channels, "bias")?;
        return FusedConv2d::new(&weight, Some(&bias), geometry, activation);
    }
    FusedConv2d::with_batch_norm(
        &weight,
        None,
        &bn.get(channels, "weight")?,
        &bn.get(channels, "bias")?,
        &bn.get(channels, "running_mean")?,
        &bn.get(channels, "running_var")?,
        BN_EPS,
        geometry,
        activation,
    )
}

/// Squeeze-excitation: global mean -> 1x1 conv + BN + ReLU -> 1x1 conv + BN -> sigmoid gate
/// (BN either stored as `bn1`/`bn2` or already folded into `fc1`/`fc2`).
#[derive(Debug, Clone)]
struct SeModule {
    fc1: FusedConv2d,
    fc2: FusedConv2d,
}

impl SeModule {
    fn new(vb: VarBuilder) -> Result<Self> {
        let fc = |i: usize, activation: Activation| -> Result<FusedConv2d> {
            let conv = vb.pp(format!("fc{i}"));
            let weight = conv.get_unchecked("weight")?;
            let geometry = ConvGeometry::new(1, 0, 1);
            conv_with_folded_bn(
                &conv,
                &vb.pp(format!("bn{i}")),
                weight,
                geometry,
                activation,
            )
        };
        Ok(Self {
            fc1: fc(1, Activation::Relu)?,
            fc2: fc(2, Activation::Identity)?,
        })
    }
}

impl Module for SeModule {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let pooled = xs.mean_keepdim((2, 3))?;
        let gate = candle_nn::ops::sigmoid(&self.fc2.forward(&self.fc1.forward(&pooled)?)?)?;
        xs.broadcast_mul(&gate)
    }
}

/// `Depth_Wise` / `Depth_Wise_SE`: 1x1 expand (PReLU) -> 3x3 depthwise (PReLU) -> 1x1 project,
/// then for residual blocks an optional SE gate and the shortcut add.
#[derive(Debug, Clone)]
struct DepthWise {
    conv: FusedConv2d,
    conv_dw: FusedConv2d,
    project: FusedConv2d,
    se_module: Option<SeModule>,
    residual: bool,
}

impl DepthWise {
    /// A downsampling block (stride 2, no shortcut) or a residual block (stride 1).
    fn new(vb: VarBuilder, residual: bool) -> Result<Self> {
        let stride = if residual { 1 } else { 2 };
        let se_module = if vb.contains_tensor("se_module.fc1.weight") {
            if !residual {
                candle_core::bail!("{}: SE module outside a residual block", vb.prefix());
            }
            Some(SeModule::new(vb.pp("se_module"))?)
        } else {
            None
        };
        Ok(Self {
            conv: conv_block(&vb.pp("conv"), 1, 0, Groups::Dense)?,
            conv_dw: conv_block(&vb.pp("conv_dw"), stride, 1, Groups::Depthwise)?,
            project: linear_block(&vb.pp("project"), 1, 0, Groups::Dense)?,
            se_module,
            residual,
        })
    }
}

impl Module for DepthWise {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.conv_dw.forward(&self.conv.forward(xs)?)?;
        match (&self.se_module, self.residual) {
            // The SE gate scales the projection before the shortcut: a separate add.
            (Some(se), _) => xs + se.forward(&self.project.forward(&hidden)?)?,
            (None, true) => self.project.forward_with_shortcut(&hidden, xs),
            (None, false) => self.project.forward(&hidden),
        }
    }
}

/// The stages between `conv2_dw` and `conv_6_sep`: `true` marks a residual stage (a
/// `Sequential` of stride-1 residual blocks under `<name>.model.<i>`), `false` a single
/// stride-2 downsampling block.
const STAGES: [(&str, bool); 6] = [
    ("conv_23", false),
    ("conv_3", true),
    ("conv_34", false),
    ("conv_4", true),
    ("conv_45", false),
    ("conv_5", true),
];

/// A MiniFASNet anti-spoof network (any [`Variant`]) with BatchNorm folded, ready to run.
#[derive(Debug, Clone)]
pub struct MiniFasNet {
    variant: Variant,
    conv1: FusedConv2d,
    conv2_dw: FusedConv2d,
    blocks: Vec<DepthWise>,
    conv_6_sep: FusedConv2d,
    conv_6_dw: FusedConv2d,
    /// `linear` with the BatchNorm1d `bn` folded in: `[128, 512]` weight plus bias.
    linear: candle_nn::Linear,
    /// The classification head (`prob` or `logits` in the checkpoint), no bias.
    head: candle_nn::Linear,
}

impl MiniFasNet {
    /// Builds the network from a checkpoint whose tensor names are the PyTorch module names
    /// (without the `module.` prefix), e.g. `minifasnet_v2_2.7_80x80.safetensors`.
    ///
    /// Fails if a tensor is missing or mis-shaped, or if the checkpoint's squeeze-excitation
    /// modules do not match `variant`.
    pub fn new(vb: VarBuilder, variant: Variant) -> Result<Self> {
        let conv1 = conv_block(&vb.pp("conv1"), 2, 1, Groups::Dense)?;
        let conv2_dw = conv_block(&vb.pp("conv2_dw"), 1, 1, Groups::Depthwise)?;
        let mut blocks = Vec::new();
        for (name, residual) in STAGES {
            let stage = vb.pp(name);
            if residual {
                let stage = stage.pp("model");
                let count = (0..)
                    .take_while(|i| stage.contains_tensor(&format!("{i}.conv.conv.weight")))
                    .count();
                if count == 0 {
                    candle_core::bail!("residual stage {name} has no blocks");
                }
                for i in 0..count {
                    blocks.push(DepthWise::new(stage.pp(i), true)?);
                }
            } else {
                blocks.push(DepthWise::new(stage, false)?);
            }
        }
        let has_se = blocks.iter().any(|b| b.se_module.is_some());
        if has_se != variant.has_se() {
            candle_core::bail!(
                "checkpoint {} squeeze-excitation modules but {variant:?} {}",
                if has_se { "has" } else { "lacks" },
                if variant.has_se() {
                    "needs them"
                } else {
                    "has none"
                }
            );
        }
        let conv_6_sep = conv_block(&vb.pp("conv_6_sep"), 1, 0, Groups::Dense)?;
        let conv_6_dw = linear_block(&vb.pp("conv_6_dw"), 1, 0, Groups::Depthwise)?;

        // linear (no bias) followed by BatchNorm1d: y = (W x - mean) * g / sqrt(var + eps) + b.
        let weight = vb.pp("linear").get_unchecked("weight")?;
        let embedding = weight.dim(0)?;
        let bn = vb.pp("bn");
        let scale = (bn.get(embedding, "weight")?
            / (bn.get(embedding, "running_var")? + BN_EPS)?.sqrt()?)?;
        let bias = (bn.get(embedding, "bias")? - (bn.get(embedding, "running_mean")? * &scale)?)?;
        let linear =
            candle_nn::Linear::new(weight.broadcast_mul(&scale.unsqueeze(1)?)?, Some(bias));
        let head_weight = vb
            .pp(variant.head())
            .get((variant.classes(), embedding), "weight")?;
        let head = candle_nn::Linear::new(head_weight, None);
        Ok(Self {
            variant,
            conv1,
            conv2_dw,
            blocks,
            conv_6_sep,
            conv_6_dw,
            linear,
            head,
        })
    }

    /// The variant this network was built as.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl Module for MiniFasNet {
    /// `(N, 3, S, S)` f32 crops encoded as [`Variant::input_encoding`] says, `S` =
    /// [`Variant::input_size`] -> `(N, classes)` logits.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = xs.dims4()?;
        let size = self.variant.input_size();
        if (c, h, w) != (3, size, size) {
            candle_core::bail!(
                "{} expects (N, 3, {size}, {size}) input, got {:?}",
                self.variant.name(),
                xs.dims()
            );
        }
        let mut ys = self.conv2_dw.forward(&self.conv1.forward(xs)?)?;
        for block in &self.blocks {
            ys = block.forward(&ys)?;
        }
        let ys = self.conv_6_dw.forward(&self.conv_6_sep.forward(&ys)?)?;
        self.head
            .forward(&self.linear.forward(&ys.flatten_from(1)?)?)
    }
}

impl MiniFasNet {
    /// Softmax probability of the "live" class ([`Variant::live_class`]) for each row of the
    /// logits this network produced. For the two-class [`Variant::V2Se128`] this is
    /// `sigmoid(real - spoof)`.
    pub fn live_probability(&self, logits: &Tensor) -> Result<Vec<f32>> {
        candle_nn::ops::softmax(logits, D::Minus1)?
            .narrow(1, self.variant.live_class(), 1)?
            .flatten_all()?
            .to_vec1()
    }
}
