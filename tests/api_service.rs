//! The API router end to end in-process: real pipeline and models, real dev images, real Secrets
//! Manager API (moto), real loopback HTTP servers for URL input.

mod api_support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, Response, StatusCode};
use liveness::api::auth::{SecretFuture, SecretSource, SecretsManagerSource, StaticSource};
use liveness::api::{ApiConfig, App};
use serde_json::{json, Value};

const USER: &str = "client-a";
const PASS: &str = "pa:ss-1";

fn static_app(config: ApiConfig) -> App {
    App::new(pipeline(), &config, Arc::new(StaticSource::new(USER, PASS)))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn call(
    app: &App,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = app.handle(req.body(Full::new(body.into())).unwrap()).await;
    let status = res.status();
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    let json: Value = serde_json::from_str(res.body()).expect("every response is JSON");
    Reply {
        status,
        headers,
        json,
    }
}

async fn post(app: &App, body: impl Into<Bytes>) -> Reply {
    call(
        app,
        "POST",
        "/api/v1/face/liveness",
        Some(&basic(USER, PASS)),
        body,
    )
    .await
}

fn assert_error(r: &Reply, status: u16, code: &str, session: Option<&str>) {
    assert_eq!(r.status.as_u16(), status, "{}", r.json);
    assert_eq!(r.json["hasError"], true, "{}", r.json);
    assert_eq!(r.json["error"], code, "{}", r.json);
    assert!(r.json.get("score").is_none(), "{}", r.json);
    assert_eq!(
        r.json.get("sessionId").and_then(Value::as_str),
        session,
        "{}",
        r.json
    );
}

fn score_of(r: &Reply) -> f64 {
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["hasError"], false, "{}", r.json);
    assert!(r.json.get("error").is_none(), "{}", r.json);
    r.json["score"].as_f64().expect("score")
}

// ---------------------------------------------------------------- scoring through the API

#[tokio::test]
async fn live_image_scores_at_least_half() {
    let app = static_app(ApiConfig::default());
    let r = post(&app, body("live-1", &dev_image_b64(LIVE_IMAGE))).await;
    assert!(score_of(&r) >= 0.5, "{}", r.json);
    assert_eq!(r.json["sessionId"], "live-1");
}

#[tokio::test]
async fn spoof_image_scores_below_half() {
    let app = static_app(ApiConfig::default());
    let r = post(&app, body("spoof-1", &dev_image_b64(SPOOF_IMAGE))).await;
    assert!(score_of(&r) < 0.5, "{}", r.json);
    assert_eq!(r.json["sessionId"], "spoof-1");
}

#[tokio::test]
async fn every_input_encoding_gives_the_same_score() {
    use base64::Engine;
    let app = static_app(ApiConfig::default());
    let bytes = dev_image(LIVE_IMAGE);
    let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    let wrapped: String = std
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let reference = score_of(&post(&app, body("enc", &std)).await);
    for field in [url_safe, wrapped, format!("data:image/jpeg;base64,{std}")] {
        let s = score_of(&post(&app, body("enc", &field)).await);
        assert_eq!(s, reference);
    }
}

#[tokio::test]
async fn gate_outcome_is_200_with_the_gate_code() {
    let app = static_app(ApiConfig::default());
    let r = post(
        &app,
        body("gate-1", &dev_image_b64("gate_face_not_found_001.png")),
    )
    .await;
    assert_error(&r, 200, "FACE_NOT_FOUND", Some("gate-1"));
}

// ---------------------------------------------------------------- client errors

#[tokio::test]
async fn invalid_request_cases() {
    let app = static_app(ApiConfig::default());
    let img = "AAAA";
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{not json".into(), None),
        ("[]".into(), None),
        (json!({"faceImageBase": img}).to_string(), None),
        (
            json!({"sessionId": "s", "faceImageBase": ""}).to_string(),
            Some("s"),
        ),
        (json!({"sessionId": "s"}).to_string(), Some("s")),
        (
            json!({"sessionId": "s", "faceImageBase": 12}).to_string(),
            Some("s"),
        ),
        (
            json!({"sessionId": "", "faceImageBase": img}).to_string(),
            None,
        ),
        (
            json!({"sessionId": "x".repeat(129), "faceImageBase": img}).to_string(),
            None,
        ),
        (
            json!({"sessionId": "tab\there", "faceImageBase": img}).to_string(),
            None,
        ),
        (
            json!({"sessionId": "caf\u{e9}", "faceImageBase": img}).to_string(),
            None,
        ),
        (String::new(), None),
    ];
    for (b, session) in cases {
        let r = post(&app, b.clone()).await;
        assert_error(&r, 400, "INVALID_REQUEST", session);
    }
}

