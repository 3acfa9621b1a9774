//! The networks, one file each, built from safetensors through `VarBuilder`.

pub mod face_pose;
pub mod facemesh;
pub mod minifasnet;
pub mod retinaface;
