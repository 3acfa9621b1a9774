//! The local HTTP/1.1 server behind `liveness serve`: the same [`App`] router as on Lambda,
//! no emulator needed. Connections are bounded; slow headers time out.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{ApiConfig, App, Deployment, StartError};
use crate::pipeline::Pipeline;

/// Time allowed for a client to send the request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the service state from `config` and serves it on `config.bind_addr:port` until the
/// process ends. With the development credentials only a loopback address is allowed.
pub async fn serve(
    pipeline: Arc<Pipeline>,
    config: ApiConfig,
    port: u16,
) -> Result<(), StartError> {
    let app = Arc::new(App::build(pipeline, &config, Deployment::Local).await?);
    let addr = SocketAddr::new(config.bind_addr, port);
    if app.uses_development_credentials() && !addr.ip().is_loopback() {
        return Err(StartError::DevCredentialsOnPublicAddress(addr));
    }
    let server = Server::bind(app.clone(), addr, config.max_connections).await?;
    tracing::info!(addr = %server.local_addr(), "liveness API listening: POST http://{}/api/v1/face/liveness", server.local_addr());
    if app.serves_demo_page() {
        tracing::info!(
            "demo page: http://{}/ (LIVENESS_DEMO_PAGE=false turns it off)",
            server.local_addr()
        );
    }
    server.run(std::future::pending()).await;
    Ok(())
}

/// A bound listener serving an [`App`].
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    connections: Arc<Semaphore>,
    local_addr: SocketAddr,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port); at most `max_connections` are served at once.
    pub async fn bind(
        app: Arc<App>,
        addr: SocketAddr,
        max_connections: usize,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            app,
            connections: Arc::new(Semaphore::new(max_connections.max(1))),
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (stream, _peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let app = self.app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move {
                        Ok::<_, Infallible>(
                            app.handle(req)
                                .await
                                .map(|body| Full::new(Bytes::from(body))),
                        )
                    }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
    }
}