#[tokio::test]
async fn invalid_image_cases() {
    use base64::Engine;
    let app = static_app(ApiConfig::default());
    let gif =
        base64::engine::general_purpose::STANDARD.encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    let text = base64::engine::general_purpose::STANDARD.encode(b"just some text, not an image");
    let corrupt_jpeg = base64::engine::general_purpose::STANDARD
        .encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00garbage-garbage-garbage");
    let bmp = base64::engine::general_purpose::STANDARD
        .encode(b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00");
    for field in [
        "@@@not-base64@@@".to_string(),
        "QUJD-+==".into(),
        gif,
        text,
        corrupt_jpeg,
        bmp,
        "data:text/plain;base64,QUJD".into(),
    ] {
        let r = post(&app, body("img", &field)).await;
        assert_error(&r, 400, "INVALID_IMAGE", Some("img"));
    }
}

#[tokio::test]
async fn image_too_large_cases() {
    use base64::Engine;
    let mut config = ApiConfig::default();
    config.limits.max_body_bytes = 2 * 1024 * 1024;
    config.limits.max_image_bytes = 1024 * 1024;
    let app = static_app(config);
    // Body over the limit: refused before parsing (no sessionId readable).
    let big = body("big", &"A".repeat(3 * 1024 * 1024));
    assert_error(&post(&app, big).await, 413, "IMAGE_TOO_LARGE", None);
    // Decoded bytes over the limit.
    let over = body("big", &"A".repeat(1_500_000));
    assert_error(&post(&app, over).await, 413, "IMAGE_TOO_LARGE", Some("big"));
    // Decompression bomb: a 20000x20000 PNG of a few kB.
    let bomb = std::fs::read(repo_root().join("tests/fixtures/bomb_20000x20000.png")).unwrap();
    assert!(bomb.len() < 64 * 1024);
    let b = body(
        "bomb",
        &base64::engine::general_purpose::STANDARD.encode(bomb),
    );
    assert_error(&post(&app, b).await, 413, "IMAGE_TOO_LARGE", Some("bomb"));
}

#[tokio::test]
async fn url_input_switched_off_is_rejected() {
    let mut config = ApiConfig::default();
    config.url.enabled = false;
    let app = static_app(config);
    let r = post(&app, body("u", "https://images.invalid/face.jpg")).await;
    assert_error(&r, 400, "IMAGE_URL_REJECTED", Some("u"));
}

#[tokio::test]
async fn unknown_path_and_method() {
    let app = static_app(ApiConfig::default());
    let auth = basic(USER, PASS);
    for path in [
        "/",
        "/api/v1/face/liveness/",
        "/api/v1/face/other",
        "/API/V1/FACE/LIVENESS",
    ] {
        let r = call(&app, "POST", path, Some(&auth), "{}").await;
        assert_error(&r, 404, "NOT_FOUND", None);
    }
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = call(&app, method, "/api/v1/face/liveness", Some(&auth), "").await;
        assert_error(&r, 405, "METHOD_NOT_ALLOWED", None);
        assert_eq!(r.headers["allow"], "POST");
    }
}

// ---------------------------------------------------------------- authentication (Secrets Manager via moto)

