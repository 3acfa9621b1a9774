//! 2-D convolution with bias and activation fused, as a candle custom op.
//!
//! Four kernels cover every layer we run:
//! - pointwise (1x1, stride 1): one GEMM, `out[Cout, HW] = W[Cout, Cin] * x[Cin, HW]`; with at
//!   most 32 input channels on x86-64 with AVX2 and FMA (128 with AVX-512F), a direct kernel
//!   instead ([`pointwise_avx2`]), which also runs the stems (3x3 layers of 3 input channels,
//!   reading their taps from the phase planes); with more, on AVX-512F, a kernel over weights
//!   packed at load with output channels along the lanes ([`pointwise_panels`]) unless the
//!   layer is a 4x expansion;
//! - depthwise (one input channel per group): a direct loop summing all taps of 8 outputs in
//!   registers, reading zero-padded phase planes ([`PhaseLayout`]) so it has no bounds tests;
//!   on x86-64 with AVX2 and FMA, 3x3 stride 1 and 2 read the input in place instead
//!   ([`depthwise_avx2`]; maps narrower than 32 columns as one flat run per plane);
//! - dense 3x3 stride 1: Winograd ([`winograd`]), F(4x4, 3x3) with 36 GEMMs over blocks of
//!   tiles, or F(2x2, 3x3) with 16 on maps of fewer than 40 4x4 tiles; im2col below
//!   [`WINOGRAD_MIN_PLANE`] output positions;
//! - anything else: im2col (from the same phase planes) per group, then one GEMM per group.
//!
//! Bias and activation are applied inside each kernel (per L2-sized column block for the GEMMs).
//! Outputs are written, never zeroed first. On a pool of two threads or more, layers expected
//! to take at least [`PARALLEL_MIN_NANOS`] run as two halves of their output channels
//! (`rayon::join`; see [`super::parallel`] for the thread that takes them); every value is
//! computed as on one thread.
//! The depthwise kernel and the GEMM epilogue are compiled twice on x86-64, portable and
//! AVX2(+FMA), and picked at runtime; the direct pointwise and depthwise kernels have AVX2 and
//! AVX-512F builds (the latter with the `avx512` feature); the `gemm` crate dispatches its own
//! (AVX2 or AVX-512).
//!
//! [`inverted_residual`] runs an expand / depthwise / project block in bands of rows where its
//! expanded map is too large for L2 ([`banded`]).
//!
//! Input must be `f32`, `NCHW`; any batch size.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Result, Shape, Tensor};

mod banded;
#[cfg(target_arch = "x86_64")]
mod depthwise_avx2;
#[cfg(target_arch = "x86_64")]
mod pointwise_avx2;
#[cfg(target_arch = "x86_64")]
mod pointwise_panels;
mod winograd;

pub use banded::inverted_residual;

/// The non-linearity applied after bias, fused into the convolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
    LeakyRelu(f32),
    /// Per-output-channel negative slope.
    PRelu(Vec<f32>),
}

impl Activation {
    /// The activation of layers stacked along their output channels (`(activation, channels)`
    /// of each, in order), as per-channel slopes. Activations with a clamp (ReLU6) do not stack.
    pub fn stacked(parts: &[(Activation, usize)]) -> Result<Activation> {
        let mut slopes = Vec::new();
        for (activation, channels) in parts {
            for channel in 0..*channels {
                let epilogue = activation.epilogue(channel, 0.0);
                if epilogue.max != f32::INFINITY {
                    candle_core::bail!("cannot stack a layer with {activation:?}");
                }
                slopes.push(epilogue.slope);
            }
        }
        Ok(Activation::PRelu(slopes))
    }

    /// This activation for output channel `channel`, in the branch-free form the kernels use.
    fn epilogue(&self, channel: usize, bias: f32) -> Epilogue {
        let (slope, max) = match self {
            Activation::Identity => (1.0, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
            Activation::LeakyRelu(a) => (*a, f32::INFINITY),
            Activation::PRelu(slopes) => (slopes[channel], f32::INFINITY),
        };
        Epilogue { bias, slope, max }
    }
}

/// Bias plus activation for one output channel: `v -> min(u < 0 ? u * slope : u, max)` with
/// `u = v + bias`. Every [`Activation`] has this form, so the kernels apply it with no branches.
#[derive(Debug, Clone, Copy)]
struct Epilogue {
    bias: f32,
    slope: f32,
    max: f32,
}

impl Epilogue {
    /// The activation of `u`, which already includes the bias. Comparisons rather than
    /// `f32::min` so a NaN stays NaN (as with `clamp`).
    #[inline(always)]
    fn activate(self, u: f32) -> f32 {
        let u = if u < 0.0 { u * self.slope } else { u };
        if u > self.max {
            self.max
        } else {
            u
        }
    }

    /// Adds the bias to every value and applies the activation, in place.
    fn apply(self, values: &mut [f32]) {
        values
            .iter_mut()
            .for_each(|v| *v = self.activate(*v + self.bias));
    }
}

/// Geometry of a convolution: stride, zero padding and groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    /// Zero padding as `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    pub groups: usize,
}

impl ConvGeometry {
    /// Symmetric padding on all sides.
    pub fn new(stride: usize, padding: usize, groups: usize) -> Self {
        Self {
            stride,
            padding: [padding; 4],
            groups,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Pointwise,
    Depthwise,
    Winograd,
    Im2col,
}

/// A convolution layer with its bias and activation, ready to run.
#[derive(Debug, Clone)]
pub struct FusedConv2d {
    /// `[Cout, Cin/groups, KH, KW]`, row-major.
    weight: Vec<f32>,
    /// For [`Kernel::Winograd`], the transformed kernels.
    winograd: Option<winograd::Weights>,
    /// For pointwise layers that [`pointwise_panels`] runs, the weights in its panels.
    #[cfg(target_arch = "x86_64")]
    panels: Option<pointwise_panels::Panels>,
    bias: Vec<f32>,
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize),
    geometry: ConvGeometry,
    activation: Activation,
    kind: Kernel,
}

impl FusedConv2d {
    /// Whether the layer's weights are packed for [`pointwise_panels`] (which then keeps no
    /// row-major copy of them).
    fn in_panels(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.panels.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Builds a layer from a `[Cout, Cin/groups, KH, KW]` weight and an optional `[Cout]` bias.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: ConvGeometry,
        activation: Activation,
    ) -> Result<Self> {
        let (out_channels, in_per_group, kh, kw) = weight.dims4()?;
        let in_channels = in_per_group * geometry.groups;
        if geometry.stride == 0 || out_channels % geometry.groups != 0 {
            candle_core::bail!("invalid conv geometry {geometry:?} for weight {out_channels}x{in_per_group}x{kh}x{kw}");
        }
        let weight = weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = match bias {
            Some(b) => b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; out_channels],
        };
        if bias.len() != out_channels {
            candle_core::bail!("bias has {} values for {out_channels} channels", bias.len());
        }
        if let Activation::PRelu(slopes) = &activation {
            if slopes.len() != out_channels {
                candle_core::bail!(
                    "PReLU has {} slopes for {out_channels} channels",
                    slopes.len()
                );
            }
        }
        let kind =
            if in_per_group == 1 && geometry.groups == in_channels && out_channels == in_channels {
                Kernel::Depthwise
            } else if kh == 1
                && kw == 1
                && geometry.stride == 1
                && geometry.groups == 1
                && geometry.padding == [0; 4]
            {
                Kernel::Pointwise
            } else if (kh, kw) == (3, 3) && geometry.stride == 1 && geometry.groups == 1 {
                Kernel::Winograd
            } else {
                Kernel::Im2col
            };
        let winograd = (kind == Kernel::Winograd)
            .then(|| winograd::Weights::new(&weight, out_channels, in_channels));
        #[cfg(target_arch = "x86_64")]
        let panels = (kind == Kernel::Pointwise
            && pointwise_panels::runs(in_channels, out_channels))
        .then(|| pointwise_panels::Panels::new(&weight, out_channels, in_channels));
        // The panels replace the row-major weights: nothing else reads them.
        #[cfg(target_arch = "x86_64")]
        let weight = if panels.is_some() { Vec::new() } else { weight };
        Ok(Self {
            weight,
            winograd,
            #[cfg(target_arch = "x86_64")]
            panels,
            bias,
            in_channels,
            out_channels,
            kernel: (kh, kw),
            geometry,
            activation,
            kind,
        })
    }

