//! The HTTP API: `POST /api/v1/face/liveness`, served on AWS Lambda ([`lambda_http`], binary
//! `bootstrap`) and locally (`liveness serve`, [`server`]) by the same router ([`router::App`]).
//!
//! Layers: [`contract`] (wire types, error codes, the one error-to-status mapping), [`auth`]
//! (Basic auth against a cached secret), [`input`] (base64 / data URL / URL), [`fetch`] (SSRF-safe
//! URL fetch), [`router`] (one request in, one response out), [`server`] (local hyper server),
//! [`demo`] (the demo page at `GET /`), [`diagnostics`] (the body of `?verbose=1`).

pub mod auth;
pub mod config;
pub mod contract;
pub mod demo;
pub mod diagnostics;
pub mod fetch;
pub mod input;
pub mod router;
pub mod server;

pub use config::{ApiConfig, Deployment};
pub use router::App;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A service variable is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// On Lambda, credentials must be configured (there is no development default).
    #[error("no credentials configured: set LIVENESS_SECRET_ID (Secrets Manager) or LIVENESS_BASIC_AUTH")]
    NoCredentialsOnLambda,
    /// The development credentials may only be served on a loopback address.
    #[error("refusing to bind {0} with the development credentials; set LIVENESS_BASIC_AUTH or LIVENESS_SECRET_ID")]
    DevCredentialsOnPublicAddress(std::net::SocketAddr),
    /// The listening socket could not be opened.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Installs the global `tracing` subscriber: JSON lines (Lambda) or human-readable text.
///
/// The level comes from `RUST_LOG` (or `AWS_LAMBDA_LOG_LEVEL`), default `info`. Libraries that can
/// log payloads or credentials at debug/trace level (the Lambda runtime, the AWS SDK, HTTP stacks)
/// are capped at `info` whatever the setting.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let wanted = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL"))
        .unwrap_or_else(|_| "info".into())
        .to_ascii_lowercase();
    let mut filter = EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    for quiet in [
        "lambda_runtime=info",
        "lambda_http=info",
        "lambda_runtime_api_client=info",
        "aws_smithy_runtime=info",
        "aws_smithy_http_client=info",
        "aws_config=info",
        "aws_sdk_secretsmanager=info",
        "hyper=info",
        "hyper_util=info",
        "reqwest=info",
        "rustls=info",
    ] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A subscriber installed earlier (e.g. by the CLI) stays in place, hence the ignored error.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
