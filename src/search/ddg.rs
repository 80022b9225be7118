//! DuckDuckGo image search, as the `duckduckgo_search` client does it (see
//! shared/research/ddg_images.md): a vqd token from the search page, then `i.js` JSON pages followed
//! through `next`, ~0.75 s between requests, rate-limit statuses answered with back-off and a fresh
//! token.

use super::{Page, Provider, SearchError, SearchResult};
use std::time::{Duration, Instant};

pub const DEFAULT_BASE: &str = "https://duckduckgo.com";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Search filters; each becomes one slot of `f=time,size,color,type,layout,license`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub size: Option<String>,
    pub color: Option<String>,
    pub kind: Option<String>,
    pub layout: Option<String>,
    pub license: Option<String>,
}

impl Filters {
    pub fn to_param(&self) -> String {
        let slot = |k: &str, v: &Option<String>| {
            v.as_ref().map(|v| format!("{k}:{v}")).unwrap_or_default()
        };
        [
            String::new(),
            slot("size", &self.size),
            slot("color", &self.color),
            slot("type", &self.kind),
            slot("layout", &self.layout),
            slot("license", &self.license),
        ]
        .join(",")
    }
}

#[derive(Debug, Clone)]
pub struct DdgConfig {
    pub base: String,
    pub region: String,
    /// `on`, `moderate` or `off`.
    pub safesearch: String,
    pub filters: Filters,
    /// Pause between requests.
    pub delay: Duration,
    /// Attempts per request when rate limited, with doubling back-off and jitter.
    pub max_tries: usize,
    pub backoff: Duration,
    pub timeout: Duration,
}

