//! The wire contract of `POST /api/v1/face/liveness`: request and response bodies, error codes,
//! and the single mapping from every error of every layer to an error code and HTTP status.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use crate::api::auth::AuthError;
use crate::api::diagnostics::Diagnostics;
use crate::api::fetch::FetchError;
use crate::api::input::InputError;
use crate::image_io::DecodeError;
use crate::pipeline::{Outcome, PipelineError};

/// The one route of the service.
pub const LIVENESS_PATH: &str = "/api/v1/face/liveness";

/// Where the demo page is served (when enabled).
pub const DEMO_PAGE_PATH: &str = "/";

/// Whether a query string asks for diagnostics: `verbose=1` or `verbose=true`; anything else
/// (absent, other values, other parameters) leaves the normal response.
pub fn wants_verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key == "verbose" && matches!(value, "1" | "true")
        })
    })
}

/// Longest accepted `sessionId`, in characters.
pub const MAX_SESSION_ID_CHARS: usize = 128;

/// A validated request body.
#[derive(Debug)]
pub struct LivenessRequest {
    /// Client-chosen id, echoed in the response; printable ASCII, 1..=128 characters.
    pub session_id: String,
    /// Base64 image, `data:image/...;base64,` URL, or `http(s)://` URL (not yet interpreted).
    pub face_image_base: String,
}

/// A request body that could not be accepted, with the `sessionId` if it was readable.
#[derive(Debug)]
pub struct RequestError {
    /// The valid `sessionId` of the body, if there was one.
    pub session_id: Option<String>,
    /// Why the body was refused.
    pub error: ApiError,
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "sessionId")]
    session_id: Option<serde_json::Value>,
    #[serde(rename = "faceImageBase")]
    face_image_base: Option<serde_json::Value>,
}

/// Parses and validates a JSON request body. Unknown fields are ignored.
pub fn parse_request(body: &[u8]) -> Result<LivenessRequest, RequestError> {
    let fail = |session_id: Option<String>, why: &'static str| RequestError {
        session_id,
        error: ApiError::InvalidRequest(why),
    };
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|_| fail(None, "body is not a JSON object of the expected shape"))?;
    let session_id = match raw.session_id {
        None | Some(serde_json::Value::Null) => return Err(fail(None, "sessionId is missing")),
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(fail(None, "sessionId is not a string")),
    };
    validate_session_id(&session_id).map_err(|why| fail(None, why))?;
    let face_image_base = match raw.face_image_base {
        None | Some(serde_json::Value::Null) => {
            return Err(fail(Some(session_id), "faceImageBase is missing"))
        }
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(fail(Some(session_id), "faceImageBase is not a string")),
    };
    if face_image_base.trim().is_empty() {
        return Err(fail(Some(session_id), "faceImageBase is empty"));
    }
    Ok(LivenessRequest {
        session_id,
        face_image_base,
    })
}

fn validate_session_id(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("sessionId is empty");
    }
    if s.chars().count() > MAX_SESSION_ID_CHARS {
        return Err("sessionId is longer than 128 characters");
    }
    if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("sessionId has characters other than printable ASCII");
    }
    Ok(())
}

/// The JSON body of every response.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LivenessResponse {
    /// The request's `sessionId`, whenever it was readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Liveness score in [0, 1]; present exactly when `has_error` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Whether `error` is set instead of `score`.
    pub has_error: bool,
    /// Gate or error code; present exactly when `has_error` is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the pipeline saw; only on a `200` to `?verbose=1` where the configuration allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Diagnostics>,
}

impl LivenessResponse {
    /// A scored photo.
    pub fn scored(session_id: String, score: f32) -> Self {
        Self {
            session_id: Some(session_id),
            score: Some(score),
            has_error: false,
            error: None,
            diagnostics: None,
        }
    }

    /// The body for a pipeline outcome: the score, or the gate's code.
    pub fn for_outcome(session_id: Option<String>, outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Scored { score } => Self::scored(session_id.unwrap_or_default(), *score),
            Outcome::Rejected(gate) => Self::error(session_id, gate.code()),
        }
    }

    /// A refusal with `code` (a gate code or an [`ApiError::code`]).
    pub fn error(session_id: Option<String>, code: &str) -> Self {
        Self {
            session_id,
            score: None,
            has_error: true,
            error: Some(code.to_owned()),
            diagnostics: None,
        }
    }
}

