//! Inverted-residual blocks (expand 1x1, depthwise 3x3, project 1x1) run in bands of output
//! rows, so that a very large expanded map (or depthwise output) stays in L2 instead of going to
//! memory and back: per band, the expansion of the input rows the band's depthwise outputs read
//! (a stride-1 band recomputes the two rows it shares with the next, stride 2 one), the
//! depthwise convolution of that band, then its projection into the band's output columns.
//! Without expansion, the depthwise layer reads the band's rows of the input in place.
//!
//! Only two blocks of the mask classifier are that large (`liveness bench --layers`, one
//! thread, 3 alternating rounds each): `block_1` (16->96->24, stride 2, a 4.6 MiB expansion at
//! 112x112) took 0.84-0.86 ms against 0.89-1.07 layer by layer, `expanded_conv` (no expansion,
//! 32->16, a 1.5 MiB depthwise output) 0.31-0.35 against 0.39-0.43. Blocks with 1.7 MiB
//! expansions (56x56, 144 channels) ran 3-9% slower banded, hence [`BANDED_MIN_FLOATS`].
//!
//! Each output value is computed as layer by layer: the same GEMM sums and the same depthwise
//! kernel, only on fewer columns at a time.

#[cfg(target_arch = "x86_64")]
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};

#[cfg(target_arch = "x86_64")]
use super::{as_uninit, assume_written, depthwise_avx2, pointwise};
use super::{contiguous_f32, profile, FusedConv2d, Kernel};

/// Expanded maps of at least this many floats (4 MiB) run in bands.
const BANDED_MIN_FLOATS: usize = 1 << 20;
/// Blocks without expansion run in bands from inputs of this many floats (1 MiB).
const BANDED_MIN_FLOATS_IN_PLACE: usize = 1 << 18;
/// Expanded floats per band (384 KiB), so that a band's expansion, its depthwise output and the
/// weights share L2 (768 KiB bands ran as fast there, 192 KiB ones 45% slower).
#[cfg(target_arch = "x86_64")]
const BAND_FLOATS: usize = 96 * 1024;

/// `project(depthwise(expand(xs)))` (`expand` may be absent), plus `xs` when `residual`: in
/// bands of rows where the depthwise layer's input is very large, the CPU runs the in-place
/// depthwise kernel and the pool has one thread (on two, each layer splits its output channels
/// between them), else layer by layer.
pub fn inverted_residual(
    expand: Option<&FusedConv2d>,
    depthwise: &FusedConv2d,
    project: &FusedConv2d,
    xs: &Tensor,
    residual: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let block = Block {
        expand,
        depthwise,
        project,
        residual,
    };
    if block.runs_banded(h, w) {
        return xs.contiguous()?.apply_op1_no_bwd(&block);
    }
    let hidden = match expand {
        Some(expand) => expand.forward(xs)?,
        None => xs.clone(),
    };
    let hidden = depthwise.forward(&hidden)?;
    if residual {
        project.forward_with_shortcut(&hidden, xs)
    } else {
        project.forward(&hidden)
    }
}

/// The three layers of a block, as one candle op.
struct Block<'a> {
    /// Absent in a block without expansion: its depthwise layer reads the input in place.
    expand: Option<&'a FusedConv2d>,
    depthwise: &'a FusedConv2d,
    project: &'a FusedConv2d,
    residual: bool,
}

