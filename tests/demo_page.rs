//! The demo page (`GET /` of `liveness serve`) in a real headless Chromium, driven over WebDriver
//! (Debian's `chromedriver`, installed by `make system-deps`), with Chromium's fake camera fed a
//! dev photo converted to Y4M at test time; plus the routing and the diagnostics contract
//! in-process.
//!
//! Screenshots land in `target/tmp/demo-page/`. `LIVENESS_DOCS_SCREENSHOT=docs/demo-page.png`
//! also writes the file-upload test's live result (a public-domain NASA photo) there.

mod api_support;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::*;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Request;
use liveness::api::auth::StaticSource;
use liveness::api::{ApiConfig, App, Deployment};
use serde_json::{json, Value};

const USER: &str = "demo-user";
const PASS: &str = "demo-pass-7Qx";

/// Live dev photo through the camera (scores 0.98 from the file).
const CAMERA_LIVE: &str = "live_siwm_001.jpg";
/// Replayed-video spoof through the camera (scores 0.0002 from the file).
const CAMERA_SPOOF: &str = "spoof_siwm_003.jpg";
/// A coffee cup (CC0), no face.
const CAMERA_NO_FACE: &str = "gate_face_not_found_001.png";
/// Print-attack spoof dropped on the page (scores 0.00001 from the file).
const DROP_SPOOF: &str = "spoof_celebaspoof_004.jpg";

/// Whatever waits for the browser gives up after this long (a hang, not a slow machine).
const PATIENCE: Duration = Duration::from_secs(180);

/// One browser test at a time: each runs its own Chromium, and two cores are enough for one.
static BROWSER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- test environment

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A public-domain photo (NASA astronaut Eileen Collins, shipped with scikit-image) kept in
/// `../shared` as a golden input; the pipeline scores it live (0.86).
fn astronaut() -> PathBuf {
    canonical(&repo_root().join("../shared/reference/golden/astronaut_512.png"))
}

fn dev_image_path(name: &str) -> PathBuf {
    canonical(&repo_root().join("../shared/data/faces-dev").join(name))
}

