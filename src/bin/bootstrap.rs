//! AWS Lambda entry point (`provided.al2023`, handler `bootstrap`).
//!
//! Builds the shared state once per execution environment (pipeline with its models, service
//! configuration, Secrets Manager credential cache primed at cold start) and serves API Gateway
//! REST (v1) and HTTP API (v2) events through the same router as `liveness serve`. Missing or
//! invalid configuration fails start-up.

use std::convert::Infallible;
use std::sync::Arc;

use lambda_http::{service_fn, Error, Request};
use liveness::api::{self, ApiConfig, App, Deployment};
use liveness::config::PipelineConfig;
use liveness::pipeline::Pipeline;

async fn start() -> Result<App, Error> {
    let config = ApiConfig::from_env()?;
    let pipeline = Arc::new(Pipeline::load(PipelineConfig::from_env()?)?);
    Ok(App::build(pipeline, &config, Deployment::Lambda).await?)
}

fn main() -> Result<(), Error> {
    // Before the async runtime starts any thread (see `limit_thread_pools_at_startup`).
    let threads = liveness::config::env_or("LIVENESS_THREADS", 1usize)?;
    liveness::nn::limit_thread_pools_at_startup(threads);
    tokio::runtime::Runtime::new()?.block_on(serve())
}

async fn serve() -> Result<(), Error> {
    api::init_tracing(true);
    let app = match start().await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return Err(e);
        }
    };
    let app = &app;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, Infallible>(app.handle_lambda(request).await)
    }))
    .await
}
