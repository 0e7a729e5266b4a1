//! Source URL policy: parse, refuse what must not be stored or fetched, normalise to the key
//! that makes one URL one video, decide direct vs platform (yt-dlp), and redact secrets for
//! logs and views.

use std::net::IpAddr;

use dataminer_wire::net;
use url::{Host, Url};

pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Streamed over HTTP(S) by the agent.
    Direct,
    /// A video platform page, downloaded by yt-dlp (only agents that have it).
    Platform,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Direct => "direct",
            SourceKind::Platform => "platform",
        }
    }

    /// The agent capability the download task requires.
    pub fn requires(self) -> Option<&'static str> {
        match self {
            SourceKind::Direct => None,
            SourceKind::Platform => Some("yt-dlp"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// As submitted (trimmed), needed to fetch it; never shown unredacted.
    pub url: String,
    /// Normalised: lowercase scheme and host, no default port, no fragment, sorted query.
    pub key: String,
    pub kind: SourceKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("not a valid URL: {0}")]
    Parse(String),
    #[error("only http and https URLs are accepted, not {0:?}")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("URLs with credentials (user:password@) are not accepted; use a signed URL or a token in the query")]
    Credentials,
    #[error("host {0} is not a globally routable address")]
    ForbiddenAddress(String),
}

/// Parses and checks a submitted URL. `allow` lists exact `host:port` pairs that may be
/// non-global (tests and on-prem sources).
pub fn parse_source(raw: &str, platform_hosts: &[String], allow: &[String]) -> Result<SourceUrl, UrlError> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let u = Url::parse(raw).map_err(|e| UrlError::Parse(e.to_string()))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(UrlError::Scheme(u.scheme().to_string()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = u.host().ok_or(UrlError::NoHost)?;
    let host_port = format!("{}:{}", u.host_str().unwrap_or_default(), u.port_or_known_default().unwrap_or(0));
    if !allow.iter().any(|a| a.eq_ignore_ascii_case(&host_port)) {
        let forbidden = match &host {
            Host::Ipv4(ip) => !net::is_globally_routable(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => !net::is_globally_routable(IpAddr::V6(*ip)),
            Host::Domain(d) => net::is_forbidden_host_name(d),
        };
        if forbidden {
            return Err(UrlError::ForbiddenAddress(u.host_str().unwrap_or_default().to_string()));
        }
    }
    let key = normalise(&u);
    let kind = kind_of_key(&key, platform_hosts);
    Ok(SourceUrl { url: raw.to_string(), key, kind })
}

fn normalise(u: &Url) -> String {
    let mut key = format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default());
    if let Some(p) = u.port() {
        key.push_str(&format!(":{p}"));
    }
    key.push_str(u.path());
    let mut pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if !pairs.is_empty() {
        pairs.sort();
        let q: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        key.push('?');
        key.push_str(&q);
    }
    key
}

/// Direct or platform, from a normalised key: platform when the host is on the list or a
/// subdomain of a listed host.
pub fn kind_of_key(key: &str, platform_hosts: &[String]) -> SourceKind {
    let host = Url::parse(key).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    let on_list = platform_hosts.iter().any(|p| {
        let p = p.trim().to_ascii_lowercase();
        !p.is_empty() && (host == p || host.ends_with(&format!(".{p}")))
    });
    if on_list {
        SourceKind::Platform
    } else {
        SourceKind::Direct
    }
}

/// Query parameter names whose values are secrets (signatures, tokens, keys).
fn sensitive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["sig", "token", "key", "auth", "cred", "secret", "pass", "policy", "session", "x-amz-", "x-goog-", "expires"]
        .iter()
        .any(|s| n.contains(s))
}

/// The URL with credentials removed and sensitive query values replaced by `REDACTED`,
/// for logs, `/status` and API views.
pub fn redact(raw: &str) -> String {
    let Ok(mut u) = Url::parse(raw) else {
        return "<unparseable URL>".to_string();
    };
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("REDACTED");
        let _ = u.set_password(None);
    }
    let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.iter().any(|(k, _)| sensitive(k)) {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            s.append_pair(k, if sensitive(k) { "REDACTED" } else { v });
        }
        u.set_query(Some(&s.finish()));
    }
    u.to_string()
}

