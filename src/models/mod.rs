//! The networks, one file each, built from safetensors through `VarBuilder`.

pub mod mask;
pub mod minifasnet;
pub mod retinaface;
