//! Typed configuration, read once from the environment (`LIVENESS_*`), with defaults.

use std::path::PathBuf;
use std::str::FromStr;

use crate::image_io::DecodeLimits;
use crate::scoring::FusionWeights;

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

/// Reads `name` from the environment; `None` when unset or empty.
pub fn env_opt<T: FromStr>(name: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError {
                    name,
                    value,
                    reason: e.to_string(),
                })
        }
        _ => Ok(None),
    }
}

/// Thresholds of the quality gate (see `gate.rs` for the order and meaning of the checks).
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Minimum RetinaFace score for a face to count (`LIVENESS_FACE_MIN_SCORE`).
    pub face_min_score: f32,
    /// A second face counts when its height is at least this fraction of the main face's
    /// (`LIVENESS_SECOND_FACE_MIN_RATIO`); smaller background faces are ignored...
    pub second_face_min_ratio: f32,
    /// ...and when its detector score reaches this (`LIVENESS_SECOND_FACE_MIN_SCORE`); faint
    /// detections (blurred passers-by, posters) are ignored.
    pub second_face_min_score: f32,
    /// FACE_CROPPED when the face box passes the left or right border by more than this fraction
    /// of the face width: the cheek is cut (`LIVENESS_CROPPED_SIDE_FRACTION`).
    pub cropped_side_fraction: f32,
    /// FACE_CROPPED when the box overshoots the top or bottom border by more than this fraction
    /// of the face height (`LIVENESS_CROPPED_VERTICAL_FRACTION`).
    pub cropped_vertical_fraction: f32,
    /// FACE_CLOSE_TO_BORDER when the gap to the left or right border is below this many pixels
    /// (`LIVENESS_BORDER_MIN_PX`)...
    pub border_min_px: f32,
    /// ...or below this fraction of the face width (`LIVENESS_BORDER_MIN_FRACTION`).
    pub border_min_fraction: f32,
    /// FACE_TOO_SMALL when the face box is shorter than this (`LIVENESS_MIN_FACE_PX`)...
    pub min_face_px: f32,
    /// ...or the face is shorter than this fraction of the image height (`LIVENESS_MIN_FACE_FRACTION`).
    pub min_face_fraction: f32,
    /// FACE_TOO_CLOSE when the face box covers more than this fraction of the image area
    /// (`LIVENESS_MAX_FACE_AREA_FRACTION`)...
    pub max_face_area_fraction: f32,
    /// ...or the anti-spoof context crop cannot reach this scale of the face box
    /// (`LIVENESS_MIN_CROP_SCALE`; upstream asks for 2.7 and 4.0 and settles for less).
    pub min_crop_scale: f32,
    /// FaceMesh face-presence probability below which a detection is not taken as a whole,
    /// frontal enough face (`LIVENESS_MIN_FACE_PRESENCE`): it is then a masked face, a profile or
    /// a false detection (FACE_NOT_FOUND).
    pub min_face_presence: f32,
    /// A detection FaceMesh rejects is a profile (FACE_ANGLE_TOO_LARGE) when RetinaFace's nose
    /// landmark lies this many half eye distances or more from the eyes' midpoint, i.e. past the
    /// outer eye (`LIVENESS_PROFILE_NOSE_OFFSET`).
    pub profile_nose_offset: f32,
    /// FACE_ANGLE_TOO_LARGE when |yaw| exceeds this, degrees (`LIVENESS_MAX_YAW_DEG`)...
    pub max_yaw_deg: f32,
    /// ...or |pitch - pitch_zero| exceeds this, degrees (`LIVENESS_MAX_PITCH_DEG`).
    pub max_pitch_deg: f32,
    /// Pitch a frontal face reads with the Procrustes fit, degrees (`LIVENESS_PITCH_ZERO_DEG`).
    pub pitch_zero_deg: f32,
    /// FACE_IS_OCCLUDED when the mask classifier's P(mask) reaches this (`LIVENESS_MASK_THRESHOLD`).
    pub mask_threshold: f32,
    /// When no face reaches `face_min_score`, a candidate down to this detector score is still
    /// shown to the mask classifier, since RetinaFace under-scores masked faces
    /// (`LIVENESS_MASKED_FACE_MIN_SCORE`).
    pub masked_face_min_score: f32,
    /// P(mask) such a low-score candidate needs to be answered FACE_IS_OCCLUDED instead of
    /// FACE_NOT_FOUND (`LIVENESS_MASKED_FACE_MASK_THRESHOLD`).
    pub masked_face_mask_threshold: f32,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            face_min_score: 0.5,
            second_face_min_ratio: 0.5,
            second_face_min_score: 0.8,
            cropped_side_fraction: 0.0,
            cropped_vertical_fraction: 0.10,
            border_min_px: 15.0,
            border_min_fraction: 0.175,
            min_face_px: 60.0,
            min_face_fraction: 0.20,
            max_face_area_fraction: 0.40,
            min_crop_scale: 1.10,
            min_face_presence: 0.5,
            profile_nose_offset: 1.0,
            max_yaw_deg: 30.0,
            max_pitch_deg: 30.0,
            pitch_zero_deg: 0.0,
            mask_threshold: crate::models::mask::MASK_THRESHOLD,
            masked_face_min_score: 0.2,
            masked_face_mask_threshold: 0.9,
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
    /// Decoder limits (`LIVENESS_MAX_PIXELS`, `LIVENESS_MAX_SIDE`).
    pub decode: DecodeLimits,
    /// Long side of the image the detector sees (`LIVENESS_DETECTOR_LONG_SIDE`).
    pub detector_long_side: u32,
    /// Long side of a second detection pass when the first finds no face; 0 disables it
    /// (`LIVENESS_DETECTOR_RETRY_LONG_SIDE`).
    pub detector_retry_long_side: u32,
    /// Threads per request (`LIVENESS_THREADS`): with 2 or more, the gate's networks and the
    /// anti-spoof networks run side by side, and the detector's and the networks' large layers
    /// are split in halves between two threads (more than 2 threads gain nothing more).
    pub threads: usize,
    /// Quality-gate thresholds.
    pub gate: GateConfig,
    /// Fusion weights overriding those of the scoring file (`LIVENESS_FUSION_WEIGHTS`,
    /// `name=weight,...`; see `scoring.rs`).
    pub fusion_weights: Option<FusionWeights>,
    /// Scoring file (fusion weights + calibration); `None` = `calibration.json` in `model_dir`
    /// (`LIVENESS_CALIBRATION_FILE`).
    pub calibration_file: Option<PathBuf>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("models"),
            score_threshold: 0.5,
            decode: DecodeLimits::default(),
            detector_long_side: 320,
            detector_retry_long_side: 640,
            threads: 1,
            gate: GateConfig::default(),
            fusion_weights: None,
            calibration_file: None,
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
            decode: DecodeLimits {
                max_pixels: env_or("LIVENESS_MAX_PIXELS", d.decode.max_pixels)?,
                max_side: env_or("LIVENESS_MAX_SIDE", d.decode.max_side)?,
            },
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
                second_face_min_score: env_or(
                    "LIVENESS_SECOND_FACE_MIN_SCORE",
                    d.gate.second_face_min_score,
                )?,
                cropped_side_fraction: env_or(
                    "LIVENESS_CROPPED_SIDE_FRACTION",
                    d.gate.cropped_side_fraction,
                )?,
                cropped_vertical_fraction: env_or(
                    "LIVENESS_CROPPED_VERTICAL_FRACTION",
                    d.gate.cropped_vertical_fraction,
                )?,
                border_min_px: env_or("LIVENESS_BORDER_MIN_PX", d.gate.border_min_px)?,
                border_min_fraction: env_or(
                    "LIVENESS_BORDER_MIN_FRACTION",
                    d.gate.border_min_fraction,
                )?,
                min_face_px: env_or("LIVENESS_MIN_FACE_PX", d.gate.min_face_px)?,
                min_face_fraction: env_or("LIVENESS_MIN_FACE_FRACTION", d.gate.min_face_fraction)?,
                max_face_area_fraction: env_or(
                    "LIVENESS_MAX_FACE_AREA_FRACTION",
                    d.gate.max_face_area_fraction,
                )?,
                min_crop_scale: env_or("LIVENESS_MIN_CROP_SCALE", d.gate.min_crop_scale)?,
                min_face_presence: env_or("LIVENESS_MIN_FACE_PRESENCE", d.gate.min_face_presence)?,
                profile_nose_offset: env_or(
                    "LIVENESS_PROFILE_NOSE_OFFSET",
                    d.gate.profile_nose_offset,
                )?,
                max_yaw_deg: env_or("LIVENESS_MAX_YAW_DEG", d.gate.max_yaw_deg)?,
                max_pitch_deg: env_or("LIVENESS_MAX_PITCH_DEG", d.gate.max_pitch_deg)?,
                pitch_zero_deg: env_or("LIVENESS_PITCH_ZERO_DEG", d.gate.pitch_zero_deg)?,
                mask_threshold: env_or("LIVENESS_MASK_THRESHOLD", d.gate.mask_threshold)?,
                masked_face_min_score: env_or(
                    "LIVENESS_MASKED_FACE_MIN_SCORE",
                    d.gate.masked_face_min_score,
                )?,
                masked_face_mask_threshold: env_or(
                    "LIVENESS_MASKED_FACE_MASK_THRESHOLD",
                    d.gate.masked_face_mask_threshold,
                )?,
            },
            fusion_weights: env_opt("LIVENESS_FUSION_WEIGHTS")?,
            calibration_file: env_opt("LIVENESS_CALIBRATION_FILE")?,
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
}
