//! Downloading one image: browser-like headers, timeout, redirect limit, size cap, content sniffing.
//!
//! Network faults end as a [`FailReason`] (tests/download_faults.rs): a reset or a body shorter
//! than its Content-Length is `network`; a gzip body is decompressed only up to the size cap
//! (`too_large`); redirects stop after [`MAX_REDIRECTS`] (`network`, "too many redirects"); a DNS
//! lookup is bounded by the request timeout (it runs on a helper thread, since the system resolver
//! cannot be interrupted); a server that never answers, TLS handshake included, is `timeout`.

use crate::data::decode::sniff;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: u32 = 5;

/// Why a URL gave no image (the manifest's `reason`, the summary's columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    Timeout,
    Http(u16),
    NotImage(String),
    TooLarge,
    Decode(String),
    Network(String),
}

impl FailReason {
    /// Every summary column, in the order the table shows them.
    pub const COLUMNS: [&'static str; 6] = [
        "timeout",
        "http",
        "not_image",
        "too_large",
        "decode",
        "network",
    ];

    /// The summary column this failure counts under (one of [`Self::COLUMNS`]).
    pub fn column(&self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::Http(_) => "http",
            FailReason::NotImage(_) => "not_image",
            FailReason::TooLarge => "too_large",
            FailReason::Decode(_) => "decode",
            FailReason::Network(_) => "network",
        }
    }
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailReason::Timeout => write!(f, "timeout"),
            FailReason::Http(c) => write!(f, "HTTP {c}"),
            FailReason::NotImage(w) => write!(f, "not an image ({w})"),
            FailReason::TooLarge => write!(f, "too large"),
            FailReason::Decode(m) => write!(f, "decode error: {m}"),
            FailReason::Network(m) => write!(f, "network error: {m}"),
        }
    }
}

const USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

pub struct Fetcher {
    agent: ureq::Agent,
    max_bytes: u64,
}

impl Fetcher {
    /// `timeout` bounds the whole request, body included, so a server that drips bytes is cut off.
    pub fn new(timeout: Duration, max_bytes: u64) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .timeout_connect(timeout)
            .redirects(MAX_REDIRECTS)
            .resolver(move |netloc: &str| resolve_with_deadline(netloc, timeout, std_lookup))
            .user_agent(USER_AGENT)
            .build();
        Fetcher { agent, max_bytes }
    }

    pub fn fetch(&self, url: &str) -> Result<Vec<u8>, FailReason> {
        let resp = self
            .agent
            .get(url)
            .set(
                "Accept",
                "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            )
            .set("Accept-Language", "en-US,en;q=0.9")
            .call()
            .map_err(classify)?;
        if resp
            .header("Content-Length")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(FailReason::TooLarge);
        }
        let mut buf = Vec::new();
        resp.into_reader()
            .take(self.max_bytes + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_reason(&e))?;
        if buf.len() as u64 > self.max_bytes {
            return Err(FailReason::TooLarge);
        }
        if sniff(&buf).is_none() {
            return Err(FailReason::NotImage(describe(&buf)));
        }
        Ok(buf)
    }
}

fn describe(b: &[u8]) -> String {
    let head = String::from_utf8_lossy(&b[..b.len().min(512)]).to_ascii_lowercase();
    if b.is_empty() {
        "empty body".into()
    } else if head.contains("<svg") {
        "SVG".into()
    } else if head.contains("<html") || head.contains("<!doctype") {
        "HTML page".into()
    } else {
        "unknown content".into()
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn io_reason(e: &std::io::Error) -> FailReason {
    if is_timeout(e) {
        FailReason::Timeout
    } else {
        FailReason::Network(e.to_string())
    }
}

/// The `std::io::Error` somewhere in `e`'s source chain, if any.
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = c.source();
    }
    None
}

/// Sorts a ureq error into a summary column by its kind and underlying I/O error (never by the
/// words of the URL, which may well contain "timeout" or "redirect").
fn classify(e: ureq::Error) -> FailReason {
    use ureq::ErrorKind as K;
    let kind = e.kind();
    let t = match e {
        ureq::Error::Status(code, _) => return FailReason::Http(code),
        ureq::Error::Transport(t) => t,
    };
    let io = std::error::Error::source(&t).and_then(io_source);
    if io.is_some_and(is_timeout) {
        return FailReason::Timeout;
    }
    let detail = match (io, t.message()) {
        (Some(io), _) => io.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => kind.to_string(),
    };
    FailReason::Network(match kind {
        K::TooManyRedirects => format!("too many redirects (more than {MAX_REDIRECTS})"),
        K::Dns => format!("DNS lookup failed: {detail}"),
        K::ConnectionFailed => format!("connection failed: {detail}"),
        K::BadStatus | K::BadHeader => format!("bad HTTP response: {detail}"),
        K::InvalidUrl | K::UnknownScheme => format!("bad URL: {detail}"),
        _ => detail,
    })
}

/// The system resolver (`getaddrinfo`), which has no timeout of its own.
fn std_lookup(netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
    netloc.to_socket_addrs().map(|a| a.collect())
}

/// Resolves `netloc` (`host:port`) with `lookup` on a helper thread and gives up after `timeout`,
/// so a resolver that hangs cannot hold a download past its deadline (the thread finishes on its
/// own later). IP literals skip the thread.
pub fn resolve_with_deadline(
    netloc: &str,
    timeout: Duration,
    lookup: fn(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(a) = netloc.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let (tx, rx) = mpsc::channel();
    let host = netloc.to_string();
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let _ = tx.send(lookup(&host));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "DNS lookup of {netloc} timed out after {:.1} s",
                timeout.as_secs_f64()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn hanging_dns_lookup_is_cut_at_the_deadline() {
        fn slow(_: &str) -> std::io::Result<Vec<SocketAddr>> {
            std::thread::sleep(Duration::from_secs(60));
            Ok(vec![])
        }
        let t = Instant::now();
        let e =
            resolve_with_deadline("slow.example:80", Duration::from_millis(200), slow).unwrap_err();
        // Well short of the resolver's 60 s: the deadline, not the lookup, ended the wait.
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("slow.example:80"), "{e}");
        fn fast(_: &str) -> std::io::Result<Vec<SocketAddr>> {
            Ok(vec!["10.1.2.3:80".parse().unwrap()])
        }
        let a = resolve_with_deadline("x.example:80", Duration::from_secs(1), fast).unwrap();
        assert_eq!(a, vec!["10.1.2.3:80".parse::<SocketAddr>().unwrap()]);
        // IP literals need no lookup at all.
        let a = resolve_with_deadline("127.0.0.1:8080", Duration::ZERO, slow).unwrap();
        assert_eq!(a, vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn dns_timeout_counts_as_timeout() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "DNS lookup timed out");
        assert_eq!(io_reason(&io), FailReason::Timeout);
    }
}
