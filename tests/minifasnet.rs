//! The native MiniFASNet pair against two independent oracles, both read from `../shared`:
//!
//! - the ONNX exports (BatchNorm folded by the exporter) evaluated by `candle_onnx::simple_eval`,
//!   on the same inputs: raw logits must agree to 1e-4;
//! - `golden/golden.json`: logits computed by upstream's PyTorch code on the original `.pth`
//!   checkpoints (see the JSON's `convention` and `note` and `../shared/README.md`) for three
//!   synthetic 80x80 inputs defined in the JSON and for four real 80x80 crops saved as PNG: ours
//!   must agree to 1e-3. The crops were cut with upstream's `CropImage` rule from the face boxes
//!   of upstream's Caffe detector and resized with `cv2.resize` (INTER_LINEAR); the JSON records
//!   each box and crop rectangle, which `imgproc::antispoof_crop_box` must reproduce.

mod common;

use common::max_abs_diff;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use liveness::image_io::{decode_rgb, DecodeLimits};
use liveness::imgproc::{antispoof_crop_box, bgr_tensor, resize_bilinear, Window};
use liveness::models::minifasnet::{MiniFasNet, Variant};
use serde_json::Value;

/// Upstream's pair, the networks these golden files describe (the 128x128 network has its own
/// test file, `antispoof128.rs`).
const PAIR: [Variant; 2] = [Variant::V2, Variant::V1Se];
/// Input side of both networks of the pair.
const INPUT_SIZE: usize = 80;

const ONNX_TOLERANCE: f32 = 1e-4;
const GOLDEN_TOLERANCE: f32 = 1e-3;

fn shared() -> PathBuf {
    common::shared("models/minifasnet")
}

/// The key of a variant in `golden.json`.
fn golden_key(variant: Variant) -> &'static str {
    match variant {
        Variant::V2 => "v2",
        Variant::V1Se => "v1se",
        Variant::V2Se128 => panic!("the pair's golden file has no 128x128 network"),
    }
}

/// The committed weights (`models/`), which `make models` checks against `models/SHA256SUMS`
/// (the same bytes as `../shared/models/minifasnet/`).
fn load(variant: Variant) -> MiniFasNet {
    let path = common::repo("models").join(liveness::antispoof::weights_file(variant));
    // SAFETY: the model files are read-only and not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu) }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    MiniFasNet::new(vb, variant).unwrap()
}

fn onnx_path(variant: Variant) -> PathBuf {
    shared().join("onnx").join(match variant {
        Variant::V2 => "2.7_80x80_MiniFASNetV2.onnx",
        // The original export uses GlobalAveragePool, which candle-onnx lacks.
        Variant::V1Se => "minifasnet_v1se_4.0_80x80_reducemean.onnx",
        Variant::V2Se128 => panic!("not one of the pair"),
    })
}

fn golden() -> Value {
    let path = shared().join("golden/golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn logits_of(entry: &Value) -> Vec<f32> {
    entry["logits"]
        .as_array()
        .expect("logits array")
        .iter()
        .map(|v| v.as_f64().expect("logit") as f32)
        .collect()
}

/// A `(1, 3, 80, 80)` BGR input from a per-pixel function `(channel, y, x) -> value`.
fn image_from_fn(f: impl Fn(usize, usize, usize) -> f32) -> Tensor {
    let n = INPUT_SIZE;
    let data: Vec<f32> = (0..3 * n * n)
        .map(|i| f(i / (n * n), i / n % n, i % n))
        .collect();
    Tensor::from_vec(data, (1, 3, n, n), &Device::Cpu).unwrap()
}

/// Rebuilds a synthetic golden input from its `definition` in golden.json (channel 0 = B).
fn synthetic(name: &str, definition: &str) -> Tensor {
    match name {
        // "every pixel B=G=R=128"
        "uniform_128" => image_from_fn(|_, _, _| 128.0),
        // "B = x*255//79, G = y*255//79, R = 100 (x = column, y = row, 0..79)"
        "gradient_bgr" => image_from_fn(|c, y, x| match c {
            0 => (x * 255 / 79) as f32,
            1 => (y * 255 / 79) as f32,
            _ => 100.0,
        }),
        // "8x8-pixel checkerboard, (x//8 + y//8) % 2 == 1 -> 255 else 0, all channels"
        "checker_8px" => {
            image_from_fn(|_, y, x| if (x / 8 + y / 8) % 2 == 1 { 255.0 } else { 0.0 })
        }
        _ => panic!("unknown synthetic input {name:?} ({definition}); teach the test to build it"),
    }
}

/// Deterministic pseudo-random `(1, 3, 80, 80)` input, uniform in 0..255.
fn random_image(seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..3 * INPUT_SIZE * INPUT_SIZE)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 24) as f32 * 255.0
        })
        .collect();
    Tensor::from_vec(data, (1, 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu).unwrap()
}