/// Free text (an error an agent reported, a tool's message quoting a URL) with the secrets
/// of every URL in it redacted: credentials and the values of signature-like query
/// parameters become `…`. Only those parts change; the rest of the text stays as written.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_scheme(rest) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | '}' | '|'))
            .unwrap_or(tail.len());
        out.push_str(&redact_url_text(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Where the next `http://` or `https://` (any case) starts.
fn find_scheme(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    match (lower.find("http://"), lower.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One URL as written, secrets replaced textually (no re-encoding, so `…` stays `…`).
fn redact_url_text(u: &str) -> String {
    let scheme_end = u.find("://").map_or(0, |i| i + 3);
    let (head, after) = u.split_at(scheme_end);
    let auth_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, path_query) = after.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(i) => format!("…@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let (before_query, query_frag) = match path_query.find('?') {
        Some(i) => (&path_query[..i], &path_query[i + 1..]),
        None => return format!("{head}{authority}{path_query}"),
    };
    let (query, frag) = match query_frag.find('#') {
        Some(i) => (&query_frag[..i], &query_frag[i..]),
        None => (query_frag, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if sensitive(&percent_decode(k)) => format!("{k}=…"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{head}{authority}{before_query}?{}{frag}", pairs.join("&"))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("{s}=").as_bytes()).next().map(|(k, _)| k.into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<SourceUrl, UrlError> {
        parse_source(s, &["youtube.com".to_string()], &["127.0.0.1:8000".to_string()])
    }

    #[test]
    fn normalisation_makes_one_url_one_key() {
        let a = p("HTTPS://Example.COM:443/v.mp4?b=2&a=1#frag").expect("valid");
        let b = p("https://example.com/v.mp4?a=1&b=2").expect("valid");
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, "https://example.com/v.mp4?a=1&b=2");
        assert_ne!(p("https://example.com/V.mp4").expect("valid").key, b.key);
    }

    #[test]
    fn refusals() {
        assert_eq!(p("ftp://example.com/x"), Err(UrlError::Scheme("ftp".into())));
        assert_eq!(p("file:///etc/passwd"), Err(UrlError::Scheme("file".into())));
        assert_eq!(p("https://u:pw@example.com/x"), Err(UrlError::Credentials));
        assert!(matches!(p("not a url"), Err(UrlError::Parse(_))));
        assert_eq!(p(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))), Err(UrlError::TooLong));
        for bad in [
            "http://127.0.0.1/x",
            "http://2130706433/x",
            "http://0x7f.0.0.1/x",
            "http://0177.0.0.1/x",
            "http://169.254.169.254/latest",
            "http://[::ffff:127.0.0.1]/x",
            "http://0.0.0.0/x",
            "http://localhost:8000/x",
            "http://10.0.0.1/x",
            "http://[::1]/x",
        ] {
            assert!(matches!(p(bad), Err(UrlError::ForbiddenAddress(_))), "{bad} accepted");
        }
        assert!(p("http://127.0.0.1:8000/ok.mp4").is_ok(), "allow-listed host:port refused");
    }

    #[test]
    fn platform_hosts_and_subdomains() {
        assert_eq!(p("https://www.youtube.com/watch?v=x").expect("valid").kind, SourceKind::Platform);
        assert_eq!(p("https://notyoutube.com/v").expect("valid").kind, SourceKind::Direct);
    }

    #[test]
    fn secrets_in_free_text_are_redacted_with_a_literal_mark() {
        let e = "GET https://h/v.mp4?X-Amz-Signature=SIGSECRET123&part=2 returned 403; \
                 also http://user:pw@h:8/x?token=T0K and HTTPS://H/y?Sig=abc#f.";
        let r = redact_text(e);
        for secret in ["SIGSECRET123", "user", "pw@", "T0K", "abc"] {
            assert!(!r.contains(secret), "{secret} leaked: {r}");
        }
        assert!(r.contains("X-Amz-Signature=…&part=2 returned 403"), "{r}");
        assert!(r.contains("http://…@h:8/x?token=…"), "{r}");
        assert!(r.contains("HTTPS://H/y?Sig=…#f."), "{r}");
        assert!(!r.contains("%E2%80%A6"), "{r}");
        assert_eq!(redact_text("no urls here: 403"), "no urls here: 403");
        assert_eq!(redact_text("see https://e.com/v.mp4?v=1 now"), "see https://e.com/v.mp4?v=1 now");
    }

    #[test]
    fn redaction_hides_signatures_and_keeps_the_rest() {
        let r = redact("https://b.s3.amazonaws.com/v.mp4?X-Amz-Signature=abc&X-Amz-Credential=k&part=1");
        assert!(!r.contains("abc") && !r.contains("=k&"), "{r}");
        assert!(r.contains("part=1"), "{r}");
        assert_eq!(redact("https://e.com/v.mp4?v=1"), "https://e.com/v.mp4?v=1");
    }
}
