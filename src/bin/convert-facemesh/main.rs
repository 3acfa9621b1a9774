//! Converts the MediaPipe FaceMesh assets into safetensors for `liveness::models::facemesh`.
//!
//! - `landmarks MODEL.tflite OUT.safetensors`: every constant of the float32 FaceMesh graph, named
//!   after the TFLite layer (`conv2d_3.weight`, `depthwise_conv2d_3.bias`, `p_re_lu_3.alpha`, ...)
//!   and laid out for NCHW: CONV_2D `OHWI -> OIHW`, DEPTHWISE_CONV_2D `1HWC -> C1HW`, PReLU
//!   `[1,1,C] -> [C]`. The channel-padding constants of the residual shortcuts are checked (zeros
//!   appended on the channel axis only), not stored: the network derives them from the shapes.
//! - `geometry PACKED.data LOADER.js OUT.safetensors [--entry-sha256 HEX]`: the canonical face
//!   mesh and the Procrustes landmark basis from the `geometry_pipeline_metadata_landmarks.binarypb`
//!   entry of the npm package's packed assets, located through the loader script's file table.
//!
//! Neither command runs package code: the inputs are only parsed.

mod proto;
mod tflite;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use tflite::{OpKind, TensorInfo};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["landmarks", model, out] => landmarks(Path::new(model), Path::new(out)),
        ["geometry", data, loader, out] => geometry(data, loader, out, None),
        ["geometry", data, loader, out, "--entry-sha256", hex] => {
            geometry(data, loader, out, Some(hex))
        }
        _ => bail!(
            "usage: convert-facemesh landmarks MODEL.tflite OUT.safetensors\n       \
             convert-facemesh geometry PACKED.data LOADER.js OUT.safetensors [--entry-sha256 HEX]"
        ),
    }
}

/// `conv2d_3/Kernel` -> `conv2d_3`.
fn layer_name(tensor: &TensorInfo) -> Result<&str> {
    tensor
        .name
        .rsplit_once('/')
        .map(|(layer, _)| layer)
        .with_context(|| format!("unexpected constant name {}", tensor.name))
}

fn kind_name(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Conv2d { .. } => "CONV_2D",
        OpKind::DepthwiseConv2d { .. } => "DEPTHWISE_CONV_2D",
        _ => "other",
    }
}