    /// Builds a layer whose BatchNorm (`gamma, beta, mean, var, eps`) is folded into weight and bias.
    #[allow(clippy::too_many_arguments)]
    pub fn with_batch_norm(
        weight: &Tensor,
        bias: Option<&Tensor>,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f64,
        geometry: ConvGeometry,
        activation: Activation,
    ) -> Result<Self> {
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let folded_weight = weight.broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?;
        let conv_bias = match bias {
            Some(b) => b.clone(),
            None => scale.zeros_like()?,
        };
        let folded_bias = ((conv_bias - mean)? * &scale)?.add(beta)?;
        Self::new(&folded_weight, Some(&folded_bias), geometry, activation)
    }

    /// Output height and width for an input of `h x w`.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let [pt, pl, pb, pr] = self.geometry.padding;
        let (kh, kw) = self.kernel;
        let s = self.geometry.stride;
        if h + pt + pb < kh || w + pl + pr < kw {
            candle_core::bail!("input {h}x{w} smaller than kernel {kh}x{kw}");
        }
        Ok(((h + pt + pb - kh) / s + 1, (w + pl + pr - kw) / s + 1))
    }

    /// Runs the layer on `n` inputs of `h x w`. With a `shortcut` (a pointwise layer only), the
    /// output starts as a copy of it and the GEMM accumulates onto it, before the activation.
    fn run(
        &self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
        shortcut: Option<&[f32]>,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let (oh, ow) = self.output_size(h, w)?;
        let in_plane = self.in_channels * h * w;
        let out_plane = self.out_channels * oh * ow;
        let inputs = input.chunks_exact(in_plane).take(n);
        let len = n * out_plane;
        let mut out = match shortcut {
            Some(_) if self.kind != Kernel::Pointwise => {
                candle_core::bail!("a shortcut needs a pointwise layer, not {:?}", self.kind)
            }
            Some(values) if values.len() == len => values.to_vec(),
            Some(values) => candle_core::bail!(
                "shortcut has {} values for an output of {len}",
                values.len(),
            ),
            // Not zeroed: each kernel below writes every output value before reading it.
            None => Vec::with_capacity(len),
        };
        let accumulate = shortcut.is_some();
        let dst = if accumulate {
            // SAFETY: the kernels write only initialised values through this view.
            unsafe { as_uninit(&mut out) }
        } else {
            &mut out.spare_capacity_mut()[..len]
        };
        let plane = oh * ow;
        for (src, dst) in inputs.zip(dst.chunks_exact_mut(out_plane)) {
            self.in_halves(plane, dst, |channels, dst| match self.kernel_for(plane) {
                // SAFETY: the panels exist only where the CPU runs their kernel; with
                // `accumulate`, `dst` holds the shortcut's values.
                #[cfg(target_arch = "x86_64")]
                Kernel::Pointwise if self.panels.is_some() => unsafe {
                    let panels = self.panels.as_ref().expect("checked");
                    let epilogues = self.epilogues(channels.clone());
                    pointwise_panels::convolve(
                        panels, channels, &epilogues, src, plane, dst, accumulate,
                    )
                },
                // SAFETY: with `accumulate`, `dst` holds the shortcut's values.
                Kernel::Pointwise => unsafe {
                    let k = self.in_channels;
                    let weight = &self.weight[channels.start * k..channels.end * k];
                    self.gemm_epilogue(channels.start, weight, src, dst, accumulate)
                },
                Kernel::Depthwise => self.depthwise(channels, src, dst, (h, w), (oh, ow)),
                Kernel::Im2col => self.im2col_gemm(channels, src, dst, (h, w), (oh, ow)),
                Kernel::Winograd => winograd::convolve(
                    (
                        self.winograd.as_ref().expect("a Winograd layer's kernels"),
                        self.in_channels,
                        self.out_channels,
                    ),
                    channels.clone(),
                    src,
                    (h, w),
                    self.geometry.padding,
                    &self.epilogues(channels),
                    dst,
                ),
            });
        }
        // SAFETY: the kernels wrote all `len` values (or they came from the shortcut).
        unsafe { out.set_len(len) };
        Ok((out, oh, ow))
    }

    /// The kernel that runs the layer for `plane` output positions: dense 3x3 layers with fewer
    /// than [`WINOGRAD_MIN_PLANE`] run im2col.
    fn kernel_for(&self, plane: usize) -> Kernel {
        match self.kind {
            Kernel::Winograd if plane < WINOGRAD_MIN_PLANE => Kernel::Im2col,
            kind => kind,
        }
    }

    /// Runs `work(channels, dst)` for all output channels, `dst` being those channels' planes of
    /// `plane` values: in two halves on two threads (`rayon::join`) when the pool has more than
    /// one thread and the layer is expected to take at least [`PARALLEL_MIN_NANOS`], else at
    /// once. Each output value is computed the same way either way.
    fn in_halves(
        &self,
        plane: usize,
        dst: &mut [MaybeUninit<f32>],
        work: impl Fn(Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
    ) {
        let cout = self.out_channels;
        // Grouped (not depthwise) layers split only whole groups; we split those not at all.
        let splits = self.kind == Kernel::Depthwise || self.geometry.groups == 1;
        let flops = self.flops(plane);
        // Measured rates (`liveness bench --layers`): GEMMs about 90 GFLOP/s, depthwise 25 (the
        // phase-plane kernel; the in-place AVX2 one runs 15-50, so this overestimates some).
        let nanos = flops
            / if self.kind == Kernel::Depthwise {
                25.0
            } else {
                90.0
            };
        if !(splits && cout >= 2 && nanos >= PARALLEL_MIN_NANOS && rayon::current_num_threads() > 1)
        {
            return work(0..cout, dst);
        }
        // From 16 channels, a multiple of 8 in the first half, for the GEMMs' register tiles (of
        // a panel for the panel kernel, which needs its channels to start on one).
        #[cfg(target_arch = "x86_64")]
        let align = if self.panels.is_some() {
            pointwise_panels::PANEL
        } else {
            8
        };
        #[cfg(not(target_arch = "x86_64"))]
        let align = 8;
        let half = if cout >= 16 {
            (cout / 2).next_multiple_of(align)
        } else {
            cout / 2
        };
        if half >= cout {
            return work(0..cout, dst);
        }
        let (first, second) = dst.split_at_mut(half * plane);
        rayon::join(|| work(0..half, first), || work(half..cout, second));
    }

    /// Multiply-adds times two for `positions` output positions of every output channel.
    fn flops(&self, positions: usize) -> f64 {
        let per_output = self.in_channels / self.geometry.groups * self.kernel.0 * self.kernel.1;
        2.0 * (per_output * self.out_channels * positions) as f64
    }

    /// Bias and activation of output channels `channels`.
    fn epilogues(&self, channels: Range<usize>) -> Vec<Epilogue> {
        channels
            .map(|c| self.activation.epilogue(c, self.bias[c]))
            .collect()
    }

    /// `dst = act(weight * rhs + bias)` for output channels `c0..c0 + m` ([`pointwise`]):
    /// `weight` is `m x k`, `rhs` is `k x n` and `dst` is `m x n`, all row-major (`n` =
    /// `dst.len() / m`). With `accumulate`, `dst = act(dst + weight * rhs + bias)`.
    ///
    /// # Safety
    /// With `accumulate`, every value of `dst` must be initialised.
    unsafe fn gemm_epilogue(
        &self,
        c0: usize,
        weight: &[f32],
        rhs: &[f32],
        dst: &mut [MaybeUninit<f32>],
        accumulate: bool,
    ) {
        let k = self.in_channels;
        let m = weight.len() / k;
        let n = dst.len() / m;
        let epilogues = self.epilogues(c0..c0 + m);
        // SAFETY: initialised values with `accumulate` (the caller's promise).
        unsafe { pointwise(&epilogues, n, k, (n, n), weight, rhs, dst, accumulate) };
    }

    /// General convolution: per group, the input channels go into phase planes (see
    /// [`Self::depthwise`]); then, block of output rows by block, im2col copies one
    /// contiguous run per output row and tap from them, and a GEMM with fused epilogue produces
    /// those columns of the group's output channels. Blocks keep the column matrix within L2
    /// (a whole-plane column matrix, 2.7 MB for RetinaFace's 64->64 3x3 layers, went through
    /// L3 twice).
    ///
    /// Writes output channels `channels` (all of them when `groups > 1`) into `dst`.
    fn im2col_gemm(
        &self,
        channels: Range<usize>,
        src: &[f32],
        dst: &mut [MaybeUninit<f32>],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) {
        let (kh, kw) = self.kernel;
        let groups = self.geometry.groups;
        let cin_g = self.in_channels / groups;
        let cout_g = self.out_channels / groups;
        let k = cin_g * kh * kw;
        let plane = oh * ow;
        let layout = PhaseLayout::new(&self.geometry, h, w);
        // At least 128 columns per GEMM (each call repacks the weights), else what fits in L2.
        let rows = (L2_BLOCK_FLOATS / (k * ow))
            .max(128usize.div_ceil(ow))
            .clamp(1, oh);
        // Where column-matrix row `(ci, ky, kx)` (the weights' order) starts in `phases`: tap
        // `(ky, kx)` of output `(0, 0)` in channel `ci`'s planes.
        let taps: Vec<usize> = (0..cin_g)
            .flat_map(|ci| (0..kh * kw).map(move |t| (ci, t / kw, t % kw)))
            .map(|(ci, ky, kx)| ci * layout.len + layout.tap_start(ky, kx))
            .collect();
        let mut cols = Vec::new();
        // Zero once: every channel fills the same plane positions, so the padding stays zero.
        let mut phases = vec![0f32; cin_g * layout.len];
        for g in 0..groups {
            let inputs = src[g * cin_g * h * w..(g + 1) * cin_g * h * w].chunks_exact(h * w);
            for (channel, planes) in inputs.zip(phases.chunks_exact_mut(layout.len)) {
                layout.fill(channel, planes);
            }
            let group_channels = if groups == 1 {
                channels.clone()
            } else {
                g * cout_g..(g + 1) * cout_g
            };
            let m = group_channels.len();
            let weight = &self.weight[group_channels.start * k..group_channels.end * k];
            let out = &mut dst[(group_channels.start - channels.start) * plane..][..m * plane];
            let epilogues = self.epilogues(group_channels);
            #[cfg(target_arch = "x86_64")]
            if pointwise_avx2::runs(k, plane) {
                // The direct kernel gathers each tap's run from the phase planes itself: no
                // column matrix.
                let operands = pointwise_avx2::Operands {
                    weight,
                    k,
                    epilogues: &epilogues,
                    n: plane,
                    src: pointwise_avx2::Source::Taps {
                        data: &phases,
                        starts: &taps,
                        width: ow,
                        pitch: layout.wp,
                    },
                    dst_stride: plane,
                    accumulate: false,
                };
                // SAFETY: the CPU has the kernel's features (`runs`); no `accumulate`.
                unsafe { pointwise_avx2::convolve(&operands, out) };
                continue;
            }
            cols.reserve(k * rows * ow);
            for oy0 in (0..oh).step_by(rows) {
                let block_rows = rows.min(oh - oy0);
                let nb = block_rows * ow;
                // Column-matrix row `(ci, ky, kx)`, column `(oy, ox)`, appended in that order.
                cols.clear();
                for &tap in &taps {
                    for oy in oy0..oy0 + block_rows {
                        cols.extend_from_slice(&phases[tap + oy * layout.wp..][..ow]);
                    }
                }
                let block = &mut out[oy0 * ow..];
                // SAFETY: no `accumulate`, so `block` is only written.
                unsafe { gemm_row_major(m, nb, k, (nb, plane), weight, &cols, block, false) };
                // SAFETY: the GEMM just wrote the first `nb` values of each row.
                unsafe { apply_to_written_rows(&epilogues, block, plane, nb) };
            }
        }
    }

    /// Depthwise convolution whose kernel covers the whole unpadded input (the anti-spoof
    /// networks' "global depthwise" layer before their last linear layers): one output per
    /// channel, a dot product of the channel with its kernel. (Through the phase planes it took
    /// 0.13 ms for 512 channels of 8x8, most of it in the generic tap loop.)
    fn depthwise_global(&self, channels: Range<usize>, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let taps = self.kernel.0 * self.kernel.1;
        let sources = src[channels.start * taps..].chunks_exact(taps);
        for ((c, channel), out) in channels.zip(sources).zip(dst) {
            let epilogue = self.activation.epilogue(c, self.bias[c]);
            let weight = &self.weight[c * taps..(c + 1) * taps];
            out.write(epilogue.activate(epilogue.bias + dot(weight, channel)));
        }
    }

    /// Depthwise convolution with bias and activation of channels `channels`, one at a time,
    /// into `dst`.
    ///
    /// Each channel is first copied into zero-padded *phase planes* ([`PhaseLayout`]), where
    /// every tap reads one contiguous run with no bounds tests, whatever the stride and padding.
    /// Output rows are computed `wp` (the plane width) apart as one flat run; the `wp - ow`
    /// extra values after each row are dropped when the run is copied to `dst`. The run is
    /// rounded up to whole [`DEPTHWISE_LANES`] groups, read from zeros after the planes, so the
    /// kernel has no scalar tail.
    fn depthwise(
        &self,
        channels: Range<usize>,
        src: &[f32],
        dst: &mut [MaybeUninit<f32>],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) {
        if (oh, ow) == (1, 1) && self.kernel == (h, w) && self.geometry.padding == [0; 4] {
            return self.depthwise_global(channels, src, dst);
        }
        #[cfg(target_arch = "x86_64")]
        if depthwise_avx2::runs_small(self.kernel, self.geometry.stride, self.geometry.padding, w) {
            let epilogues = self.epilogues(channels.clone());
            // SAFETY: `runs_small` checked the CPU; `dst` holds the planes of `channels`.
            unsafe {
                depthwise_avx2::convolve_small(channels, &self.weight, &epilogues, src, dst, (h, w))
            };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if depthwise_avx2::runs(self.kernel, self.geometry.stride) {
            let [pt, pl, ..] = self.geometry.padding;
            let epilogues = self.epilogues(channels.clone());
            let layer = depthwise_avx2::Layer {
                stride: self.geometry.stride,
                channels,
                weight: &self.weight,
                epilogues: &epilogues,
                src,
                input: (h, w),
                output: (oh, ow),
                padding: (pt, pl),
                out_rows: 0..oh,
            };
            // SAFETY: `runs` checked the CPU; `dst` holds the planes of `channels`.
            unsafe { depthwise_avx2::convolve(&layer, dst) };
            return;
        }
        let (kh, kw) = self.kernel;
        let layout = PhaseLayout::new(&self.geometry, h, w);
        let run_len = ((oh - 1) * layout.wp + ow).next_multiple_of(DEPTHWISE_LANES);
        let starts: Vec<usize> = (0..kh)
            .flat_map(|ky| (0..kw).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| layout.tap_start(ky, kx))
            .collect();
        let kernel = depthwise_kernel();
        // `scratch` holds the phase planes, the zeros the rounded-up run reads past them, then
        // the output run. Every channel writes the same plane positions, so the padding written
        // as zeros when `scratch` is made stays zero.
        let phases_len = layout.len + DEPTHWISE_LANES;
        let mut scratch = vec![0f32; phases_len + run_len];
        let (phases, run) = scratch.split_at_mut(phases_len);
        let sources = src[channels.start * h * w..channels.end * h * w].chunks_exact(h * w);
        for ((c, channel), out) in channels.zip(sources).zip(dst.chunks_exact_mut(oh * ow)) {
            layout.fill(channel, phases);
            let taps = &self.weight[c * kh * kw..(c + 1) * kh * kw];
            let epilogue = self.activation.epilogue(c, self.bias[c]);
            kernel(taps, &starts, phases, epilogue, run);
            for (row, out) in run.chunks(layout.wp).zip(out.chunks_exact_mut(ow)) {
                write_copy(out, &row[..ow]);
            }
        }
    }
}

/// `sum a[i] * b[i]` in 8 interleaved partial sums, which the compiler keeps in vector
/// registers (one running sum is a chain of dependent adds it may not reorder).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((sum, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *sum += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Views initialised values as possibly uninitialised ones, for kernels that write outputs.
///
/// # Safety
/// Only initialised values may be written through the view (the values stay readable as `f32`).
unsafe fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller writes only `f32`s.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `values` as `f32`s once they have been written.
///
/// # Safety
/// Every value of `values` must be initialised.
unsafe fn assume_written(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the values are initialised.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Applies `epilogues[i]` to the first `len` values of row `i` of `rows` (rows `stride` apart).
///
/// # Safety
/// Those values must be initialised.
unsafe fn apply_to_written_rows(
    epilogues: &[Epilogue],
    rows: &mut [MaybeUninit<f32>],
    stride: usize,
    len: usize,
) {
    for (row, &epilogue) in rows.chunks_mut(stride).zip(epilogues) {
        // SAFETY: initialised (the caller's promise).
        apply_epilogue(epilogue, unsafe { assume_written(&mut row[..len]) });
    }
}

/// Copies `src` into `dst` (of the same length) and returns it, now initialised.
fn write_copy<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
    // SAFETY: every value was just written.
    unsafe { assume_written(dst) }
}

/// Output positions from which dense 3x3 stride-1 layers run Winograd: on smaller maps its
/// transforms and tile padding cost more than the multiplies saved. RetinaFace's 8x10 layers
/// (80 positions) ran 24-46% faster through im2col (64->48 0.082-0.089 -> 0.062 ms), its 15x20
/// ones (300) as fast with 16 input channels and 40-57% slower with 64.
const WINOGRAD_MIN_PLANE: usize = 128;

/// Layers expected to take less than this run on one thread: below it, handing half the work
/// to another thread costs more than it saves.
const PARALLEL_MIN_NANOS: f64 = 10_000.0;

/// Floats of GEMM input plus output per column block of [`FusedConv2d::gemm_epilogue`] (256 KiB).
const L2_BLOCK_FLOATS: usize = 64 * 1024;

/// One input channel stored as zero-padded *phase planes*: for stride `s`, plane `(py, px)`
/// holds the padded input at rows `py + s*i` and columns `px + s*j`, `i, j >= 0`, and the
/// `s * s` planes of `hp x wp` values follow each other. Tap `(ky, kx)` of output `(oy, ox)` is
/// element `(oy + ky/s, ox + kx/s)` of plane `(ky%s, kx%s)`, so the taps of consecutive outputs
/// are consecutive in memory.
struct PhaseLayout {
    h: usize,
    w: usize,
    stride: usize,
    /// Top and left padding.
    pt: usize,
    pl: usize,
    /// Width of a plane.
    wp: usize,
    /// Length of a plane, `hp * wp`.
    plane_len: usize,
    /// Length of all `s * s` planes.
    len: usize,
}

impl PhaseLayout {
    fn new(geometry: &ConvGeometry, h: usize, w: usize) -> Self {
        let [pt, pl, pb, pr] = geometry.padding;
        let s = geometry.stride;
        let (hp, wp) = ((h + pt + pb).div_ceil(s), (w + pl + pr).div_ceil(s));
        Self {
            h,
            w,
            stride: s,
            pt,
            pl,
            wp,
            plane_len: hp * wp,
            len: s * s * hp * wp,
        }
    }

    /// Where tap `(ky, kx)` of output `(0, 0)` is; output `(oy, ox)` adds `oy * wp + ox`.
    fn tap_start(&self, ky: usize, kx: usize) -> usize {
        let s = self.stride;
        ((ky % s) * s + kx % s) * self.plane_len + (ky / s) * self.wp + kx / s
    }

    /// Copies an `h x w` channel into its planes (`len` values). Padding positions are not
    /// written: they must already be zero.
    fn fill(&self, channel: &[f32], phases: &mut [f32]) {
        let (s, w, pl, wp, plane_len) = (self.stride, self.w, self.pl, self.wp, self.plane_len);
        for (iy, row) in channel.chunks_exact(w).take(self.h).enumerate() {
            let py = iy + self.pt;
            // Row `py / s` of plane `(py % s, 0)`; plane `(py % s, q)` follows `q` planes on.
            let row_start = (py % s) * s * plane_len + (py / s) * wp;
            match s {
                1 => phases[row_start + pl..][..w].copy_from_slice(row),
                2 => {
                    // Input columns 2j and 2j+1 land in the phases of `pl` and `pl + 1`, in the
                    // same row of planes `(py % 2, 0)` and `(py % 2, 1)`.
                    let (p0, p1) = phases[row_start..].split_at_mut(plane_len);
                    split_padded_columns(row, pl, p0, p1);
                }
                _ => {
                    for q in 0..s {
                        // The first input column whose padded column `ix + pl` is in phase `q`.
                        let ix0 = (q + s - pl % s) % s;
                        if ix0 >= w {
                            continue;
                        }
                        let plane_row = &mut phases[row_start + q * plane_len + (ix0 + pl) / s..];
                        for (p, &x) in plane_row.iter_mut().zip(row[ix0..].iter().step_by(s)) {
                            *p = x;
                        }
                    }
                }
            }
        }
    }
}

/// Writes an input row into the even and odd columns of its zero-padded row, input column `x`
/// being padded column `x + pl`: `even[i]` is padded column `2 i` and `odd[i]` column `2 i + 1`.
/// (The stride-2 phase planes, and the column phases of Winograd F(2x2)'s tiles.)
fn split_padded_columns(row: &[f32], pl: usize, even: &mut [f32], odd: &mut [f32]) {
    // Input columns 2j and 2j+1 land in the phases of `pl` and `pl + 1`.
    let (first, second) = if pl.is_multiple_of(2) {
        (&mut even[pl / 2..], &mut odd[pl / 2..])
    } else {
        (&mut odd[pl / 2..], &mut even[pl.div_ceil(2)..])
    };
    let pairs = row.chunks_exact(2);
    if let Some(&x) = pairs.remainder().first() {
        first[row.len() / 2] = x;
    }
    for ((a, b), pair) in first.iter_mut().zip(second.iter_mut()).zip(pairs) {
        *a = pair[0];
        *b = pair[1];
    }
}

/// Applies `epilogue` to `values`, with AVX2 where the CPU has it. Never inlined, so that it
/// keeps a symbol `tools/check_neon.sh` can inspect on aarch64.
#[inline(never)]
fn apply_epilogue(epilogue: Epilogue, values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { apply_epilogue_avx2(epilogue, values) };
        return;
    }
    epilogue.apply(values)
}

