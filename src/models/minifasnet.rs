//! MiniFASNet, the passive anti-spoof classifier pair of minivision-ai/Silent-Face-Anti-Spoofing.
//!
//! Two networks share one layout and differ in channel widths and squeeze-excitation:
//! [`Variant::V2`] (MiniFASNetV2, crop scale 2.7) and [`Variant::V1Se`] (MiniFASNetV1SE, crop
//! scale 4.0). Both take an 80x80 BGR crop with raw 0..255 values and return 3 logits whose
//! softmax index 1 is "live".
//!
//! Layout (module names mirror the checkpoint's tensor names):
//! `conv1` (3x3/2) -> `conv2_dw` (3x3 depthwise) -> `conv_23` (down) -> `conv_3` (residual)
//! -> `conv_34` (down) -> `conv_4` (residual) -> `conv_45` (down) -> `conv_5` (residual)
//! -> `conv_6_sep` (1x1) -> `conv_6_dw` (5x5 depthwise, no padding, no activation)
//! -> flatten -> `linear` + `bn` (BatchNorm1d) -> `prob`.
//! Every BatchNorm is folded into the layer before it when the model is built; channel widths,
//! kernel sizes and residual block counts are read from the checkpoint.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::nn::conv::{Activation, ConvGeometry, FusedConv2d};

/// BatchNorm epsilon used by every normalisation layer of the upstream models.
const BN_EPS: f64 = 1e-5;

/// Side of the square input crop, in pixels.
pub const INPUT_SIZE: usize = 80;

/// Which of the two published anti-spoof networks a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// MiniFASNetV2, trained on crops 2.7x the face box (`2.7_80x80_MiniFASNetV2.pth`).
    V2,
    /// MiniFASNetV1SE, trained on crops 4.0x the face box (`4_0_0_80x80_MiniFASNetV1SE.pth`).
    V1Se,
}

impl Variant {
    /// Both variants, in the order upstream's sample code runs them.
    pub const ALL: [Variant; 2] = [Variant::V2, Variant::V1Se];

    /// How many times the face box the crop fed to this network spans (before clamping to the
    /// image, see `imgproc::antispoof_crop_box`).
    pub fn crop_scale(self) -> f32 {
        match self {
            Variant::V2 => 2.7,
            Variant::V1Se => 4.0,
        }
    }

    /// Whether the last block of each residual stage carries a squeeze-excitation module.
    fn has_se(self) -> bool {
        matches!(self, Variant::V1Se)
    }
}

/// `Conv_block` (conv + BN + PReLU) or `Linear_block` (conv + BN) from `vb`, BN folded.
///
/// `depthwise` makes the conv grouped with one input channel per group; the kernel size comes
/// from the checkpoint.
fn conv_bn(
    vb: &VarBuilder,
    stride: usize,
    padding: usize,
    depthwise: bool,
    prelu: bool,
) -> Result<FusedConv2d> {
    let weight = vb.pp("conv").get_unchecked("weight")?;
    let (out_channels, in_per_group, _, _) = weight.dims4()?;
    let groups = if depthwise {
        if in_per_group != 1 {
            candle_core::bail!(
                "{}: depthwise conv with {in_per_group} inputs per group",
                vb.prefix()
            );
        }
        out_channels
    } else {
        1
    };
    let bn = vb.pp("bn");
    let gamma = bn.get(out_channels, "weight")?;
    let beta = bn.get(out_channels, "bias")?;
    let mean = bn.get(out_channels, "running_mean")?;
    let var = bn.get(out_channels, "running_var")?;
    let activation = if prelu {
        Activation::PRelu(vb.pp("prelu").get(out_channels, "weight")?.to_vec1()?)
    } else {
        Activation::Identity
    };
    FusedConv2d::with_batch_norm(
        &weight,
        None,
        &gamma,
        &beta,
        &mean,
        &var,
        BN_EPS,
        ConvGeometry::new(stride, padding, groups),
        activation,
    )
}

/// Squeeze-excitation: global mean -> 1x1 conv + BN + ReLU -> 1x1 conv + BN -> sigmoid gate.
#[derive(Debug, Clone)]
struct SeModule {
    fc1: FusedConv2d,
    fc2: FusedConv2d,
}

