//! Typed configuration, read once from the environment.

use std::path::PathBuf;

/// Settings of the detection/gate/scoring pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Directory holding the converted `.safetensors` weights.
    pub model_dir: PathBuf,
    /// Score at or above which a photo counts as live.
    pub score_threshold: f32,
    /// Maximum decoded pixel count (width * height).
    pub max_pixels: u64,
}
