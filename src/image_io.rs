//! Image decoding with limits and EXIF orientation.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits, RgbImage};

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
/// is refused without allocating its pixels.
pub fn decode_rgb(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::Invalid("unrecognised image format".into()));
    }
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