impl Block<'_> {
    fn runs_banded(&self, h: usize, w: usize) -> bool {
        let dw = self.depthwise;
        // Layers of the panel kernel keep no row-major weights for the bands' GEMMs.
        let pointwise = |conv: &FusedConv2d| conv.kind == Kernel::Pointwise && !conv.in_panels();
        #[cfg(target_arch = "x86_64")]
        let in_place = depthwise_avx2::runs(dw.kernel, dw.geometry.stride);
        #[cfg(not(target_arch = "x86_64"))]
        let in_place = false;
        in_place
            && rayon::current_num_threads() == 1
            && dw.kind == Kernel::Depthwise
            && self.expand.is_none_or(pointwise)
            && pointwise(self.project)
            && dw.in_channels * h * w
                >= if self.expand.is_some() {
                    BANDED_MIN_FLOATS
                } else {
                    BANDED_MIN_FLOATS_IN_PLACE
                }
    }

    /// All `n` inputs (`input`, `NCHW`) to their `cout x oh x ow` outputs.
    #[cfg(target_arch = "x86_64")]
    fn run(
        &self,
        input: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (cout, oh, ow): (usize, usize, usize),
    ) -> Vec<f32> {
        let len = n * cout * oh * ow;
        let mut out = if self.residual {
            input.to_vec()
        } else {
            Vec::with_capacity(len)
        };
        let dst = if self.residual {
            // SAFETY: the kernels write only `f32`s through this view.
            unsafe { as_uninit(&mut out) }
        } else {
            &mut out.spare_capacity_mut()[..len]
        };
        let outputs = dst.chunks_exact_mut(cout * oh * ow);
        for (src, dst) in input.chunks_exact(c * h * w).zip(outputs) {
            self.run_one(src, (h, w), dst);
        }
        // SAFETY: every band wrote its columns of every output plane.
        unsafe { out.set_len(len) };
        out
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn run(
        &self,
        _: &[f32],
        _: (usize, usize, usize, usize),
        _: (usize, usize, usize),
    ) -> Vec<f32> {
        unreachable!("runs_banded is false off x86-64")
    }

    /// One input of `h x w` into `out` (`cout` planes of `oh x ow`, holding the input when
    /// `residual`).
    #[cfg(target_arch = "x86_64")]
    fn run_one(&self, input: &[f32], (h, w): (usize, usize), out: &mut [MaybeUninit<f32>]) {
        let dw = self.depthwise;
        let (hidden, cout) = (dw.in_channels, self.project.out_channels);
        let (oh, ow) = dw.output_size(h, w).expect("checked by the caller");
        let (s, [pt, pl, ..]) = (dw.geometry.stride, dw.geometry.padding);
        // Output rows per band: its input rows, `s (rows - 1) + 3`, within BAND_FLOATS.
        let in_rows_max = (BAND_FLOATS / (hidden * w)).max(3);
        let rows = ((in_rows_max - 3) / s + 1).min(oh);
        // The expansion and its epilogues, and room for a band of its rows.
        let expand = self.expand.map(|e| (e, e.epilogues(0..hidden)));
        let expanded_len = match expand {
            Some(_) => hidden * (s * (rows - 1) + 3) * w,
            None => 0,
        };
        let mut expanded = vec![0f32; expanded_len];
        let mut dw_out = vec![MaybeUninit::<f32>::uninit(); hidden * rows * ow];
        let dw_epilogues = dw.epilogues(0..hidden);
        let project_epilogues = self.project.epilogues(0..cout);
        for oy0 in (0..oh).step_by(rows) {
            let band = rows.min(oh - oy0);
            let band_out = &mut dw_out[..hidden * band * ow];
            let depthwise = |src, input, output, padding, out_rows| depthwise_avx2::Layer {
                stride: s,
                channels: 0..hidden,
                weight: &dw.weight,
                epilogues: &dw_epilogues,
                src,
                input,
                output,
                padding,
                out_rows,
            };
            let layer = match &expand {
                Some((expand, epilogues)) => {
                    // Input rows r0..r1 feed output rows oy0..oy0 + band; those before row 0
                    // or past row h - 1 are padding, which the kernel reads as zeros.
                    let first = (s * oy0) as isize - pt as isize;
                    let r0 = first.max(0) as usize;
                    let r1 = (s * (oy0 + band - 1) + 3).saturating_sub(pt).min(h);
                    let n = (r1 - r0) * w;
                    let band_in = &mut expanded[..hidden * n];
                    // SAFETY: no `accumulate`: `band_in` is only written, with `f32`s.
                    unsafe {
                        let dst = as_uninit(band_in);
                        let (k, rhs, strides) = (expand.in_channels, &input[r0 * w..], (h * w, n));
                        pointwise(epilogues, n, k, strides, &expand.weight, rhs, dst, false);
                    }
                    let padding = ((r0 as isize - first) as usize, pl);
                    depthwise(&*band_in, (r1 - r0, w), (band, ow), padding, 0..band)
                }
                // Without expansion the depthwise layer reads its rows of the input in place.
                None => depthwise(input, (h, w), (oh, ow), (pt, pl), oy0..oy0 + band),
            };
            // SAFETY: `runs_banded` checked the CPU; `band_out` holds `hidden` planes of the
            // band's `band x ow` outputs, `layer.src` `hidden` planes of its input rows.
            unsafe { depthwise_avx2::convolve(&layer, band_out) };
            // SAFETY: the kernel wrote every value of `band_out`.
            let band_out = unsafe { assume_written(band_out) };
            let dst = &mut out[oy0 * ow..];
            let m = band * ow;
            // SAFETY: with `residual`, `out` holds the input's values (the caller's promise).
            unsafe {
                pointwise(
                    &project_epilogues,
                    m,
                    hidden,
                    (m, oh * ow),
                    &self.project.weight,
                    band_out,
                    dst,
                    self.residual,
                );
            }
        }
    }
}

