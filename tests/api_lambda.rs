//! The Lambda path: API Gateway REST (v1) and HTTP API (v2) event fixtures, through `lambda_http`
//! in-process and through the real `bootstrap` binary talking to a local Lambda Runtime API
//! (the protocol `cargo lambda watch` and AWS speak), with credentials from moto.

mod api_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_support::*;
use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use liveness::api::auth::StaticSource;
use liveness::api::{ApiConfig, App};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

const USER: &str = "lambda-client";
const PASS: &str = "lambda-pass-7";

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The v1 fixture with credentials and a JSON body filled in.
fn v1_event(auth: &str, body: &str) -> Value {
    let mut e = fixture("apigw_v1_rest_liveness.json");
    e["headers"]["Authorization"] = json!(auth);
    e["multiValueHeaders"]["Authorization"] = json!([auth]);
    e["body"] = json!(body);
    e
}

/// The v2 fixture (HTTP API sends the body base64-encoded) with credentials and body filled in.
fn v2_event(auth: &str, body: &str) -> Value {
    let mut e = fixture("apigw_v2_http_liveness.json");
    e["headers"]["authorization"] = json!(auth);
    e["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    e
}

fn response_json(response: &Value) -> Value {
    assert_eq!(response["isBase64Encoded"], false, "{response}");
    serde_json::from_str(response["body"].as_str().expect("body")).expect("JSON body")
}

/// A response header from `headers` (v2) or `multiValueHeaders` (v1, where lambda_http puts them).
fn header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    let find = |field: &str| {
        response[field]
            .as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    match find("headers") {
        Some(v) => v.as_str(),
        None => find("multiValueHeaders")?.get(0)?.as_str(),
    }
}

// ---------------------------------------------------------------- in-process through lambda_http

#[tokio::test]
async fn fixtures_convert_and_route_in_process() {
    let app = App::new(
        pipeline(),
        &ApiConfig::default(),
        Arc::new(StaticSource::new(USER, PASS)),
    );
    let auth = basic(USER, PASS);
    let gate = body("fx", &dev_image_b64("gate_face_not_found_001.png"));
    for event in [v1_event(&auth, &gate), v2_event(&auth, &gate)] {
        let request =
            lambda_http::request::from_str(&event.to_string()).expect("fixture is a valid event");
        let response = app.handle_lambda(request).await;
        assert_eq!(response.status(), 200);
        let lambda_http::Body::Text(text) = response.body() else {
            panic!("text body expected")
        };
        let json: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            json,
            json!({"sessionId": "fx", "hasError": true, "error": "FACE_NOT_FOUND"})
        );
    }
    // The REST stage prefix added by lambda_http does not hide the route; other paths are 404.
    let mut other = v1_event(&auth, &gate);
    other["path"] = json!("/api/v1/face/other");
    let response = app
        .handle_lambda(lambda_http::request::from_str(&other.to_string()).unwrap())
        .await;
    assert_eq!(response.status(), 404);
}

// ---------------------------------------------------------------- the bootstrap binary

/// A minimal Lambda Runtime API: hands out queued events, collects responses.
struct RuntimeApi {
    addr: String,
    events: mpsc::UnboundedSender<(String, Value)>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
}

type EventQueue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>>;

impl RuntimeApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let queue: EventQueue = Arc::new(tokio::sync::Mutex::new(rx));
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (queue, waiting) = (queue.clone(), w.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (queue, waiting) = (queue.clone(), waiting.clone());
                        async move { Ok::<_, Infallible>(runtime_route(req, queue, waiting).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            events: tx,
            waiting,
        }
    }

    /// Queues `event` and waits for the function's response.
    async fn invoke(&self, event: Value) -> Value {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "req-{}",
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id.clone(), tx);
        self.events.send((id, event)).unwrap();
        tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .expect("function answered in time")
            .unwrap()
    }
}

async fn runtime_route(
    req: Request<Incoming>,
    queue: EventQueue,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/2018-06-01/runtime/invocation/next" {
        let Some((id, event)) = queue.lock().await.recv().await else {
            return empty_response(500);
        };
        return next_invocation(&id, &event, true);
    }
    match posted_result(req).await {
        Some((id, value)) => {
            if let Some(tx) = waiting.lock().unwrap().remove(&id) {
                let _ = tx.send(value);
            }
            empty_response(202)
        }
        None => empty_response(404),
    }
}

