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

/// One page of a provider's results, and how to ask for the page after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub results: Vec<SearchResult>,
    /// The provider's token for the next page; `None` on the last one.
    pub next: Option<String>,
}

/// A source of image URLs. A new provider (another engine, a dataset index) implements this.
///
/// Providers hand out pages rather than "the first `max` results", so that a caller short of
/// images can ask for more without fetching (and paying the rate limit for) page 1 again; a
/// [`Cursor`] remembers where a query stopped.
pub trait Provider: Send {
    fn name(&self) -> &str;
    /// The first page of `query` when `token` is `None`, else the page `token` (a previous
    /// page's `next`) names.
    fn page(&mut self, query: &str, token: Option<&str>) -> Result<Page, SearchError>;
    /// Up to `max` distinct results for `query`, best first: a one-off search from the top.
    fn search(&mut self, query: &str, max: usize) -> Result<Vec<SearchResult>, SearchError> {
        Cursor::new(query).next(self, max)
    }
}

/// Pages fetched for one query before it counts as dry, whatever `next` says: a guard against a
/// server that pages forever (DuckDuckGo gives ~100 results a page, so this is ~5000 results).
pub const MAX_PAGES: usize = 50;
/// Pages in a row without one new image URL before the query counts as dry: a search that keeps
/// returning the same URLs would otherwise be paged through to [`MAX_PAGES`] for nothing.
pub const MAX_STALE_PAGES: usize = 2;

#[derive(Debug, Clone, PartialEq)]
enum At {
    Start,
    Token(String),
    End,
}

/// Where a query's results stopped, so that the next call continues there: each image URL is
/// handed out once, results of a page beyond what was asked for wait for the next call, and no
/// page is fetched twice.
#[derive(Debug, Clone)]
pub struct Cursor {
    query: String,
    at: At,
    waiting: std::collections::VecDeque<SearchResult>,
    seen: std::collections::HashSet<String>,
    pages: usize,
    stale: usize,
}

impl Cursor {
    pub fn new(query: &str) -> Self {
        Cursor {
            query: query.to_string(),
            at: At::Start,
            waiting: Default::default(),
            seen: Default::default(),
            pages: 0,
            stale: 0,
        }
    }

    /// Up to `max` results not handed out before; fewer only when the query has run dry.
    pub fn next<P: Provider + ?Sized>(
        &mut self,
        provider: &mut P,
        max: usize,
    ) -> Result<Vec<SearchResult>, SearchError> {
        while self.waiting.len() < max && self.at != At::End {
            let token = match &self.at {
                At::Token(t) => Some(t.clone()),
                _ => None,
            };
            let page = provider.page(&self.query, token.as_deref())?;
            self.pages += 1;
            let before = self.waiting.len();
            for r in page.results {
                if !r.image.is_empty() && self.seen.insert(r.image.clone()) {
                    self.waiting.push_back(r);
                }
            }
            self.stale = if self.waiting.len() == before {
                self.stale + 1
            } else {
                0
            };
            self.at = match page.next {
                // A `next` naming the page just fetched would loop forever.
                Some(t) if !t.is_empty() && token.as_deref() != Some(t.as_str()) => At::Token(t),
                _ => At::End,
            };
            if self.pages >= MAX_PAGES || self.stale >= MAX_STALE_PAGES {
                self.at = At::End;
            }
        }
        let n = max.min(self.waiting.len());
        Ok(self.waiting.drain(..n).collect())
    }

    /// Whether every result the query will ever give has been handed out.
    pub fn is_dry(&self) -> bool {
        self.at == At::End && self.waiting.is_empty()
    }