/// [`Epilogue::apply`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_epilogue_avx2(epilogue: Epilogue, values: &mut [f32]) {
    epilogue.apply(values)
}

/// Whether our kernels with 512-bit vectors run: with the `avx512` feature, on CPUs with
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
fn avx512f() -> bool {
    cfg!(feature = "avx512") && is_x86_feature_detected!("avx512f")
}

/// Outputs the depthwise kernel sums at once (one AVX2 register).
const DEPTHWISE_LANES: usize = 8;
/// Groups of [`DEPTHWISE_LANES`] outputs the depthwise kernel sums side by side.
const DEPTHWISE_GROUPS: usize = 4;

/// One depthwise channel: `run[q] = act(bias + sum_t taps[t] * phases[starts[t] + q])`.
type DepthwiseKernel = fn(&[f32], &[usize], &[f32], Epilogue, &mut [f32]);

/// The fastest depthwise kernel this CPU runs.
fn depthwise_kernel() -> DepthwiseKernel {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return |taps, starts, phases, epilogue, run| {
            // SAFETY: this closure is only returned after checking the CPU has AVX2 and FMA.
            unsafe { depthwise_phases_avx2(taps, starts, phases, epilogue, run) }
        };
    }
    depthwise_portable
}

/// [`depthwise_run`] on CPUs without a dedicated build (aarch64: NEON by auto-vectorisation).
/// Never inlined, so that it keeps a symbol `tools/check_neon.sh` can inspect.
#[inline(never)]
fn depthwise_portable(
    taps: &[f32],
    starts: &[usize],
    phases: &[f32],
    epilogue: Epilogue,
    run: &mut [f32],
) {
    depthwise_run::<PortableMulAdd>(taps, starts, phases, epilogue, run)
}

