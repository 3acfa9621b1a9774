//! Image decoding with limits and EXIF orientation.

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
