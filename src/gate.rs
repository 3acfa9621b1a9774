//! The quality gate: decides from the detections whether a photo can be scored.
//!
//! When several codes apply, the photo gets the first in this order (`Pipeline::run_gate`):
//! 1. whether there is exactly one whole face big enough to judge: FACE_NOT_FOUND,
//!    TOO_MANY_FACES ([`select_face`]), FACE_CROPPED ([`check_cropped`]), FACE_TOO_SMALL
//!    ([`check_size`]);
//! 2. what is wrong with the face itself: FACE_IS_OCCLUDED (mask classifier), then
//!    FACE_ANGLE_TOO_LARGE (FaceMesh pose);
//! 3. how a good face is framed: FACE_TOO_CLOSE, FACE_CLOSE_TO_BORDER ([`check_framing`]).
//!
//! The principle: report first what the other checks cannot see past. The appearance checks need
//! a whole face of some size; a mask must come off and a head must turn whatever the framing,
//! and both distort the face box the framing checks measure (a mask enlarges RetinaFace's box, a
//! profile narrows it), so they come before the framing codes. A mask comes before the pose
//! because FaceMesh invents the covered half of the face, which makes its pose unreliable.
//!
//! RetinaFace boxes run from the brow line to the chin and between the cheeks, so the checks are
//! asymmetric: a box crossing the left/right border means the cheek is cut, while a box touching
//! the top/bottom border still shows a whole face (webcam close-ups often end at the chin).

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
/// A face counts when its score reaches `face_min_score`; the largest counting face is the
/// subject. Another face makes the photo `TOO_MANY_FACES` only when it is at least
/// `second_face_min_ratio` of the subject's height (people far behind do not make a selfie
/// unusable) and clearly a face, scoring at least `second_face_min_score` (blurred passers-by
/// and posters score lower).
pub fn select_face<'a>(
    faces: &'a [Detection],
    config: &GateConfig,
) -> Result<&'a Detection, Rejection> {
    let main = faces
        .iter()
        .filter(|f| f.score >= config.face_min_score)
        .max_by(|a, b| a.height().total_cmp(&b.height()))
        .ok_or_else(|| {
            Rejection::new(
                GateCode::FaceNotFound,
                "no face above the detector threshold",
            )
        })?;
    let others = faces
        .iter()
        .filter(|f| !std::ptr::eq(*f, main))
        .filter(|f| f.score >= config.face_min_score.max(config.second_face_min_score))
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

/// FACE_CROPPED: the frame cuts the face — a landmark outside the image, the box past the left or
/// right border by more than `cropped_side_fraction` of its width, or past the top or bottom by
/// more than `cropped_vertical_fraction` of its height.
pub fn check_cropped(
    face: &Detection,
    width: u32,
    height: u32,
    config: &GateConfig,
) -> Result<(), Rejection> {
    let (img_w, img_h) = (width as f32, height as f32);
    let [x1, y1, x2, y2] = face.bbox;
    let outside = face
        .landmarks
        .iter()
        .any(|&[x, y]| x < 0.0 || y < 0.0 || x >= img_w || y >= img_h);
    if outside {
        return Err(Rejection::new(
            GateCode::FaceCropped,
            "a facial landmark lies outside the image",
        ));
    }
    let side_overshoot = (-x1).max(x2 - img_w);
    if side_overshoot > config.cropped_side_fraction * face.width() {
        return Err(Rejection::new(
            GateCode::FaceCropped,
            format!("the face extends {side_overshoot:.0} px beyond the side border"),
        ));
    }
    let vertical_overshoot = (-y1).max(y2 - img_h);
    if vertical_overshoot > config.cropped_vertical_fraction * face.height() {
        return Err(Rejection::new(
            GateCode::FaceCropped,
            format!("the face extends {vertical_overshoot:.0} px beyond the top or bottom border"),
        ));
    }
    Ok(())
}

/// FACE_TOO_SMALL: the face box is shorter than `min_face_px` or than `min_face_fraction` of the
/// image height. (Box height, not eye distance: a turned head brings the eyes together while
/// the face stays as large.)
pub fn check_size(face: &Detection, height: u32, config: &GateConfig) -> Result<(), Rejection> {
    let h = face.height();
    if h < config.min_face_px {
        return Err(Rejection::new(
            GateCode::FaceTooSmall,
            format!("face height {h:.0} px"),
        ));
    }
    if h < config.min_face_fraction * height as f32 {
        return Err(Rejection::new(
            GateCode::FaceTooSmall,
            format!(
                "face height {:.0}% of the image height",
                100.0 * h / height as f32
            ),
        ));
    }
    Ok(())
}

