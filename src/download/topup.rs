//! Filling one class up to `--per-class`. Failures and duplicates are only known after
//! downloading, so a class is filled in rounds: ask the source for about as many results as the
//! share kept so far says are needed, download them in parallel, and, while short, ask for more.
//! A search continues from where it stopped (its [`Cursor`]); a URL list simply runs dry.

use super::fetch::Fetcher;
use super::manifest::{Row, Status};
use super::{io_err, process, sha256_hex, ClassSummary, DownloadConfig, DownloadError, Progress};
use crate::search::{Cursor, Provider, SearchError, SearchResult};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Download rounds per class. Batches are sized from the share kept so far, so two or three
/// rounds normally do; the cap bounds a run in which nearly every URL fails.
pub const MAX_ROUNDS: usize = 10;

/// Where one class's URLs come from.
pub(super) enum Feed<'a> {
    Search {
        provider: &'a mut dyn Provider,
        cursor: Cursor,
    },
    /// A fixed list (`--urls-from`): handed out whole, then dry.
    List(Vec<SearchResult>),
}

impl Feed<'_> {
    fn next(&mut self, max: usize) -> Result<Vec<SearchResult>, SearchError> {
        match self {
            Feed::Search { provider, cursor } => cursor.next(&mut **provider, max),
            Feed::List(l) => Ok(std::mem::take(l)),
        }
    }

    fn is_dry(&self) -> bool {
        match self {
            Feed::Search { cursor, .. } => cursor.is_dry(),
            Feed::List(l) => l.is_empty(),
        }
    }
}

/// This run's downloads of one class so far: progress counts, and the kept share that sizes the
/// next batch.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    tried: usize,
    failed: usize,
    kept: usize,
}

/// Results to try for `short` more images. The first batch is half as many again plus ten (what
/// the single search asked for before top-ups); later ones scale by the tries each kept image
/// took so far, with a 20 % margin, at most ten tries per image.
fn batch_size(short: usize, t: Tally) -> usize {
    if t.tried == 0 {
        return (short.saturating_mul(3) / 2).saturating_add(10);
    }
    let per_kept = (t.tried as f64 / t.kept.max(1) as f64).clamp(1.0, 10.0);
    // A float-to-int `as` saturates, so a huge --per-class cannot overflow here.
    ((short as f64 * per_kept * 1.2).ceil() as usize).saturating_add(10)
}

/// Up to `want` results never tried for this class (by this run or an earlier one). Results
/// already tried are skipped and the source asked again, so a resumed run walks past them.
fn fresh(
    feed: &mut Feed,
    tried: &mut HashSet<String>,
    want: usize,
    found: &mut usize,
) -> Result<Vec<SearchResult>, SearchError> {
    let mut todo = Vec::new();
    while todo.len() < want {
        let batch = feed.next(want - todo.len())?;
        if batch.is_empty() {
            break;
        }
        *found += batch.len();
        todo.extend(batch.into_iter().filter(|r| tried.insert(r.image.clone())));
    }
    Ok(todo)
}