/// Reads a golden crop PNG as a `(1, 3, 80, 80)` BGR tensor.
///
/// The crops were written with `cv2.imwrite` from the BGR array fed to the network ("_bgr" in the
/// name), so a standard PNG decoder returns ordinary RGB pixels; channel order is reversed here.
fn crop_png(name: &str) -> Tensor {
    let path = shared().join("golden").join(name);
    let img = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(
        img.dimensions(),
        (INPUT_SIZE as u32, INPUT_SIZE as u32),
        "{name}"
    );
    image_from_fn(|c, y, x| img.get_pixel(x as u32, y as u32)[2 - c] as f32)
}

fn row(logits: &Tensor, i: usize) -> Vec<f32> {
    logits.get(i).unwrap().to_vec1().unwrap()
}

#[test]
fn matches_onnx_export() {
    let golden = golden();
    let definitions = golden["synthetic"].as_object().expect("synthetic inputs");
    let mut inputs: Vec<(String, Tensor)> = (1..=3)
        .map(|s| (format!("random #{s}"), random_image(s)))
        .collect();
    for (name, entry) in definitions {
        let definition = entry["definition"].as_str().unwrap_or_default();
        inputs.push((name.clone(), synthetic(name, definition)));
    }
    let batch = Tensor::cat(
        &inputs.iter().map(|(_, x)| x.clone()).collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    for variant in PAIR {
        let path = onnx_path(variant);
        let onnx =
            candle_onnx::read_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let graph = onnx.graph.as_ref().expect("ONNX graph");
        let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let graph_inputs: Vec<&str> = graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !initializers.contains(n))
            .collect();
        assert_eq!(
            graph_inputs.len(),
            1,
            "{variant:?} ONNX inputs: {graph_inputs:?}"
        );
        assert_eq!(
            graph.output.len(),
            1,
            "{variant:?} ONNX has {} outputs",
            graph.output.len()
        );
        let output_name = &graph.output[0].name;

        let model = load(variant);
        // One batched forward: also checks that batch rows do not interact.
        let ours = model.forward(&batch).unwrap();
        assert_eq!(ours.dims(), &[inputs.len(), 3]);
        let mut worst = 0f32;
        for (i, (name, x)) in inputs.iter().enumerate() {
            let feeds = HashMap::from([(graph_inputs[0].to_string(), x.clone())]);
            let mut outputs = candle_onnx::simple_eval(&onnx, feeds).unwrap();
            let want = outputs
                .remove(output_name)
                .expect("ONNX output")
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = row(&ours, i);
            let diff = max_abs_diff(&got, &want);
            eprintln!("{variant:?} {name}: ours {got:?} onnx {want:?} max diff {diff:e}");
            assert!(
                diff <= ONNX_TOLERANCE,
                "{variant:?} {name}: ours {got:?} vs ONNX {want:?}"
            );
            worst = worst.max(diff);
        }
        eprintln!(
            "{variant:?}: max abs diff vs ONNX {worst:e} over {} inputs",
            inputs.len()
        );
    }
}

