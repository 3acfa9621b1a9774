//! Truncated uploads are corrupt (400 INVALID_IMAGE), while whole images in every encoding we
//! accept are still decoded and scored. Each case is built from a real dev photo in
//! `../shared/data/faces-dev` at run time (nothing is copied into the repository).

mod api_support;

use std::io::Cursor;
use std::sync::Arc;

use api_support::*;
use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use image::{DynamicImage, ImageFormat};
use liveness::api::auth::StaticSource;
use liveness::api::{ApiConfig, App};
use liveness::image_io::{decode_rgb, DecodeError, DecodeLimits};
use serde_json::Value;

const USER: &str = "client";
const PASS: &str = "secret-1";
/// A baseline JPEG the pipeline scores (live).
const BASELINE_JPEG: &str = LIVE_IMAGE;
/// The progressive JPEG among the dev photos.
const PROGRESSIVE_JPEG: &str = "gate_too_many_faces_002.jpg";
/// A dev PNG (8-bit RGB).
const DEV_PNG: &str = "gate_face_too_close_004.png";

fn app() -> App {
    App::new(
        pipeline(),
        &ApiConfig::default(),
        Arc::new(StaticSource::new(USER, PASS)),
    )
}

/// POSTs `image` as base64 and returns the status and JSON body.
async fn post_image(app: &App, session: &str, image: &[u8]) -> (StatusCode, Value) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/face/liveness")
        .header("content-type", "application/json")
        .header("authorization", basic(USER, PASS))
        .body(Full::new(Bytes::from(body(session, &b64))))
        .unwrap();
    let res = app.handle(req).await;
    let json = serde_json::from_str(res.body()).expect("JSON body");
    (res.status(), json)
}

fn photo() -> DynamicImage {
    image::load_from_memory(&dev_image(BASELINE_JPEG)).expect("dev photo decodes")
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// A JPEG from `jpeg-encoder` (progressive, CMYK and restart intervals, which `image` does not write).
fn encode_jpeg(
    image: &DynamicImage,
    color: jpeg_encoder::ColorType,
    progressive: bool,
    restart_interval: u16,
) -> Vec<u8> {
    let (w, h) = (image.width() as u16, image.height() as u16);
    let data = match color {
        jpeg_encoder::ColorType::Cmyk => image
            .to_rgb8()
            .pixels()
            .flat_map(|p| {
                // RGB -> CMYK (ink amounts, 255 = full) with full black extraction, the inverse
                // of the decoder's `R = (1 - C)(1 - K)`; the encoder stores it Adobe-inverted.
                let [r, g, b] = p.0.map(|v| f32::from(v) / 255.0);
                let k = 1.0 - r.max(g).max(b);
                let ink = |v: f32| {
                    if k < 1.0 {
                        (1.0 - v - k) / (1.0 - k)
                    } else {
                        0.0
                    }
                };
                [ink(r), ink(g), ink(b), k].map(|v| (v * 255.0).round() as u8)
            })
            .collect(),
        jpeg_encoder::ColorType::Luma => image.to_luma8().into_raw(),
        _ => image.to_rgb8().into_raw(),
    };
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
    encoder.set_progressive(progressive);
    if restart_interval > 0 {
        encoder.set_restart_interval(restart_interval);
    }
    encoder.encode(&data, w, h, color).unwrap();
    out
}

/// Whole images in each encoding, named: [`whole_images`] plus one with bytes after its end.
fn accepted_images() -> Vec<(&'static str, Vec<u8>)> {
    let mut trailing = dev_image(BASELINE_JPEG);
    trailing.extend_from_slice(b"\0\0camera trailer after EOI\xff\xd8");
    let mut all = whole_images();
    all.push(("trailing-bytes-jpeg", trailing));
    all
}

/// Whole images in each encoding that ends at its end marker, named.
fn whole_images() -> Vec<(&'static str, Vec<u8>)> {
    let photo = photo();
    let rgb16 = DynamicImage::ImageRgb16(photo.to_rgb16());
    let rgba = DynamicImage::ImageRgba8(photo.to_rgba8());
    vec![
        ("baseline-jpeg", dev_image(BASELINE_JPEG)),
        ("progressive-jpeg-dev", dev_image(PROGRESSIVE_JPEG)),
        (
            "progressive-jpeg",
            encode_jpeg(&photo, jpeg_encoder::ColorType::Rgb, true, 0),
        ),
        (
            "restart-markers-jpeg",
            encode_jpeg(&photo, jpeg_encoder::ColorType::Rgb, false, 4),
        ),
        (
            "cmyk-jpeg",
            encode_jpeg(&photo, jpeg_encoder::ColorType::Cmyk, false, 0),
        ),
        (
            "grayscale-jpeg",
            encode_jpeg(&photo, jpeg_encoder::ColorType::Luma, false, 0),
        ),
        ("dev-png", dev_image(DEV_PNG)),
        ("rgb16-png", encode(&rgb16, ImageFormat::Png)),
        ("rgba-png", encode(&rgba, ImageFormat::Png)),
        ("lossless-webp", encode(&rgba, ImageFormat::WebP)),
    ]
}

/// Where each image is cut: after a third (as a stalled upload), after two thirds, and one byte
/// short of the end (the end marker itself is missing).
fn cuts(len: usize) -> [usize; 3] {
    [len / 3, 2 * len / 3, len - 1]
}

#[test]
fn truncated_images_fail_to_decode() {
    for (name, bytes) in whole_images() {
        for cut in cuts(bytes.len()) {
            match decode_rgb(&bytes[..cut], DecodeLimits::default()) {
                Err(DecodeError::Invalid(why)) => {
                    assert!(!why.is_empty(), "{name} cut at {cut}")
                }
                other => panic!(
                    "{name} cut at {cut} of {}: expected Invalid, got {:?}",
                    bytes.len(),
                    other.map(|i| i.dimensions())
                ),
            }
        }
    }
}

#[test]
fn whole_images_decode_in_every_accepted_encoding() {
    let (w, h) = photo().to_rgb8().dimensions();
    for (name, bytes) in accepted_images() {
        let image =
            decode_rgb(&bytes, DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        if !name.ends_with("-dev") && name != "dev-png" {
            assert_eq!(image.dimensions(), (w, h), "{name}");
        }
    }
}

#[tokio::test]
async fn truncated_uploads_answer_400_invalid_image() {
    let app = app();
    for (name, bytes) in whole_images() {
        for cut in cuts(bytes.len()) {
            let (status, json) = post_image(&app, name, &bytes[..cut]).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{name} cut at {cut}: {json}"
            );
            assert_eq!(
                json["error"], "INVALID_IMAGE",
                "{name} cut at {cut}: {json}"
            );
            assert_eq!(json["sessionId"], name, "{json}");
        }
    }
}

#[tokio::test]
async fn whole_uploads_are_scored() {
    let app = app();
    for (name, bytes) in accepted_images() {
        let (status, json) = post_image(&app, name, &bytes).await;
        assert_eq!(status, StatusCode::OK, "{name}: {json}");
        if name.ends_with("-dev") || name == "dev-png" {
            // Gate cases among the dev photos: answered with their gate code, not refused.
            continue;
        }
        // The live photo re-encoded: still a face the gate accepts, with a score.
        assert_eq!(json["hasError"], false, "{name}: {json}");
        assert!(json["score"].is_number(), "{name}: {json}");
    }
}