    /// Pages fetched so far.
    pub fn pages(&self) -> usize {
        self.pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `per_page` numbered images; `repeat_from` makes every page from that one on
    /// repeat the first page, and `loop_token` makes `next` name the same page again.
    struct Fake {
        pages: usize,
        per_page: usize,
        repeat_from: Option<usize>,
        loop_token: bool,
        fetched: Vec<Option<String>>,
    }

    impl Fake {
        fn new(pages: usize, per_page: usize) -> Self {
            Fake {
                pages,
                per_page,
                repeat_from: None,
                loop_token: false,
                fetched: Vec::new(),
            }
        }
    }

    impl Provider for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn page(&mut self, _query: &str, token: Option<&str>) -> Result<Page, SearchError> {
            self.fetched.push(token.map(str::to_string));
            let n: usize = token.map_or(0, |t| t.parse().unwrap_or(0));
            let shown = match self.repeat_from {
                Some(r) if n >= r => 0,
                _ => n,
            };
            let results = (0..self.per_page)
                .map(|i| SearchResult {
                    image: format!("http://img/{}.jpg", shown * self.per_page + i),
                    ..Default::default()
                })
                .collect();
            let next = if self.loop_token {
                Some(n.to_string())
            } else {
                (n + 1 < self.pages).then(|| (n + 1).to_string())
            };
            Ok(Page { results, next })
        }
    }

    fn images(r: &[SearchResult]) -> Vec<String> {
        r.iter().map(|r| r.image.clone()).collect()
    }

    #[test]
    fn continues_where_it_stopped_without_refetching() {
        let mut p = Fake::new(3, 4);
        let mut c = Cursor::new("q");
        let a = c.next(&mut p, 3).unwrap();
        assert_eq!(
            images(&a),
            ["http://img/0.jpg", "http://img/1.jpg", "http://img/2.jpg"]
        );
        assert_eq!(
            p.fetched.len(),
            1,
            "the fourth result waits; no second page yet"
        );
        let b = c.next(&mut p, 5).unwrap();
        assert_eq!(images(&b)[0], "http://img/3.jpg", "the waiting one first");
        assert_eq!(b.len(), 5);
        assert_eq!(
            p.fetched,
            [None, Some("1".into())],
            "page 1 is not fetched again"
        );
        assert!(!c.is_dry());
        let rest = c.next(&mut p, 100).unwrap();
        assert_eq!(images(&rest)[0], "http://img/8.jpg");
        assert_eq!(rest.len(), 12 - 8);
        assert!(c.is_dry());
        assert!(c.next(&mut p, 10).unwrap().is_empty());
        assert_eq!(p.fetched.len(), 3, "a dry cursor asks nothing more");
    }

    #[test]
    fn repeated_pages_count_as_dry() {
        let mut p = Fake::new(1000, 5);
        p.repeat_from = Some(2);
        let mut c = Cursor::new("q");
        let got = c.next(&mut p, 1000).unwrap();
        assert_eq!(got.len(), 10, "pages 0 and 1 only");
        assert!(c.is_dry());
        assert_eq!(c.pages(), 2 + MAX_STALE_PAGES);
    }

    #[test]
    fn a_next_token_naming_the_same_page_ends_it() {
        let mut p = Fake::new(1000, 5);
        p.loop_token = true;
        let mut c = Cursor::new("q");
        assert_eq!(c.next(&mut p, 1000).unwrap().len(), 5);
        assert!(c.is_dry());
        // The first page names page "0"; asked for, it names itself again.
        assert_eq!(p.fetched, [None, Some("0".into())]);
    }

    #[test]
    fn endless_paging_is_capped() {
        let mut p = Fake::new(usize::MAX, 1);
        let mut c = Cursor::new("q");
        assert_eq!(c.next(&mut p, usize::MAX).unwrap().len(), MAX_PAGES);
        assert!(c.is_dry());
    }

    #[test]
    fn one_off_search_is_a_fresh_cursor() {
        let mut p = Fake::new(2, 4);
        assert_eq!(p.search("q", 6).unwrap().len(), 6);
        assert_eq!(p.search("q", 2).unwrap().len(), 2, "from the top again");
        assert_eq!(p.fetched, [None, Some("1".into()), None]);
    }
}
