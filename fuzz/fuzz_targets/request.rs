//! Fuzzes what an unauthenticated-size, attacker-shaped request body goes through before the
//! networks: JSON request parsing, `faceImageBase` interpretation (base64 / data URL / URL) and
//! image decoding under limits. Any panic, hang or unbounded allocation is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use liveness::api::contract::parse_request;
use liveness::api::input::{parse_image_field, ImageInput};
use liveness::image_io::{decode_rgb, DecodeLimits};

/// Small limits keep each run fast; the decoder must refuse anything larger without allocating it.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 4_000_000,
    max_side: 4_000,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        if let Ok(ImageInput::Bytes(bytes)) =
            parse_image_field(&request.face_image_base, 1 << 20, true)
        {
            let _ = decode_rgb(&bytes, LIMITS);
        }
    }
    // The same bytes as a field value and as an encoded image.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_image_field(text, 1 << 20, true);
    }
    let _ = decode_rgb(data, LIMITS);
});