/// The `bootstrap` binary as Lambda runs it. Killed on drop.
struct Bootstrap {
    child: Child,
    log_path: std::path::PathBuf,
}

impl Bootstrap {
    fn start(runtime_api: &str, env: &[(&str, String)]) -> Self {
        let log_path = std::env::temp_dir().join(format!(
            "liveness-bootstrap-{}-{}.log",
            std::process::id(),
            free_port()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .env_remove("RUST_LOG")
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "liveness")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/liveness")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/26/[$LATEST]test")
            .env("LIVENESS_MODEL_DIR", model_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(repo_root())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn bootstrap");
        Self { child, log_path }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_serves_v1_and_v2_events() {
    let moto = Moto::start();
    let arn = create_secret(
        &moto.client(),
        "liveness/api-credentials",
        json!({"username": USER, "password": PASS}),
    )
    .await;
    let runtime = RuntimeApi::start().await;
    let mut env = moto.env();
    env.push(("LIVENESS_SECRET_ID", arn));
    let function = Bootstrap::start(&runtime.addr, &env);
    let auth = basic(USER, PASS);
    let live_b64 = dev_image_b64(LIVE_IMAGE);
    let live = body("lambda-live", &live_b64);
    let spoof = body("lambda-spoof", &dev_image_b64(SPOOF_IMAGE));

    for (kind, make) in [
        ("v1", v1_event as fn(&str, &str) -> Value),
        ("v2", v2_event),
    ] {
        let r = runtime.invoke(make(&auth, &live)).await;
        assert_eq!(r["statusCode"], 200, "{kind}: {r}\n{}", function.logs());
        let j = response_json(&r);
        assert_eq!(j["sessionId"], "lambda-live");
        assert_eq!(j["hasError"], false);
        assert!(j["score"].as_f64().unwrap() >= 0.5, "{kind}: {j}");
        assert_eq!(header(&r, "content-type"), Some("application/json"));

        let r = runtime.invoke(make(&auth, &spoof)).await;
        let j = response_json(&r);
        assert!(j["score"].as_f64().unwrap() < 0.5, "{kind}: {j}");

        let r = runtime
            .invoke(make(&basic(USER, "wrong-password"), &live))
            .await;
        assert_eq!(r["statusCode"], 401, "{kind}: {r}");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Basic realm=\"liveness\"")
        );
        assert_eq!(
            response_json(&r),
            json!({"hasError": true, "error": "UNAUTHORIZED"})
        );

        let r = runtime.invoke(make(&auth, "{\"sessionId\": \"s\"}")).await;
        assert_eq!(r["statusCode"], 400, "{kind}: {r}");
        assert_eq!(
            response_json(&r),
            json!({"sessionId": "s", "hasError": true, "error": "INVALID_REQUEST"})
        );
    }

    // Logs: JSON lines with the session id, outcome and stage latencies; never credentials or image data.
    let logs = function.logs();
    let assessed: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "request assessed")
        .collect();
    assert_eq!(assessed.len(), 4, "{logs}");
    let first = &assessed[0];
    assert_eq!(first["session_id"], "lambda-live", "{first}");
    assert_eq!(first["outcome"], "pass", "{first}");
    assert!(
        first["detect_ms"].as_f64().is_some() && first["classify_ms"].as_f64().is_some(),
        "{first}"
    );
    assert!(assessed.iter().any(|v| v["outcome"] == "fail"), "{logs}");
    for secret in [PASS, &auth[6..], &live_b64[..64], "wrong-password"] {
        assert!(!logs.contains(secret), "logs leak {secret:?}");
    }
}

#[test]
fn bootstrap_without_credentials_fails_start_up() {
    let output = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .env_remove("LIVENESS_SECRET_ID")
        .env_remove("LIVENESS_BASIC_AUTH")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("LIVENESS_MODEL_DIR", model_dir())
        .current_dir(repo_root())
        .output()
        .expect("run bootstrap");
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("LIVENESS_SECRET_ID"), "{text}");
}

// ---------------------------------------------------------------- deployment files

#[test]
fn template_passes_cfn_lint() {
    let out = Command::new(repo_root().join(".venv/bin/cfn-lint"))
        .arg("template.yaml")
        .current_dir(repo_root())
        .output()
        .expect("run cfn-lint from .venv (make venv)");
    assert!(
        out.status.success(),
        "cfn-lint failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
