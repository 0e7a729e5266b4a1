//! The SSRF guard for downloads. Every hop (the submitted URL and each redirect target) is
//! checked here before anything connects: http/https only, no credentials, the host resolved
//! once and every resolved address globally routable, unless the exact `host:port` is on the
//! test allow-list. The caller then connects only to the addresses returned (the HTTP client
//! is pinned to them and cannot resolve anything itself), so a DNS answer that changes
//! between check and connect (rebinding) cannot redirect the connection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use dataminer_wire::net::{is_forbidden_host_name, is_globally_routable};
use futures::future::BoxFuture;
use url::{Host, Url};

/// Name resolution, injectable so tests can make a name resolve to loopback without a DNS
/// server of their own.
pub trait Resolve: Send + Sync {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (getaddrinfo via tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The target is not allowed; fatal.
    #[error("refused to download {url}: {reason}")]
    Refused { url: String, reason: String },
    /// The name did not resolve; may be transient.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

/// A hop that passed the guard: connect only to `addrs`.
#[derive(Debug, Clone)]
pub struct CheckedTarget {
    pub url: Url,
    /// For a domain: the name and the checked addresses to pin it to. None for IP literals.
    pub pin: Option<(String, Vec<SocketAddr>)>,
}

#[derive(Clone)]
pub struct Guard {
    allow: Vec<(String, u16)>,
    resolver: Arc<dyn Resolve>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("allow", &self.allow).finish_non_exhaustive()
    }
}

impl Guard {
    /// `allow` holds exact `host:port` pairs (as configured); malformed entries are ignored
    /// (configuration validation reports them).
    pub fn new(allow: &[String], resolver: Arc<dyn Resolve>) -> Self {
        let allow = allow
            .iter()
            .filter_map(|a| {
                let (h, p) = a.trim().rsplit_once(':')?;
                let h = h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
                Some((h, p.parse().ok()?))
            })
            .collect();
        Self { allow, resolver }
    }

    pub fn system(allow: &[String]) -> Self {
        Self::new(allow, Arc::new(SystemResolver))
    }

    fn allowed(&self, host: &str, port: u16) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allow.iter().any(|(ah, ap)| *ap == port && *ah == h)
    }

    /// Checks one hop. The URL crate has already normalised the decimal, octal, hex and
    /// integer spellings of IPv4 addresses (`http://0x7f.1/`, `http://2130706433/`) into
    /// the address itself, so they are judged like any other literal.
    pub async fn check(&self, url: &Url) -> Result<CheckedTarget, GuardError> {
        let refuse = |reason: String| GuardError::Refused { url: redact(url), reason };
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(refuse(format!("scheme {:?} is not http or https", url.scheme())));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("URLs with credentials are not fetched".into()));
        }
        let host = url.host().ok_or_else(|| refuse("no host".into()))?;
        let port = url.port_or_known_default().ok_or_else(|| refuse("no port".into()))?;
        let host_str = url.host_str().unwrap_or_default().to_string();
        let allowed = self.allowed(&host_str, port);
        match host {
            Host::Ipv4(ip) => check_ip(IpAddr::V4(ip), allowed).map_err(refuse)?,
            Host::Ipv6(ip) => check_ip(IpAddr::V6(ip), allowed).map_err(refuse)?,
            Host::Domain(name) => {
                if !allowed && is_forbidden_host_name(name) {
                    return Err(refuse(format!("host name {name} is a local or metadata name")));
                }
                let addrs = self
                    .resolver
                    .resolve(name, port)
                    .await
                    .map_err(|e| GuardError::Resolve { host: name.to_string(), reason: e.to_string() })?;
                if addrs.is_empty() {
                    return Err(GuardError::Resolve { host: name.to_string(), reason: "no addresses".into() });
                }
                for a in &addrs {
                    check_ip(a.ip(), allowed).map_err(|r| refuse(format!("{name} resolves to {r}")))?;
                }
                return Ok(CheckedTarget { url: url.clone(), pin: Some((name.to_string(), addrs)) });
            }
        }
        Ok(CheckedTarget { url: url.clone(), pin: None })
    }
}

fn check_ip(ip: IpAddr, allowed: bool) -> Result<(), String> {
    if allowed || is_globally_routable(ip) {
        Ok(())
    } else {
        Err(format!("{ip}, which is not a globally routable address"))
    }
}

/// The URL without query, fragment or credentials (signed query strings are secrets).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    let had_query = u.query().is_some();
    u.set_query(None);
    // The mark is appended as text: through `set_query` it would be percent-encoded
    // (`%E2%80%A6`) in every error a user reads.
    if had_query {
        format!("{u}?…")
    } else {
        u.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_marks_a_dropped_query_with_a_literal_ellipsis() {
        let u = Url::parse("https://u:p@h.example/v.mp4?X-Amz-Signature=S3CRET#frag").expect("url");
        assert_eq!(redact(&u), "https://h.example/v.mp4?…");
        let u = Url::parse("https://h.example/v.mp4").expect("url");
        assert_eq!(redact(&u), "https://h.example/v.mp4");
    }

    #[derive(Debug)]
    struct Fixed(Vec<IpAddr>);
    impl Resolve for Fixed {
        fn resolve<'a>(&'a self, _h: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
            let v = self.0.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            Box::pin(async move { Ok(v) })
        }
    }

    fn guard(ips: &[&str], allow: &[&str]) -> Guard {
        let ips = ips.iter().map(|s| s.parse().expect("ip")).collect();
        Guard::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(), Arc::new(Fixed(ips)))
    }

    async fn refused(g: &Guard, u: &str) -> bool {
        matches!(g.check(&Url::parse(u).expect("url")).await, Err(GuardError::Refused { .. }))
    }

    #[tokio::test]
    async fn literal_spellings_of_forbidden_addresses_are_refused() {
        let g = guard(&["93.184.216.34"], &[]);
        for u in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0/",
            "http://0.0.0.0:80/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[fd00::1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://localhost/",
            "http://metadata.google.internal/",
            "ftp://93.184.216.34/",
            "file:///etc/passwd",
            "http://user:pw@93.184.216.34/",
        ] {
            assert!(refused(&g, u).await, "{u} was not refused");
        }
        assert!(!refused(&g, "https://93.184.216.34/v.mp4").await);
    }

    #[tokio::test]
    async fn names_are_judged_by_every_resolved_address() {
        assert!(refused(&guard(&["127.0.0.1"], &[]), "http://video.example/v.mp4").await);
        assert!(refused(&guard(&["93.184.216.34", "10.1.2.3"], &[]), "http://video.example/v.mp4").await);
        let ok = guard(&["93.184.216.34"], &[]).check(&Url::parse("http://video.example/v.mp4").expect("url")).await;
        let pin = ok.expect("allowed").pin.expect("pinned");
        assert_eq!(pin.0, "video.example");
        assert_eq!(pin.1, vec!["93.184.216.34:80".parse::<SocketAddr>().expect("addr")]);
    }

    #[tokio::test]
    async fn allow_list_is_exact_host_and_port() {
        let g = guard(&["127.0.0.1"], &["127.0.0.1:8000", "media.test:9000"]);
        assert!(!refused(&g, "http://127.0.0.1:8000/a.mp4").await);
        assert!(refused(&g, "http://127.0.0.1:8001/a.mp4").await);
        assert!(!refused(&g, "http://media.test:9000/a.mp4").await);
        assert!(refused(&g, "http://media.test:9001/a.mp4").await);
    }
}
