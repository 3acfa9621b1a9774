//! Image decoding with limits and EXIF orientation.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

/// Why an encoded image could not be turned into pixels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Pixel count, dimensions or decoder allocation over the configured limits.
    #[error("image exceeds the size limits")]
    TooLarge,
    /// Not an image, corrupt, or a format we do not accept.
    #[error("not a decodable image: {0}")]
    Invalid(String),
}

/// Limits applied before and during decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Maximum width * height.
    pub max_pixels: u64,
    /// Maximum width or height.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 25_000_000,
            max_side: 10_000,
        }
    }
}

/// Decodes JPEG, PNG or WebP bytes into upright RGB: the EXIF orientation is applied.
///
/// Dimensions are checked from the header before any pixel is decoded, so a decompression bomb
/// is refused without allocating its pixels. A file that ends before its image data does
/// (see [`check_complete`]) is refused too: the JPEG decoder would otherwise fill the missing
/// part with grey and the pipeline would score half a picture.
pub fn decode_rgb(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(DecodeError::Invalid("unrecognised image format".into()));
    };
    check_complete(bytes, format)?;
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    // RGBA16 is the widest buffer a decoder may need, plus headroom for its own tables.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8) + (64 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(map_error)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(DecodeError::Invalid("empty image".into()));
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(DecodeError::TooLarge);
    }
    let orientation = decoder.orientation().map_err(map_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(map_error)?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Checks that an encoded image is whole: its container structure runs to the end marker
/// without running out of bytes. Trailing bytes after the end are allowed (cameras append
/// data), and nothing is decoded, so this is cheap (one pass over the bytes, no allocation).
///
/// - JPEG: the marker segments from SOI, and the entropy-coded data of every scan (progressive
///   files have several), must reach an EOI marker;
/// - PNG: the chunks, by their lengths, must reach an IEND chunk;
/// - WebP: the RIFF size must not exceed the bytes present.
///
/// Other formats are left to their decoders.
pub fn check_complete(bytes: &[u8], format: ImageFormat) -> Result<(), DecodeError> {
    let (complete, name) = match format {
        ImageFormat::Jpeg => (jpeg_reaches_eoi(bytes), "JPEG"),
        ImageFormat::Png => (png_reaches_iend(bytes), "PNG"),
        ImageFormat::WebP => (webp_riff_is_whole(bytes), "WebP"),
        _ => return Ok(()),
    };
    if complete {
        Ok(())
    } else {
        Err(DecodeError::Invalid(format!(
            "truncated {name} (the file ends early)"
        )))
    }
}

/// Walks JPEG marker segments from SOI; true when an EOI marker is reached.
fn jpeg_reaches_eoi(b: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    if b.len() < 4 || b[0] != 0xFF || b[1] != SOI {
        return false;
    }
    let mut pos = 2;
    loop {
        // The next marker: 0xFF, optional 0xFF fill bytes, then the code. Stray bytes before it
        // are skipped, as libjpeg does ("extraneous bytes before marker").
        let Some(ff) = b[pos..].iter().position(|&x| x == 0xFF) else {
            return false;
        };
        pos += ff;
        while b.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = b.get(pos) else {
            return false;
        };
        pos += 1;
        match marker {
            EOI => return true,
            // Stuffed zero or restart/TEM outside a scan: no payload.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(pos..pos + 2) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 || pos + len > b.len() {
            return false;
        }
        pos += len;
        if marker == SOS {
            // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or a
            // restart marker.
            loop {
                let Some(ff) = b[pos..].iter().position(|&x| x == 0xFF) else {
                    return false;
                };
                pos += ff;
                let mut next = pos + 1;
                while b.get(next) == Some(&0xFF) {
                    next += 1;
                }
                match b.get(next) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => pos = next + 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Walks PNG chunks after the signature; true when an IEND chunk fits in the bytes.
fn png_reaches_iend(b: &[u8]) -> bool {
    let mut pos = 8;
    while let Some(header) = b.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = pos.saturating_add(12).saturating_add(len);
        if end > b.len() {
            return false;
        }
        if &header[4..8] == b"IEND" {
            return true;
        }
        pos = end;
    }
    false
}

/// True when the RIFF container's declared size fits in the bytes.
fn webp_riff_is_whole(b: &[u8]) -> bool {
    match b.get(4..8) {
        Some(size) if b.starts_with(b"RIFF") => {
            let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
            size.saturating_add(8) <= b.len()
        }
        _ => false,
    }
}

fn map_error(e: ImageError) -> DecodeError {
    match e {
        ImageError::Limits(_) => DecodeError::TooLarge,
        other => DecodeError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decodes_png_and_refuses_garbage() {
        let img = decode_rgb(&encode_png(5, 3), DecodeLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (5, 3));
        assert!(matches!(
            decode_rgb(b"definitely not an image", DecodeLimits::default()),
            Err(DecodeError::Invalid(_))
        ));
    }

    /// A marker segment: `FF code`, big-endian length (including itself), payload.
    fn segment(code: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() + 2) as u16;
        [&[0xFF, code][..], &len.to_be_bytes(), payload].concat()
    }

    #[test]
    fn jpeg_structure_must_reach_eoi() {
        // An APP1 holding a thumbnail that ends in its own EOI, then one scan with a stuffed
        // 0xFF00, a restart marker and fill bytes before the final EOI.
        let thumbnail = [0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9];
        let head = [
            &[0xFF, 0xD8][..],
            &segment(0xE1, &thumbnail),
            &segment(0xDB, &[0; 65]),
            &segment(0xDA, &[1, 1, 0, 0, 63, 0]),
        ]
        .concat();
        let scan = [7, 0xFF, 0x00, 9, 0xFF, 0xD0, 5, 6];
        let whole = [&head[..], &scan, &[0xFF, 0xFF, 0xD9]].concat();
        assert!(jpeg_reaches_eoi(&whole));
        // Trailing data after EOI is fine; every shorter prefix is truncated, including one that
        // ends right after the thumbnail's EOI.
        assert!(jpeg_reaches_eoi(&[&whole[..], b"trailer"].concat()));
        for cut in 0..whole.len() {
            assert!(!jpeg_reaches_eoi(&whole[..cut]), "cut at {cut}");
        }
        // A segment length running past the end.
        assert!(!jpeg_reaches_eoi(&[
            0xFF, 0xD8, 0xFF, 0xE0, 0x40, 0x00, 0xFF, 0xD9
        ]));
    }

    #[test]
    fn png_and_webp_structure_must_be_whole() {
        let png = encode_png(4, 4);
        assert!(png_reaches_iend(&png));
        assert!(png_reaches_iend(&[&png[..], b"trailer"].concat()));
        for cut in 0..png.len() {
            assert!(!png_reaches_iend(&png[..cut]), "cut at {cut}");
        }
        let mut webp = Vec::new();
        RgbImage::from_pixel(4, 4, image::Rgb([9, 8, 7]))
            .write_to(&mut Cursor::new(&mut webp), ImageFormat::WebP)
            .unwrap();
        assert!(webp_riff_is_whole(&webp));
        for cut in 0..webp.len() {
            assert!(!webp_riff_is_whole(&webp[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn truncated_files_are_invalid() {
        let png = encode_png(5, 3);
        assert!(matches!(
            decode_rgb(&png[..png.len() - 1], DecodeLimits::default()),
            Err(DecodeError::Invalid(why)) if why.contains("truncated PNG")
        ));
    }

    #[test]
    fn header_dimensions_over_the_limit_are_refused_before_decoding() {
        let limits = DecodeLimits {
            max_pixels: 100,
            max_side: 1000,
        };
        assert!(matches!(
            decode_rgb(&encode_png(20, 20), limits),
            Err(DecodeError::TooLarge)
        ));
        let limits = DecodeLimits {
            max_pixels: 1 << 30,
            max_side: 10,
        };
        assert!(matches!(
            decode_rgb(&encode_png(20, 5), limits),
            Err(DecodeError::TooLarge)
        ));
    }
}
