//! Service settings of the HTTP API, read once from the environment.
//!
//! Every variable is optional; the defaults are documented in `docs/api.md`.

use std::time::Duration;

/// Why the service settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is set but its value cannot be used.
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// What is wrong with it (never the value itself, which may be a secret).
        reason: &'static str,
    },
}

/// Where the service runs; decides what a missing credential configuration means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// AWS Lambda: `LIVENESS_SECRET_ID` (or `LIVENESS_BASIC_AUTH`) is required, else start-up fails.
    Lambda,
    /// `liveness serve`: Secrets Manager, `LIVENESS_BASIC_AUTH`, or a development default on 127.0.0.1.
    Local,
}

/// Settings of the credential cache in front of Secrets Manager.
#[derive(Debug, Clone)]
pub struct SecretCacheConfig {
    /// A cached secret younger than this is used without asking Secrets Manager.
    pub ttl: Duration,
    /// After a failed login, a cache at least this old is refreshed once (picks up rotation).
    pub refresh_min_age: Duration,
    /// If Secrets Manager cannot be reached, a cached secret is still served up to this age.
    pub max_staleness: Duration,
    /// After a failed fetch, no new fetch is started for this long (requests use the cache or get 503).
    pub retry_backoff: Duration,
}

/// Rules for fetching an image given as an `http(s)://` URL.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    /// Whether URL input is accepted at all.
    pub enabled: bool,
    /// If non-empty, only these host names (exact, lower-case) may be fetched.
    pub allowed_hosts: Vec<String>,
    /// Time allowed to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole fetch, redirects and body included.
    pub total_timeout: Duration,
    /// Redirect hops followed, each one vetted again.
    pub max_redirects: usize,
    /// Test-only: let loopback addresses through (for a test server on 127.0.0.1).
    /// Never read from the environment; always `false` in a deployed service.
    pub allow_loopback_for_tests: bool,
}

/// Request size limits enforced by the API before the pipeline sees the image.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted encoded image in bytes (after base64 decoding, or fetched from a URL).
    pub max_image_bytes: usize,
    /// Time allowed to receive the request body on the local server.
    pub body_read_timeout: Duration,
}

/// All settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Secrets Manager secret id or ARN holding the Basic-auth credentials (`LIVENESS_SECRET_ID`).
    pub secret_id: Option<String>,
    /// Static `user:pass` for local use without AWS (`LIVENESS_BASIC_AUTH`).
    pub basic_auth: Option<String>,
    /// Credential cache behaviour.
    pub secret_cache: SecretCacheConfig,
    /// URL input rules.
    pub url: UrlPolicy,
    /// Size limits.
    pub limits: Limits,
    /// Pipeline runs allowed at the same time; further requests wait for a slot.
    pub max_concurrency: usize,
    /// Connections the local server handles at the same time.
    pub max_connections: usize,
    /// Address the local server binds to (`LIVENESS_BIND_ADDR`, default 127.0.0.1).
    pub bind_addr: std::net::IpAddr,
    /// Serve the demo page at `GET /` (`LIVENESS_DEMO_PAGE`); `None` = the deployment's default
    /// (see [`ApiConfig::demo_page_enabled`]).
    pub demo_page: Option<bool>,
    /// Answer `?verbose=1` with diagnostics (`LIVENESS_DIAGNOSTICS`); `None` = the deployment's
    /// default (see [`ApiConfig::diagnostics_enabled`]).
    pub diagnostics: Option<bool>,
}

/// The realm sent in `WWW-Authenticate`.
pub const REALM: &str = "liveness";

impl Default for ApiConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            secret_id: None,
            basic_auth: None,
            secret_cache: SecretCacheConfig {
                ttl: Duration::from_secs(300),
                refresh_min_age: Duration::from_secs(60),
                max_staleness: Duration::from_secs(3600),
                retry_backoff: Duration::from_secs(5),
            },
            url: UrlPolicy {
                enabled: true,
                allowed_hosts: Vec::new(),
                connect_timeout: Duration::from_secs(2),
                total_timeout: Duration::from_secs(5),
                max_redirects: 3,
                allow_loopback_for_tests: false,
            },
            limits: Limits {
                max_body_bytes: 7 * 1024 * 1024 + 512 * 1024,
                max_image_bytes: 5 * 1024 * 1024,
                body_read_timeout: Duration::from_secs(15),
            },
            max_concurrency: cores,
            max_connections: 64,
            bind_addr: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            demo_page: None,
            diagnostics: None,
        }
    }
}