async fn moto_app(moto: &Moto, secret: Value, config: &ApiConfig) -> (App, String) {
    let client = moto.client();
    let name = format!(
        "liveness/test/{}",
        std::process::id() as u64 * 1000 + rand_suffix()
    );
    let arn = create_secret(&client, &name, secret).await;
    let source = SecretsManagerSource::new(client, arn.clone());
    (App::new(pipeline(), config, Arc::new(source)), arn)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

async fn login(app: &App, auth: Option<&str>) -> Reply {
    // An image that decodes but the gate refuses is enough to tell auth outcomes apart cheaply.
    let b = body("auth", &dev_image_b64("gate_face_not_found_001.png"));
    call(app, "POST", "/api/v1/face/liveness", auth, b).await
}

fn assert_unauthorized(r: &Reply) {
    assert_error(r, 401, "UNAUTHORIZED", None);
    assert_eq!(r.headers["www-authenticate"], "Basic realm=\"liveness\"");
}

fn assert_authorized(r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[tokio::test]
async fn basic_auth_against_secrets_manager() {
    let moto = Moto::start();
    let (app, _) = moto_app(
        &moto,
        json!({"username": USER, "password": PASS}),
        &ApiConfig::default(),
    )
    .await;
    assert_authorized(&login(&app, Some(&basic(USER, PASS))).await);
    assert_unauthorized(&login(&app, Some(&basic(USER, "wrong"))).await);
    assert_unauthorized(&login(&app, Some(&basic("someone-else", PASS))).await);
    assert_unauthorized(&login(&app, Some(&basic(USER, ""))).await);
    assert_unauthorized(&login(&app, None).await);
    for malformed in [
        "Basic",
        "Basic !!!not-base64",
        "Bearer abc.def",
        "Basic dXNlcm9ubHk=",
        USER,
        "Basic  ",
    ] {
        assert_unauthorized(&login(&app, Some(malformed)).await);
    }
    // Authentication happens before the body is read: a bad body with no credentials is a 401.
    let r = call(&app, "POST", "/api/v1/face/liveness", None, "{not json").await;
    assert_unauthorized(&r);
}

#[tokio::test]
async fn several_clients_in_one_secret() {
    let moto = Moto::start();
    let secret = json!({"clients": [{"username": "a", "password": "1"}, {"username": "b", "password": "2"}]});
    let (app, _) = moto_app(&moto, secret, &ApiConfig::default()).await;
    assert_authorized(&login(&app, Some(&basic("a", "1"))).await);
    assert_authorized(&login(&app, Some(&basic("b", "2"))).await);
    assert_unauthorized(&login(&app, Some(&basic("a", "2"))).await);
}

#[tokio::test]
async fn rotation_is_picked_up_after_a_failed_login() {
    let moto = Moto::start();
    let mut config = ApiConfig::default();
    config.secret_cache.refresh_min_age = Duration::from_secs(3);
    let (app, arn) = moto_app(
        &moto,
        json!({"username": USER, "password": "old-pass"}),
        &config,
    )
    .await;
    assert_authorized(&login(&app, Some(&basic(USER, "old-pass"))).await);
    rotate_secret(
        &moto.client(),
        &arn,
        json!({"username": USER, "password": "new-pass"}),
    )
    .await;
    // The cache is younger than refresh_min_age: no refresh yet, the new password is refused.
    assert_unauthorized(&login(&app, Some(&basic(USER, "new-pass"))).await);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Failed login on an older cache -> one refresh -> the new password works, the old one not.
    assert_authorized(&login(&app, Some(&basic(USER, "new-pass"))).await);
    assert_unauthorized(&login(&app, Some(&basic(USER, "old-pass"))).await);
}

/// The real Secrets Manager source, counting its calls.
struct CountingSource {
    inner: SecretsManagerSource,
    calls: std::sync::atomic::AtomicUsize,
}

impl SecretSource for CountingSource {
    fn fetch(&self) -> SecretFuture<'_> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.fetch()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_refresh_once_single_flight() {
    let moto = Moto::start();
    let client = moto.client();
    let arn = create_secret(
        &client,
        "liveness/test/single-flight",
        json!({"username": USER, "password": PASS}),
    )
    .await;
    let source = Arc::new(CountingSource {
        inner: SecretsManagerSource::new(client, arn),
        calls: Default::default(),
    });
    let mut config = ApiConfig::default();
    config.secret_cache.refresh_min_age = Duration::from_millis(200);
    let app = Arc::new(App::new(pipeline(), &config, source.clone()));
    let calls = || source.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert_authorized(&login(&app, Some(&basic(USER, PASS))).await);
    assert_eq!(calls(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let wrong = basic(USER, "wrong");
    let attempts = (0..16).map(|_| {
        let (app, wrong) = (app.clone(), wrong.clone());
        tokio::spawn(async move {
            call(&app, "POST", "/api/v1/face/liveness", Some(&wrong), "{}").await
        })
    });
    for attempt in futures_util::future::join_all(attempts).await {
        assert_unauthorized(&attempt.unwrap());
    }
    assert_eq!(
        calls(),
        2,
        "16 concurrent failed logins on an old cache refresh it once"
    );
    assert_authorized(&login(&app, Some(&basic(USER, PASS))).await);
    assert_eq!(calls(), 2);
}

#[tokio::test]
async fn cached_credentials_survive_a_secrets_manager_outage() {
    let mut moto = Moto::start();
    let mut config = ApiConfig::default();
    config.secret_cache.ttl = Duration::from_millis(300);
    config.secret_cache.max_staleness = Duration::from_secs(6);
    config.secret_cache.retry_backoff = Duration::from_millis(100);
    let (app, _) = moto_app(&moto, json!({"username": USER, "password": PASS}), &config).await;
    assert_authorized(&login(&app, Some(&basic(USER, PASS))).await);
    moto.stop();
    // Past the TTL, the refresh fails, and the stale cache is still used.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_authorized(&login(&app, Some(&basic(USER, PASS))).await);
    assert_unauthorized(&login(&app, Some(&basic(USER, "wrong"))).await);
    // Past the maximum staleness: fail closed.
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let r = login(&app, Some(&basic(USER, PASS))).await;
    assert_error(&r, 503, "SERVICE_UNAVAILABLE", None);
}

#[tokio::test]
async fn no_cache_and_secrets_manager_down_is_503() {
    let mut moto = Moto::start();
    let (app, _) = moto_app(
        &moto,
        json!({"username": USER, "password": PASS}),
        &ApiConfig::default(),
    )
    .await;
    moto.stop();
    let r = login(&app, Some(&basic(USER, PASS))).await;
    assert_error(&r, 503, "SERVICE_UNAVAILABLE", None);
}

#[tokio::test]
async fn missing_or_malformed_secret_is_503() {
    let moto = Moto::start();
    let source = SecretsManagerSource::new(moto.client(), "liveness/does-not-exist".into());
    let app = App::new(pipeline(), &ApiConfig::default(), Arc::new(source));
    assert_error(
        &login(&app, Some(&basic(USER, PASS))).await,
        503,
        "SERVICE_UNAVAILABLE",
        None,
    );
    let (app, _) = moto_app(&moto, json!({"user": USER}), &ApiConfig::default()).await;
    assert_error(
        &login(&app, Some(&basic(USER, PASS))).await,
        503,
        "SERVICE_UNAVAILABLE",
        None,
    );
}

// ---------------------------------------------------------------- URL input

/// A loopback HTTP server with fixed routes; lives as long as the test's runtime.
async fn image_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let live = Bytes::from(dev_image(LIVE_IMAGE));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let live = live.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let live = live.clone();
                    async move { Ok::<_, Infallible>(route(req.uri().path(), live, port).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

async fn route(path: &str, live: Bytes, port: u16) -> Response<Full<Bytes>> {
    let redirect = |to: String| {
        Response::builder()
            .status(302)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    match path {
        "/live.jpg" => Response::new(Full::new(live)),
        "/to-live" => redirect("/live.jpg".into()),
        "/hop1" => redirect("/hop2".into()),
        "/hop2" => redirect(format!("http://127.0.0.1:{port}/hop3")),
        "/hop3" => redirect("/live.jpg".into()),
        "/loop" => redirect("/loop".into()),
        "/to-private" => redirect("http://10.0.0.7/face.jpg".into()),
        "/to-metadata" => redirect("http://169.254.169.254/latest/meta-data/".into()),
        "/to-file" => redirect("file:///etc/passwd".into()),
        "/huge" => Response::new(Full::new(Bytes::from(vec![0u8; 6 * 1024 * 1024]))),
        "/text" => Response::new(Full::new(Bytes::from_static(b"hello, not an image"))),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(Full::new(live))
        }
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}

fn url_app(allow_loopback: bool) -> App {
    let mut config = ApiConfig::default();
    config.url.allow_loopback_for_tests = allow_loopback;
    config.url.total_timeout = Duration::from_secs(2);
    static_app(config)
}

#[tokio::test]
async fn url_input_from_a_loopback_server() {
    let port = image_server().await;
    let app = url_app(true);
    let direct = score_of(
        &post(
            &app,
            body("url", &format!("http://127.0.0.1:{port}/live.jpg")),
        )
        .await,
    );
    assert!(direct >= 0.5);
    let b64 = score_of(&post(&app, body("b64", &dev_image_b64(LIVE_IMAGE))).await);
    assert_eq!(direct, b64);
    // Up to three vetted redirect hops are followed.
    assert_eq!(
        score_of(
            &post(
                &app,
                body("r1", &format!("http://127.0.0.1:{port}/to-live"))
            )
            .await
        ),
        direct
    );
    assert_eq!(
        score_of(&post(&app, body("r3", &format!("http://127.0.0.1:{port}/hop1"))).await),
        direct
    );
}

#[tokio::test]
async fn url_fetch_failures_are_422_or_413() {
    let port = image_server().await;
    let app = url_app(true);
    let u = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for path in ["/missing", "/loop", "/slow"] {
        assert_error(
            &post(&app, body("f", &u(path))).await,
            422,
            "IMAGE_FETCH_FAILED",
            Some("f"),
        );
    }
    // Nothing listens on this port.
    let closed = format!("http://127.0.0.1:{}/x.jpg", free_port());
    assert_error(
        &post(&app, body("f", &closed)).await,
        422,
        "IMAGE_FETCH_FAILED",
        Some("f"),
    );
    assert_error(
        &post(&app, body("f", &u("/huge"))).await,
        413,
        "IMAGE_TOO_LARGE",
        Some("f"),
    );
    assert_error(
        &post(&app, body("f", &u("/text"))).await,
        400,
        "INVALID_IMAGE",
        Some("f"),
    );
}

#[tokio::test]
async fn redirects_into_forbidden_space_are_rejected() {
    let port = image_server().await;
    let app = url_app(true);
    for path in ["/to-private", "/to-metadata", "/to-file"] {
        let r = post(&app, body("r", &format!("http://127.0.0.1:{port}{path}"))).await;
        assert_error(&r, 400, "IMAGE_URL_REJECTED", Some("r"));
    }
}

#[tokio::test]
async fn loopback_server_is_refused_without_the_test_allowance() {
    let port = image_server().await;
    let app = url_app(false);
    let r = post(
        &app,
        body("r", &format!("http://127.0.0.1:{port}/live.jpg")),
    )
    .await;
    assert_error(&r, 400, "IMAGE_URL_REJECTED", Some("r"));
}

#[tokio::test]
async fn host_allowlist_is_enforced() {
    let port = image_server().await;
    let mut config = ApiConfig::default();
    config.url.allow_loopback_for_tests = true;
    config.url.allowed_hosts = vec!["images.example.com".into()];
    let app = static_app(config);
    let r = post(
        &app,
        body("r", &format!("http://127.0.0.1:{port}/live.jpg")),
    )
    .await;
    assert_error(&r, 400, "IMAGE_URL_REJECTED", Some("r"));
}

async fn assert_url_rejected(url: &str) {
    let app = url_app(false);
    let r = post(&app, body("deny", url)).await;
    assert_error(&r, 400, "IMAGE_URL_REJECTED", Some("deny"));
}

/// One test per deny rule; none of these sends a packet (refused before connecting).
macro_rules! deny_rules {
    ($($name:ident => $url:expr;)*) => {$(
        #[tokio::test]
        async fn $name() { assert_url_rejected($url).await; }
    )*};
}

deny_rules! {
    deny_localhost_name => "http://localhost/face.jpg";
    deny_loopback_v4 => "http://127.0.0.1/face.jpg";
    deny_loopback_v4_decimal_form => "http://2130706433/face.jpg";
    deny_loopback_v6 => "http://[::1]/face.jpg";
    deny_private_10 => "http://10.1.2.3/face.jpg";
    deny_private_172_16 => "http://172.20.0.1/face.jpg";
    deny_private_192_168 => "https://192.168.0.10/face.jpg";
    deny_link_local_metadata => "http://169.254.169.254/latest/meta-data/";
    deny_link_local_v6 => "http://[fe80::1]/face.jpg";
    deny_cgnat => "http://100.64.1.1/face.jpg";
    deny_unique_local_v6 => "http://[fd00::1]/face.jpg";
    deny_multicast_v4 => "http://224.0.0.1/face.jpg";
    deny_multicast_v6 => "http://[ff02::1]/face.jpg";
    deny_unspecified_v4 => "http://0.0.0.0/face.jpg";
    deny_unspecified_v6 => "http://[::]/face.jpg";
    deny_broadcast => "http://255.255.255.255/face.jpg";
    deny_reserved => "http://240.0.0.1/face.jpg";
    deny_documentation => "http://192.0.2.1/face.jpg";
    deny_v4_mapped_private => "http://[::ffff:10.0.0.1]/face.jpg";
    deny_v4_mapped_loopback => "http://[::ffff:127.0.0.1]/face.jpg";
    deny_nat64_embedded_metadata => "http://[64:ff9b::a9fe:a9fe]/face.jpg";
    deny_6to4_embedded_private => "http://[2002:c0a8:0001::1]/face.jpg";
    deny_scheme_ftp => "ftp://example.com/face.jpg";
    deny_scheme_file => "file:///etc/passwd";
    deny_user_info => "https://user:pw@example.com/face.jpg";
}

// ---------------------------------------------------------------- OpenAPI conformance of real responses

struct Case {
    method: &'static str,
    path: &'static str,
    reply: Reply,
}

fn case_json(c: &Case) -> Value {
    let headers: serde_json::Map<String, Value> = c
        .reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
        .collect();
    json!({"method": c.method, "path": c.path, "status": c.reply.status.as_u16(), "headers": headers, "body": c.reply.json})
}

#[tokio::test]
async fn responses_match_openapi() {
    let port = image_server().await;
    let mut config = ApiConfig::default();
    config.url.allow_loopback_for_tests = true;
    config.url.total_timeout = Duration::from_secs(2);
    config.limits.body_read_timeout = Duration::from_millis(300);
    config.limits.max_body_bytes = 64 * 1024 * 1024;
    let app = static_app(config.clone());
    let auth = basic(USER, PASS);
    let p = "/api/v1/face/liveness";
    let mut cases = Vec::new();
    let mut add = |method, path, reply: Reply| {
        cases.push(Case {
            method,
            path,
            reply,
        })
    };

    add(
        "POST",
        p,
        post(&app, body("ok", &dev_image_b64(LIVE_IMAGE))).await,
    );
    add(
        "POST",
        p,
        post(
            &app,
            body("gate", &dev_image_b64("gate_face_not_found_001.png")),
        )
        .await,
    );
    add("POST", p, post(&app, "{bad").await);
    add("POST", p, post(&app, body("s", "%%%")).await);
    add(
        "POST",
        p,
        post(&app, body("s", "http://10.0.0.1/x.jpg")).await,
    );
    add(
        "POST",
        p,
        post(&app, body("s", &format!("http://127.0.0.1:{port}/missing"))).await,
    );
    add(
        "POST",
        p,
        post(&app, body("s", &format!("http://127.0.0.1:{port}/huge"))).await,
    );
    add("POST", p, call(&app, "POST", p, None, "{}").await);
    add(
        "POST",
        p,
        call(&app, "POST", p, Some("Basic Zm9vOmJhcg=="), "{}").await,
    );
    add("GET", p, call(&app, "GET", p, Some(&auth), "").await);
    add(
        "POST",
        "/nope",
        call(&app, "POST", "/nope", Some(&auth), "").await,
    );

    // 408: a body that never finishes arriving.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
        b"{\"sessionId\":",
    ))))
    .await
    .unwrap();
    let stalled = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let req = Request::builder()
        .method("POST")
        .uri(p)
        .header("authorization", &auth)
        .body(stalled)
        .unwrap();
    let res = app.handle(req).await;
    drop(tx);
    add(
        "POST",
        p,
        Reply {
            status: res.status(),
            headers: res.headers().clone(),
            json: serde_json::from_str(res.body()).unwrap(),
        },
    );

    // 503: Secrets Manager unreachable and nothing cached.
    let dead = SecretsManagerSource::new(
        client_for(&format!("http://127.0.0.1:{}", free_port())),
        "x".into(),
    );
    let app503 = App::new(pipeline(), &config, Arc::new(dead));
    add("POST", p, call(&app503, "POST", p, Some(&auth), "{}").await);

    let statuses: Vec<u16> = cases.iter().map(|c| c.reply.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 200, 400, 400, 400, 422, 413, 401, 401, 405, 404, 408, 503]
    );
    let json_cases: Vec<Value> = cases.iter().map(case_json).collect();
    let (ok, text) = run_openapi_check(&json_cases);
    assert!(ok, "responses do not match openapi.yaml:\n{text}");

    // The check can fail: a wrong type, an undocumented code and a missing header are caught.
    let mut broken = json_cases.clone();
    broken[0]["body"]["score"] = json!("high");
    broken[2]["body"]["error"] = json!("SOMETHING_ELSE");
    broken[7]["headers"]
        .as_object_mut()
        .unwrap()
        .remove("www-authenticate");
    let (ok, text) = run_openapi_check(&broken);
    assert!(!ok, "{text}");
    for needle in ["case 0", "case 2", "case 7", "WWW-Authenticate"] {
        assert!(text.contains(needle), "{needle} not reported:\n{text}");
    }
}

/// A stream over an mpsc receiver (for a request body that stalls).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