/// [`depthwise_run`] compiled for AVX2 + FMA (8 lanes, fused multiply-add).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_phases_avx2(
    taps: &[f32],
    starts: &[usize],
    phases: &[f32],
    epilogue: Epilogue,
    run: &mut [f32],
) {
    depthwise_run::<Fused>(taps, starts, phases, epilogue, run)
}

/// Multiply-add as the kernels do it: `a * b + c`, fused into one rounding or not.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding; only used where the CPU has an FMA instruction (else it is a slow libm call).
struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A multiply then an add.
#[cfg(not(target_arch = "aarch64"))]
struct Unfused;

#[cfg(not(target_arch = "aarch64"))]
impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Every aarch64 CPU has FMA; x86-64 only guarantees SSE2.
#[cfg(target_arch = "aarch64")]
type PortableMulAdd = Fused;
#[cfg(not(target_arch = "aarch64"))]
type PortableMulAdd = Unfused;

/// See [`DepthwiseKernel`]. The common 3x3 and 5x5 kernels get unrolled tap loops.
#[inline(always)]
fn depthwise_run<M: MulAdd>(
    taps: &[f32],
    starts: &[usize],
    phases: &[f32],
    epilogue: Epilogue,
    run: &mut [f32],
) {
    match taps.len() {
        9 => depthwise_taps::<M, 9>(taps, starts, phases, epilogue, run),
        25 => depthwise_taps::<M, 25>(taps, starts, phases, epilogue, run),
        _ => {
            run.fill(epilogue.bias);
            for (&tap, &start) in taps.iter().zip(starts) {
                for (r, &x) in run.iter_mut().zip(&phases[start..]) {
                    *r = M::mul_add(tap, x, *r);
                }
            }
            run.iter_mut().for_each(|r| *r = epilogue.activate(*r));
        }
    }
}

