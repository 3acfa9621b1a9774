//! Face detection on a decoded photo: resize to the detector's input size, run RetinaFace,
//! decode, and map the detections back to image pixels.

use std::path::Path;

use candle_core::Result;
use image::RgbImage;

use crate::imgproc::{bgr_tensor, resize_bilinear, Window};
use crate::models::retinaface::{decode, Detection, RetinaFace, MEAN_BGR};

/// RetinaFace with its input sizing and decoding thresholds.
pub struct FaceDetector {
    net: RetinaFace,
}

/// Size of the image the network sees for a `w x h` photo: scaled so the long side is at most
/// `long_side` (never enlarged), rounded to whole pixels.
pub fn detector_input_size(w: u32, h: u32, long_side: u32) -> (u32, u32) {
    let scale = (long_side as f64 / w.max(h) as f64).min(1.0);
    let round = |v: u32| ((v as f64 * scale).round() as u32).max(1);
    (round(w), round(h))
}

impl FaceDetector {
    /// Loads the converted RetinaFace weights.
    pub fn load(weights: &Path) -> Result<Self> {
        Ok(Self {
            net: RetinaFace::new(crate::models::load_weights(weights)?)?,
        })
    }

    /// Detects faces with score above `score_threshold` on the photo resized to `long_side`;
    /// NMS at IoU 0.4. Boxes and landmarks are in pixels of `img`, best score first.
    pub fn detect(
        &self,
        img: &RgbImage,
        long_side: u32,
        score_threshold: f32,
    ) -> Result<Vec<Detection>> {
        let (w, h) = img.dimensions();
        let (in_w, in_h) = detector_input_size(w, h, long_side);
        let tensor = if (in_w, in_h) == (w, h) {
            bgr_tensor(img.as_raw(), w as usize, h as usize, MEAN_BGR)?
        } else {
            let full = Window { x: 0, y: 0, w, h };
            let resized = resize_bilinear(img, full, in_w, in_h);
            bgr_tensor(&resized, in_w as usize, in_h as usize, MEAN_BGR)?
        };
        let raw = self.net.forward(&tensor)?;
        let detections = decode(&raw, in_h as usize, in_w as usize, score_threshold, 0.4)?;
        let (sx, sy) = (w as f32 / in_w as f32, h as f32 / in_h as f32);
        Ok(detections.iter().map(|d| d.scaled(sx, sy)).collect())
    }
}
