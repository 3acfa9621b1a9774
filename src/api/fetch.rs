//! SSRF-safe fetching of an image URL.
//!
//! Each hop: only `http`/`https`, no user-info, optional host allowlist; the host is resolved once
//! and refused if ANY address is non-public (see [`forbidden_reason`]); the HTTP client then
//! connects only to those vetted addresses (its own DNS is disabled, proxies are ignored).
//! Redirects are followed by hand, each hop vetted again, at most `max_redirects`. The whole fetch
//! has a deadline and the body is streamed with a byte cap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures_util::StreamExt;
use url::{Host, Url};

use crate::api::config::UrlPolicy;

/// Why an image URL was not fetched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Refused by policy before (or instead of) connecting.
    #[error("URL refused: {0}")]
    Rejected(&'static str),
    /// The body is larger than the byte cap.
    #[error("fetched image exceeds the byte limit")]
    TooLarge,
    /// Network failure, timeout, non-success status, or too many redirects.
    #[error("fetch failed: {0}")]
    Failed(String),
}

/// Fetches image URLs under a [`UrlPolicy`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    policy: UrlPolicy,
    max_bytes: usize,
}

impl Fetcher {
    /// A fetcher that refuses bodies over `max_bytes`.
    pub fn new(policy: UrlPolicy, max_bytes: usize) -> Self {
        Self { policy, max_bytes }
    }

    /// Fetches `url` (following vetted redirects) and returns the body.
    pub async fn fetch(&self, url: Url) -> Result<Vec<u8>, FetchError> {
        match tokio::time::timeout(self.policy.total_timeout, self.fetch_hops(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Failed("timed out".into())),
        }
    }

    async fn fetch_hops(&self, mut url: Url) -> Result<Vec<u8>, FetchError> {
        let mut hop = 0;
        loop {
            let response = self.get_one(&url).await?;
            let status = response.status();
            if status.is_redirection() {
                if hop == self.policy.max_redirects {
                    return Err(FetchError::Failed("too many redirects".into()));
                }
                hop += 1;
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        FetchError::Failed(format!(
                            "redirect status {} without Location",
                            status.as_u16()
                        ))
                    })?;
                url = url
                    .join(location)
                    .map_err(|_| FetchError::Rejected("redirect to an invalid URL"))?;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Failed(format!("status {}", status.as_u16())));
            }
            return self.read_body(response).await;
        }
    }

    async fn get_one(&self, url: &Url) -> Result<reqwest::Response, FetchError> {
        let addrs = self.vet(url).await?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.policy.connect_timeout)
            .user_agent(concat!("liveness/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(NoLookup));
        if let Some(Host::Domain(domain)) = url.host() {
            builder = builder.resolve_to_addrs(domain, &addrs);
        }
        let client = builder
            .build()
            .map_err(|e| FetchError::Failed(e.without_url().to_string()))?;
        client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Failed(describe(&e.without_url())))
    }

    /// Checks scheme, user-info, allowlist and every resolved address; returns the addresses to use.
    async fn vet(&self, url: &Url) -> Result<Vec<SocketAddr>, FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Rejected(
                "only http and https URLs are accepted",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Rejected("URLs with user-info are not accepted"));
        }
        let host = url.host().ok_or(FetchError::Rejected("URL has no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or(FetchError::Rejected("URL has no port"))?;
        if !self.policy.allowed_hosts.is_empty() {
            let name = url
                .host_str()
                .unwrap_or_default()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !self.policy.allowed_hosts.contains(&name) {
                return Err(FetchError::Rejected("host is not on the allowlist"));
            }
        }
        let addrs: Vec<SocketAddr> = match host {
            Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Host::Domain(domain) => tokio::net::lookup_host((domain.trim_end_matches('.'), port))
                .await
                .map_err(|_| FetchError::Failed("host name could not be resolved".into()))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(FetchError::Failed("host name has no addresses".into()));
        }
        for addr in &addrs {
            let ip = addr.ip();
            if self.policy.allow_loopback_for_tests && ip.is_loopback() {
                continue;
            }
            if let Some(reason) = forbidden_reason(ip) {
                return Err(FetchError::Rejected(reason));
            }
        }
        Ok(addrs)
    }

    async fn read_body(&self, response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::Failed(describe(&e.without_url())))?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.to_string()
    }
}

/// A resolver that never resolves: the client may only use the vetted addresses it was given.
struct NoLookup;

impl reqwest::dns::Resolve for NoLookup {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async { Err("DNS lookups outside the vetting step are disabled".into()) })
    }
}

