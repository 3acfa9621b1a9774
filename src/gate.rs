//! The quality gate: decides from the detections whether a photo can be scored.
//!
//! Checks run in a fixed order and the first failure wins: FACE_NOT_FOUND, TOO_MANY_FACES.

use crate::config::GateConfig;
use crate::models::retinaface::Detection;

/// A reason the quality gate refuses to score a photo. `code()` is the API error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
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

/// A gate failure with a human-readable sub-cause for verbose output.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: GateCode,
    pub detail: String,
}

impl Rejection {
    fn new(code: GateCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// Picks the face to score from `faces` (best score first), or rejects the photo.
///
/// A face counts when its score reaches `face_min_score`. More than one counting face is
/// `TOO_MANY_FACES` only when another face is at least `second_face_min_ratio` of the main
/// face's height: people in the background do not make a selfie unusable.
pub fn select_face<'a>(
    faces: &'a [Detection],
    config: &GateConfig,
) -> Result<&'a Detection, Rejection> {
    let mut counting = faces.iter().filter(|f| f.score >= config.face_min_score);
    let Some(main) = counting.next() else {
        return Err(Rejection::new(
            GateCode::FaceNotFound,
            "no face above the detector threshold",
        ));
    };
    // The largest face is the subject; the best-scored one is not always it.
    let main = std::iter::once(main)
        .chain(counting.clone())
        .max_by(|a, b| a.height().total_cmp(&b.height()))
        .unwrap_or(main);
    let others = faces
        .iter()
        .filter(|f| f.score >= config.face_min_score && !std::ptr::eq(*f, main))
        .filter(|f| f.height() >= config.second_face_min_ratio * main.height())
        .count();
    if others > 0 {
        return Err(Rejection::new(
            GateCode::TooManyFaces,
            format!(
                "{} more face(s) at least {:.0}% of the main face's height",
                others,
                config.second_face_min_ratio * 100.0
            ),
        ));
    }
    Ok(main)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(score: f32, x: f32, size: f32) -> Detection {
        Detection {
            score,
            bbox: [x, 10.0, x + size, 10.0 + size],
            landmarks: [[0.0; 2]; 5],
            anchor: 0,
        }
    }

    #[test]
    fn no_counting_face_is_not_found() {
        let config = GateConfig::default();
        assert_eq!(
            select_face(&[], &config).unwrap_err().code,
            GateCode::FaceNotFound
        );
        let weak = [face(0.3, 0.0, 100.0)];
        assert_eq!(
            select_face(&weak, &config).unwrap_err().code,
            GateCode::FaceNotFound
        );
    }

    #[test]
    fn background_faces_are_ignored_but_peers_are_not() {
        let config = GateConfig::default();
        let background = [face(0.99, 0.0, 100.0), face(0.98, 300.0, 30.0)];
        assert_eq!(select_face(&background, &config).unwrap().bbox[0], 0.0);
        let peers = [face(0.99, 0.0, 100.0), face(0.98, 300.0, 80.0)];
        assert_eq!(
            select_face(&peers, &config).unwrap_err().code,
            GateCode::TooManyFaces
        );
        // The subject is the largest face even when a smaller one scores higher.
        let small_first = [face(0.999, 300.0, 30.0), face(0.98, 0.0, 100.0)];
        assert_eq!(select_face(&small_first, &config).unwrap().bbox[0], 0.0);
    }
}