#[test]
fn matches_pytorch_golden() {
    let golden = golden();
    let models = PAIR.map(load);
    let mut checked = 0;
    for model in &models {
        let key = golden_key(model.variant());
        let mut worst = 0f32;
        let mut check = |label: String, x: Tensor, want: Vec<f32>| {
            let logits = model.forward(&x).unwrap();
            let got = row(&logits, 0);
            let diff = max_abs_diff(&got, &want);
            eprintln!("{key} {label}: ours {got:?} pytorch {want:?} max diff {diff:e}");
            assert!(
                diff <= GOLDEN_TOLERANCE,
                "{key} {label}: ours {got:?} vs PyTorch {want:?}"
            );
            worst = worst.max(diff);
            checked += 1;
        };
        for (name, entry) in golden["synthetic"].as_object().expect("synthetic") {
            let definition = entry["definition"].as_str().unwrap_or_default();
            check(
                name.clone(),
                synthetic(name, definition),
                logits_of(&entry[key]),
            );
        }
        for (image, entry) in golden["crops"].as_object().expect("crops") {
            let entry = &entry[key];
            let png = entry["crop_png"].as_str().expect("crop_png");
            check(format!("{image} ({png})"), crop_png(png), logits_of(entry));
        }
        eprintln!("{key}: max abs diff vs PyTorch {worst:e}");
    }
    // 3 synthetic inputs + 4 crops per model; fewer means the JSON changed under us.
    assert_eq!(checked, 14);
}

/// The source photo of a golden crop, upright, as RGB.
///
/// golden.json names the images but records neither their pixels nor their sizes:
/// - `image_T1.jpg`, `image_F1.jpg`, `image_F2.jpg` are upstream's sample photos, also in
///   `../shared/data/faces-dev` (found through `labels.csv`, column `path_in_source`). They are
///   stored 640x480 with EXIF orientation 6; `cv2.imread` applies it, as `decode_rgb` does, so
///   upstream saw 480x640 (W x H) images (the golden crop boxes reach x = 479, y = 623).
/// - `astronaut.png` is `skimage.data.astronaut()`, which is not in `../shared`: `None`.
fn source_photo(image: &str) -> Option<image::RgbImage> {
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/faces-dev");
    let mut labels = csv::Reader::from_path(dev.join("labels.csv")).expect("labels.csv");
    let headers = labels.headers().expect("labels.csv header").clone();
    let column = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let (file, repo, path) = (
        column("file"),
        column("source_repo_or_package"),
        column("path_in_source"),
    );
    for record in labels.records() {
        let record = record.expect("labels.csv row");
        if record[repo].contains("Silent-Face-Anti-Spoofing")
            && Path::new(&record[path]).file_name() == Some(image.as_ref())
        {
            let bytes = std::fs::read(dev.join(&record[file])).expect("dev image");
            return Some(decode_rgb(&bytes, DecodeLimits::default()).expect("decodable dev image"));
        }
    }
    None
}

/// `(width, height)` of a golden crop's source image; see [`source_photo`].
fn source_size(image: &str) -> (u32, u32) {
    match source_photo(image) {
        Some(photo) => photo.dimensions(),
        // skimage.data.astronaut() is 512x512 RGB.
        None if image == "astronaut.png" => (512, 512),
        None => panic!("no source image size known for golden crop {image:?}"),
    }
}

fn f32_array<const N: usize>(v: &Value) -> [f32; N] {
    let values: Vec<f32> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    values
        .try_into()
        .unwrap_or_else(|v: Vec<f32>| panic!("expected {N} numbers, got {v:?}"))
}