/// Why `ip` may not be fetched from, or `None` for a public unicast address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RULES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified address"),
        ([127, 0, 0, 0], 8, "loopback address"),
        ([10, 0, 0, 0], 8, "private address"),
        ([172, 16, 0, 0], 12, "private address"),
        ([192, 168, 0, 0], 16, "private address"),
        ([169, 254, 0, 0], 16, "link-local address"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT address"),
        ([224, 0, 0, 0], 4, "multicast address"),
        ([255, 255, 255, 255], 32, "broadcast address"),
        ([240, 0, 0, 0], 4, "reserved address"),
        ([192, 0, 0, 0], 24, "reserved address"),
        ([192, 88, 99, 0], 24, "reserved address"),
        ([198, 18, 0, 0], 15, "reserved address"),
        ([192, 0, 2, 0], 24, "documentation address"),
        ([198, 51, 100, 0], 24, "documentation address"),
        ([203, 0, 113, 0], 24, "documentation address"),
    ];
    RULES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let bits = u128::from(ip);
    let in_net = |net: u128, prefix: u32| (bits >> (128 - prefix)) == (net >> (128 - prefix));
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        return Some("unspecified address");
    }
    if ip.is_loopback() {
        return Some("loopback address");
    }
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d), IPv4-compatible (::a.b.c.d)
    // and NAT64 (64:ff9b::a.b.c.d) carry an IPv4 address that decides.
    if in_net(0xffff_0000_0000, 96)
        || in_net(0xffff_0000_0000_0000, 96)
        || in_net(0, 96)
        || in_net(0x0064_ff9b << 96, 96)
    {
        return forbidden_v4(low_v4).or(if in_net(0, 96) {
            Some("reserved address")
        } else {
            None
        });
    }
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address is in bits 16..48.
        let embedded = Ipv4Addr::from(((u32::from(s[1])) << 16) | u32::from(s[2]));
        return Some(forbidden_v4(embedded).unwrap_or("6to4 address"));
    }
    const RULES: &[(u128, u32, &str)] = &[
        (0xfe80 << 112, 10, "link-local address"),
        (0xfec0 << 112, 10, "site-local address"),
        (0xfc00 << 112, 7, "unique-local address"),
        (0xff00 << 112, 8, "multicast address"),
        (0x2001_0db8 << 96, 32, "documentation address"),
        (0x3fff << 112, 20, "documentation address"),
        (0x2001 << 112, 23, "reserved address"),
        (0x0064_ff9b_0001 << 80, 48, "reserved address"),
        (0x0100 << 112, 64, "reserved address"),
    ];
    RULES
        .iter()
        .find(|(net, prefix, _)| in_net(*net, *prefix))
        .map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        forbidden_reason(s.parse().unwrap())
    }

    #[tokio::test]
    async fn the_client_cannot_resolve_names_itself() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(NoLookup.resolve(name).await.is_err());
    }

    #[test]
    fn public_addresses_pass() {
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(reason(ok), None, "{ok}");
        }
    }

    #[test]
    fn every_deny_rule_matches() {
        let cases = [
            ("0.0.0.0", "unspecified address"),
            ("127.0.0.1", "loopback address"),
            ("127.255.0.9", "loopback address"),
            ("10.1.2.3", "private address"),
            ("172.16.0.1", "private address"),
            ("172.31.255.255", "private address"),
            ("192.168.1.1", "private address"),
            ("169.254.169.254", "link-local address"),
            ("100.64.0.1", "carrier-grade NAT address"),
            ("100.127.255.254", "carrier-grade NAT address"),
            ("224.0.0.251", "multicast address"),
            ("255.255.255.255", "broadcast address"),
            ("240.0.0.1", "reserved address"),
            ("198.18.0.1", "reserved address"),
            ("192.0.2.10", "documentation address"),
            ("198.51.100.10", "documentation address"),
            ("203.0.113.10", "documentation address"),
            ("::", "unspecified address"),
            ("::1", "loopback address"),
            ("fe80::1", "link-local address"),
            ("fc00::1", "unique-local address"),
            ("fd12:3456::1", "unique-local address"),
            ("ff02::1", "multicast address"),
            ("2001:db8::1", "documentation address"),
            ("::ffff:127.0.0.1", "loopback address"),
            ("::ffff:10.0.0.1", "private address"),
            ("::ffff:169.254.169.254", "link-local address"),
            ("::ffff:0:192.168.0.1", "private address"),
            ("::10.0.0.1", "private address"),
            ("::8.8.8.8", "reserved address"),
            ("64:ff9b::a9fe:a9fe", "link-local address"),
            ("2002:7f00:1::", "loopback address"),
            ("2002:0808:0808::", "6to4 address"),
            ("2001::1", "reserved address"),
        ];
        for (ip, why) in cases {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
    }
}
