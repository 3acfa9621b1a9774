//! HTTP Basic authentication against credentials from a [`SecretSource`] (AWS Secrets Manager in
//! production), cached in the warm process.
//!
//! Only SHA-256 digests of the credentials are kept; comparisons are constant-time over every
//! configured client. Cache rules (see [`SecretCacheConfig`]): a secret younger than `ttl` is used
//! as is; a failed login against a secret older than `refresh_min_age` triggers one refresh
//! (single-flight) so a rotation is picked up; when Secrets Manager cannot be reached, a cached
//! secret is still used up to `max_staleness`, after that requests fail closed (503).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::api::config::SecretCacheConfig;

/// The outcome of a failed authentication.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Missing, malformed or wrong credentials.
    #[error("credentials missing or wrong")]
    Denied,
    /// The credential secret cannot be loaded and nothing usable is cached.
    #[error("credentials unavailable: {0}")]
    Unavailable(String),
}

/// Why a secret could not be obtained or used. Never contains secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret store could not be reached or refused the call.
    #[error("secret store call failed: {0}")]
    Unreachable(String),
    /// The secret exists but is not in one of the accepted JSON shapes.
    #[error("secret is malformed: {0}")]
    Malformed(&'static str),
    /// A recent fetch failed; not retried yet.
    #[error("secret store failed recently; retry deferred")]
    Backoff,
}

/// A future returned by [`SecretSource::fetch`].
pub type SecretFuture<'a> = Pin<Box<dyn Future<Output = Result<String, SecretError>> + Send + 'a>>;

/// Where the credential secret (a JSON `SecretString`) comes from.
pub trait SecretSource: Send + Sync {
    /// Reads the current secret text.
    fn fetch(&self) -> SecretFuture<'_>;
}

/// Reads the secret from AWS Secrets Manager (`GetSecretValue`).
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerSource {
    /// A source using the standard AWS configuration chain (region, credentials and
    /// `AWS_ENDPOINT_URL` from the environment), with short timeouts and few retries so a
    /// Secrets Manager outage cannot stall requests for long.
    pub async fn from_env(secret_id: String) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_timeout(Duration::from_secs(3))
                    .build(),
            )
            .load()
            .await;
        Self::new(aws_sdk_secretsmanager::Client::new(&shared), secret_id)
    }

    /// A source using an already configured client.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self { client, secret_id }
    }
}

impl SecretSource for SecretsManagerSource {
    fn fetch(&self) -> SecretFuture<'_> {
        Box::pin(async move {
            let out = self
                .client
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| {
                    SecretError::Unreachable(
                        aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
                    )
                })?;
            out.secret_string()
                .map(str::to_owned)
                .ok_or(SecretError::Malformed("no SecretString"))
        })
    }
}

/// Fixed credentials (`LIVENESS_BASIC_AUTH` or the local development default).
pub struct StaticSource {
    secret: String,
}

impl StaticSource {
    /// A source that always yields `user` / `password`.
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            secret: serde_json::json!({ "username": user, "password": password }).to_string(),
        }
    }
}

impl SecretSource for StaticSource {
    fn fetch(&self) -> SecretFuture<'_> {
        Box::pin(async move { Ok(self.secret.clone()) })
    }
}

#[derive(serde::Deserialize)]
struct SecretJson {
    username: Option<String>,
    password: Option<String>,
    clients: Option<Vec<ClientJson>>,
}

#[derive(serde::Deserialize)]
struct ClientJson {
    username: String,
    password: String,
}

struct ClientDigest {
    user: [u8; 32],
    pass: [u8; 32],
}

/// The accepted API clients, as digests.
struct Credentials {
    clients: Vec<ClientDigest>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Credentials {
    fn parse(secret: &str) -> Result<Self, SecretError> {
        let json: SecretJson = serde_json::from_str(secret)
            .map_err(|_| SecretError::Malformed("not a JSON object"))?;
        let mut pairs = Vec::new();
        match (json.username, json.password) {
            (Some(u), Some(p)) => pairs.push((u, p)),
            (None, None) => {}
            _ => {
                return Err(SecretError::Malformed(
                    "username and password must both be set",
                ))
            }
        }
        pairs.extend(
            json.clients
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.username, c.password)),
        );
        if pairs.is_empty() {
            return Err(SecretError::Malformed("no credentials in the secret"));
        }
        if pairs
            .iter()
            .any(|(u, p)| u.is_empty() || p.is_empty() || u.contains(':'))
        {
            return Err(SecretError::Malformed(
                "a username or password is empty, or a username contains ':'",
            ));
        }
        Ok(Self {
            clients: pairs
                .iter()
                .map(|(u, p)| ClientDigest {
                    user: digest(u),
                    pass: digest(p),
                })
                .collect(),
        })
    }

    /// Constant-time: every client is compared, user and password results are combined without
    /// short-circuiting.
    fn accepts(&self, user: &str, pass: &str) -> bool {
        let (u, p) = (digest(user), digest(pass));
        let mut ok = Choice::from(0);
        for c in &self.clients {
            ok |= c.user.ct_eq(&u) & c.pass.ct_eq(&p);
        }
        ok.into()
    }
}

struct Cached {
    creds: Arc<Credentials>,
    fetched_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    last_failure: Option<Instant>,
}