/// [`depthwise_run`] for exactly `K` taps: each group of `LANES` outputs is summed in registers
/// over all taps, then stored once. Groups go [`DEPTHWISE_GROUPS`] at a time, so that many
/// independent multiply-add chains overlap (one chain of `K` dependent multiply-adds left the
/// FMA units idle most of the time) and each tap is broadcast once per block.
#[inline(always)]
fn depthwise_taps<M: MulAdd, const K: usize>(
    taps: &[f32],
    starts: &[usize],
    phases: &[f32],
    epilogue: Epilogue,
    run: &mut [f32],
) {
    const LANES: usize = DEPTHWISE_LANES;
    const BLOCK: usize = DEPTHWISE_LANES * DEPTHWISE_GROUPS;
    let n = run.len();
    let taps: &[f32; K] = taps.try_into().expect("tap count");
    let sources: [&[f32]; K] = std::array::from_fn(|t| &phases[starts[t]..starts[t] + n]);
    let (blocks, rest) = run.split_at_mut(n - n % BLOCK);
    for (i, block) in blocks.chunks_exact_mut(BLOCK).enumerate() {
        let q = i * BLOCK;
        let mut acc = [epilogue.bias; BLOCK];
        for (&tap, source) in taps.iter().zip(&sources) {
            let x: &[f32; BLOCK] = source[q..q + BLOCK].try_into().expect("block");
            for (a, &x) in acc.iter_mut().zip(x) {
                *a = M::mul_add(tap, x, *a);
            }
        }
        for (o, a) in block.iter_mut().zip(acc) {
            *o = epilogue.activate(a);
        }
    }
    let q0 = blocks.len();
    let (groups, tail) = rest.split_at_mut(rest.len() - rest.len() % LANES);
    for (i, chunk) in groups.chunks_exact_mut(LANES).enumerate() {
        let q = q0 + i * LANES;
        let mut acc = [epilogue.bias; LANES];
        for (&tap, source) in taps.iter().zip(&sources) {
            let x: &[f32; LANES] = source[q..q + LANES].try_into().expect("lane count");
            for (a, &x) in acc.iter_mut().zip(x) {
                *a = M::mul_add(tap, x, *a);
            }
        }
        for (o, a) in chunk.iter_mut().zip(acc) {
            *o = epilogue.activate(a);
        }
    }
    let q1 = q0 + groups.len();
    for (i, o) in tail.iter_mut().enumerate() {
        let mut acc = epilogue.bias;
        for (&tap, source) in taps.iter().zip(&sources) {
            acc = M::mul_add(tap, source[q1 + i], acc);
        }
        *o = epilogue.activate(acc);
    }
}

