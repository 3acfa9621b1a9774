//! The networks, one file each, built from safetensors through `VarBuilder`.

pub mod face_pose;
pub mod facemesh;
pub mod mask;
pub mod minifasnet;
pub mod retinaface;