impl CustomOp1 for Block<'_> {
    fn name(&self) -> &'static str {
        "banded-inverted-residual"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (dw, project) = (self.depthwise, self.project);
        // Input channels, then the channels the depthwise layer gets.
        let (cin, hidden) = match self.expand {
            Some(expand) => (expand.in_channels, expand.out_channels),
            None => (dw.in_channels, dw.in_channels),
        };
        if c != cin {
            candle_core::bail!("block expects {cin} input channels, got {c}");
        }
        if hidden != dw.in_channels || dw.out_channels != project.in_channels {
            candle_core::bail!(
                "block channels do not chain: {cin}->{hidden}, depthwise {}, project {}",
                dw.in_channels,
                project.in_channels
            );
        }
        let (oh, ow) = self.depthwise.output_size(h, w)?;
        let cout = self.project.out_channels;
        let out_shape = Shape::from((n, cout, oh, ow));
        if self.residual && out_shape.dims() != layout.shape().dims() {
            candle_core::bail!(
                "a residual block must keep its shape, not {:?} -> {out_shape:?}",
                layout.shape()
            );
        }
        if !self.runs_banded(h, w) {
            candle_core::bail!("this block does not run banded on this CPU");
        }
        let input = contiguous_f32(storage, layout)?;
        let start = profile::is_recording().then(std::time::Instant::now);
        let out = self.run(input, (n, c, h, w), (cout, oh, ow));
        if let Some(start) = start {
            let flops = self.expand.map_or(0.0, |e| e.flops(n * h * w))
                + self.depthwise.flops(n * oh * ow)
                + self.project.flops(n * oh * ow);
            let layer = format!(
                "banded block {c}->{}->{cout} 3x3/{} {h}x{w}",
                self.depthwise.in_channels, self.depthwise.geometry.stride
            );
            profile::record_block(layer, flops, start.elapsed());
        }
        Ok((CpuStorage::F32(out), out_shape))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::nn::conv::{Activation, ConvGeometry};

    fn layer(cout: usize, cin: usize, k: usize, geometry: ConvGeometry, seed: u64) -> FusedConv2d {
        let dev = Device::Cpu;
        let len = cout * cin / geometry.groups * k * k;
        let values: Vec<f32> = (0..len as u64)
            .map(|i| (((i * 2654435761 + seed) % 1000) as f32 / 1000.0 - 0.5) * 0.4)
            .collect();
        let weight = Tensor::from_vec(values, (cout, cin / geometry.groups, k, k), &dev).unwrap();
        let bias = Tensor::arange(0, cout as u32, &dev)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .affine(0.01, -0.2)
            .unwrap();
        FusedConv2d::new(&weight, Some(&bias), geometry, Activation::Relu6).unwrap()
    }

    /// Banded blocks give the values of their layers run one by one, bit for bit: stride 1 and 2,
    /// with and without the residual, with and without expansion, over several bands with a
    /// short last one.
    #[test]
    fn banded_blocks_match_their_layers() -> Result<()> {
        let side = 115;
        let input = |channels: usize| {
            let x: Vec<f32> = (0..channels * side * side)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            Tensor::from_vec(x, (1, channels, side, side), &Device::Cpu)
        };
        if !depthwise_avx2_runs() {
            // Nothing runs banded: the comparison would be of the layers with themselves.
            return Ok(());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        // (input channels, expanded channels or none, stride, padding, output channels, residual)
        let cases = [
            (16, Some(80), 1, [1; 4], 16, true),
            (16, Some(80), 1, [1; 4], 24, false),
            (16, Some(80), 2, [0, 0, 1, 1], 24, false),
            (16, Some(80), 2, [1; 4], 24, false),
            (24, None, 1, [1; 4], 24, true),
            (24, None, 1, [1; 4], 16, false),
            (24, None, 2, [0, 0, 1, 1], 16, false),
        ];
        for (cin, expanded, stride, padding, cout, residual) in cases {
            let x = input(cin)?;
            let hidden = expanded.unwrap_or(cin);
            let expand = expanded.map(|e| layer(e, cin, 1, ConvGeometry::new(1, 0, 1), 1));
            let geometry = ConvGeometry {
                stride,
                padding,
                groups: hidden,
            };
            let depthwise = layer(hidden, hidden, 3, geometry, 2);
            let project = layer(cout, hidden, 1, ConvGeometry::new(1, 0, 1), 3);
            let block = Block {
                expand: expand.as_ref(),
                depthwise: &depthwise,
                project: &project,
                residual,
            };
            let banded = pool.install(|| {
                assert!(block.runs_banded(side, side));
                inverted_residual(expand.as_ref(), &depthwise, &project, &x, residual)
            })?;
            let hidden_map = match &expand {
                Some(expand) => depthwise.forward(&expand.forward(&x)?)?,
                None => depthwise.forward(&x)?,
            };
            let layered = if residual {
                project.forward_with_shortcut(&hidden_map, &x)?
            } else {
                project.forward(&hidden_map)?
            };
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            assert_eq!(banded.dims(), layered.dims());
            assert!(
                bits(&banded)? == bits(&layered)?,
                "{cin}->{expanded:?}, stride {stride}, padding {padding:?}"
            );
        }
        Ok(())
    }

    fn depthwise_avx2_runs() -> bool {
        #[cfg(target_arch = "x86_64")]
        return depthwise_avx2::runs((3, 3), 1);
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}
