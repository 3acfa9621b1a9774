//! The diagnostics object of a verbose response (`POST /api/v1/face/liveness?verbose=1`, only
//! where [`crate::api::ApiConfig::diagnostics_enabled`] allows it): what the pipeline saw and
//! measured, in the API's camelCase. Never pixels; coordinates are in pixels of the decoded
//! (EXIF-oriented) image.

use serde::{Deserialize, Serialize};

use crate::pipeline::{Assessment, FaceSummary};

/// Everything the demo page's details view shows about one assessed photo.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostics {
    /// The score threshold in force (a score at or above it is live).
    pub threshold: f32,
    /// Size of the decoded, EXIF-oriented image.
    pub image: ImageSize,
    /// Every face the detector returned, best score first.
    pub faces: Vec<Face>,
    /// The face the quality gate selected (scored unless a later check refused it).
    pub selected_face: Option<Face>,
    /// What each anti-spoof network saw and said, in the order the pipeline runs them; empty
    /// when the gate refused the photo.
    pub anti_spoof: Vec<ModelView>,
    /// The fusion of the networks' live probabilities, before calibration maps it to the score.
    pub fused: Option<f32>,
    /// The gate's sub-cause when it refused the photo.
    pub gate_detail: Option<String>,
    /// FaceMesh face-presence probability of the selected face.
    pub face_presence: Option<f32>,
    /// Head pose of the selected face, in degrees.
    pub head_pose_deg: Option<HeadPose>,
    /// The mask classifier's probability that the selected face wears a mask.
    pub mask_probability: Option<f32>,
    /// Wall-clock milliseconds per pipeline stage.
    pub timings_ms: Timings,
}

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

/// One detected face.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Face {
    /// Detector confidence.
    pub score: f32,
    /// `[left, top, right, bottom]` in image pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Five `[x, y]` points in the detector's order: the eyes, the nose tip, the mouth corners.
    pub landmarks: [[f32; 2]; 5],
}

/// One anti-spoof network's view of the selected face.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    /// Network name, e.g. `minifasnet_v2`.
    pub model: String,
    /// The network's probability that the face is live.
    pub p_live: f32,
    /// Inclusive `[left, top, right, bottom]` crop in image pixels; may extend past the image,
    /// where the network's crop rule pads.
    pub crop: [i32; 4],
}

/// Yaw, pitch (zero-calibrated) and roll in degrees.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HeadPose {
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
}

/// Stage timings in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    pub decode: f64,
    pub detect: f64,
    pub gate: f64,
    pub crop: f64,
    pub classify: f64,
    pub total: f64,
}

impl From<&FaceSummary> for Face {
    fn from(f: &FaceSummary) -> Self {
        Self {
            score: f.score,
            bbox: f.bbox,
            landmarks: f.landmarks,
        }
    }
}

impl Diagnostics {
    /// The wire form of an assessment's diagnostics and timings.
    pub fn from_assessment(assessment: &Assessment, threshold: f32) -> Self {
        let d = &assessment.diagnostics;
        let t = &assessment.timings;
        Self {
            threshold,
            image: ImageSize {
                width: d.image_width,
                height: d.image_height,
            },
            faces: d.faces.iter().map(Face::from).collect(),
            selected_face: d.selected.as_ref().map(Face::from),
            anti_spoof: d
                .anti_spoof
                .iter()
                .map(|m| ModelView {
                    model: m.model.clone(),
                    p_live: m.p_live,
                    crop: m.crop,
                })
                .collect(),
            fused: d.fused,
            gate_detail: d.gate_detail.clone(),
            face_presence: d.face_presence,
            head_pose_deg: d
                .head_pose_deg
                .map(|[yaw, pitch, roll]| HeadPose { yaw, pitch, roll }),
            mask_probability: d.mask_probability,
            timings_ms: Timings {
                decode: t.decode_ms,
                detect: t.detect_ms,
                gate: t.gate_ms,
                crop: t.crop_ms,
                classify: t.classify_ms,
                total: t.total_ms,
            },
        }
    }
}
