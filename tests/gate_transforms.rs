//! Gate codes produced by transforming a live dev photo in the test: shrink into a large canvas
//! (FACE_TOO_SMALL), shift to the edge (FACE_CLOSE_TO_BORDER, FACE_CROPPED), crop tight
//! (FACE_TOO_CLOSE), paste two faces side by side (TOO_MANY_FACES).

mod common;

use common::repo;
use image::{imageops, Rgb, RgbImage};
use liveness::pipeline::{GateCode, Outcome, Pipeline};

fn outcome(pipeline: &Pipeline, img: &RgbImage) -> Outcome {
    pipeline.assess_image(img).unwrap().outcome
}

#[test]
fn transformed_live_photos_get_their_gate_codes() {
    let pipeline = common::default_pipeline();
    let bytes = std::fs::read(repo("../shared/data/faces-dev/live_siwm_005.jpg")).unwrap();
    let live = liveness::image_io::decode_rgb(&bytes, Default::default()).unwrap();
    let (w, h) = live.dimensions();

    // The untouched photo passes the gate; its face box anchors the transforms.
    let assessment = pipeline.assess_image(&live).unwrap();
    assert!(
        matches!(assessment.outcome, Outcome::Scored { .. }),
        "{:?}",
        assessment.outcome
    );
    let [x1, y1, x2, y2] = assessment.diagnostics.selected.unwrap().bbox;
    let face_w = x2 - x1;

    // Shrink to 1/6 into a canvas of the original size.
    let small = imageops::resize(&live, w / 6, h / 6, imageops::FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([128, 128, 128]));
    imageops::overlay(
        &mut canvas,
        &small,
        (w / 2 - w / 12) as i64,
        (h / 2 - h / 12) as i64,
    );
    assert_eq!(
        outcome(&pipeline, &canvas),
        Outcome::Rejected(GateCode::FaceTooSmall)
    );

    // Cut the left part so the face box starts 0.12 face widths from the border.
    let left = (x1 - 0.12 * face_w) as u32;
    let near = imageops::crop_imm(&live, left, 0, w - left, h).to_image();
    assert_eq!(
        outcome(&pipeline, &near),
        Outcome::Rejected(GateCode::FaceCloseToBorder)
    );

    // Cut through the face: a third of its width is gone.
    let left = (x1 + 0.33 * face_w) as u32;
    let cut = imageops::crop_imm(&live, left, 0, w - left, h).to_image();
    assert_eq!(
        outcome(&pipeline, &cut),
        Outcome::Rejected(GateCode::FaceCropped)
    );

    // Tight crop: the box plus 5% on each side.
    let (mx, my) = (0.05 * face_w, 0.05 * (y2 - y1));
    let (l, t) = ((x1 - mx).max(0.0) as u32, (y1 - my).max(0.0) as u32);
    let (r, b) = (((x2 + mx) as u32).min(w), ((y2 + my) as u32).min(h));
    let tight = imageops::crop_imm(&live, l, t, r - l, b - t).to_image();
    assert_eq!(
        outcome(&pipeline, &tight),
        Outcome::Rejected(GateCode::FaceTooClose)
    );

    // Two copies side by side.
    let mut pair = RgbImage::new(2 * w, h);
    imageops::overlay(&mut pair, &live, 0, 0);
    imageops::overlay(&mut pair, &live, w as i64, 0);
    assert_eq!(
        outcome(&pipeline, &pair),
        Outcome::Rejected(GateCode::TooManyFaces)
    );
}
