//! Downloading one image: browser-like headers, timeout, redirect limit, size cap, content sniffing.

use crate::data::decode::sniff;
use std::io::Read;
use std::time::Duration;

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
    /// The summary column this failure counts under.
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
            .redirects(5)
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

fn io_reason(e: &std::io::Error) -> FailReason {
    let m = e.to_string();
    if e.kind() == std::io::ErrorKind::TimedOut
        || e.kind() == std::io::ErrorKind::WouldBlock
        || m.contains("timed out")
    {
        FailReason::Timeout
    } else {
        FailReason::Network(m)
    }
}

fn classify(e: ureq::Error) -> FailReason {
    match e {
        ureq::Error::Status(code, _) => FailReason::Http(code),
        ureq::Error::Transport(t) => {
            let m = t.to_string();
            if m.contains("timed out") || m.contains("Timeout") || m.contains("timeout") {
                FailReason::Timeout
            } else if m.contains("redirect") {
                FailReason::Network("too many redirects".into())
            } else {
                FailReason::Network(m)
            }
        }
    }
}