/// Permutes a row-major tensor of `shape` so that output axis `i` is input axis `perm[i]`.
fn permute(data: &[f32], shape: &[usize], perm: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut in_strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0; shape.len()];
    for _ in 0..data.len() {
        let src: usize = index
            .iter()
            .zip(perm)
            .map(|(&i, &p)| i * in_strides[p])
            .sum();
        out.push(data[src]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < out_shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    (out, out_shape)
}

fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

fn landmarks(model: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let graph = tflite::parse(&bytes)?;
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    let mut insert = |name: String, t: Tensor| -> Result<()> {
        ensure!(!weights.contains_key(&name), "duplicate weight {name}");
        weights.insert(name, t);
        Ok(())
    };
    for op in &graph.ops {
        let constant = |i: usize| -> Result<&TensorInfo> {
            let t = &graph.tensors[op.inputs[i]];
            ensure!(
                !t.data.is_empty(),
                "input {i} ({}) is not a constant",
                t.name
            );
            Ok(t)
        };
        match op.kind {
            OpKind::Conv2d { .. } | OpKind::DepthwiseConv2d { .. } => {
                let (kernel, bias) = (constant(1)?, constant(2)?);
                let layer = layer_name(kernel)?;
                ensure!(kernel.shape.len() == 4, "{}: kernel rank", kernel.name);
                let perm = if matches!(op.kind, OpKind::Conv2d { .. }) {
                    [0, 3, 1, 2] // OHWI -> OIHW
                } else {
                    ensure!(kernel.shape[0] == 1, "{}: depth multiplier", kernel.name);
                    [3, 0, 1, 2] // 1HWC -> C1HW
                };
                let (data, shape) = permute(&kernel.data, &kernel.shape, &perm);
                let (stride, padding) = match op.kind {
                    OpKind::Conv2d { stride, padding } => (stride, padding),
                    OpKind::DepthwiseConv2d { stride, padding } => (stride, padding),
                    _ => unreachable!(),
                };
                eprintln!(
                    "{layer:<22} {} {}x{} stride {stride} {padding:?} -> OIHW {shape:?}",
                    kind_name(&op.kind),
                    shape[2],
                    shape[3]
                );
                insert(format!("{layer}.weight"), tensor(data, &shape)?)?;
                insert(
                    format!("{layer}.bias"),
                    tensor(bias.data.clone(), &[bias.data.len()])?,
                )?;
            }
            OpKind::PRelu => {
                let alpha = constant(1)?;
                let channels = *alpha.shape.last().context("scalar PReLU alpha")?;
                ensure!(
                    alpha.data.len() == channels,
                    "{}: PReLU alpha {:?} is not per-channel",
                    alpha.name,
                    alpha.shape
                );
                insert(
                    format!("{}.alpha", layer_name(alpha)?),
                    tensor(alpha.data.clone(), &[channels])?,
                )?;
            }
            OpKind::Pad => {
                // NHWC paddings [[0,0],[0,0],[0,0],[0,extra]]: zeros appended to the channels.
                let pads = constant(1)?;
                ensure!(
                    pads.data.len() == 8 && pads.data[..7].iter().all(|&p| p == 0.0),
                    "{}: padding {:?} is not channel-only",
                    pads.name,
                    pads.data
                );
            }
            OpKind::MaxPool2d {
                stride,
                filter,
                padding,
            } => eprintln!(
                "{:<22} {filter}x{filter} stride {stride} {padding:?}",
                "max_pool_2d"
            ),
            OpKind::Add | OpKind::Reshape => {}
        }
    }
    let count: usize = weights.values().map(|t| t.elem_count()).sum();
    candle_core::safetensors::save(&weights, out)?;
    eprintln!(
        "{}: {} ops, {} tensors, {count} parameters",
        out.display(),
        graph.ops.len(),
        weights.len()
    );
    Ok(())
}

/// One row of the `"files": [...]` table in the Emscripten loader script.
#[derive(serde::Deserialize)]
struct PackedFile {
    filename: String,
    start: usize,
    end: usize,
}

const GEOMETRY_ENTRY: &str = "geometry_pipeline_metadata_landmarks.binarypb";

fn geometry(data: &str, loader: &str, out: &str, entry_sha256: Option<&str>) -> Result<()> {
    let packed = std::fs::read(data).with_context(|| format!("reading {data}"))?;
    let script = std::fs::read_to_string(loader).with_context(|| format!("reading {loader}"))?;
    let table_at = script
        .find("\"files\":")
        .context("no \"files\" table in the loader script")?;
    let table = &script[table_at + "\"files\":".len()..];
    let files: Vec<PackedFile> = serde_json::Deserializer::from_str(table)
        .into_iter()
        .next()
        .context("empty \"files\" table")??;
    let entry = files
        .iter()
        .find(|f| f.filename.ends_with(&format!("/{GEOMETRY_ENTRY}")))
        .with_context(|| format!("no {GEOMETRY_ENTRY} in the loader's file table"))?;
    let bytes = packed
        .get(entry.start..entry.end)
        .context("packed entry out of range")?;
    let digest: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(want) = entry_sha256 {
        ensure!(
            digest == want,
            "{GEOMETRY_ENTRY}: sha256 {digest}, expected {want}"
        );
    }

    let metadata = proto::fields(bytes)?;
    let meshes = proto::messages(&metadata, 1)?;
    ensure!(meshes.len() == 1, "expected one canonical mesh");
    let mesh = proto::fields(meshes[0])?;
    // Mesh3d.VertexType VERTEX_PT = 0: (x, y, z, u, v) per vertex.
    ensure!(
        proto::varint_field(&mesh, 1, 0)? == 0,
        "vertex type is not VERTEX_PT"
    );
    let vertices = proto::floats(&mesh, 3)?;
    ensure!(
        vertices.len() == 468 * 5,
        "{} vertex floats",
        vertices.len()
    );
    let xyz: Vec<f32> = vertices
        .chunks_exact(5)
        .flat_map(|v| [v[0], v[1], v[2]])
        .collect();

    let mut ids = Vec::new();
    let mut weights = Vec::new();
    for basis in proto::messages(&metadata, 2)? {
        let fields = proto::fields(basis)?;
        let id = u32::try_from(proto::varint_field(&fields, 1, 0)?)?;
        ensure!(id < 468, "landmark id {id} out of range");
        let weight = proto::floats(&fields, 2)?;
        ids.push(id);
        weights.push(weight.last().copied().unwrap_or(0.0));
    }
    ensure!(!ids.is_empty(), "empty Procrustes basis");

    let n = ids.len();
    let tensors = HashMap::from([
        ("canonical_mesh".to_string(), tensor(xyz, &[468, 3])?),
        (
            "procrustes.landmark_ids".to_string(),
            Tensor::from_vec(ids, n, &Device::Cpu)?.to_dtype(DType::U32)?,
        ),
        ("procrustes.weights".to_string(), tensor(weights, &[n])?),
    ]);
    candle_core::safetensors::save(&tensors, out)?;
    eprintln!("{out}: 468 vertices, {n} Procrustes landmarks ({GEOMETRY_ENTRY} sha256 {digest})");
    Ok(())
}
