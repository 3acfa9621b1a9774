//! The quality gate: decides from the detections whether a photo can be scored.
//!
//! Checks run in a fixed order and the first failure wins: FACE_NOT_FOUND, TOO_MANY_FACES
//! ([`select_face`]), then FACE_TOO_CLOSE, FACE_CROPPED, FACE_CLOSE_TO_BORDER, FACE_TOO_SMALL
//! ([`check_geometry`]). FACE_TOO_CLOSE comes first among the geometric checks because a face
//! filling the frame also nears or crosses its borders, and "move back" is the advice that fixes
//! all three.
//!
//! RetinaFace boxes run from the brow line to the chin and between the cheeks, so the checks are
//! asymmetric: a box touching the left/right border means the cheek is cut, while a box touching
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

/// Geometric checks on the selected face in a `width x height` photo.
pub fn check_geometry(
    face: &Detection,
    width: u32,
    height: u32,
    config: &GateConfig,
) -> Result<(), Rejection> {
    let (img_w, img_h) = (width as f32, height as f32);
    let [x1, y1, x2, y2] = face.bbox;
    let (w, h) = (face.width(), face.height());
    let side_gap = x1.min(img_w - x2);
    let vertical_overshoot = (-y1).max(y2 - img_h);

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
    if side_gap < config.cropped_side_fraction * w {
        return Err(Rejection::new(
            GateCode::FaceCropped,
            format!("the face touches the side border (gap {side_gap:.0} px)"),
        ));
    }
    if vertical_overshoot > config.cropped_vertical_fraction * h {
        return Err(Rejection::new(
            GateCode::FaceCropped,
            format!("the face extends {vertical_overshoot:.0} px beyond the top or bottom border"),
        ));
    }
    if side_gap < config.border_min_px.max(config.border_min_fraction * w) {
        return Err(Rejection::new(
            GateCode::FaceCloseToBorder,
            format!("gap to the side border {side_gap:.0} px"),
        ));
    }

    let [left_eye, right_eye] = [face.landmarks[0], face.landmarks[1]];
    let eye_distance = (left_eye[0] - right_eye[0]).hypot(left_eye[1] - right_eye[1]);
    if eye_distance < config.min_eye_distance_px {
        return Err(Rejection::new(
            GateCode::FaceTooSmall,
            format!("eye distance {eye_distance:.0} px"),
        ));
    }
    if h < config.min_face_px {
        return Err(Rejection::new(
            GateCode::FaceTooSmall,
            format!("face height {h:.0} px"),
        ));
    }
    if h < config.min_face_fraction * img_h {
        return Err(Rejection::new(
            GateCode::FaceTooSmall,
            format!("face height {:.0}% of the image height", 100.0 * h / img_h),
        ));
    }

    Ok(())
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
        let check = |d: &Detection, w, h| check_geometry(d, w, h, &config).err().map(|r| r.code);
        assert_eq!(check(&centred(300.0), 1000, 800), None);
        // Shifted so the box's left edge is at x = 20 (gap 20 px < 25% of 300 px).
        assert_eq!(
            check(&shifted(centred(300.0), -330.0), 1000, 800),
            Some(GateCode::FaceCloseToBorder)
        );
        // Left edge at x = 5: the cheek is cut.
        assert_eq!(
            check(&shifted(centred(300.0), -345.0), 1000, 800),
            Some(GateCode::FaceCropped)
        );
        assert_eq!(
            check(&centred(100.0), 1000, 800),
            Some(GateCode::FaceTooSmall)
        );
        assert_eq!(
            check(&centred(50.0), 1000, 800),
            Some(GateCode::FaceTooSmall)
        );
        assert_eq!(
            check(&centred(580.0), 1000, 800),
            Some(GateCode::FaceTooClose)
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