impl ApiConfig {
    /// Reads every `LIVENESS_*` service variable once; unset ones take the defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ApiConfig::from_env`], with the variables supplied by `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let text = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        c.secret_id = text("LIVENESS_SECRET_ID");
        c.basic_auth = get("LIVENESS_BASIC_AUTH").filter(|v| !v.is_empty());
        if let Some(pair) = &c.basic_auth {
            match pair.split_once(':') {
                Some((user, pass)) if !user.is_empty() && !pass.is_empty() => {}
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "LIVENESS_BASIC_AUTH",
                        reason: "expected user:password with both parts non-empty",
                    })
                }
            }
        }
        let secs = |name: &'static str, into: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = text(name) {
                *into = Duration::from_secs(parse_num(name, &v)?);
            }
            Ok(())
        };
        secs("LIVENESS_SECRET_TTL_SECS", &mut c.secret_cache.ttl)?;
        secs(
            "LIVENESS_SECRET_REFRESH_MIN_AGE_SECS",
            &mut c.secret_cache.refresh_min_age,
        )?;
        secs(
            "LIVENESS_SECRET_MAX_STALENESS_SECS",
            &mut c.secret_cache.max_staleness,
        )?;
        let millis = |name: &'static str, into: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = text(name) {
                let ms = parse_num(name, &v)?;
                if ms == 0 {
                    return Err(ConfigError::Invalid {
                        name,
                        reason: "must be greater than 0",
                    });
                }
                *into = Duration::from_millis(ms);
            }
            Ok(())
        };
        millis(
            "LIVENESS_URL_CONNECT_TIMEOUT_MS",
            &mut c.url.connect_timeout,
        )?;
        millis("LIVENESS_URL_TIMEOUT_MS", &mut c.url.total_timeout)?;
        if let Some(v) = text("LIVENESS_URL_INPUT") {
            c.url.enabled = parse_bool("LIVENESS_URL_INPUT", &v)?;
        }
        c.demo_page = text("LIVENESS_DEMO_PAGE")
            .map(|v| parse_bool("LIVENESS_DEMO_PAGE", &v))
            .transpose()?;
        c.diagnostics = text("LIVENESS_DIAGNOSTICS")
            .map(|v| parse_bool("LIVENESS_DIAGNOSTICS", &v))
            .transpose()?;
        if let Some(v) = text("LIVENESS_URL_ALLOWED_HOSTS") {
            c.url.allowed_hosts = v
                .split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
        }
        let count = |name: &'static str, into: &mut usize, min: usize| -> Result<(), ConfigError> {
            if let Some(v) = text(name) {
                let n = usize::try_from(parse_num(name, &v)?).unwrap_or(usize::MAX);
                if n < min {
                    return Err(ConfigError::Invalid {
                        name,
                        reason: "value too small",
                    });
                }
                *into = n;
            }
            Ok(())
        };
        count("LIVENESS_URL_MAX_REDIRECTS", &mut c.url.max_redirects, 0)?;
        count(
            "LIVENESS_MAX_BODY_BYTES",
            &mut c.limits.max_body_bytes,
            1024,
        )?;
        count(
            "LIVENESS_MAX_IMAGE_BYTES",
            &mut c.limits.max_image_bytes,
            1024,
        )?;
        count("LIVENESS_MAX_CONCURRENCY", &mut c.max_concurrency, 1)?;
        count("LIVENESS_MAX_CONNECTIONS", &mut c.max_connections, 1)?;
        if let Some(v) = text("LIVENESS_BIND_ADDR") {
            c.bind_addr = v.parse().map_err(|_| ConfigError::Invalid {
                name: "LIVENESS_BIND_ADDR",
                reason: "expected an IP address such as 127.0.0.1 or 0.0.0.0",
            })?;
        }
        Ok(c)
    }

    /// Whether `GET /` serves the demo page: `LIVENESS_DEMO_PAGE` if set, else on for the local
    /// server and off on Lambda.
    pub fn demo_page_enabled(&self, deployment: Deployment) -> bool {
        self.demo_page.unwrap_or(deployment == Deployment::Local)
    }

    /// Whether `?verbose=1` adds diagnostics to a response: `LIVENESS_DIAGNOSTICS` if set, else
    /// on for the local server bound to a loopback address and off otherwise (Lambda, or a local
    /// server reachable from other machines).
    pub fn diagnostics_enabled(&self, deployment: Deployment) -> bool {
        self.diagnostics
            .unwrap_or(deployment == Deployment::Local && self.bind_addr.is_loopback())
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid {
            name,
            reason: "expected true or false",
        }),
    }
}