/// Every way a request can fail, each with exactly one error code and HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed body or fields.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// Not decodable as an image.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// Body, image bytes or pixel count over the limits.
    #[error("image or request too large")]
    ImageTooLarge,
    /// The image URL is refused by policy.
    #[error("image URL rejected: {0}")]
    UrlRejected(&'static str),
    /// The image URL could not be fetched.
    #[error("image fetch failed: {0}")]
    FetchFailed(String),
    /// Missing, malformed or wrong credentials.
    #[error("unauthorized")]
    Unauthorized,
    /// Unknown path.
    #[error("not found")]
    NotFound,
    /// Known path, other method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body did not arrive in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// Credentials cannot be loaded and nothing valid is cached.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Anything else; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidImage(_) | ApiError::UrlRejected(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ImageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::FetchFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code in the response body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "INVALID_REQUEST",
            ApiError::InvalidImage(_) => "INVALID_IMAGE",
            ApiError::ImageTooLarge => "IMAGE_TOO_LARGE",
            ApiError::UrlRejected(_) => "IMAGE_URL_REJECTED",
            ApiError::FetchFailed(_) => "IMAGE_FETCH_FAILED",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::RequestTimeout => "REQUEST_TIMEOUT",
            ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Empty => ApiError::InvalidRequest("faceImageBase is empty"),
            InputError::TooLarge => ApiError::ImageTooLarge,
            InputError::UrlDisabled => ApiError::UrlRejected("URL input is switched off"),
            InputError::BadUrl(why) => ApiError::UrlRejected(why),
            InputError::NotImageDataUrl | InputError::Base64 => {
                ApiError::InvalidImage(e.to_string())
            }
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Rejected(why) => ApiError::UrlRejected(why),
            FetchError::TooLarge => ApiError::ImageTooLarge,
            FetchError::Failed(why) => ApiError::FetchFailed(why),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Decode(DecodeError::TooLarge) => ApiError::ImageTooLarge,
            PipelineError::Decode(DecodeError::Invalid(why)) => ApiError::InvalidImage(why),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Denied => ApiError::Unauthorized,
            AuthError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_body_and_ignores_unknown_fields() {
        let r = parse_request(br#"{"sessionId":"abc-1","faceImageBase":"AAAA","extra":[1,2]}"#)
            .unwrap();
        assert_eq!(r.session_id, "abc-1");
        assert_eq!(r.face_image_base, "AAAA");
    }

    #[test]
    fn echoes_session_id_only_when_readable() {
        let e = parse_request(br#"{"sessionId":"s1"}"#).unwrap_err();
        assert_eq!(e.session_id.as_deref(), Some("s1"));
        assert_eq!(e.error.code(), "INVALID_REQUEST");
        let e = parse_request(br#"{"sessionId":"s1","faceImageBase":"  "}"#).unwrap_err();
        assert_eq!(e.session_id.as_deref(), Some("s1"));
        let long = format!(
            r#"{{"sessionId":"{}","faceImageBase":"AAAA"}}"#,
            "x".repeat(129)
        );
        assert!(parse_request(long.as_bytes())
            .unwrap_err()
            .session_id
            .is_none());
        let ok = format!(
            r#"{{"sessionId":"{}","faceImageBase":"AAAA"}}"#,
            "x".repeat(128)
        );
        assert!(parse_request(ok.as_bytes()).is_ok());
        for bad in [
            &br#"{"sessionId":"a\nb","faceImageBase":"AAAA"}"#[..],
            br#"{"sessionId":"","faceImageBase":"AAAA"}"#,
            br#"{"sessionId":5,"faceImageBase":"AAAA"}"#,
            br#"{"faceImageBase":"AAAA"}"#,
            br#"[1]"#,
            br#"{"sessionId":"a","#,
            b"",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.session_id.is_none());
            assert_eq!(e.error.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn verbose_is_asked_only_by_verbose_1_or_true() {
        assert!(wants_verbose(Some("verbose=1")));
        assert!(wants_verbose(Some("a=b&verbose=true")));
        for q in [
            None,
            Some(""),
            Some("verbose"),
            Some("verbose=0"),
            Some("verbose=yes"),
            Some("xverbose=1"),
        ] {
            assert!(!wants_verbose(q), "{q:?}");
        }
    }

    #[test]
    fn response_fields_follow_the_contract() {
        let ok = serde_json::to_value(LivenessResponse::scored("s".into(), 0.75)).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"sessionId": "s", "score": 0.75, "hasError": false})
        );
        let err = serde_json::to_value(LivenessResponse::error(None, "UNAUTHORIZED")).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"hasError": true, "error": "UNAUTHORIZED"})
        );
    }
}
