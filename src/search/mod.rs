//! Finding image URLs for a class name: DuckDuckGo image search, or a plain URL list.

pub mod ddg;
pub mod urls;

use serde::{Deserialize, Serialize};

/// One image found by a search, with where it came from (kept in the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SearchResult {
    pub image: String,
    pub title: String,
    /// The page the image appears on.
    pub url: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(
        "{provider} keeps refusing requests (HTTP {status}: rate limited) after {tries} tries with back-off. \
         Wait a few minutes and run the same command again: finished classes and files are kept and the run resumes"
    )]
    RateLimited {
        provider: String,
        status: u16,
        tries: usize,
    },
    #[error("{provider}: the search page for `{query}` has no vqd token (the page format changed, or the request was blocked)")]
    NoToken { provider: String, query: String },
    #[error("cannot reach {url}: {reason}. Check the internet connection (or FINETUNE_SEARCH_URL), or use --urls-from FILE")]
    Network { url: String, reason: String },
    #[error("{provider}: unexpected answer ({what})")]
    Protocol { provider: String, what: String },
    #[error("URL list {path}: {msg}")]
    UrlList {
        path: std::path::PathBuf,
        msg: String,
    },
}

/// A source of image URLs. A new provider (another engine, a dataset index) implements this.
pub trait Provider: Send {
    fn name(&self) -> &str;
    /// Up to `max` distinct results for `query`, best first.
    fn search(&mut self, query: &str, max: usize) -> Result<Vec<SearchResult>, SearchError>;
}
