//! The liveness pipeline: decode -> detect -> quality gate -> score.

use crate::config::PipelineConfig;
use crate::image_io::DecodeError;

/// A reason the quality gate refuses to score a photo. `code()` is the API error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GateCode {
    FaceNotFound,
    TooManyFaces,
    FaceCropped,
    FaceCloseToBorder,
    FaceTooSmall,
    FaceTooClose,
    FaceAngleTooLarge,
    FaceIsOccluded,
}

impl GateCode {
    /// The API error code, e.g. `FACE_NOT_FOUND`.
    pub fn code(self) -> &'static str {
        match self {
            GateCode::FaceNotFound => "FACE_NOT_FOUND",
            GateCode::TooManyFaces => "TOO_MANY_FACES",
            GateCode::FaceCropped => "FACE_CROPPED",
            GateCode::FaceCloseToBorder => "FACE_CLOSE_TO_BORDER",
            GateCode::FaceTooSmall => "FACE_TOO_SMALL",
            GateCode::FaceTooClose => "FACE_TOO_CLOSE",
            GateCode::FaceAngleTooLarge => "FACE_ANGLE_TOO_LARGE",
            GateCode::FaceIsOccluded => "FACE_IS_OCCLUDED",
        }
    }
}

/// What the pipeline concluded about one photo.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The photo passed the gate; `score` in [0,1], higher = more live.
    Scored { score: f32 },
    /// The gate refused the photo.
    Rejected(GateCode),
}

/// Wall-clock milliseconds spent per stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub detect_ms: f64,
    pub gate_ms: f64,
    pub crop_ms: f64,
    pub classify_ms: f64,
    pub total_ms: f64,
}

/// The full result for one photo.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub outcome: Outcome,
    pub timings: StageTimings,
}

/// Failures that are not a verdict about the face.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("model inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("model files could not be loaded: {0}")]
    ModelLoad(String),
}

/// Loaded networks and configuration; build once, share by reference.
pub struct Pipeline {
    config: PipelineConfig,
}

impl Pipeline {
    /// Loads every network from `config.model_dir`.
    pub fn load(config: PipelineConfig) -> Result<Self, PipelineError> {
        Ok(Self { config })
    }

    /// The configuration the pipeline was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Decodes `bytes` under the configured limits and assesses the photo.
    pub fn assess_encoded(&self, bytes: &[u8]) -> Result<Assessment, PipelineError> {
        let _ = bytes;
        todo!("core pipeline lands with issue 2")
    }
}