/// `dst[m x n] = act(lhs[m x k] * rhs[k x n] + bias)` for the `m = epilogues.len()` rows
/// (`dst`'s values added before the activation with `accumulate`), row-major; `lhs` is
/// contiguous, rows of `rhs` and of `dst` are `rhs_stride` and `dst_stride` apart. Layers of
/// few input channels run the direct AVX2 kernel ([`pointwise_avx2`]) where the CPU has it
/// (bias and activation in registers); the others a GEMM then the epilogue, in column blocks
/// whose output and input fit in L2, so the epilogue runs while the block is still in cache
/// instead of in a second pass over memory.
///
/// # Safety
/// With `accumulate`, the values of `dst` it addresses must be initialised.
#[allow(clippy::too_many_arguments)]
unsafe fn pointwise(
    epilogues: &[Epilogue],
    n: usize,
    k: usize,
    strides: (usize, usize),
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if pointwise_avx2::runs(k, n) {
        let operands = pointwise_avx2::Operands {
            weight: lhs,
            k,
            epilogues,
            n,
            src: pointwise_avx2::Source::Rows {
                data: rhs,
                stride: strides.0,
            },
            dst_stride: strides.1,
            accumulate,
        };
        // SAFETY: the CPU has AVX2 and FMA (`runs`); initialised values with `accumulate`.
        unsafe { pointwise_avx2::convolve(&operands, dst) };
        return;
    }
    let m = epilogues.len();
    // Repacking `lhs` per block costs about 2/`block` of the multiply: keep blocks >= 128.
    let block = (L2_BLOCK_FLOATS / (m + k)).max(128) / 16 * 16;
    for j0 in (0..n).step_by(block) {
        let nb = block.min(n - j0);
        let (rhs, dst) = (&rhs[j0..], &mut dst[j0..]);
        // SAFETY: initialised values with `accumulate` (the caller's promise).
        unsafe { gemm_row_major(m, nb, k, strides, lhs, rhs, dst, accumulate) };
        // SAFETY: the GEMM just wrote the first `nb` values of each row.
        unsafe { apply_to_written_rows(epilogues, dst, strides.1, nb) };
    }
}

/// `dst[m x n] = lhs[m x k] * rhs[k x n]` (`+=` with `accumulate`), row-major; `lhs` is
/// contiguous, rows of `rhs` and of `dst` are `rhs_stride` and `dst_stride` apart. Without
/// `accumulate`, `dst` is only written.
///
/// # Safety
/// With `accumulate`, the values of `dst` it addresses must be initialised.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_row_major(
    m: usize,
    n: usize,
    k: usize,
    (rhs_stride, dst_stride): (usize, usize),
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
) {
    assert!(m > 0 && k > 0 && n <= rhs_stride && n <= dst_stride);
    assert!(lhs.len() >= m * k);
    assert!(rhs.len() >= (k - 1) * rhs_stride + n && dst.len() >= (m - 1) * dst_stride + n);
    // SAFETY: the slices are at least as long as the strides below address (checked above);
    // `dst` is read only with `accumulate` (initialised: the caller's promise).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_stride as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl CustomOp1 for FusedConv2d {
    fn name(&self) -> &'static str {
        "fused-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if c != self.in_channels {
            candle_core::bail!("conv expects {} input channels, got {c}", self.in_channels);
        }
        let start = profile::is_recording().then(std::time::Instant::now);
        let (out, oh, ow) = self.run(contiguous_f32(storage, layout)?, n, h, w, None)?;
        if let Some(start) = start {
            profile::record(self, n, (h, w), (oh, ow), start.elapsed());
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, self.out_channels, oh, ow)),
        ))
    }
}

impl Module for FusedConv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.is_contiguous() {
            xs.apply_op1_no_bwd(self)
        } else {
            xs.contiguous()?.apply_op1_no_bwd(self)
        }
    }
}

impl FusedConv2d {
    /// `act(conv(xs) + bias + shortcut)` in one pass, for the 1x1 convolution that closes a
    /// residual block: the shortcut is copied into the output and the GEMM accumulates onto it,
    /// instead of a separate add over a new tensor. Only for pointwise layers.
    pub fn forward_with_shortcut(&self, xs: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
        if self.kind != Kernel::Pointwise {
            candle_core::bail!("a shortcut is only fused into a pointwise convolution");
        }
        xs.contiguous()?
            .apply_op2_no_bwd(&shortcut.contiguous()?, &WithShortcut(self))
    }
}

/// [`FusedConv2d::forward_with_shortcut`] as a candle op: input, then shortcut.
struct WithShortcut<'a>(&'a FusedConv2d);

impl CustomOp2 for WithShortcut<'_> {
    fn name(&self) -> &'static str {
        "fused-conv2d-shortcut"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        shortcut: &CpuStorage,
        shortcut_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let conv = self.0;
        let (n, c, h, w) = input_layout.shape().dims4()?;
        if c != conv.in_channels {
            candle_core::bail!("conv expects {} input channels, got {c}", conv.in_channels);
        }
        let (oh, ow) = conv.output_size(h, w)?;
        let out_shape = Shape::from((n, conv.out_channels, oh, ow));
        if shortcut_layout.shape() != &out_shape {
            candle_core::bail!(
                "shortcut {:?} does not match the output {out_shape:?}",
                shortcut_layout.shape()
            );
        }
        let (input, shortcut) = (
            contiguous_f32(input, input_layout)?,
            contiguous_f32(shortcut, shortcut_layout)?,
        );
        let start = profile::is_recording().then(std::time::Instant::now);
        let (out, _, _) = conv.run(input, n, h, w, Some(shortcut))?;
        if let Some(start) = start {
            profile::record(conv, n, (h, w), (oh, ow), start.elapsed());
        }
        Ok((CpuStorage::F32(out), out_shape))
    }
}

/// Per-layer times of the convolutions run on this thread, for `liveness bench --layers`.
/// Off unless [`profile::start`] was called: then each layer costs one thread-local check.
pub mod profile {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::{FusedConv2d, Kernel};

    /// One convolution as it ran.
    #[derive(Debug, Clone)]
    pub struct LayerTime {
        /// Kind, channels, stride and input size, e.g. `pointwise 16->96 112x112`.
        pub layer: String,
        /// Multiply-adds times two.
        pub flops: f64,
        pub elapsed: Duration,
    }

    thread_local! {
        static RECORDS: RefCell<Option<Vec<LayerTime>>> = const { RefCell::new(None) };
    }

    /// Starts recording on this thread (dropping anything recorded before).
    pub fn start() {
        RECORDS.with(|r| *r.borrow_mut() = Some(Vec::new()));
    }

    /// Stops recording and returns the layers in the order they ran.
    pub fn finish() -> Vec<LayerTime> {
        RECORDS.with(|r| r.borrow_mut().take()).unwrap_or_default()
    }

    pub(super) fn is_recording() -> bool {
        RECORDS.with(|r| r.borrow().is_some())
    }

    /// Records a layer, or a fused block of layers, as one entry.
    pub(super) fn record_block(layer: String, flops: f64, elapsed: Duration) {
        RECORDS.with(|r| {
            if let Some(records) = r.borrow_mut().as_mut() {
                records.push(LayerTime {
                    layer,
                    flops,
                    elapsed,
                });
            }
        });
    }