impl SeModule {
    fn new(vb: VarBuilder) -> Result<Self> {
        let fc = |i: usize, activation: Activation| -> Result<FusedConv2d> {
            let weight = vb.get_unchecked(&format!("fc{i}.weight"))?;
            let channels = weight.dim(0)?;
            let bn = vb.pp(format!("bn{i}"));
            FusedConv2d::with_batch_norm(
                &weight,
                None,
                &bn.get(channels, "weight")?,
                &bn.get(channels, "bias")?,
                &bn.get(channels, "running_mean")?,
                &bn.get(channels, "running_var")?,
                BN_EPS,
                ConvGeometry::new(1, 0, 1),
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
            conv: conv_bn(&vb.pp("conv"), 1, 0, false, true)?,
            conv_dw: conv_bn(&vb.pp("conv_dw"), stride, 1, true, true)?,
            project: conv_bn(&vb.pp("project"), 1, 0, false, false)?,
            se_module,
            residual,
        })
    }
}

impl Module for DepthWise {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self
            .project
            .forward(&self.conv_dw.forward(&self.conv.forward(xs)?)?)?;
        let ys = match &self.se_module {
            Some(se) => se.forward(&ys)?,
            None => ys,
        };
        if self.residual {
            xs + ys
        } else {
            Ok(ys)
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

/// A MiniFASNet anti-spoof network (either [`Variant`]) with BatchNorm folded, ready to run.
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
    prob: candle_nn::Linear,
}

impl MiniFasNet {
    /// Builds the network from a checkpoint whose tensor names are upstream's module names
    /// (without the `module.` prefix), e.g. `minifasnet_v2_2.7_80x80.safetensors`.
    ///
    /// Fails if a tensor is missing or mis-shaped, or if the checkpoint's squeeze-excitation
    /// modules do not match `variant`.
    pub fn new(vb: VarBuilder, variant: Variant) -> Result<Self> {
        let conv1 = conv_bn(&vb.pp("conv1"), 2, 1, false, true)?;
        let conv2_dw = conv_bn(&vb.pp("conv2_dw"), 1, 1, true, true)?;
        let mut blocks = Vec::new();
        for (name, residual) in STAGES {
            let stage = vb.pp(name);
            if residual {
                let stage = stage.pp("model");
                let start = blocks.len();
                while stage.contains_tensor(&format!("{}.conv.conv.weight", blocks.len() - start)) {
                    blocks.push(DepthWise::new(stage.pp(blocks.len() - start), true)?);
                }
                if blocks.len() == start {
                    candle_core::bail!("residual stage {name} has no blocks");
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
        let conv_6_sep = conv_bn(&vb.pp("conv_6_sep"), 1, 0, false, true)?;
        let conv_6_dw = conv_bn(&vb.pp("conv_6_dw"), 1, 0, true, false)?;

        // linear (no bias) followed by BatchNorm1d: y = (W x - mean) * g / sqrt(var + eps) + b.
        let weight = vb.pp("linear").get_unchecked("weight")?;
        let embedding = weight.dim(0)?;
        let bn = vb.pp("bn");
        let scale = (bn.get(embedding, "weight")?
            / (bn.get(embedding, "running_var")? + BN_EPS)?.sqrt()?)?;
        let bias = (bn.get(embedding, "bias")? - (bn.get(embedding, "running_mean")? * &scale)?)?;
        let linear =
            candle_nn::Linear::new(weight.broadcast_mul(&scale.unsqueeze(1)?)?, Some(bias));
        let prob_weight = vb.pp("prob").get_unchecked("weight")?;
        if prob_weight.dim(1)? != embedding {
            candle_core::bail!(
                "prob takes {} inputs, linear gives {embedding}",
                prob_weight.dim(1)?
            );
        }
        let prob = candle_nn::Linear::new(prob_weight, None);
        Ok(Self {
            variant,
            conv1,
            conv2_dw,
            blocks,
            conv_6_sep,
            conv_6_dw,
            linear,
            prob,
        })
    }

    /// The variant this network was built as.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl Module for MiniFasNet {
    /// `(N, 3, 80, 80)` f32 BGR crops with raw 0..255 values -> `(N, 3)` logits.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = xs.dims4()?;
        if (c, h, w) != (3, INPUT_SIZE, INPUT_SIZE) {
            candle_core::bail!(
                "MiniFASNet expects (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) input, got {:?}",
                xs.dims()
            );
        }
        let mut ys = self.conv2_dw.forward(&self.conv1.forward(xs)?)?;
        for block in &self.blocks {
            ys = block.forward(&ys)?;
        }
        let ys = self.conv_6_dw.forward(&self.conv_6_sep.forward(&ys)?)?;
        self.prob
            .forward(&self.linear.forward(&ys.flatten_from(1)?)?)
    }
}

/// Softmax probability of the "live" class (index 1) for each row of `(N, 3)` logits.
pub fn live_probability(logits: &Tensor) -> Result<Vec<f32>> {
    candle_nn::ops::softmax(logits, D::Minus1)?
        .narrow(1, 1, 1)?
        .flatten_all()?
        .to_vec1()
}
