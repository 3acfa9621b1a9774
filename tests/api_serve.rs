//! `liveness serve` over real TCP: the real CLI binary, credentials from Secrets Manager (moto)
//! through the default AWS configuration chain, sequential and 32 parallel requests.

mod api_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::*;
use serde_json::{json, Value};

/// A running `liveness serve`; killed on drop.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(env: &[(&str, String)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_liveness"))
            .args(["serve", "--port", &port.to_string()])
            .env_remove("LIVENESS_BASIC_AUTH")
            .env_remove("LIVENESS_SECRET_ID")
            .env_remove("LIVENESS_BIND_ADDR")
            .env("LIVENESS_MODEL_DIR", model_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(repo_root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn liveness serve");
        let mut serve = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(loopback(port)).is_err() {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("liveness serve exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "liveness serve did not start listening"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(client: &reqwest::Client, url: &str, auth: &str, body: String) -> (u16, Value) {
    let r = client
        .post(url)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request reaches the server");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_sequential_and_32_parallel_requests() {
    let moto = Moto::start();
    let arn = create_secret(
        &moto.client(),
        "liveness/serve",
        json!({"username": "svc", "password": "svc-pass"}),
    )
    .await;
    let mut env = moto.env();
    env.push(("LIVENESS_SECRET_ID", arn));
    let server = Serve::start(&env);
    let url = server.url("/api/v1/face/liveness");
    let auth = basic("svc", "svc-pass");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let live = body("seq-live", &dev_image_b64(LIVE_IMAGE));
    let spoof = body("seq-spoof", &dev_image_b64(SPOOF_IMAGE));

    let (status, live_json) = post(&client, &url, &auth, live.clone()).await;
    assert_eq!(status, 200, "{live_json}");
    let live_score = live_json["score"].as_f64().unwrap();
    assert!(live_score >= 0.5);
    let (status, spoof_json) = post(&client, &url, &auth, spoof.clone()).await;
    assert_eq!(status, 200, "{spoof_json}");
    let spoof_score = spoof_json["score"].as_f64().unwrap();
    assert!(spoof_score < 0.5);
    let (status, j) = post(&client, &url, &basic("svc", "nope"), live.clone()).await;
    assert_eq!(
        (status, j),
        (401, json!({"hasError": true, "error": "UNAUTHORIZED"}))
    );
    let (status, j) = post(&client, &server.url("/other"), &auth, live.clone()).await;
    assert_eq!(
        (status, j),
        (404, json!({"hasError": true, "error": "NOT_FOUND"}))
    );
    let r = client
        .get(&url)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // 32 in parallel, live and spoof interleaved, each on its own connection: all succeed with
    // the same scores as the sequential requests.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (url, auth) = (url.clone(), auth.clone());
        let is_live = i % 2 == 0;
        let b = if is_live { live.clone() } else { spoof.clone() };
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap();
            (is_live, post(&client, &url, &auth, b).await)
        }));
    }
    for task in tasks {
        let (is_live, (status, j)) = task.await.unwrap();
        assert_eq!(status, 200, "{j}");
        let expected = if is_live { live_score } else { spoof_score };
        assert_eq!(j["score"].as_f64().unwrap(), expected, "{j}");
    }
}

#[tokio::test]
async fn serve_with_development_credentials_on_loopback() {
    let server = Serve::start(&[]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = server.url("/api/v1/face/liveness");
    let gate = body("dev", &dev_image_b64("gate_face_not_found_001.png"));
    let (status, j) = post(&client, &url, &basic("dev", "liveness-dev"), gate.clone()).await;
    assert_eq!(
        (status, j),
        (
            200,
            json!({"sessionId": "dev", "hasError": true, "error": "FACE_NOT_FOUND"})
        )
    );
    let (status, _) = post(&client, &url, &basic("dev", "wrong"), gate).await;
    assert_eq!(status, 401);
}

#[test]
fn development_credentials_refuse_a_public_bind_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_liveness"))
        .args(["serve", "--port", &free_port().to_string()])
        .env_remove("LIVENESS_BASIC_AUTH")
        .env_remove("LIVENESS_SECRET_ID")
        .env("LIVENESS_BIND_ADDR", "0.0.0.0")
        .env("LIVENESS_MODEL_DIR", model_dir())
        .current_dir(repo_root())
        .output()
        .expect("run liveness serve");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("development credentials"), "{text}");
}
