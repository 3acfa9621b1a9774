//! The one router used by the Lambda handler and the local server: request in, response out.
//!
//! Order of checks: path (404), method (405), `Authorization` (401/503, before the body is read),
//! body size and arrival (413/408), JSON fields (400), image input (400/413/422), pipeline.
//!
//! `GET /` serves the demo page ([`DemoPage`]) where it is enabled, without credentials (the page
//! holds none; its requests to the API carry the ones the user types). `?verbose=1` on the
//! liveness path adds [`Diagnostics`] to a `200` where the configuration allows it; otherwise the
//! parameter is ignored and the response is the normal one.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::api::auth::{Authenticator, SecretSource, SecretsManagerSource, StaticSource};
use crate::api::config::{ApiConfig, Deployment, Limits, REALM};
use crate::api::contract::{self, ApiError, LivenessResponse, DEMO_PAGE_PATH, LIVENESS_PATH};
use crate::api::demo::DemoPage;
use crate::api::diagnostics::Diagnostics;
use crate::api::fetch::Fetcher;
use crate::api::input::{self, ImageInput};
use crate::api::StartError;
use crate::pipeline::{Assessment, Outcome, Pipeline, StageTimings};

/// User name of the local development credentials (used only when nothing is configured).
pub const DEV_USER: &str = "dev";
/// Password of the local development credentials.
pub const DEV_PASSWORD: &str = "liveness-dev";

/// Shared state of the service, built once per process and borrowed by every request.
pub struct App {
    pipeline: Arc<Pipeline>,
    auth: Authenticator,
    fetcher: Fetcher,
    limits: Limits,
    url_enabled: bool,
    pipeline_slots: Semaphore,
    dev_credentials: bool,
    /// The page served at `GET /`, if enabled.
    demo_page: Option<DemoPage>,
    /// Whether `?verbose=1` is answered with diagnostics.
    diagnostics: bool,
}

/// What one request came to, for the response and the log line.
struct Handled {
    session_id: Option<String>,
    result: Result<Assessment, ApiError>,
    /// The request asked for diagnostics (`?verbose=1`).
    verbose: bool,
}

impl App {
    /// Builds the state with an explicit secret source (tests swap the source here). The demo
    /// page and diagnostics are on only where `config` sets them explicitly; [`App::build`]
    /// applies the deployment's defaults.
    pub fn new(pipeline: Arc<Pipeline>, config: &ApiConfig, source: Arc<dyn SecretSource>) -> Self {
        let threshold = pipeline.config().score_threshold;
        let diagnostics = config.diagnostics.unwrap_or(false);
        let demo_page = config
            .demo_page
            .unwrap_or(false)
            .then(|| DemoPage::new(threshold, diagnostics));
        Self {
            pipeline,
            auth: Authenticator::new(source, config.secret_cache.clone()),
            fetcher: Fetcher::new(config.url.clone(), config.limits.max_image_bytes),
            limits: config.limits.clone(),
            url_enabled: config.url.enabled,
            pipeline_slots: Semaphore::new(config.max_concurrency.max(1)),
            dev_credentials: false,
            demo_page,
            diagnostics,
        }
    }