/// Checks `Authorization` headers against the cached secret.
pub struct Authenticator {
    source: Arc<dyn SecretSource>,
    config: SecretCacheConfig,
    state: Mutex<State>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Authenticator {
    /// An authenticator with an empty cache.
    pub fn new(source: Arc<dyn SecretSource>, config: SecretCacheConfig) -> Self {
        Self {
            source,
            config,
            state: Mutex::new(State::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads the secret now (cold start), so the first request does not wait for it.
    pub async fn prime(&self) -> Result<(), SecretError> {
        self.refresh(None).await.map(|_| ())
    }

    /// Accepts the request if `header` carries valid Basic credentials.
    pub async fn authorize(&self, header: Option<&HeaderValue>) -> Result<(), AuthError> {
        let (user, pass) = header.and_then(parse_basic).ok_or(AuthError::Denied)?;
        let snapshot = self.snapshot();
        match snapshot {
            Some((creds, fetched_at)) if fetched_at.elapsed() < self.config.ttl => {
                if creds.accepts(&user, &pass) {
                    return Ok(());
                }
                if fetched_at.elapsed() < self.config.refresh_min_age {
                    return Err(AuthError::Denied);
                }
                match self.refresh(Some(fetched_at)).await {
                    Ok(fresh) if fresh.accepts(&user, &pass) => Ok(()),
                    _ => Err(AuthError::Denied),
                }
            }
            stale => match self.refresh(stale.as_ref().map(|(_, at)| *at)).await {
                Ok(fresh) => verdict(fresh.accepts(&user, &pass)),
                Err(e) => match stale {
                    Some((creds, at)) if at.elapsed() < self.config.max_staleness => {
                        verdict(creds.accepts(&user, &pass))
                    }
                    _ => Err(AuthError::Unavailable(e.to_string())),
                },
            },
        }
    }

    fn snapshot(&self) -> Option<(Arc<Credentials>, Instant)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .cached
            .as_ref()
            .map(|c| (c.creds.clone(), c.fetched_at))
    }

    /// Fetches the secret unless another task already replaced the version seen as `seen`
    /// (single-flight), or a fetch failed less than `retry_backoff` ago.
    async fn refresh(&self, seen: Option<Instant>) -> Result<Arc<Credentials>, SecretError> {
        let _flight = self.refresh_lock.lock().await;
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = &state.cached {
                if Some(c.fetched_at) != seen {
                    return Ok(c.creds.clone());
                }
            }
            if state
                .last_failure
                .is_some_and(|t| t.elapsed() < self.config.retry_backoff)
            {
                return Err(SecretError::Backoff);
            }
        }
        let result = match self.source.fetch().await {
            Ok(text) => Credentials::parse(&text),
            Err(e) => Err(e),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(creds) => {
                let creds = Arc::new(creds);
                state.cached = Some(Cached {
                    creds: creds.clone(),
                    fetched_at: Instant::now(),
                });
                state.last_failure = None;
                tracing::info!(clients = creds.clients.len(), "credential secret loaded");
                Ok(creds)
            }
            Err(e) => {
                state.last_failure = Some(Instant::now());
                tracing::warn!(error = %e, cached = state.cached.is_some(), "credential secret could not be loaded");
                Err(e)
            }
        }
    }
}

fn verdict(accepted: bool) -> Result<(), AuthError> {
    if accepted {
        Ok(())
    } else {
        Err(AuthError::Denied)
    }
}

/// Splits a `Basic` header into user and password.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = String::from_utf8(engine.decode(token.trim()).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_pass: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    #[test]
    fn secret_shapes_parse_and_bad_ones_are_refused() {
        let one = Credentials::parse(r#"{"username":"a","password":"p:w"}"#).unwrap();
        assert!(one.accepts("a", "p:w"));
        assert!(!one.accepts("a", "p"));
        assert!(!one.accepts("b", "p:w"));
        let many = Credentials::parse(
            r#"{"clients":[{"username":"a","password":"1"},{"username":"b","password":"2"}]}"#,
        )
        .unwrap();
        assert!(many.accepts("a", "1") && many.accepts("b", "2"));
        assert!(!many.accepts("a", "2") && !many.accepts("b", "1"));
        for bad in [
            r#"{}"#,
            r#"{"username":"a"}"#,
            r#"{"clients":[]}"#,
            r#"{"username":"a:b","password":"x"}"#,
            "nope",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_header_parsing() {
        assert_eq!(
            parse_basic(&header("u:p:q")),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(
            parse_basic(&HeaderValue::from_static("basic dTpw")),
            Some(("u".into(), "p".into()))
        );
        for bad in [
            "Bearer dTpw",
            "Basic",
            "Basic !!!",
            "Basic dXNlcg==",
            "dTpw",
        ] {
            assert_eq!(parse_basic(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn static_source_authorizes() {
        let auth = Authenticator::new(
            Arc::new(StaticSource::new("u", "p")),
            crate::api::ApiConfig::default().secret_cache,
        );
        assert_eq!(auth.authorize(Some(&header("u:p"))).await, Ok(()));
        assert_eq!(
            auth.authorize(Some(&header("u:x"))).await,
            Err(AuthError::Denied)
        );
        assert_eq!(auth.authorize(None).await, Err(AuthError::Denied));
    }
}