    pub(super) fn record(
        conv: &FusedConv2d,
        n: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        elapsed: Duration,
    ) {
        let (kh, kw) = conv.kernel;
        let (cin, cout, s) = (conv.in_channels, conv.out_channels, conv.geometry.stride);
        let layer = match conv.kernel_for(oh * ow) {
            Kernel::Pointwise => format!("pointwise {cin}->{cout} {h}x{w}"),
            Kernel::Depthwise => format!("depthwise {kh}x{kw}/{s} {cin} {h}x{w}"),
            Kernel::Im2col if conv.geometry.groups > 1 => format!(
                "conv {kh}x{kw}/{s} {cin}->{cout} g{} {h}x{w}",
                conv.geometry.groups
            ),
            Kernel::Im2col => format!("conv {kh}x{kw}/{s} {cin}->{cout} {h}x{w}"),
            Kernel::Winograd => format!("winograd 3x3/1 {cin}->{cout} {h}x{w}"),
        };
        record_block(layer, conv.flops(n * oh * ow), elapsed);
    }
}

/// The values of a contiguous `f32` tensor (the input of one of our custom ops).
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("expected an f32 tensor");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, g: ConvGeometry) -> Result<Tensor> {
        let [pt, pl, pb, pr] = g.padding;
        let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        let y = x.conv2d(w, 0, g.stride, 1, g.groups)?;
        y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
    }

    fn check(cin: usize, cout: usize, k: usize, h: usize, w: usize, g: ConvGeometry) -> Result<()> {
        check_within(cin, cout, k, h, w, g, 1e-4)
    }

    /// Winograd F(4x4) rounds more than the other kernels: measured up to 3.4e-5 of the
    /// outputs' scale `sqrt(9 cin)` (the others: 3e-7); the bound is 1e-4 of it.
    fn check_winograd4(cin: usize, cout: usize, h: usize, w: usize, g: ConvGeometry) -> Result<()> {
        check_within(cin, cout, 3, h, w, g, 1e-4 * (9.0 * cin as f32).sqrt())
    }

    fn check_within(
        cin: usize,
        cout: usize,
        k: usize,
        h: usize,
        w: usize,
        g: ConvGeometry,
        tolerance: f32,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev)?;
        let wt = Tensor::randn(0f32, 1.0, (cout, cin / g.groups, k, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, cout, &dev)?;
        let conv = FusedConv2d::new(&wt, Some(&b), g, Activation::Identity)?;
        let ours = conv.forward(&x)?;
        let want = reference(&x, &wt, &b, g)?;
        assert_eq!(ours.dims(), want.dims(), "{cin}->{cout} k{k} {h}x{w} {g:?}");
        let diff = (ours - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(
            diff < tolerance,
            "{cin}->{cout} k{k} {h}x{w} {g:?}: max diff {diff}"
        );
        Ok(())
    }

    #[test]
    fn kernels_match_candle_conv2d() -> Result<()> {
        for &(h, w) in &[(7, 9), (8, 8), (5, 12), (1, 1), (3, 2)] {
            // pointwise
            check(5, 7, 1, h, w, ConvGeometry::new(1, 0, 1))?;
            // depthwise 3x3, stride 1 and 2; 5x5 without padding where it fits
            for s in [1, 2] {
                check(6, 6, 3, h, w, ConvGeometry::new(s, 1, 6))?;
                check(4, 4, 3, h + 2, w + 2, ConvGeometry::new(s, 0, 4))?;
                // general 3x3 and grouped
                check(3, 8, 3, h, w, ConvGeometry::new(s, 1, 1))?;
                check(4, 6, 3, h, w, ConvGeometry::new(s, 1, 2))?;
                check(4, 4, 1, h, w, ConvGeometry::new(s, 0, 1))?;
            }
            check(4, 4, 5, h + 4, w + 4, ConvGeometry::new(1, 0, 4))?;
            // depthwise: 5x5 padded, stride 2 and 3, and a kernel size without an unrolled path
            check(4, 4, 5, h, w, ConvGeometry::new(2, 2, 4))?;
            check(4, 4, 3, h, w, ConvGeometry::new(3, 1, 4))?;
            check(4, 4, 2, h + 1, w + 1, ConvGeometry::new(1, 0, 4))?;
            // asymmetric padding, as Keras/TFLite "same" with stride 2
            let g = ConvGeometry {
                stride: 2,
                padding: [0, 0, 1, 1],
                groups: 3,
            };
            check(3, 3, 3, h + 1, w + 1, g)?;
            let g = ConvGeometry {
                stride: 2,
                padding: [0, 0, 1, 1],
                groups: 1,
            };
            check(3, 5, 3, h + 1, w + 1, g)?;
        }
        // Winograd F(2x2) (dense 3x3 stride 1, from 128 output positions): unpadded,
        // asymmetric padding, odd and even output sizes
        for &(h, w) in &[(14, 14), (13, 15), (15, 13), (18, 11)] {
            check(5, 6, 3, h, w, ConvGeometry::new(1, 0, 1))?;
            let g = ConvGeometry {
                stride: 1,
                padding: [0, 1, 2, 1],
                groups: 1,
            };
            check(5, 6, 3, h, w, g)?;
        }
        // F(2x2) on maps of fewer than 40 4x4 tiles: 8 x 10 tiles (one block), runs of 10;
        // 10 x 13 tiles in blocks of 72 (the second of 58, starting inside a tile row)
        // (sums of 576 and 1152 products: rounding grows with their scale, sqrt(576) = 24 and
        // sqrt(1152) = 34; with random inputs an absolute 1e-4 for 576 failed once, at 1.1e-4 on
        // aarch64, so both are bounded relative to their scale)
        let g = ConvGeometry::new(1, 1, 1);
        check_within(64, 16, 3, 15, 20, g, 1e-5 * (9.0f32 * 64.0).sqrt())?;
        let scale = (9.0f32 * 128.0).sqrt();
        check_within(
            128,
            128,
            3,
            20,
            26,
            ConvGeometry::new(1, 1, 1),
            1e-5 * scale,
        )?;
        // F(4x4) from 40 tiles: 8 x 11 tiles, the last row and column overhanging the output
        check_winograd4(64, 16, 31, 42, ConvGeometry::new(1, 1, 1))?;
        // 10 x 11 tiles in blocks of 56 (the second of 54, starting inside a tile row)
        check_winograd4(96, 96, 40, 44, ConvGeometry::new(1, 1, 1))?;
        // asymmetric padding; tile rows of 5 tiles, fewer than a vector's 8
        let g = ConvGeometry {
            stride: 1,
            padding: [0, 1, 2, 1],
            groups: 1,
        };
        check_winograd4(5, 6, 30, 29, g)?;
        check_winograd4(8, 8, 44, 20, ConvGeometry::new(1, 1, 1))?;
        // big enough for the GEMM to run in several column blocks, the last one partial
        check(300, 200, 1, 20, 21, ConvGeometry::new(1, 0, 1))?;
        // the panel kernel (on AVX-512F): more than 128 input channels, whole panels
        check(144, 48, 1, 9, 13, ConvGeometry::new(1, 0, 1))?;
        check(40, 48, 3, 20, 21, ConvGeometry::new(1, 1, 1))?;
        check(24, 48, 3, 41, 43, ConvGeometry::new(2, 1, 2))?;
        // depthwise kernels as large as the input: 8x8 (whole groups of 8 taps), 7x7 (a tail)
        check(6, 6, 8, 8, 8, ConvGeometry::new(1, 0, 6))?;
        check(6, 6, 7, 7, 7, ConvGeometry::new(2, 0, 6))?;
        // depthwise 3x3 over rows of several 8-wide chunks (inner ones unmasked, the last one
        // partial) and several blocks of output rows, the last one short
        for s in [1, 2] {
            check(5, 5, 3, 23, 37, ConvGeometry::new(s, 1, 5))?;
            let g = ConvGeometry {
                stride: s,
                padding: [0, 0, 1, 1],
                groups: 5,
            };
            check(5, 5, 3, 26, 42, g)?;
        }
        Ok(())
    }

    /// Layers large enough to be split in halves give, on two threads, the values they give on
    /// one: each kind of kernel, a shortcut, a first half that is not half the channels, and
    /// halves of 4 channels.
    #[test]
    fn two_threads_give_the_values_of_one() -> Result<()> {
        let dev = Device::Cpu;
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let (one, two) = (pool(1), pool(2));
        // (in, out, kernel, geometry, input side): each expected to take over 10 µs.
        let layers = [
            (64, 64, 1, ConvGeometry::new(1, 0, 1), 56),
            (24, 36, 1, ConvGeometry::new(1, 0, 1), 56),
            (96, 96, 3, ConvGeometry::new(1, 1, 96), 56),
            (40, 40, 3, ConvGeometry::new(2, 1, 40), 56),
            (8, 8, 3, ConvGeometry::new(1, 1, 8), 112),
            (32, 48, 3, ConvGeometry::new(1, 1, 1), 56),
            (64, 64, 3, ConvGeometry::new(1, 1, 1), 15),
            (160, 96, 1, ConvGeometry::new(1, 0, 1), 14),
            (192, 192, 1, ConvGeometry::new(1, 0, 1), 14),
            (16, 32, 3, ConvGeometry::new(2, 1, 1), 56),
            (3, 8, 3, ConvGeometry::new(2, 1, 1), 160),
        ];
        for (cin, cout, k, g, side) in layers {
            let x = Tensor::randn(0f32, 1.0, (1, cin, side, side), &dev)?;
            let w = Tensor::randn(0f32, 0.3, (cout, cin / g.groups, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, cout, &dev)?;
            let conv = FusedConv2d::new(&w, Some(&b), g, Activation::Relu6)?;
            let run = |x: &Tensor| -> Result<Vec<f32>> {
                let shortcut = x.narrow(1, 0, cout.min(cin))?;
                let out = if k == 1 && cin == cout {
                    conv.forward_with_shortcut(x, &shortcut)?
                } else {
                    conv.forward(x)?
                };
                out.flatten_all()?.to_vec1::<f32>()
            };
            let alone = one.install(|| run(&x))?;
            let shared = two.install(|| crate::nn::parallel::with_helper(|| run(&x)))?;
            assert!(alone == shared, "{cin}->{cout} k{k} {g:?}");
        }
        Ok(())
    }

    /// The dispatched (AVX2 on most x86-64) and portable depthwise kernels agree.
    #[test]
    fn depthwise_kernels_agree() {
        let phases: Vec<f32> = (0..200).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        for k in [4, 9, 25] {
            let taps: Vec<f32> = (0..k).map(|t| 0.25 * t as f32 - 1.0).collect();
            let starts: Vec<usize> = (0..k).map(|t| (t * 7) % 40).collect();
            let epilogue = Activation::LeakyRelu(0.1).epilogue(0, 0.5);
            for n in [1, 7, 8, 19, 150] {
                let (mut fast, mut portable) = (vec![0f32; n], vec![0f32; n]);
                depthwise_kernel()(&taps, &starts, &phases, epilogue, &mut fast);
                depthwise_run::<PortableMulAdd>(&taps, &starts, &phases, epilogue, &mut portable);
                for (q, (a, b)) in fast.iter().zip(&portable).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "k{k} n{n} q{q}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn shortcut_is_added_in_the_gemm() -> Result<()> {
        let dev = Device::Cpu;
        // Big enough for several column blocks, the last one partial; batch of 2.
        let x = Tensor::randn(0f32, 1.0, (2, 40, 30, 31), &dev)?;
        let shortcut = Tensor::randn(0f32, 1.0, (2, 24, 30, 31), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (24, 40, 1, 1), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 24, &dev)?;
        let g = ConvGeometry::new(1, 0, 1);
        let conv = FusedConv2d::new(&w, Some(&b), g, Activation::Identity)?;
        let ours = conv.forward_with_shortcut(&x, &shortcut)?;
        let want = (reference(&x, &w, &b, g)? + &shortcut)?;
        let diff = (ours - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max diff {diff}");
        // The activation comes after the shortcut.
        let relu = FusedConv2d::new(&w, Some(&b), g, Activation::Relu)?;
        let ours = relu.forward_with_shortcut(&x, &shortcut)?;
        let want = (reference(&x, &w, &b, g)? + &shortcut)?.relu()?;
        let diff = (ours - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max diff with ReLU {diff}");
        // Only pointwise layers take a shortcut; the shapes must match.
        assert!(conv.forward_with_shortcut(&x, &x).is_err());
        let depthwise = FusedConv2d::new(
            &Tensor::randn(0f32, 1.0, (40, 1, 3, 3), &dev)?,
            None,
            ConvGeometry::new(1, 1, 40),
            Activation::Identity,
        )?;
        assert!(depthwise.forward_with_shortcut(&x, &x).is_err());
        Ok(())
    }

    #[test]
    fn profile_records_each_layer_only_while_on() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 4, 6, 6), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (4, 1, 3, 3), &dev)?;
        let conv = FusedConv2d::new(&w, None, ConvGeometry::new(2, 1, 4), Activation::Relu)?;
        conv.forward(&x)?;
        assert!(profile::finish().is_empty());
        profile::start();
        conv.forward(&x)?;
        let layers = profile::finish();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].layer, "depthwise 3x3/2 4 6x6");
        // 4 channels x 3x3 outputs x 9 taps, times 2.
        assert_eq!(layers[0].flops, 648.0);
        conv.forward(&x)?;
        assert!(profile::finish().is_empty());
        Ok(())
    }

    #[test]
    fn activations_are_fused() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[-2f32, 8.0]]], [[[1.0, -1.0]]]], &dev)?;
        let w = Tensor::new(&[[[[1f32]]], [[[2.0]]]], &dev)?;
        let x = x.reshape((1, 2, 1, 2))?;
        let run = |a: Activation| -> Result<Vec<f32>> {
            let w = w.reshape((2, 1, 1, 1))?;
            FusedConv2d::new(&w, None, ConvGeometry::new(1, 0, 2), a)?
                .forward(&x)?
                .flatten_all()?
                .to_vec1()
        };
        assert_eq!(run(Activation::Relu)?, vec![0.0, 8.0, 2.0, 0.0]);
        // Stacked layers: one channel each of LeakyReLU and none, as per-channel slopes.
        let stacked =
            Activation::stacked(&[(Activation::LeakyRelu(0.1), 1), (Activation::Identity, 1)])?;
        assert_eq!(stacked, Activation::PRelu(vec![0.1, 1.0]));
        assert_eq!(run(stacked)?, vec![-0.2, 8.0, 2.0, -2.0]);
        assert!(Activation::stacked(&[(Activation::Relu6, 2)]).is_err());
        assert_eq!(run(Activation::Relu6)?, vec![0.0, 6.0, 2.0, 0.0]);
        assert_eq!(run(Activation::LeakyRelu(0.1))?, vec![-0.2, 8.0, 2.0, -0.2]);
        assert_eq!(
            run(Activation::PRelu(vec![0.5, 0.25]))?,
            vec![-1.0, 8.0, 2.0, -0.5]
        );
        Ok(())
    }
}