    /// Builds the state from the configuration: Secrets Manager if `LIVENESS_SECRET_ID` is set,
    /// else `LIVENESS_BASIC_AUTH`, else (locally only) the development credentials, loudly logged.
    /// Loads the secret at once so the first request is fast (a failure here is logged; requests
    /// then retry and fail closed with 503 until the secret can be read).
    pub async fn build(
        pipeline: Arc<Pipeline>,
        config: &ApiConfig,
        deployment: Deployment,
    ) -> Result<Self, StartError> {
        let mut dev_credentials = false;
        let source: Arc<dyn SecretSource> = match (
            &config.secret_id,
            deployment,
            &config.basic_auth,
        ) {
            (Some(id), _, _) => Arc::new(SecretsManagerSource::from_env(id.clone()).await),
            (None, _, Some(pair)) => {
                let (user, pass) = pair.split_once(':').unwrap_or((pair, ""));
                Arc::new(StaticSource::new(user, pass))
            }
            (None, Deployment::Lambda, None) => return Err(StartError::NoCredentialsOnLambda),
            (None, Deployment::Local, None) => {
                tracing::warn!(
                    user = DEV_USER,
                    "*** NO CREDENTIALS CONFIGURED: using the DEVELOPMENT credentials (see docs/api.md); \
                     loopback only. Set LIVENESS_BASIC_AUTH or LIVENESS_SECRET_ID for anything else. ***"
                );
                dev_credentials = true;
                Arc::new(StaticSource::new(DEV_USER, DEV_PASSWORD))
            }
        };
        let config = ApiConfig {
            demo_page: Some(config.demo_page_enabled(deployment)),
            diagnostics: Some(config.diagnostics_enabled(deployment)),
            ..config.clone()
        };
        let mut app = Self::new(pipeline, &config, source);
        app.dev_credentials = dev_credentials;
        if app.diagnostics {
            tracing::info!(
                "diagnostics on: POST {LIVENESS_PATH}?verbose=1 answers with face boxes, crops, \
                 per-model probabilities and timings (LIVENESS_DIAGNOSTICS=false turns this off)"
            );
        }
        if let Err(e) = app.auth.prime().await {
            tracing::warn!(error = %e, "credentials not loaded at start-up; requests get 503 until they are");
        }
        Ok(app)
    }

    /// Whether the built-in development credentials are in use.
    pub fn uses_development_credentials(&self) -> bool {
        self.dev_credentials
    }

    /// Whether `GET /` serves the demo page.
    pub fn serves_demo_page(&self) -> bool {
        self.demo_page.is_some()
    }

    /// Whether `?verbose=1` is answered with diagnostics.
    pub fn gives_diagnostics(&self) -> bool {
        self.diagnostics
    }

