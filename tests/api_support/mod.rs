//! Shared helpers of the API integration tests: a real `moto_server` (Secrets Manager), the real
//! pipeline with the project's models, real dev images from `../shared`, HTTP helpers.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use base64::Engine;
use liveness::config::PipelineConfig;
use liveness::pipeline::Pipeline;

/// The crate root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Models: `LIVENESS_MODEL_DIR` if set, else the project's own `models/`.
pub fn model_dir() -> PathBuf {
    std::env::var_os("LIVENESS_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

/// A development image from `../shared/data/faces-dev` (read-only, never copied into the repo).
pub fn dev_image(name: &str) -> Vec<u8> {
    let path = repo_root().join("../shared/data/faces-dev").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A live dev image the pipeline scores >= 0.5.
pub const LIVE_IMAGE: &str = "live_siwm_001.jpg";
/// A spoof dev image the pipeline scores < 0.5.
pub const SPOOF_IMAGE: &str = "spoof_celebaspoof_004.jpg";

/// Standard base64 of a dev image.
pub fn dev_image_b64(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(dev_image(name))
}

/// The pipeline configuration used by the tests (the project's defaults, models from [`model_dir`]).
pub fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        model_dir: model_dir(),
        ..PipelineConfig::default()
    }
}

/// The real pipeline, loaded once per test binary.
pub fn pipeline() -> Arc<Pipeline> {
    static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();
    PIPELINE
        .get_or_init(|| {
            Arc::new(Pipeline::load(pipeline_config()).expect("pipeline loads from the model dir"))
        })
        .clone()
}

/// A free loopback port (bound then released), never one this test process handed out before:
/// the kernel may give a released port to the next bind, and two tests running side by side would
/// then start their servers (e.g. two `moto_server`s) on the same port, one answering for both.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// `Authorization: Basic ...` value.
pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A JSON request body.
pub fn body(session_id: &str, face_image_base: &str) -> String {
    serde_json::json!({ "sessionId": session_id, "faceImageBase": face_image_base }).to_string()
}

/// A `moto_server` from the project's `.venv`, on a free loopback port. Stopped on drop, and by a
/// shell guard when the test process ends (its stdin closes).
pub struct Moto {
    guard: Option<Child>,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl Moto {
    /// Starts moto and waits until it answers as moto.
    ///
    /// A port from [`free_port`] can still be taken, before moto binds it, by a listener that
    /// another test of this process binds on port 0: moto then exits and the other listener
    /// answers on its port. So moto must answer its own API, else it starts again elsewhere.
    pub fn start() -> Self {
        for _ in 0..5 {
            let moto = Self::spawn(free_port());
            if moto.answers_as_moto() {
                return moto;
            }
        }
        panic!("moto_server did not start");
    }

    fn spawn(port: u16) -> Self {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(bin.exists(), "{} missing: run `make venv`", bin.display());
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & child=$!; read -r _; kill "$child"; wait "$child""#)
            .arg(&bin)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn moto_server");
        Self {
            stdin: guard.stdin.take(),
            guard: Some(guard),
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until the port accepts a connection, then asks for moto's own
    /// `/moto-api/data.json`: true if the answer is a 200.
    fn answers_as_moto(&self) -> bool {
        let address = self.endpoint.trim_start_matches("http://");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stream = loop {
            match std::net::TcpStream::connect(address) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(_) => return false,
            }
        };
        let request = "GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut status = [0u8; 12];
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .is_ok()
            && stream.write_all(request.as_bytes()).is_ok()
            && std::io::Read::read_exact(&mut stream, &mut status).is_ok()
            && status.ends_with(b" 200")
    }

    /// A real Secrets Manager client pointed at this moto.
    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        client_for(&self.endpoint)
    }

    /// Stops moto (Secrets Manager becomes unreachable) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.wait();
        }
    }

    /// Environment for a child process that should use this moto via the default AWS chain.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Secrets Manager client for `endpoint` with dummy keys; no retries and short timeouts, like
/// the service's own client, so an unreachable endpoint fails fast.
pub fn client_for(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(aws_sdk_secretsmanager::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_secretsmanager::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// Creates a secret with `{"username": user, "password": pass}`; returns its ARN.
pub async fn create_secret(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
    secret: serde_json::Value,
) -> String {
    let out = client
        .create_secret()
        .name(name)
        .secret_string(secret.to_string())
        .send()
        .await
        .expect("create secret in moto");
    out.arn().expect("arn").to_owned()
}

/// Replaces the secret's value (a rotation).
pub async fn rotate_secret(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
    secret: serde_json::Value,
) {
    client
        .put_secret_value()
        .secret_id(id)
        .secret_string(secret.to_string())
        .send()
        .await
        .expect("put secret value");
}

/// A loopback address for a listener.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Validates response `cases` (`{"method", "path", "status", "headers", "body"}`) against
/// openapi.yaml with `tests/api_openapi_check.py` in the pinned venv (`make venv`). Returns
/// whether they all match, and the checker's output.
pub fn run_openapi_check(cases: &[serde_json::Value]) -> (bool, String) {
    let file = std::env::temp_dir().join(format!(
        "liveness-openapi-cases-{}-{}.json",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&file, serde_json::to_vec(cases).unwrap()).unwrap();
    let out = std::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/api_openapi_check.py"))
        .arg(repo_root().join("openapi.yaml"))
        .arg(&file)
        .output()
        .expect("run the OpenAPI check with .venv/bin/python (make venv)");
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The Lambda Runtime API's answer to `GET /runtime/invocation/next`: `event` as invocation `id`,
/// with a deadline two minutes ahead (and an X-Ray trace header when `traced`).
pub fn next_invocation(
    id: &str,
    event: &serde_json::Value,
    traced: bool,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let deadline_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 120_000;
    let mut response = hyper::Response::builder()
        .header("lambda-runtime-aws-request-id", id)
        .header("lambda-runtime-deadline-ms", deadline_ms.to_string())
        .header(
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:liveness",
        );
    if traced {
        response = response.header(
            "lambda-runtime-trace-id",
            "Root=1-6745a1b2-0123456789abcdef01234567;Sampled=0",
        );
    }
    response
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            event.to_string(),
        )))
        .unwrap()
}

/// What the function posted to the Lambda Runtime API: `(id, value)` for
/// `POST .../invocation/{id}/response` (the response JSON) or `.../{id}/error`
/// (`{"invocationError": ...}`); `None` for any other path.
pub async fn posted_result(
    req: hyper::Request<hyper::body::Incoming>,
) -> Option<(String, serde_json::Value)> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/2018-06-01/runtime/invocation/")?;
    let (id, kind) = rest.split_once('/')?;
    if kind != "response" && kind != "error" {
        return None;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let value =
        serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::json!({ "unparsable": true }));
    let value = match kind {
        "error" => serde_json::json!({ "invocationError": value }),
        _ => value,
    };
    Some((id.to_string(), value))
}

/// An empty response with `status` (the Runtime API's 202 for a posted result, 404 otherwise).
pub fn empty_response(status: u16) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    hyper::Response::builder()
        .status(status)
        .body(http_body_util::Full::default())
        .unwrap()
}
