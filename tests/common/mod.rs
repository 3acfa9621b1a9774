//! Helpers shared by the integration tests (each test crate uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use liveness::config::PipelineConfig;
use liveness::pipeline::Pipeline;
use serde_json::Value;

/// `rel` inside the repository.
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `rel` inside `../shared` (read-only material beside the repository).
pub fn shared(rel: &str) -> PathBuf {
    repo("../shared").join(rel)
}

/// Parses a JSON file, naming it on failure.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of numbers as f32 (the golden files store exact f32 values as f64 decimals).
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Largest absolute element-wise difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute element-wise difference of two tensors of the same shape.
pub fn tensor_max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    max_abs_diff(&flat(a), &flat(b))
}

/// The full pipeline with default settings on the repository's `models/`.
pub fn default_pipeline() -> Pipeline {
    let config = PipelineConfig {
        model_dir: repo("models"),
        ..PipelineConfig::default()
    };
    Pipeline::load(config).expect("models (run `make models`)")
}
