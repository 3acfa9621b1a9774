//! The demo page at `GET /`: one self-contained HTML document (markup, style and script
//! embedded in the binary, no external resource, no build step) that takes a photo from the
//! webcam or a file, calls `POST /api/v1/face/liveness` with the credentials the user types, and
//! shows the verdict and, where the server allows diagnostics, what the pipeline saw.
//!
//! The page is assembled once at start-up from `demo/index.html`, `demo/demo.css` and
//! `demo/demo.js`; its Content-Security-Policy allows exactly that style and script (by SHA-256),
//! requests to its own origin, and images and camera frames held in the page's memory.

use base64::Engine;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("demo/index.html");
const STYLE: &str = include_str!("demo/demo.css");
const SCRIPT: &str = include_str!("demo/demo.js");

/// The rendered page and its headers, built once per process.
pub struct DemoPage {
    html: String,
    csp: HeaderValue,
}

impl DemoPage {
    /// Renders the page for a server whose threshold is `threshold` and which does (or does not)
    /// answer `?verbose=1` with diagnostics.
    pub fn new(threshold: f32, diagnostics: bool) -> Self {
        let html = TEMPLATE
            .replace("{{style}}", STYLE)
            .replace("{{script}}", SCRIPT)
            .replace("{{threshold}}", &format!("{threshold}"))
            .replace("{{diagnostics}}", if diagnostics { "on" } else { "off" });
        let csp = format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; img-src 'self' blob: data:; \
             connect-src 'self'; media-src 'self' blob: mediastream:; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
            sha256_source(SCRIPT),
            sha256_source(STYLE)
        );
        Self {
            html,
            csp: HeaderValue::from_str(&csp).expect("CSP is ASCII"),
        }
    }

    /// The page's HTML.
    pub fn html(&self) -> &str {
        &self.html
    }

    /// The response to a request for the page: `GET` and `HEAD` get it, any other method a
    /// `405` (`METHOD_NOT_ALLOWED`, `Allow: GET, HEAD`) in the API's JSON error shape.
    pub fn respond(&self, method: &Method) -> Response<String> {
        if method != Method::GET && method != Method::HEAD {
            let mut response =
                Response::new(r#"{"hasError":true,"error":"METHOD_NOT_ALLOWED"}"#.to_owned());
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let body = if method == Method::HEAD {
            String::new()
        } else {
            self.html.clone()
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(
            "permissions-policy",
            HeaderValue::from_static("camera=(self), microphone=(), geolocation=()"),
        );
        response
    }
}

/// `sha256-<base64>` of an inline script or style, as CSP expects it.
fn sha256_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        let page = DemoPage::new(0.5, true);
        let html = page.html();
        assert!(!html.contains("{{"), "a placeholder was left in the page");
        assert!(html.contains(r#"data-threshold="0.5""#));
        assert!(html.contains(r#"data-diagnostics="on""#));
        // Exactly one inline script and one inline style, each closed only once (the CSP hashes
        // cover exactly these texts), and nothing loaded from elsewhere.
        assert_eq!(html.matches("<script>").count(), 1);
        assert_eq!(html.matches("</script>").count(), 1);
        assert_eq!(html.matches("<style>").count(), 1);
        assert_eq!(html.matches("</style>").count(), 1);
        for banned in [
            "<script src",
            "<link",
            "@import",
            "url(",
            "https://",
            "localStorage",
            "sessionStorage",
            "document.cookie",
            "indexedDB",
            "console.log",
        ] {
            assert!(!html.contains(banned), "page contains {banned:?}");
        }
        // The only absolute URL is the SVG namespace name, which is never fetched.
        assert_eq!(
            html.matches("http://").count(),
            html.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(DemoPage::new(0.7, false)
            .html()
            .contains(r#"data-diagnostics="off""#));
    }

    #[test]
    fn csp_allows_exactly_the_embedded_script_and_style() {
        let page = DemoPage::new(0.5, true);
        let response = page.respond(&Method::GET);
        assert_eq!(response.status(), StatusCode::OK);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains(&sha256_source(SCRIPT)));
        assert!(csp.contains(&sha256_source(STYLE)));
        assert!(csp.starts_with("default-src 'none';"));
        assert!(!csp.contains("unsafe"));
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let head = page.respond(&Method::HEAD);
        assert_eq!(head.status(), StatusCode::OK);
        assert!(head.body().is_empty());
        let post = page.respond(&Method::POST);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }
}