impl Default for DdgConfig {
    fn default() -> Self {
        DdgConfig {
            base: std::env::var("FINETUNE_SEARCH_URL").unwrap_or_else(|_| DEFAULT_BASE.to_string()),
            region: "us-en".into(),
            safesearch: "moderate".into(),
            filters: Filters::default(),
            delay: Duration::from_millis(750),
            max_tries: 4,
            backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

pub struct DuckDuckGo {
    cfg: DdgConfig,
    agent: ureq::Agent,
    last_request: Option<Instant>,
    /// The token of the last query, so that further pages of it cost one request each; a rate
    /// limit clears it (a fresh token is part of the back-off).
    vqd: Option<(String, String)>,
}

/// The three forms `_extract_vqd` tries, in its order: `vqd="…"`, `vqd=…&`, `vqd='…'`.
pub fn extract_vqd(html: &str) -> Option<String> {
    let between = |start: &str, end: &str| -> Option<String> {
        let i = html.find(start)? + start.len();
        let j = html[i..].find(end)?;
        let v = &html[i..i + j];
        (!v.is_empty() && v.len() < 200).then(|| v.to_string())
    };
    between("vqd=\"", "\"")
        .or_else(|| between("vqd=", "&"))
        .or_else(|| between("vqd='", "'"))
}

fn is_rate_limit(status: u16) -> bool {
    matches!(status, 202 | 301 | 400 | 403 | 418 | 429)
}

/// `unquote(u).replace(" ", "+")`, as the Python client normalises URLs.
fn norm_url(u: &str) -> String {
    let bytes = u.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).replace(' ', "+")
}

enum Fetch {
    Ok(String),
    Limited(u16),
}

impl DuckDuckGo {
    pub fn new(cfg: DdgConfig) -> Self {
        // No redirects: the client treats a 301 as rate limiting, as duckduckgo_search does.
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(cfg.timeout)
            .user_agent(USER_AGENT)
            .build();
        DuckDuckGo {
            cfg,
            agent,
            last_request: None,
            vqd: None,
        }
    }

    fn throttle(&mut self) {
        if let Some(t) = self.last_request {
            let since = t.elapsed();
            if since < self.cfg.delay {
                std::thread::sleep(self.cfg.delay - since);
            }
        }
        self.last_request = Some(Instant::now());
    }

    fn get(&mut self, path_and_query: &str, referer: bool) -> Result<Fetch, SearchError> {
        self.throttle();
        let url = format!("{}{}", self.cfg.base.trim_end_matches('/'), path_and_query);
        let mut req = self.agent.get(&url);
        if referer {
            req = req
                .set(
                    "Referer",
                    &format!("{}/", self.cfg.base.trim_end_matches('/')),
                )
                .set("Sec-Fetch-Mode", "cors");
        }
        match req.call() {
            Ok(r) if r.status() == 200 => {
                r.into_string()
                    .map(Fetch::Ok)
                    .map_err(|e| SearchError::Network {
                        url,
                        reason: e.to_string(),
                    })
            }
            Ok(r) if is_rate_limit(r.status()) => Ok(Fetch::Limited(r.status())),
            Ok(r) => Err(SearchError::Protocol {
                provider: self.name().into(),
                what: format!("HTTP {} for {url}", r.status()),
            }),
            Err(ureq::Error::Status(code, _)) if is_rate_limit(code) => Ok(Fetch::Limited(code)),
            Err(ureq::Error::Status(code, _)) => Err(SearchError::Protocol {
                provider: self.name().into(),
                what: format!("HTTP {code} for {url}"),
            }),
            Err(e) => Err(SearchError::Network {
                url,
                reason: e.to_string(),
            }),
        }
    }

    fn fetch_vqd(&mut self, query: &str) -> Result<Result<String, u16>, SearchError> {
        match self.get(&format!("/?q={}", encode(query)), false)? {
            Fetch::Limited(s) => Ok(Err(s)),
            Fetch::Ok(html) => extract_vqd(&html)
                .map(Ok)
                .ok_or_else(|| SearchError::NoToken {
                    provider: self.name().into(),
                    query: query.to_string(),
                }),
        }
    }

    fn pause_for_retry(&self, attempt: usize) {
        // Doubling back-off with up to 50% jitter, so parallel clients do not retry in lockstep.
        let base = self.cfg.backoff.as_secs_f64() * 2f64.powi(attempt as i32);
        let jitter = rand::random::<f64>() * 0.5 * base;
        std::thread::sleep(Duration::from_secs_f64(base + jitter));
    }

    /// One results page as JSON; rate limiting is retried with a fresh token.
    fn fetch_page(
        &mut self,
        query: &str,
        offset: Option<&str>,
    ) -> Result<serde_json::Value, SearchError> {
        let mut last_status = 0;
        for attempt in 0..self.cfg.max_tries {
            if attempt > 0 {
                self.pause_for_retry(attempt - 1);
            }
            let vqd = match self.vqd.take() {
                Some((q, v)) if q == query => v,
                _ => match self.fetch_vqd(query)? {
                    Ok(v) => v,
                    Err(status) => {
                        last_status = status;
                        continue;
                    }
                },
            };
            let p = match self.cfg.safesearch.as_str() {
                "off" => "-1",
                _ => "1",
            };
            let mut q = format!(
                "/i.js?o=json&q={}&l={}&vqd={}&p={p}&f={}",
                encode(query),
                encode(&self.cfg.region),
                encode(&vqd),
                encode(&self.cfg.filters.to_param())
            );
            if let Some(s) = offset {
                q.push_str(&format!("&s={}", encode(s)));
            }
            match self.get(&q, true)? {
                Fetch::Ok(body) => {
                    self.vqd = Some((query.to_string(), vqd));
                    return serde_json::from_str(&body).map_err(|e| SearchError::Protocol {
                        provider: self.name().into(),
                        what: format!("results are not JSON: {e}"),
                    });
                }
                // The token stays taken: the next try fetches a fresh one.
                Fetch::Limited(s) => last_status = s,
            }
        }
        Err(SearchError::RateLimited {
            provider: self.name().into(),
            status: last_status,
            tries: self.cfg.max_tries,
        })
    }
}

/// The `s` offset in a page's `next` (`i.js?q=…&s=100&…`), which is all the next request needs.
fn next_offset(next: &str) -> Option<String> {
    next.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("s="))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Percent-encoding for query values (RFC 3986 unreserved characters pass through).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Provider for DuckDuckGo {
    fn name(&self) -> &str {
        "DuckDuckGo"
    }

    fn page(&mut self, query: &str, token: Option<&str>) -> Result<Page, SearchError> {
        let page = self.fetch_page(query, token)?;
        let rows = page
            .get("results")
            .and_then(|r| r.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let results = rows
            .iter()
            .filter_map(|row| {
                let image = row.get("image").and_then(|v| v.as_str())?;
                let s = |k: &str| {
                    row.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                let n = |k: &str| row.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
                (!image.is_empty()).then(|| SearchResult {
                    image: norm_url(image),
                    title: s("title"),
                    url: norm_url(&s("url")),
                    width: n("width"),
                    height: n("height"),
                })
            })
            .collect();
        let next = page
            .get("next")
            .and_then(|v| v.as_str())
            .and_then(next_offset);
        Ok(Page { results, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vqd_forms() {
        assert_eq!(
            extract_vqd(r#"<script>vqd="4-1234_5";</script>"#).as_deref(),
            Some("4-1234_5")
        );
        assert_eq!(
            extract_vqd("href='/d.js?q=x&vqd=4-99&p=1'").as_deref(),
            Some("4-99")
        );
        assert_eq!(extract_vqd("var a = {vqd='4-7'}").as_deref(), Some("4-7"));
        assert_eq!(extract_vqd("<html>nothing</html>"), None);
    }

    #[test]
    fn filters_keep_empty_slots() {
        assert_eq!(Filters::default().to_param(), ",,,,,");
        let f = Filters {
            size: Some("Large".into()),
            kind: Some("photo".into()),
            license: Some("Public".into()),
            ..Default::default()
        };
        assert_eq!(f.to_param(), ",size:Large,,type:photo,,license:Public");
    }

    #[test]
    fn next_offset_is_the_s_parameter() {
        assert_eq!(next_offset("i.js?q=x&s=100&o=json").as_deref(), Some("100"));
        assert_eq!(next_offset("i.js?s=3").as_deref(), Some("3"));
        assert_eq!(next_offset("i.js?q=xs=1&o=json"), None);
        assert_eq!(next_offset(""), None);
    }

    #[test]
    fn urls_are_normalised() {
        assert_eq!(norm_url("https://x.org/a%20b.jpg"), "https://x.org/a+b.jpg");
        assert_eq!(encode("red fox & co"), "red+fox+%26+co");
    }
}
