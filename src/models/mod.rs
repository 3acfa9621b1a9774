//! The networks, one file each, built from safetensors through `VarBuilder`.

pub mod face_pose;
pub mod facemesh;
pub mod mask;
pub mod minifasnet;
pub mod retinaface;

use std::path::Path;

use candle_core::{DType, Device, Result};
use candle_nn::VarBuilder;

/// Reads a safetensors weight file into a `VarBuilder` (f32, CPU). Errors name the file.
pub fn load_weights(path: impl AsRef<Path>) -> Result<VarBuilder<'static>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|e| candle_core::Error::msg(format!("cannot read {}: {e}", path.display())))?;
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
}