#[test]
fn crop_boxes_match_upstream_rule() {
    let golden = golden();
    let mut checked = 0;
    for (image, entry) in golden["crops"].as_object().expect("crops") {
        let (w, h) = source_size(image);
        let face = f32_array::<4>(&entry["bbox_xywh"]);
        for variant in PAIR {
            let entry = &entry[golden_key(variant)];
            let scale = entry["crop_scale"].as_f64().expect("crop_scale") as f32;
            assert_eq!(scale, variant.crop_scale(), "{image} {variant:?}");
            let want = f32_array::<4>(&entry["crop_box_ltrb_inclusive"]).map(|v| v as i32);
            let got = antispoof_crop_box(w, h, face, scale);
            assert_eq!(got, want, "{image} ({w}x{h}) face {face:?} at {scale}");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

/// The whole pre-processing chain on the sample photos that are in `../shared`: decode (EXIF
/// applied) -> crop box -> OpenCV-style bilinear resize -> BGR tensor -> network.
///
/// Upstream decoded the JPEGs with OpenCV's libjpeg, we decode with the `image` crate; the two
/// decoders' IDCT and chroma upsampling differ by a few levels per pixel, so the crops cannot be
/// bit-identical. A wrong crop box, resize convention or channel order moves pixels by tens of
/// levels on average; the bounds below allow decoder noise only.
#[test]
fn sample_photos_through_crop_and_resize() {
    const MAX_PIXEL_DIFF: f32 = 4.0;
    const MEAN_PIXEL_DIFF: f32 = 0.5;
    // Decoder noise alone moves V1SE's p_live by up to ~0.04 on these photos.
    const P_LIVE_DIFF: f32 = 0.1;
    let golden = golden();
    let models = PAIR.map(load);
    let mut checked = 0;
    for (image, entry) in golden["crops"].as_object().expect("crops") {
        let Some(photo) = source_photo(image) else {
            continue;
        };
        let face = f32_array::<4>(&entry["bbox_xywh"]);
        for model in &models {
            let key = golden_key(model.variant());
            let entry = &entry[key];
            let scale = model.variant().crop_scale();
            let [l, t, r, b] = antispoof_crop_box(photo.width(), photo.height(), face, scale);
            let window = Window {
                x: l as u32,
                y: t as u32,
                w: (r - l + 1) as u32,
                h: (b - t + 1) as u32,
            };
            let size = INPUT_SIZE as u32;
            let rgb = resize_bilinear(&photo, window, size, size);
            let x = bgr_tensor(&rgb, INPUT_SIZE, INPUT_SIZE, [0.0; 3]).unwrap();
            let png = crop_png(entry["crop_png"].as_str().expect("crop_png"));
            let diff = (&x - &png).unwrap().abs().unwrap().flatten_all().unwrap();
            let max_diff = diff.max(0).unwrap().to_scalar::<f32>().unwrap();
            let mean_diff = diff.mean(0).unwrap().to_scalar::<f32>().unwrap();
            let p_live = model.live_probability(&model.forward(&x).unwrap()).unwrap()[0];
            let want = entry["softmax"][1].as_f64().expect("softmax") as f32;
            eprintln!(
                "{image} {key}: pixel diff max {max_diff} mean {mean_diff:.3}; p_live {p_live:.4} (PyTorch on OpenCV crop {want:.4})"
            );
            assert!(
                max_diff <= MAX_PIXEL_DIFF && mean_diff <= MEAN_PIXEL_DIFF,
                "{image} {key}: crop differs from upstream's (max {max_diff}, mean {mean_diff})"
            );
            assert!(
                (p_live - want).abs() <= P_LIVE_DIFF,
                "{image} {key}: p_live {p_live} vs {want}"
            );
            checked += 1;
        }
    }
    // image_T1, image_F1, image_F2 x 2 models.
    assert_eq!(checked, 6);
}

#[test]
fn live_probability_is_softmax_index_1() {
    let golden = golden();
    let models = PAIR.map(load);
    let mut checked = 0;
    for (image, entry) in golden["crops"].as_object().expect("crops") {
        let mut fused = 0.0;
        for model in &models {
            let variant = model.variant();
            let entry = &entry[golden_key(variant)];
            let logits = Tensor::new(logits_of(entry), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let want = entry["softmax"][1].as_f64().unwrap() as f32;
            let got = model.live_probability(&logits).unwrap();
            assert_eq!(got.len(), 1);
            assert!(
                (got[0] - want).abs() < 1e-6,
                "{image} {variant:?}: {} vs {want}",
                got[0]
            );
            fused += got[0] / 2.0;
        }
        let want = entry["fused_p_live"].as_f64().unwrap() as f32;
        assert!(
            (fused - want).abs() < 1e-6,
            "{image}: fused {fused} vs {want}"
        );
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn rejects_mismatched_variant_and_input_size() {
    let path = common::repo("models").join(liveness::antispoof::weights_file(Variant::V2));
    // SAFETY: as in `load`.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu) }.unwrap();
    assert!(
        MiniFasNet::new(vb, Variant::V1Se).is_err(),
        "V2 weights accepted as V1SE"
    );
    let model = load(Variant::V2);
    let wrong = Tensor::zeros((1, 3, 96, 96), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&wrong).is_err());
}