/// Downloads for `class` until it keeps `cfg.per_class` images (train + test, earlier runs
/// included), the source runs dry, or [`MAX_ROUNDS`] rounds are spent; `s` says which. New rows
/// are appended to `rows` as each round ends, so on an error (a rate limit in a later round, a
/// full disk) what was downloaded is still there to be saved. Files of rows dropped as
/// near-duplicates are added to `doomed` (relative paths), to be deleted once the manifest is
/// saved.
///
/// Images are verified and near-duplicates within the class dropped after every round, so a
/// top-up also replaces those; label conflicts need every class and are only found at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn fill(
    fetcher: &Fetcher,
    cfg: &DownloadConfig,
    class: &str,
    query: &str,
    feed: &mut Feed,
    rows: &mut Vec<Row>,
    s: &mut ClassSummary,
    doomed: &mut Vec<String>,
    progress: &dyn Progress,
) -> Result<(), DownloadError> {
    let dir = cfg.out.join("train").join(class);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let mut tried: HashSet<String> = rows
        .iter()
        .filter(|r| r.class == class)
        .map(|r| r.image_url.clone())
        .collect();
    let mut tally = Tally::default();
    // Rows from here on are not verified yet; on the first pass that includes earlier runs'.
    let mut unverified = 0;
    loop {
        super::verify(&cfg.out, &mut rows[unverified..], class);
        unverified = rows.len();
        let (dropped, gone) = super::drop_near_duplicates(&cfg.out, rows, Some(class));
        s.near_duplicates += dropped.get(class).map_or(0, |d| d.0);
        doomed.extend(gone);
        let kept = rows
            .iter()
            .filter(|r| r.class == class && r.is_kept())
            .count();
        let short = cfg.per_class.saturating_sub(kept);
        if short == 0 {
            return Ok(());
        }
        if s.rounds >= MAX_ROUNDS {
            s.search_exhausted = feed.is_dry();
            return Ok(());
        }
        let todo = fresh(feed, &mut tried, batch_size(short, tally), &mut s.found)?;
        if todo.is_empty() {
            s.search_exhausted = true;
            return Ok(());
        }
        if s.rounds == 0 {
            progress.start_class(class, todo.len());
        } else {
            progress.top_up(class, kept, short, todo.len());
        }
        s.rounds += 1;
        // Kept files, and files about to be deleted as near-duplicates: the same bytes again are
        // a duplicate, not a new file (writing it would put it where a deletion is pending).
        let listed: HashSet<String> = rows
            .iter()
            .filter(|r| r.is_kept())
            .map(|r| r.file.clone())
            .chain(doomed.iter().cloned())
            .collect();
        let round = Round {
            fetcher,
            cfg,
            class,
            query,
            dir: &dir,
            progress,
            listed: &listed,
            base: tally,
        };
        let disk_full = Mutex::new(None);
        let new_rows = round.download(&todo, short, &disk_full);
        for r in &new_rows {
            tally.tried += 1;
            match r.status {
                Status::Train => {
                    s.downloaded += 1;
                    tally.kept += 1;
                }
                Status::Duplicate => s.duplicates += 1,
                Status::Failed => {
                    tally.failed += 1;
                    *s.failed
                        .entry(r.reason.split(':').next().unwrap_or("").to_string())
                        .or_default() += 1
                }
                _ => {}
            }
        }
        rows.extend(new_rows);
        if let Some((path, msg)) = disk_full.into_inner().ok().flatten() {
            super::verify(&cfg.out, &mut rows[unverified..], class);
            return Err(DownloadError::DiskFull { path, msg });
        }
    }
}

/// One round's downloads of one class.
struct Round<'a> {
    fetcher: &'a Fetcher,
    cfg: &'a DownloadConfig,
    class: &'a str,
    query: &'a str,
    dir: &'a Path,
    progress: &'a dyn Progress,
    /// Files the manifest already lists for any class (relative paths).
    listed: &'a HashSet<String>,
    /// Earlier rounds' counts, so progress adds up over the class.
    base: Tally,
}