/// An absolute path without `..` (chromedriver takes no other for file inputs).
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A running `liveness serve` with fixed credentials; its log goes to a file; killed on drop.
struct Serve {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Serve {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = out_dir().join(format!("{name}-serve.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_liveness"))
            .args(["serve", "--port", &port.to_string()])
            .env_remove("LIVENESS_SECRET_ID")
            .env_remove("LIVENESS_BIND_ADDR")
            .env_remove("LIVENESS_DEMO_PAGE")
            .env_remove("LIVENESS_DIAGNOSTICS")
            .env("LIVENESS_BASIC_AUTH", format!("{USER}:{PASS}"))
            .env("LIVENESS_MODEL_DIR", model_dir())
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .current_dir(repo_root())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn liveness serve");
        let mut serve = Self { child, port, log };
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(loopback(port)).is_err() {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("liveness serve exited early: {status}");
            }
            assert!(Instant::now() < deadline, "liveness serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's log must hold neither the password nor image data.
    fn assert_log_clean(&self, image: &[u8]) {
        let text = std::fs::read_to_string(&self.log).unwrap();
        assert!(text.contains("request"), "no request was logged:\n{text}");
        assert!(!text.contains(PASS), "password in the log");
        let b64 = base64_of(image);
        let probe = &b64[b64.len() / 2..b64.len() / 2 + 40];
        assert!(!text.contains(probe), "image data in the log");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `photo` as a one-frame Y4M video (4:2:0, BT.601 studio range, as Chromium's fake
/// camera reads it) and returns its path.
fn photo_to_y4m(photo: &Path, dir: &Path) -> PathBuf {
    let rgb = image::open(photo)
        .unwrap_or_else(|e| panic!("{}: {e}", photo.display()))
        .to_rgb8();
    let (w, h) = (rgb.width() & !1, rgb.height() & !1);
    let px = |x: u32, y: u32| {
        let p = rgb.get_pixel(x, y).0;
        [i32::from(p[0]), i32::from(p[1]), i32::from(p[2])]
    };
    let mut frame = Vec::with_capacity((w * h * 3 / 2) as usize);
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = px(x, y);
            frame.push((((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8);
        }
    }
    let mut u_plane = Vec::with_capacity((w * h / 4) as usize);
    let mut v_plane = Vec::with_capacity((w * h / 4) as usize);
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let mut sum = [0i32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(x + dx, y + dy);
                for c in 0..3 {
                    sum[c] += p[c];
                }
            }
            let [r, g, b] = sum.map(|s| (s + 2) / 4);
            u_plane.push((((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8);
            v_plane.push((((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8);
        }
    }
    frame.extend_from_slice(&u_plane);
    frame.extend_from_slice(&v_plane);
    let stem = photo.file_stem().unwrap().to_string_lossy();
    let path = dir.join(format!("{stem}.y4m"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write!(file, "YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\nFRAME\n").unwrap();
    file.write_all(&frame).unwrap();
    file.flush().unwrap();
    path
}

/// Headless Chromium under chromedriver. chromedriver runs in its own process group, which is
/// killed on drop (Chromium included) if the test did not close the session itself.
struct Browser {
    client: Option<Client>,
    driver: Child,
    name: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a `width` x `height` viewport (below Chromium's smallest window, 500
    /// px wide, through its device emulation) and, if given, a fake camera showing `camera`.
    async fn launch(name: &str, camera: Option<&Path>, width: u32, height: u32) -> Self {
        let chromium = std::env::var("LIVENESS_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        let chromedriver =
            std::env::var("LIVENESS_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
        for bin in [&chromium, &chromedriver] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: run `make system-deps` (Debian packages chromium, chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(loopback(port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--password-store=basic".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        if let Some(video) = camera {
            args.extend([
                "--use-fake-ui-for-media-stream".to_owned(),
                "--use-fake-device-for-media-stream".into(),
                format!("--use-file-for-fake-video-capture={}", video.display()),
            ]);
        }
        let mut options = json!({"binary": chromium, "args": args});
        if width < 500 {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0, "touch": true},
            });
        }
        let caps = json!({"browserName": "chrome", "goog:chromeOptions": options});
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let mut browser = Self {
            client: None,
            driver,
            name: name.to_owned(),
            _profile: profile,
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session from chromedriver");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Types the test credentials into the page.
    async fn sign_in(&self) {
        for (id, text) in [("user", USER), ("password", PASS)] {
            let field = self.client().find(Locator::Id(id)).await.unwrap();
            field.send_keys(text).await.unwrap();
        }
    }

    /// Starts the fake camera, waits until it runs, and captures one frame for a check.
    async fn capture_from_camera(&self) {
        let c = self.client();
        c.find(Locator::Id("camera-start"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_for(
            "the camera",
            "return !document.getElementById('capture').disabled",
        )
        .await;
        c.find(Locator::Id("capture"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn open(&self, url: &str) {
        self.client().goto(url).await.unwrap();
        self.wait_for(
            "the page script",
            "return document.body.dataset.ready || null",
        )
        .await;
        let css = self
            .js("return getComputedStyle(document.documentElement).getPropertyValue('--demo-css').trim()")
            .await;
        assert_eq!(css, "loaded", "the page's style did not apply (CSP?)");
    }

    async fn js(&self, script: &str) -> Value {
        self.client().execute(script, vec![]).await.unwrap()
    }

    /// Polls `script` until it returns something other than null/false.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.client().execute(script, vec![]).await.unwrap();
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout").await;
                panic!("waited too long for {what}; screenshot {}", shot.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses the keys of `text` in turn on whatever has the focus (real key events).
    async fn keys(&self, text: &str) {
        let mut seq = KeyActions::new("keyboard".into());
        for c in text.chars() {
            seq = seq
                .then(KeyAction::Down { value: c })
                .then(KeyAction::Up { value: c });
        }
        self.client().perform_actions(seq).await.unwrap();
    }

    /// Presses Tab until the element `id` has the focus.
    async fn tab_to(&self, id: &str) {
        for _ in 0..30 {
            let focused = self
                .js("return document.activeElement ? document.activeElement.id : ''")
                .await;
            if focused == id {
                return;
            }
            self.keys(TAB).await;
        }
        panic!("#{id} cannot be reached with the Tab key");
    }

    /// Waits for the result of check number `run` (1 = the first) and reads what the page shows.
    async fn result(&self, run: u32) -> Value {
        let script = format!(
            r#"
            if (Number(document.body.dataset.runs || 0) < {run}) return null;
            const $ = (id) => document.getElementById(id);
            const shown = (id) => !$(id).hidden;
            const canvas = $('photo-canvas');
            let boxPixel = null;
            if (canvas.dataset.faceBox) {{
              const [l, t, r, b] = canvas.dataset.faceBox.split(',').map(Number);
              boxPixel = Array.from(canvas.getContext('2d')
                .getImageData(Math.round((l + r) / 2), Math.round(t), 1, 1).data);
            }}
            const root = document.documentElement;
            return {{
              state: $('verdict').dataset.state,
              score: $('verdict').dataset.score ? Number($('verdict').dataset.score) : null,
              label: $('verdict-label').textContent,
              detail: $('verdict-detail').textContent,
              advice: shown('advice') ? $('advice').textContent : null,
              error: shown('error') ? $('error').textContent : null,
              faceBox: canvas.dataset.faceBox || null,
              boxPixel,
              photoWidth: canvas.width,
              crops: document.querySelectorAll('#crops figure').length,
              facts: Array.from(document.querySelectorAll('#facts tr')).map((tr) => tr.textContent),
              timings: Array.from(document.querySelectorAll('#timings tr')).map((tr) => tr.textContent),
              detailsShown: shown('details') && shown('details-body'),
              detailsOff: shown('details') && shown('details-off'),
              overflowX: root.scrollWidth - root.clientWidth,
              statusInView: (() => {{
                const top = $('status').getBoundingClientRect().top;
                return top >= 0 && top < window.innerHeight;
              }})(),
              innerWidth: window.innerWidth,
            }};
            "#
        );
        self.wait_for(&format!("result {run}"), &script).await
    }

    async fn screenshot(&self, label: &str) -> PathBuf {
        let png = self.client().screenshot().await.unwrap();
        let path = out_dir().join(format!("{}-{label}.png", self.name));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// A screenshot of the whole page at the current width (the window grows to the page).
    async fn full_page_screenshot(&self, label: &str, width: u32) -> PathBuf {
        for _ in 0..2 {
            // The window is a little taller than the page area it shows: grow it by the page's
            // height plus that difference.
            let missing = self
                .js("window.scrollTo(0, 0); \
                     return document.documentElement.scrollHeight - window.innerHeight")
                .await
                .as_i64()
                .unwrap();
            let (_, height) = self.client().get_window_size().await.unwrap();
            let wanted = (height as i64 + missing).clamp(400, 6000) as u32;
            self.client().set_window_size(width, wanted).await.unwrap();
        }
        self.js("document.activeElement.blur(); window.scrollTo(0, 0); return null")
            .await;
        self.screenshot(label).await
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: chromedriver and the Chromium it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";

fn assert_live_with_face_box(r: &Value) {
    assert_eq!(r["state"], "live", "{r:#}");
    assert_eq!(r["label"], "Live", "{r:#}");
    let score = r["score"].as_f64().unwrap();
    assert!(score >= 0.5, "live photo scored {score}: {r:#}");
    assert!(r["faceBox"].is_string(), "no face box drawn: {r:#}");
    // The box's top edge on the canvas has the box colour (#00ff66): it was really drawn.
    let px: Vec<i64> = r["boxPixel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let want = [0, 255, 102, 255];
    assert!(
        px.iter().zip(want).all(|(a, b)| (a - b).abs() <= 12),
        "pixel on the face box is {px:?}, not the box colour: {r:#}"
    );
    assert_eq!(r["crops"], 3, "one crop per anti-spoof model: {r:#}");
    let facts = r["facts"].to_string();
    for expected in [
        "Head pose",
        "yaw",
        "Mask probability",
        "P(live) minifasnet_v2",
    ] {
        assert!(facts.contains(expected), "{expected} missing: {facts}");
    }
    let timings = r["timings"].to_string();
    for expected in ["Decode", "Detect", "Classify", "Pipeline total"] {
        assert!(timings.contains(expected), "{expected} missing: {timings}");
    }
    assert!(r["error"].is_null(), "{r:#}");
}

// ---------------------------------------------------------------- browser tests

/// Live photo through the fake camera, the whole way by keyboard: credentials, Start camera,
/// Capture and check. Shows Live with a score >= 0.5, the face box and the details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_live_photo_by_keyboard_shows_live_and_face_box() {
    let _slot = BROWSER_SLOT.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let video = photo_to_y4m(&dev_image_path(CAMERA_LIVE), tmp.path());
    let server = Serve::start("camera-live", &[]);
    let browser = Browser::launch("camera-live", Some(&video), 1280, 1000).await;
    browser.open(&server.url()).await;

    browser.tab_to("user").await;
    browser.keys(USER).await;
    browser.tab_to("password").await;
    browser.keys(PASS).await;
    browser.tab_to("camera-start").await;
    browser.keys(ENTER).await;
    // The page moves the focus to the capture button once the camera runs.
    browser
        .wait_for(
            "the camera",
            "const b = document.getElementById('capture'); \
             return !b.disabled && document.activeElement === b",
        )
        .await;
    browser.keys(ENTER).await;
    let r = browser.result(1).await;
    browser.full_page_screenshot("result", 1280).await;
    assert_live_with_face_box(&r);
    assert!(r["detailsShown"].as_bool().unwrap(), "{r:#}");
    browser.close().await;
    server.assert_log_clean(&dev_image(CAMERA_LIVE));
}

/// A replayed-video spoof through the fake camera shows Attack with a score < 0.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_spoof_photo_shows_attack() {
    let _slot = BROWSER_SLOT.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let video = photo_to_y4m(&dev_image_path(CAMERA_SPOOF), tmp.path());
    let server = Serve::start("camera-spoof", &[]);
    let browser = Browser::launch("camera-spoof", Some(&video), 1280, 1000).await;
    browser.open(&server.url()).await;
    browser.sign_in().await;
    browser.capture_from_camera().await;
    let r = browser.result(1).await;
    browser.full_page_screenshot("result", 1280).await;
    assert_eq!(r["state"], "attack", "{r:#}");
    assert_eq!(r["label"], "Attack", "{r:#}");
    let score = r["score"].as_f64().unwrap();
    assert!(score < 0.5, "spoof scored {score}: {r:#}");
    assert!(r["faceBox"].is_string(), "{r:#}");
    browser.close().await;
}

/// A photo without a face through the fake camera, on a 360 px wide phone screen: the
/// FACE_NOT_FOUND advice, and nothing wider than the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_no_face_shows_face_not_found_advice_at_phone_width() {
    let _slot = BROWSER_SLOT.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let video = photo_to_y4m(&dev_image_path(CAMERA_NO_FACE), tmp.path());
    let server = Serve::start("camera-no-face", &[]);
    let browser = Browser::launch("camera-no-face", Some(&video), 360, 800).await;
    browser.open(&server.url()).await;
    browser.sign_in().await;
    browser.capture_from_camera().await;
    let r = browser.result(1).await;
    // The page has brought the result into view by itself.
    browser.screenshot("result").await;
    assert_eq!(r["innerWidth"], 360, "{r:#}");
    assert_eq!(r["state"], "gate", "{r:#}");
    assert_eq!(
        r["advice"],
        "No face was found: face the camera in good light with your whole face in the picture.",
        "{r:#}"
    );
    assert!(r["score"].is_null(), "{r:#}");
    assert!(
        r["overflowX"].as_i64().unwrap() <= 0,
        "the page is wider than 360 px: {r:#}"
    );
    assert_eq!(r["statusInView"], true, "the result is off screen: {r:#}");
    browser.close().await;
}

/// The file path: a public-domain portrait picked with the file input shows Live with the face
/// box (its screenshot is the one in docs/), then a print attack dropped on the drop zone shows
/// Attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_upload_and_drop_show_live_then_attack() {
    let _slot = BROWSER_SLOT.lock().await;
    let server = Serve::start("file", &[]);
    let browser = Browser::launch("file", None, 1100, 1000).await;
    browser.open(&server.url()).await;
    let c = browser.client();
    browser.sign_in().await;
    let photo = astronaut();
    c.find(Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(&photo.display().to_string())
        .await
        .unwrap();
    let r = browser.result(1).await;
    let shot = browser.full_page_screenshot("live", 1100).await;
    assert_live_with_face_box(&r);
    assert_eq!(r["photoWidth"], 512, "{r:#}");
    if let Ok(docs) = std::env::var("LIVENESS_DOCS_SCREENSHOT") {
        std::fs::copy(&shot, repo_root().join(docs)).unwrap();
    }

    // Drag and drop: a real `drop` event carrying the file, as the browser makes it.
    let spoof = base64_of(&dev_image(DROP_SPOOF));
    browser
        .client()
        .execute(
            "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
             const data = new DataTransfer();
             data.items.add(new File([bytes], 'print.jpg', { type: 'image/jpeg' }));
             const zone = document.getElementById('drop');
             zone.dispatchEvent(new DragEvent('dragenter', { dataTransfer: data, bubbles: true }));
             zone.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
             return null;",
            vec![json!(spoof)],
        )
        .await
        .unwrap();
    let r = browser.result(2).await;
    browser.full_page_screenshot("dropped-spoof", 1100).await;
    assert_eq!(r["state"], "attack", "{r:#}");
    assert!(r["score"].as_f64().unwrap() < 0.5, "{r:#}");
    browser.close().await;
    server.assert_log_clean(&std::fs::read(&photo).unwrap());
}

/// Errors in words: wrong password (401), a photo over the body limit (413), and the server gone
/// (network). The server here gives no diagnostics, which the page says instead of the details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_missing_diagnostics_are_shown_in_words() {
    let _slot = BROWSER_SLOT.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    // A small live photo that fits under the 64 KiB body limit of this server.
    let small = tmp.path().join("small-live.jpg");
    image::open(dev_image_path(CAMERA_LIVE))
        .unwrap()
        .resize(480, 270, image::imageops::FilterType::Triangle)
        .save(&small)
        .unwrap();
    let mut server = Serve::start(
        "errors",
        &[
            ("LIVENESS_MAX_BODY_BYTES", "65536"),
            ("LIVENESS_DIAGNOSTICS", "false"),
        ],
    );
    let browser = Browser::launch("errors", None, 1000, 900).await;
    browser.open(&server.url()).await;
    let c = browser.client();
    let file = c.find(Locator::Id("file")).await.unwrap();
    let pick = |path: &Path| path.display().to_string();

    // No credentials yet: the page asks for them and sends nothing.
    file.send_keys(&pick(&small)).await.unwrap();
    let r = browser.result(1).await;
    assert_eq!(r["state"], "error", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("Enter the user name and password"),
        "{r:#}"
    );

    c.find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys(USER)
        .await
        .unwrap();
    let password = c.find(Locator::Id("password")).await.unwrap();
    password.send_keys("wrong-password").await.unwrap();
    file.send_keys(&pick(&small)).await.unwrap();
    let r = browser.result(2).await;
    browser.screenshot("401").await;
    assert_eq!(r["state"], "error", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("The user name or password is wrong"),
        "{r:#}"
    );

    password.clear().await.unwrap();
    password.send_keys(PASS).await.unwrap();
    file.send_keys(&pick(&small)).await.unwrap();
    let r = browser.result(3).await;
    assert!(
        r["state"] == "live" || r["state"] == "attack" || r["state"] == "gate",
        "{r:#}"
    );
    assert!(r["detailsOff"].as_bool().unwrap(), "{r:#}");
    assert!(r["faceBox"].is_null(), "{r:#}");

    file.send_keys(&pick(&dev_image_path(CAMERA_NO_FACE)))
        .await
        .unwrap();
    let r = browser.result(4).await;
    browser.screenshot("413").await;
    assert_eq!(r["state"], "error", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("The photo is too large"),
        "{r:#}"
    );

    server.stop();
    file.send_keys(&pick(&small)).await.unwrap();
    let r = browser.result(5).await;
    browser.screenshot("network").await;
    assert_eq!(r["state"], "error", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("The service could not be reached"),
        "{r:#}"
    );
    browser.close().await;
}

// ---------------------------------------------------------------- routing and diagnostics in-process

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

async fn call(app: &App, method: &str, uri: &str, body: String) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("authorization", basic(USER, PASS))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = app.handle(req).await;
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.body().clone(),
    }
}

fn app_with(config: &ApiConfig) -> App {
    App::new(pipeline(), config, Arc::new(StaticSource::new(USER, PASS)))
}

#[tokio::test]
async fn page_routes_follow_the_configuration() {
    let config = ApiConfig {
        demo_page: Some(true),
        ..ApiConfig::default()
    };
    let app = app_with(&config);
    let r = call(&app, "GET", "/", String::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert!(r.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert!(r.body.contains("<title>Liveness check</title>"));
    let r = call(&app, "POST", "/", String::new()).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");
    let r = call(&app, "GET", "/index.html", String::new()).await;
    assert_eq!(r.status, 404);

    // Off: `/` is an unknown path like any other.
    let off = app_with(&ApiConfig::default());
    let r = call(&off, "GET", "/", String::new()).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"hasError": true, "error": "NOT_FOUND"})
    );
}

#[tokio::test]
async fn deployment_defaults_page_and_diagnostics_on_locally_off_on_lambda() {
    let config = ApiConfig {
        basic_auth: Some(format!("{USER}:{PASS}")),
        ..ApiConfig::default()
    };
    let local = App::build(pipeline(), &config, Deployment::Local)
        .await
        .unwrap();
    assert!(local.serves_demo_page() && local.gives_diagnostics());
    let lambda = App::build(pipeline(), &config, Deployment::Lambda)
        .await
        .unwrap();
    assert!(!lambda.serves_demo_page() && !lambda.gives_diagnostics());
    let r = call(&lambda, "GET", "/", String::new()).await;
    assert_eq!(r.status, 404);
    let live = body("lam", &dev_image_b64(LIVE_IMAGE));
    let r = call(
        &lambda,
        "POST",
        "/api/v1/face/liveness?verbose=1",
        live.clone(),
    )
    .await;
    let j: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(r.status, 200, "{j}");
    assert!(j.get("diagnostics").is_none(), "{j}");
    let public = ApiConfig {
        bind_addr: "0.0.0.0".parse().unwrap(),
        ..config
    };
    let exposed = App::build(pipeline(), &public, Deployment::Local)
        .await
        .unwrap();
    assert!(exposed.serves_demo_page() && !exposed.gives_diagnostics());
}

/// `?verbose=1` adds diagnostics only where allowed, leaves the rest of the body as it was, and
/// the verbose bodies match openapi.yaml; the Lambda handler passes the query string through.
#[tokio::test]
async fn verbose_diagnostics_when_allowed_and_documented() {
    let on = app_with(&ApiConfig {
        diagnostics: Some(true),
        ..ApiConfig::default()
    });
    let off = app_with(&ApiConfig::default());
    let path = "/api/v1/face/liveness";
    let mut cases = Vec::new();
    for (session, image) in [
        ("v-live", LIVE_IMAGE),
        ("v-spoof", SPOOF_IMAGE),
        ("v-gate", "gate_face_not_found_001.png"),
        ("v-close", "gate_face_too_close_003.jpg"),
    ] {
        let request = body(session, &dev_image_b64(image));
        let plain = call(&on, "POST", path, request.clone()).await;
        let verbose = call(&on, "POST", &format!("{path}?verbose=1"), request.clone()).await;
        let refused = call(&off, "POST", &format!("{path}?verbose=1"), request.clone()).await;
        assert_eq!(plain.status, 200);
        assert_eq!(verbose.status, 200);
        let plain_json: Value = serde_json::from_str(&plain.body).unwrap();
        let mut verbose_json: Value = serde_json::from_str(&verbose.body).unwrap();
        let refused_json: Value = serde_json::from_str(&refused.body).unwrap();
        assert!(plain_json.get("diagnostics").is_none(), "{plain_json}");
        assert_eq!(refused_json, plain_json, "diagnostics switched off");
        let d = verbose_json["diagnostics"].clone();
        assert_eq!(d["threshold"], 0.5, "{d}");
        assert!(d["timingsMs"]["total"].as_f64().unwrap() > 0.0, "{d}");
        match image {
            "gate_face_not_found_001.png" => {
                assert!(
                    d["selectedFace"].is_null() && d["antiSpoof"] == json!([]),
                    "{d}"
                );
                assert_eq!(
                    (d["image"]["width"].clone(), d["image"]["height"].clone()),
                    (json!(600), json!(400))
                );
            }
            "gate_face_too_close_003.jpg" => {
                assert!(d["selectedFace"]["box"].is_array(), "{d}");
                assert!(d["gateDetail"].is_string(), "{d}");
            }
            _ => {
                let face = &d["selectedFace"];
                assert_eq!(face["landmarks"].as_array().unwrap().len(), 5, "{d}");
                let models: Vec<&str> = d["antiSpoof"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["model"].as_str().unwrap())
                    .collect();
                assert_eq!(models.len(), 3, "{d}");
                assert!(d["headPoseDeg"]["yaw"].is_number(), "{d}");
                assert!(d["maskProbability"].is_number(), "{d}");
            }
        }
        verbose_json.as_object_mut().unwrap().remove("diagnostics");
        assert_eq!(
            verbose_json, plain_json,
            "the rest of the body is unchanged"
        );
        for reply in [&verbose, &plain] {
            cases.push(json!({
                "method": "POST",
                "path": path,
                "status": reply.status,
                "headers": {"content-type": reply.headers["content-type"].to_str().unwrap()},
                "body": serde_json::from_str::<Value>(&reply.body).unwrap(),
            }));
        }
    }
    let (ok, text) = run_openapi_check(&cases);
    assert!(ok, "verbose responses do not match openapi.yaml:\n{text}");
    // A broken diagnostics object is caught by the same check (the check can fail).
    let mut broken = cases[0].clone();
    broken["body"]["diagnostics"]["antiSpoof"] = json!([{"model": "x"}]);
    let (ok, text) = run_openapi_check(&[broken]);
    assert!(!ok, "a broken diagnostics object passed:\n{text}");

    // Through lambda_http (API Gateway HTTP API event): the query string reaches the router.
    let fixture = repo_root().join("tests/fixtures/apigw_v2_http_liveness.json");
    let mut event: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    event["rawQueryString"] = json!("verbose=1");
    event["queryStringParameters"] = json!({"verbose": "1"});
    event["headers"]["authorization"] = json!(basic(USER, PASS));
    event["body"] = json!(body("lambda-v", &dev_image_b64(LIVE_IMAGE)));
    event["isBase64Encoded"] = json!(false);
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = on.handle_lambda(request).await;
    let lambda_http::Body::Text(text) = response.body() else {
        panic!("text body expected")
    };
    let j: Value = serde_json::from_str(text).unwrap();
    assert_eq!(j["sessionId"], "lambda-v", "{j}");
    assert!(j["diagnostics"]["selectedFace"].is_object(), "{j}");
}