fn parse_num(name: &'static str, v: &str) -> Result<u64, ConfigError> {
    v.parse().map_err(|_| ConfigError::Invalid {
        name,
        reason: "expected a non-negative integer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<ApiConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_unset() {
        let c = from(&[]).unwrap();
        assert_eq!(c.secret_cache.ttl, Duration::from_secs(300));
        assert_eq!(c.url.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.url.total_timeout, Duration::from_secs(5));
        assert_eq!(c.url.max_redirects, 3);
        assert_eq!(c.limits.max_image_bytes, 5 * 1024 * 1024);
        assert!(c.url.enabled && !c.url.allow_loopback_for_tests);
        assert!(c.secret_id.is_none() && c.basic_auth.is_none());
        assert!(c.demo_page.is_none() && c.diagnostics.is_none());
    }

    #[test]
    fn demo_page_and_diagnostics_follow_the_deployment_unless_set() {
        let c = from(&[]).unwrap();
        assert!(c.demo_page_enabled(Deployment::Local));
        assert!(!c.demo_page_enabled(Deployment::Lambda));
        assert!(c.diagnostics_enabled(Deployment::Local));
        assert!(!c.diagnostics_enabled(Deployment::Lambda));
        let public = from(&[("LIVENESS_BIND_ADDR", "0.0.0.0")]).unwrap();
        assert!(public.demo_page_enabled(Deployment::Local));
        assert!(!public.diagnostics_enabled(Deployment::Local));
        let on = from(&[
            ("LIVENESS_DEMO_PAGE", "true"),
            ("LIVENESS_DIAGNOSTICS", "on"),
        ])
        .unwrap();
        assert!(on.demo_page_enabled(Deployment::Lambda));
        assert!(on.diagnostics_enabled(Deployment::Lambda));
        let off = from(&[
            ("LIVENESS_DEMO_PAGE", "false"),
            ("LIVENESS_DIAGNOSTICS", "0"),
        ])
        .unwrap();
        assert!(!off.demo_page_enabled(Deployment::Local));
        assert!(!off.diagnostics_enabled(Deployment::Local));
        let err = from(&[("LIVENESS_DIAGNOSTICS", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LIVENESS_DIAGNOSTICS"), "{err}");
    }

    #[test]
    fn values_are_read_and_bad_ones_refused() {
        let c = from(&[
            ("LIVENESS_SECRET_ID", "arn:x"),
            ("LIVENESS_URL_INPUT", "off"),
            (
                "LIVENESS_URL_ALLOWED_HOSTS",
                "Img.Example.com., cdn.example.org",
            ),
            ("LIVENESS_SECRET_TTL_SECS", "10"),
        ])
        .unwrap();
        assert_eq!(c.secret_id.as_deref(), Some("arn:x"));
        assert!(!c.url.enabled);
        assert_eq!(
            c.url.allowed_hosts,
            vec!["img.example.com", "cdn.example.org"]
        );
        assert_eq!(c.secret_cache.ttl, Duration::from_secs(10));
        assert!(from(&[("LIVENESS_BASIC_AUTH", "nopassword")]).is_err());
        assert!(from(&[("LIVENESS_BASIC_AUTH", ":x")]).is_err());
        assert!(from(&[("LIVENESS_URL_TIMEOUT_MS", "0")]).is_err());
        assert!(from(&[("LIVENESS_MAX_CONCURRENCY", "0")]).is_err());
        assert!(from(&[("LIVENESS_BIND_ADDR", "localhost")]).is_err());
        let err = from(&[("LIVENESS_MAX_BODY_BYTES", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LIVENESS_MAX_BODY_BYTES") && !err.contains("lots"));
    }
}