/// FACE_TOO_CLOSE (the face box covers more than `max_face_area_fraction` of the image, or the
/// anti-spoof context crop cannot reach `min_crop_scale` x the face), then FACE_CLOSE_TO_BORDER
/// (the gap to the left or right border is below `max(border_min_px, border_min_fraction x face
/// width)`). Too close comes first: a face filling the frame also nears its borders, and "move
/// back" fixes both.
pub fn check_framing(
    face: &Detection,
    width: u32,
    height: u32,
    config: &GateConfig,
) -> Result<(), Rejection> {
    let (img_w, img_h) = (width as f32, height as f32);
    let (w, h) = (face.width(), face.height());
    let area_fraction = (w * h) / (img_w * img_h);
    if area_fraction > config.max_face_area_fraction {
        return Err(Rejection::new(
            GateCode::FaceTooClose,
            format!("face covers {:.0}% of the image", 100.0 * area_fraction),
        ));
    }
    let crop_scale = crate::imgproc::max_context_scale(width, height, w as f64, h as f64);
    if crop_scale < config.min_crop_scale as f64 {
        return Err(Rejection::new(
            GateCode::FaceTooClose,
            format!("context crop reaches only {crop_scale:.2}x the face"),
        ));
    }
    let side_gap = face.bbox[0].min(img_w - face.bbox[2]);
    if side_gap < config.border_min_px.max(config.border_min_fraction * w) {
        return Err(Rejection::new(
            GateCode::FaceCloseToBorder,
            format!("gap to the side border {side_gap:.0} px"),
        ));
    }
    Ok(())
}

/// How far the nose tip lies from the midpoint of the eyes, along the eye line, in half eye
/// distances (RetinaFace's 5 landmarks): about 0 for a frontal face, beyond 1 when the nose
/// passes the outer eye, which only a head turned far to the side shows.
pub fn nose_offset(face: &Detection) -> f32 {
    let [left_eye, right_eye, nose] = [face.landmarks[0], face.landmarks[1], face.landmarks[2]];
    let (ex, ey) = (right_eye[0] - left_eye[0], right_eye[1] - left_eye[1]);
    let half = 0.5 * ex.hypot(ey);
    if half <= f32::EPSILON {
        return f32::INFINITY;
    }
    let mid = [
        0.5 * (left_eye[0] + right_eye[0]),
        0.5 * (left_eye[1] + right_eye[1]),
    ];
    // Projection of (nose - mid) on the unit eye direction.
    ((nose[0] - mid[0]) * ex + (nose[1] - mid[1]) * ey).abs() / (2.0 * half * half)
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

    fn centred(size: f32) -> Detection {
        let (cx, cy) = (500.0, 400.0);
        let h = size / 2.0;
        Detection {
            score: 0.99,
            bbox: [cx - h, cy - h, cx + h, cy + h],
            landmarks: [
                [cx - size / 3.0, cy],
                [cx + size / 3.0, cy],
                [cx, cy],
                [cx - 10.0, cy + h / 2.0],
                [cx + 10.0, cy + h / 2.0],
            ],
            anchor: 0,
        }
    }

    fn shifted(mut d: Detection, dx: f32) -> Detection {
        d.bbox[0] += dx;
        d.bbox[2] += dx;
        d.landmarks.iter_mut().for_each(|p| p[0] += dx);
        d
    }

    #[test]
    fn geometry_codes_follow_their_definitions() {
        let config = GateConfig::default();
        let code = |r: Result<(), Rejection>| r.err().map(|r| r.code);
        let all = |d: &Detection, w, h| {
            code(check_cropped(d, w, h, &config))
                .or(code(check_size(d, h, &config)))
                .or(code(check_framing(d, w, h, &config)))
        };
        assert_eq!(all(&centred(300.0), 1000, 800), None);
        // Shifted so the box's left edge is at x = 20 (gap 20 px < 25% of 300 px).
        assert_eq!(
            all(&shifted(centred(300.0), -330.0), 1000, 800),
            Some(GateCode::FaceCloseToBorder)
        );
        // Left edge at x = -5: the cheek is cut.
        assert_eq!(
            all(&shifted(centred(300.0), -355.0), 1000, 800),
            Some(GateCode::FaceCropped)
        );
        assert_eq!(
            all(&centred(100.0), 1000, 800),
            Some(GateCode::FaceTooSmall)
        );
        assert_eq!(all(&centred(50.0), 1000, 800), Some(GateCode::FaceTooSmall));
        assert_eq!(
            all(&centred(580.0), 1000, 800),
            Some(GateCode::FaceTooClose)
        );
    }

    #[test]
    fn nose_offset_tells_profiles_from_frontal_faces() {
        let frontal = centred(300.0);
        assert!(nose_offset(&frontal) < 0.01);
        // Nose moved past the right eye (eyes at +-100 px): offset 1.5 half eye distances.
        let mut profile = centred(300.0);
        profile.landmarks[2][0] += 150.0;
        assert!((nose_offset(&profile) - 1.5).abs() < 1e-4);
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
        // A faint detection of peer size (a blurred passer-by) does not count.
        let faint = [face(0.99, 0.0, 100.0), face(0.7, 300.0, 80.0)];
        assert_eq!(select_face(&faint, &config).unwrap().bbox[0], 0.0);
        // The subject is the largest face even when a smaller one scores higher.
        let small_first = [face(0.999, 300.0, 30.0), face(0.98, 0.0, 100.0)];
        assert_eq!(select_face(&small_first, &config).unwrap().bbox[0], 0.0);
    }
}