    /// Handles one HTTP request. Never panics; every failure becomes a JSON error response.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<String>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(page) = &self.demo_page {
            if req.uri().path() == DEMO_PAGE_PATH {
                return page.respond(req.method());
            }
        }
        let started = Instant::now();
        let handled = self.process(req).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let session_id = handled.session_id.as_deref();
        let (status, body) = match &handled.result {
            Ok(assessment) => {
                let t = &assessment.timings;
                let threshold = self.pipeline.config().score_threshold;
                let outcome = match &assessment.outcome {
                    Outcome::Scored { score } if *score >= threshold => "pass",
                    Outcome::Scored { .. } => "fail",
                    Outcome::Rejected(gate) => gate.code(),
                };
                let mut body =
                    LivenessResponse::for_outcome(handled.session_id.clone(), &assessment.outcome);
                if handled.verbose && self.diagnostics {
                    body.diagnostics = Some(Diagnostics::from_assessment(assessment, threshold));
                }
                log_stages(session_id, outcome, latency_ms, t);
                (StatusCode::OK, body)
            }
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::error!(session_id, outcome = e.code(), status = e.status().as_u16(), latency_ms, detail = %e, "request failed");
                } else {
                    tracing::info!(
                        session_id,
                        outcome = e.code(),
                        status = e.status().as_u16(),
                        latency_ms,
                        "request refused"
                    );
                }
                (
                    e.status(),
                    LivenessResponse::error(handled.session_id.clone(), e.code()),
                )
            }
        };
        let json = serde_json::to_string(&body)
            .unwrap_or_else(|_| r#"{"hasError":true,"error":"INTERNAL_ERROR"}"#.into());
        let mut response = Response::new(json);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match status {
            StatusCode::UNAUTHORIZED => {
                let challenge = format!("Basic realm=\"{REALM}\"");
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        response
    }

    /// Handles an API Gateway (REST v1 or HTTP API v2) request converted by `lambda_http`.
    ///
    /// Routes on the event's own path: `lambda_http` prefixes the REST API stage (`/Prod/...`)
    /// to the URI, while the event's `path`/`rawPath` is what the client requested.
    pub async fn handle_lambda(
        &self,
        mut request: lambda_http::Request,
    ) -> Response<lambda_http::Body> {
        use lambda_http::RequestExt;
        let raw_path = request.raw_http_path().to_owned();
        if !raw_path.is_empty() {
            let path_and_query = match request.uri().query() {
                Some(query) => format!("{raw_path}?{query}"),
                None => raw_path,
            };
            if let Ok(uri) = path_and_query.parse::<hyper::Uri>() {
                *request.uri_mut() = uri;
            }
        }
        self.handle(request).await.map(lambda_http::Body::Text)
    }

    async fn process<B>(&self, req: Request<B>) -> Handled
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let verbose = contract::wants_verbose(req.uri().query());
        let no_session = |e: ApiError| Handled {
            session_id: None,
            result: Err(e),
            verbose,
        };
        if req.uri().path() != LIVENESS_PATH {
            return no_session(ApiError::NotFound);
        }
        if req.method() != Method::POST {
            return no_session(ApiError::MethodNotAllowed);
        }
        if let Err(e) = self
            .auth
            .authorize(req.headers().get(header::AUTHORIZATION))
            .await
        {
            return no_session(e.into());
        }
        let body = match self.read_body(req).await {
            Ok(body) => body,
            Err(e) => return no_session(e),
        };
        let request = match contract::parse_request(&body) {
            Ok(r) => r,
            Err(e) => {
                return Handled {
                    session_id: e.session_id,
                    result: Err(e.error),
                    verbose,
                }
            }
        };
        drop(body);
        let result = self.assess(request.face_image_base).await;
        Handled {
            session_id: Some(request.session_id),
            result,
            verbose,
        }
    }

    async fn read_body<B>(&self, req: Request<B>) -> Result<Bytes, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes as u64) {
            return Err(ApiError::ImageTooLarge);
        }
        let limited = Limited::new(req.into_body(), self.limits.max_body_bytes);
        match tokio::time::timeout(self.limits.body_read_timeout, limited.collect()).await {
            Err(_) => Err(ApiError::RequestTimeout),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(ApiError::ImageTooLarge)
            }
            Ok(Err(_)) => Err(ApiError::InvalidRequest("request body could not be read")),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    async fn assess(&self, field: String) -> Result<Assessment, ApiError> {
        let bytes = match input::parse_image_field(
            &field,
            self.limits.max_image_bytes,
            self.url_enabled,
        )? {
            ImageInput::Bytes(bytes) => bytes,
            ImageInput::Url(url) => {
                let host = url.host_str().unwrap_or_default().to_owned();
                let fetched = self.fetcher.fetch(url).await;
                if let Err(e) = &fetched {
                    tracing::info!(host, reason = %e, "image URL not fetched");
                }
                fetched?
            }
        };
        drop(field);
        let _slot = self
            .pipeline_slots
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("pipeline slots closed".into()))?;
        let pipeline = self.pipeline.clone();
        let joined = tokio::task::spawn_blocking(move || pipeline.assess_encoded(&bytes)).await;
        match joined {
            Ok(Ok(Assessment {
                outcome: Outcome::Scored { score },
                ..
            })) if !score.is_finite() => Err(ApiError::Internal(
                "pipeline returned a non-finite score".into(),
            )),
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::Internal(format!("pipeline task failed: {e}"))),
        }
    }
}

fn log_stages(session_id: Option<&str>, outcome: &str, latency_ms: f64, t: &StageTimings) {
    tracing::info!(
        session_id,
        outcome,
        status = 200u16,
        latency_ms,
        decode_ms = t.decode_ms,
        detect_ms = t.detect_ms,
        gate_ms = t.gate_ms,
        crop_ms = t.crop_ms,
        classify_ms = t.classify_ms,
        pipeline_ms = t.total_ms,
        "request assessed"
    );
}
