//! Interpretation of the `faceImageBase` field: base64 (standard or URL-safe, padding optional,
//! whitespace ignored), a `data:image/...;base64,` URL, or an `http(s)://` URL to fetch.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Where the image bytes come from.
#[derive(Debug)]
pub enum ImageInput {
    /// Bytes decoded from base64.
    Bytes(Vec<u8>),
    /// A URL to fetch (not yet vetted; see [`crate::api::fetch`]).
    Url(url::Url),
}

/// Why `faceImageBase` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    /// Nothing but whitespace.
    #[error("faceImageBase is empty")]
    Empty,
    /// The decoded image would exceed the byte limit.
    #[error("image larger than the byte limit")]
    TooLarge,
    /// A URL was given but URL input is switched off.
    #[error("URL input is switched off")]
    UrlDisabled,
    /// A URL that is not an acceptable `http(s)` URL.
    #[error("{0}")]
    BadUrl(&'static str),
    /// A `data:` URL that is not `data:image/...;base64,`.
    #[error("data URL is not of the form data:image/...;base64,")]
    NotImageDataUrl,
    /// Not valid base64.
    #[error("not valid base64")]
    Base64,
}

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Interprets `field`; base64 payloads are decoded, refusing more than `max_image_bytes`.
pub fn parse_image_field(
    field: &str,
    max_image_bytes: usize,
    url_enabled: bool,
) -> Result<ImageInput, InputError> {
    let field = field.trim_matches(|c: char| c.is_ascii_whitespace());
    if field.is_empty() {
        return Err(InputError::Empty);
    }
    match scheme_of(field) {
        None => decode_base64(field, max_image_bytes).map(ImageInput::Bytes),
        Some(scheme) if scheme.eq_ignore_ascii_case("data") => {
            let rest = &field[scheme.len() + 1..];
            let (meta, payload) = rest.split_once(',').ok_or(InputError::NotImageDataUrl)?;
            let meta = meta.to_ascii_lowercase();
            let is_image = meta.starts_with("image/")
                && meta.ends_with(";base64")
                && meta.len() > "image/;base64".len();
            if !is_image {
                return Err(InputError::NotImageDataUrl);
            }
            decode_base64(payload, max_image_bytes).map(ImageInput::Bytes)
        }
        Some(scheme)
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            if !url_enabled {
                return Err(InputError::UrlDisabled);
            }
            let url = url::Url::parse(field).map_err(|_| InputError::BadUrl("not a valid URL"))?;
            Ok(ImageInput::Url(url))
        }
        Some(_) => {
            if url_enabled {
                Err(InputError::BadUrl("only http and https URLs are accepted"))
            } else {
                Err(InputError::UrlDisabled)
            }
        }
    }
}

/// The URL scheme if `s` starts with one (`[A-Za-z][A-Za-z0-9+.-]*:`). Base64 never contains `:`.
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

fn decode_base64(payload: &str, max_image_bytes: usize) -> Result<Vec<u8>, InputError> {
    let compact: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(InputError::Empty);
    }
    let unpadded = compact.iter().rev().skip_while(|&&b| b == b'=').count();
    if unpadded / 4 * 3 + (unpadded % 4).saturating_sub(1) > max_image_bytes {
        return Err(InputError::TooLarge);
    }
    let engine = if compact.iter().any(|&b| b == b'-' || b == b'_') {
        &URL_SAFE
    } else {
        &STANDARD
    };
    engine.decode(&compact).map_err(|_| InputError::Base64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(field: &str) -> Result<Vec<u8>, InputError> {
        match parse_image_field(field, 1024, true)? {
            ImageInput::Bytes(b) => Ok(b),
            ImageInput::Url(u) => panic!("unexpected URL {u}"),
        }
    }

    #[test]
    fn base64_variants_decode_to_the_same_bytes() {
        let data = [0xfbu8, 0xff, 0xbf, 0x01, 0x02];
        let std_padded = base64::engine::general_purpose::STANDARD.encode(data);
        let url_unpadded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
        assert!(std_padded.contains('+') || std_padded.contains('/'));
        assert!(url_unpadded.contains('-') || url_unpadded.contains('_'));
        let wrapped = format!("  {}\r\n{} \n", &std_padded[..4], &std_padded[4..]);
        for field in [
            std_padded.clone(),
            url_unpadded.clone(),
            wrapped,
            format!("data:image/jpeg;base64,{std_padded}"),
        ] {
            assert_eq!(bytes(&field).unwrap(), data, "field {field:?}");
        }
        assert_eq!(
            bytes(&format!("DATA:Image/PNG;BASE64,{url_unpadded}")).unwrap(),
            data
        );
    }

    #[test]
    fn bad_inputs_are_refused_with_the_right_error() {
        assert_eq!(bytes("   \n "), Err(InputError::Empty));
        assert_eq!(bytes("data:image/png;base64,"), Err(InputError::Empty));
        assert_eq!(bytes("not base64 at all!"), Err(InputError::Base64));
        assert_eq!(bytes("ab+c-d=="), Err(InputError::Base64));
        assert_eq!(bytes("A"), Err(InputError::Base64));
        assert_eq!(
            bytes("data:text/plain;base64,AAAA"),
            Err(InputError::NotImageDataUrl)
        );
        assert_eq!(
            bytes("data:image/png,AAAA"),
            Err(InputError::NotImageDataUrl)
        );
        assert_eq!(
            bytes("file:///etc/passwd").unwrap_err(),
            InputError::BadUrl("only http and https URLs are accepted")
        );
        assert_eq!(
            bytes("gopher://x/").unwrap_err(),
            InputError::BadUrl("only http and https URLs are accepted")
        );
        assert_eq!(
            bytes("http://").unwrap_err(),
            InputError::BadUrl("not a valid URL")
        );
        assert_eq!(
            parse_image_field("https://example.com/a.jpg", 10, false).unwrap_err(),
            InputError::UrlDisabled
        );
        assert_eq!(
            parse_image_field("ftp://example.com/a.jpg", 10, false).unwrap_err(),
            InputError::UrlDisabled
        );
    }

    #[test]
    fn oversize_payload_is_refused_before_decoding() {
        let exact = "A".repeat(1024 / 3 * 4);
        assert_eq!(bytes(&exact).unwrap().len(), 1024 / 3 * 3);
        assert_eq!(bytes(&"A".repeat(1368)), Err(InputError::TooLarge));
    }

    #[test]
    fn urls_are_recognised() {
        match parse_image_field(" HTTPS://Example.com/face.jpg?x=1 ", 10, true).unwrap() {
            ImageInput::Url(u) => assert_eq!(u.as_str(), "https://example.com/face.jpg?x=1"),
            ImageInput::Bytes(_) => panic!("expected a URL"),
        }
    }
}