impl Round<'_> {
    /// Parallel downloads (`cfg.concurrency` workers pulling from one queue) until `need` are
    /// kept or `todo` is used up; one row per URL tried, in `todo`'s order.
    fn download(
        &self,
        todo: &[SearchResult],
        need: usize,
        disk_full: &Mutex<Option<(PathBuf, String)>>,
    ) -> Vec<Row> {
        let next = AtomicUsize::new(0);
        let kept = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        let rows = Mutex::new(Vec::new());
        let names = Mutex::new(HashSet::new());
        let (class, cfg) = (self.class, self.cfg);
        std::thread::scope(|scope| {
            for _ in 0..cfg.concurrency.max(1) {
                scope.spawn(|| loop {
                    if kept.load(Ordering::SeqCst) >= need
                        || disk_full.lock().map_or(true, |d| d.is_some())
                    {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(r) = todo.get(i) else { break };
                    let mut row = Row {
                        class: class.to_string(),
                        query: self.query.to_string(),
                        source_url: r.url.clone(),
                        image_url: r.image.clone(),
                        title: r.title.clone(),
                        ..Default::default()
                    };
                    let result = self
                        .fetcher
                        .fetch(&r.image)
                        .and_then(|b| process(&b, cfg.max_size, cfg.jpeg_quality));
                    match result {
                        Ok((jpeg, w, h)) => {
                            let hash = sha256_hex(&jpeg);
                            let name = format!("{}.jpg", &hash[..16]);
                            let rel = format!("train/{class}/{name}");
                            let fresh = names
                                .lock()
                                .map(|mut n| n.insert(name.clone()))
                                .unwrap_or(false);
                            // Same content already kept (under another URL) by an earlier run or
                            // round. A file on disk that the manifest does not list (a run stopped
                            // before saving it) is simply written again and recorded now.
                            let exists = self.listed.contains(&rel)
                                || self.listed.contains(&format!("test/{class}/{name}"));
                            row.sha256 = hash;
                            row.width = w;
                            row.height = h;
                            if !fresh || exists {
                                row.status = Status::Duplicate;
                                row.reason = "same content as another download".into();
                            } else if kept.fetch_add(1, Ordering::SeqCst) >= need {
                                // Enough kept while this one was in flight: drop it unrecorded, so
                                // a later run with a larger --per-class can still use it.
                                kept.fetch_sub(1, Ordering::SeqCst);
                                continue;
                            } else {
                                let dest = self.dir.join(&name);
                                match crate::atomic::write_file(&dest, &jpeg) {
                                    Ok(()) => {
                                        row.file = rel;
                                        row.status = Status::Train;
                                    }
                                    Err(e) => {
                                        // Nothing half-written stays (write_file removes its
                                        // temporary); a full disk stops the run, to be resumed.
                                        kept.fetch_sub(1, Ordering::SeqCst);
                                        if e.kind() == std::io::ErrorKind::StorageFull {
                                            if let Ok(mut d) = disk_full.lock() {
                                                d.get_or_insert((dest, e.to_string()));
                                            }
                                            continue;
                                        }
                                        row.status = Status::Failed;
                                        row.reason = format!("write: {e}");
                                    }
                                }
                            }
                        }
                        Err(reason) => {
                            row.status = Status::Failed;
                            row.reason = format!("{}: {reason}", reason.column());
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                    self.progress.item(
                        self.base.tried + d,
                        self.base.failed + failed.load(Ordering::SeqCst),
                        self.base.kept + kept.load(Ordering::SeqCst),
                    );
                    if let Ok(mut v) = rows.lock() {
                        v.push(row);
                    }
                });
            }
        });
        let mut rows = rows.into_inner().unwrap_or_default();
        // Workers finish in any order; keep the search order so manifests are reproducible.
        let order: BTreeMap<&str, usize> = todo
            .iter()
            .enumerate()
            .map(|(i, r)| (r.image.as_str(), i))
            .collect();
        rows.sort_by_key(|r| {
            order
                .get(r.image_url.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
        // Of identical downloads the first in search order keeps the file, whichever finished
        // first.
        let mut first: std::collections::HashMap<String, usize> = Default::default();
        for i in 0..rows.len() {
            if rows[i].status != Status::Train && rows[i].status != Status::Duplicate {
                continue;
            }
            match first.get(&rows[i].sha256) {
                None => {
                    first.insert(rows[i].sha256.clone(), i);
                }
                Some(&j)
                    if rows[i].status == Status::Train && rows[j].status == Status::Duplicate =>
                {
                    let (a, b) = rows.split_at_mut(i);
                    std::mem::swap(&mut a[j].file, &mut b[0].file);
                    std::mem::swap(&mut a[j].status, &mut b[0].status);
                    std::mem::swap(&mut a[j].reason, &mut b[0].reason);
                }
                Some(_) => {}
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_the_kept_share() {
        let t = |tried, kept| Tally {
            tried,
            failed: tried - kept,
            kept,
        };
        assert_eq!(
            batch_size(100, Tally::default()),
            160,
            "as the one search did"
        );
        // Half kept so far: twice what is missing, plus the margin.
        assert_eq!(batch_size(20, t(160, 80)), 58);
        // Nothing kept: ten tries per missing image at most.
        assert_eq!(batch_size(5, t(40, 0)), 70);
        assert_eq!(
            batch_size(usize::MAX, Tally::default()),
            usize::MAX / 2 + 10
        );
    }
}
