//! Typed configuration, read once from the environment (`LIVENESS_*`), with defaults.

use std::path::PathBuf;
use std::str::FromStr;

use crate::image_io::DecodeLimits;

/// A configuration value that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// Reads `name` from the environment, or `default` when unset or empty.
pub fn env_or<T: FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|e: T::Err| ConfigError {
                name,
                value,
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

/// Thresholds of the quality gate (see `gate.rs` for the order and meaning of the checks).
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Minimum RetinaFace score for a face to count (`LIVENESS_FACE_MIN_SCORE`).
    pub face_min_score: f32,
    /// A second face counts when its height is at least this fraction of the main face's
    /// (`LIVENESS_SECOND_FACE_MIN_RATIO`); smaller background faces are ignored.
    pub second_face_min_ratio: f32,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            face_min_score: 0.5,
            second_face_min_ratio: 0.5,
        }
    }
}

/// Settings of the detection/gate/scoring pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Directory holding the converted `.safetensors` weights (`LIVENESS_MODEL_DIR`).
    pub model_dir: PathBuf,
    /// Score at or above which a photo counts as live (`LIVENESS_SCORE_THRESHOLD`).
    pub score_threshold: f32,
    /// Maximum decoded pixel count, width * height (`LIVENESS_MAX_PIXELS`).
    pub max_pixels: u64,
    /// Maximum decoded width or height (`LIVENESS_MAX_SIDE`).
    pub max_side: u32,
    /// Long side of the image the detector sees (`LIVENESS_DETECTOR_LONG_SIDE`).
    pub detector_long_side: u32,
    /// Long side of a second detection pass when the first finds no face; 0 disables it
    /// (`LIVENESS_DETECTOR_RETRY_LONG_SIDE`).
    pub detector_retry_long_side: u32,
    /// Threads the network kernels may use (`LIVENESS_THREADS`).
    pub threads: usize,
    /// Quality-gate thresholds.
    pub gate: GateConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("models"),
            score_threshold: 0.5,
            max_pixels: 25_000_000,
            max_side: 10_000,
            detector_long_side: 320,
            detector_retry_long_side: 640,
            threads: 1,
            gate: GateConfig::default(),
        }
    }
}

impl PipelineConfig {
    /// Reads every `LIVENESS_*` pipeline setting, falling back to the defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let config = Self {
            model_dir: env_or("LIVENESS_MODEL_DIR", d.model_dir)?,
            score_threshold: env_or("LIVENESS_SCORE_THRESHOLD", d.score_threshold)?,
            max_pixels: env_or("LIVENESS_MAX_PIXELS", d.max_pixels)?,
            max_side: env_or("LIVENESS_MAX_SIDE", d.max_side)?,
            detector_long_side: env_or("LIVENESS_DETECTOR_LONG_SIDE", d.detector_long_side)?,
            detector_retry_long_side: env_or(
                "LIVENESS_DETECTOR_RETRY_LONG_SIDE",
                d.detector_retry_long_side,
            )?,
            threads: env_or("LIVENESS_THREADS", d.threads)?,
            gate: GateConfig {
                face_min_score: env_or("LIVENESS_FACE_MIN_SCORE", d.gate.face_min_score)?,
                second_face_min_ratio: env_or(
                    "LIVENESS_SECOND_FACE_MIN_RATIO",
                    d.gate.second_face_min_ratio,
                )?,
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name: &'static str, value: String, reason: &str| ConfigError {
            name,
            value,
            reason: reason.to_string(),
        };
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return Err(bad(
                "LIVENESS_SCORE_THRESHOLD",
                self.score_threshold.to_string(),
                "must be in [0, 1]",
            ));
        }
        if self.detector_long_side < 32 {
            return Err(bad(
                "LIVENESS_DETECTOR_LONG_SIDE",
                self.detector_long_side.to_string(),
                "must be at least 32",
            ));
        }
        if self.threads == 0 {
            return Err(bad("LIVENESS_THREADS", "0".into(), "must be at least 1"));
        }
        Ok(())
    }

    /// The decoder limits derived from this configuration.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.max_pixels,
            max_side: self.max_side,
        }
    }
}
