//! `finetune download`: search, fetch in parallel, resize, verify, drop duplicates, split off a test
//! set, and keep a manifest of sources. Re-running with the same arguments resumes and only adds.

pub mod dedup;
pub mod fetch;
pub mod manifest;

use crate::data::decode::{decode_bytes, decode_file};
/// What download keeps is bounded by the fetcher's own cap; reading it back uses the default one.
use crate::data::files::DEFAULT_MAX_FILE_BYTES;
use crate::data::resize::resize;
use crate::search::{Provider, SearchError, SearchResult};
use fetch::{FailReason, Fetcher};
use manifest::{Row, Status};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("cannot write {path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("the disk is full (writing {path}: {msg}); what was downloaded so far is kept and listed in manifest.csv: free some space and run the same command again to resume")]
    DiskFull { path: PathBuf, msg: String },
    #[error("manifest: {0} (fix or move the file; it records what was downloaded)")]
    Manifest(String),
}

#[derive(Debug, Clone)]
pub struct DownloadConfig {
    pub out: PathBuf,
    pub per_class: usize,
    pub query_suffix: String,
    pub max_size: u32,
    pub test_per_class: usize,
    pub seed: u64,
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_bytes: u64,
    pub jpeg_quality: u8,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            out: PathBuf::from("data"),
            per_class: 100,
            query_suffix: String::new(),
            max_size: 400,
            test_per_class: 0,
            seed: 42,
            concurrency: 8,
            timeout: Duration::from_secs(10),
            max_bytes: 20 * 1024 * 1024,
            jpeg_quality: 90,
        }
    }
}

/// Per-class counts for the summary table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClassSummary {
    pub class: String,
    pub found: usize,
    pub downloaded: usize,
    /// Failures by reason column (`timeout`, `http`, `not_image`, `too_large`, `decode`, `network`).
    pub failed: BTreeMap<String, usize>,
    pub duplicates: usize,
    pub near_duplicates: usize,
    /// Images dropped because the same picture was also found for another class.
    pub label_conflicts: usize,
    pub train: usize,
    pub test: usize,
}

/// Where the URLs come from.
pub enum Source<'a> {
    Search(&'a mut dyn Provider),
    Lists(BTreeMap<String, Vec<SearchResult>>),
}

/// Receives progress; the CLI shows bars, tests stay silent.
pub trait Progress: Sync {
    fn start_class(&self, _class: &str, _total: usize) {}
    fn item(&self, _done: usize, _failed: usize, _kept: usize) {}
    fn finish_class(&self, _s: &ClassSummary) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Decode (EXIF applied, RGB), shrink so the longer side ≤ `max_size` (never enlarge), JPEG-encode.
pub fn process(
    bytes: &[u8],
    max_size: u32,
    quality: u8,
) -> Result<(Vec<u8>, u32, u32), FailReason> {
    let img = decode_bytes(Path::new("download"), bytes)
        .map_err(|e| FailReason::Decode(e.to_string()))?;
    let (w, h) = img.dimensions();
    let img = if w.max(h) > max_size {
        let s = max_size as f64 / w.max(h) as f64;
        resize(
            &img,
            ((w as f64 * s) as u32).max(1),
            ((h as f64 * s) as u32).max(1),
        )
    } else {
        img
    };
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    img.write_with_encoder(enc)
        .map_err(|e| FailReason::Decode(e.to_string()))?;
    Ok((out, img.width(), img.height()))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> DownloadError {
    DownloadError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Everything for all `classes`; returns one summary per class. The manifest is saved after each
/// class, so an interrupted run loses at most the class in progress (and its files stay on disk,
/// found again by content hash on the next run).
pub fn run(
    classes: &[String],
    mut source: Source,
    cfg: &DownloadConfig,
    progress: &dyn Progress,
) -> Result<Vec<ClassSummary>, DownloadError> {
    let manifest_path = cfg.out.join("manifest.csv");
    std::fs::create_dir_all(&cfg.out).map_err(|e| io_err(&cfg.out, e))?;
    let mut rows = manifest::read(&manifest_path).map_err(DownloadError::Manifest)?;
    reconcile(&cfg.out, &mut rows);
    let fetcher = Fetcher::new(cfg.timeout, cfg.max_bytes);
    let mut summaries = Vec::new();
    for class in classes {
        let query = format!("{class}{}", cfg.query_suffix);
        let known: HashSet<String> = rows
            .iter()
            .filter(|r| &r.class == class)
            .map(|r| r.image_url.clone())
            .collect();
        let kept_before = rows
            .iter()
            .filter(|r| &r.class == class && r.is_kept())
            .count();
        let found: Vec<SearchResult> = match &mut source {
            // Ask for more than needed: some will fail or be duplicates.
            Source::Search(p) => p.search(&query, cfg.per_class * 3 / 2 + 10)?,
            Source::Lists(l) => l.get(class).cloned().unwrap_or_default(),
        };
        let mut s = ClassSummary {
            class: class.clone(),
            found: found.len(),
            ..Default::default()
        };
        let todo: Vec<&SearchResult> = found.iter().filter(|r| !known.contains(&r.image)).collect();
        let need = cfg.per_class.saturating_sub(kept_before);
        let dir = cfg.out.join("train").join(class);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        progress.start_class(class, todo.len().min(need.max(1) * 3 / 2 + 10));
        let disk_full = Mutex::new(None);
        let listed: HashSet<String> = rows
            .iter()
            .filter(|r| r.is_kept())
            .map(|r| r.file.clone())
            .collect();
        let new_rows = download_class(
            &fetcher, class, &query, &todo, need, cfg, &dir, progress, &disk_full, &listed,
        );
        for r in &new_rows {
            match r.status {
                Status::Train => s.downloaded += 1,
                Status::Duplicate => s.duplicates += 1,
                Status::Failed => {
                    *s.failed
                        .entry(r.reason.split(':').next().unwrap_or("").to_string())
                        .or_default() += 1
                }
                _ => {}
            }
        }
        rows.extend(new_rows);
        verify(&cfg.out, &mut rows, class);
        let saved = manifest::write(&manifest_path, &rows).map_err(DownloadError::Manifest);
        if let Some((path, msg)) = disk_full.into_inner().ok().flatten() {
            return Err(DownloadError::DiskFull { path, msg });
        }
        saved?;
        summaries.push(s);
    }
    let (dropped, doomed) = drop_near_duplicates(&cfg.out, &mut rows);
    for s in &mut summaries {
        (s.near_duplicates, s.label_conflicts) = dropped.get(&s.class).copied().unwrap_or((0, 0));
    }
    let split = split_test(&cfg.out, &mut rows, classes, cfg.test_per_class, cfg.seed);
    name_kept_files(&mut rows);
    // The manifest is written before the dropped files are deleted: a crash in between leaves
    // stray files, never a manifest row whose file is gone.
    manifest::write(&manifest_path, &rows).map_err(DownloadError::Manifest)?;
    split?;
    for f in doomed {
        let _ = std::fs::remove_file(f);
    }
    for s in &mut summaries {
        s.train = rows
            .iter()
            .filter(|r| r.class == s.class && r.status == Status::Train)
            .count();
        s.test = rows
            .iter()
            .filter(|r| r.class == s.class && r.status == Status::Test)
            .count();
        progress.finish_class(s);
    }
    Ok(summaries)
}

/// Parallel downloads (`cfg.concurrency` workers pulling from one queue) until `need` are kept.
#[allow(clippy::too_many_arguments)]
fn download_class(
    fetcher: &Fetcher,
    class: &str,
    query: &str,
    todo: &[&SearchResult],
    need: usize,
    cfg: &DownloadConfig,
    dir: &Path,
    progress: &dyn Progress,
    disk_full: &Mutex<Option<(PathBuf, String)>>,
    listed: &HashSet<String>,
) -> Vec<Row> {
    let next = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let rows = Mutex::new(Vec::new());
    let names = Mutex::new(HashSet::new());
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
                    query: query.to_string(),
                    source_url: r.url.clone(),
                    image_url: r.image.clone(),
                    title: r.title.clone(),
                    ..Default::default()
                };
                let result = fetcher
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
                        // Same content already kept (under another URL) by an earlier run. A file
                        // on disk that the manifest does not list (a run stopped before saving
                        // it) is simply written again and recorded now.
                        let exists = listed.contains(&rel)
                            || listed.contains(&format!("test/{class}/{name}"));
                        row.sha256 = hash;
                        row.width = w;
                        row.height = h;
                        if !fresh || exists {
                            row.status = Status::Duplicate;
                            row.reason = "same content as another download".into();
                        } else if kept.fetch_add(1, Ordering::SeqCst) >= need {
                            // Enough kept while this one was in flight: drop it unrecorded, so a later
                            // run with a larger --per-class can still use it.
                            kept.fetch_sub(1, Ordering::SeqCst);
                            continue;
                        } else {
                            let dest = dir.join(&name);
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
                progress.item(
                    d,
                    failed.load(Ordering::SeqCst),
                    kept.load(Ordering::SeqCst),
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
    // Of identical downloads the first in search order keeps the file, whichever finished first.
    let mut first: std::collections::HashMap<String, usize> = Default::default();
    for i in 0..rows.len() {
        if rows[i].status != Status::Train && rows[i].status != Status::Duplicate {
            continue;
        }
        match first.get(&rows[i].sha256) {
            None => {
                first.insert(rows[i].sha256.clone(), i);
            }
            Some(&j) if rows[i].status == Status::Train && rows[j].status == Status::Duplicate => {
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

/// Every kept file of `class` must decode fully with the training decoder; failures are deleted.
/// Also fills in the perceptual hash used for near-duplicate detection.
fn verify(out: &Path, rows: &mut [Row], class: &str) {
    for r in rows.iter_mut().filter(|r| r.class == class && r.is_kept()) {
        let path = out.join(&r.file);
        match decode_file(&path, DEFAULT_MAX_FILE_BYTES) {
            Ok(img) => {
                if !dedup::is_current(&r.phash) {
                    r.phash = dedup::phash(&img);
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                r.status = Status::Invalid;
                r.reason = format!("decode: {e}");
                r.file.clear();
            }
        }
    }
}

/// Keeps one image of each near-duplicate group: the one already in test/ if any, else the first
/// downloaded, so a re-run never replaces a file kept earlier. Groups are formed across all classes:
/// a group whose pictures were found for different classes is a label conflict (the same picture
/// cannot be both), and none of it is kept. Returns (near-duplicates, conflicts) dropped per class.
/// The files of dropped rows are returned, to be deleted once the manifest no longer lists them.
fn drop_near_duplicates(
    out: &Path,
    rows: &mut [Row],
) -> (BTreeMap<String, (usize, usize)>, Vec<PathBuf>) {
    let mut doomed = Vec::new();
    let idx: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].is_kept() && dedup::is_current(&rows[i].phash))
        .collect();
    let hashes: Vec<String> = idx.iter().map(|&i| rows[i].phash.clone()).collect();
    let mut dropped: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let image = |k: usize| decode_file(&out.join(&rows[idx[k]].file), DEFAULT_MAX_FILE_BYTES).ok();
    for g in dedup::groups(&hashes, image) {
        if g.len() < 2 {
            continue;
        }
        let members: Vec<usize> = g.iter().map(|&k| idx[k]).collect();
        let classes: std::collections::BTreeSet<&str> =
            members.iter().map(|&i| rows[i].class.as_str()).collect();
        if classes.len() > 1 {
            let names = classes.into_iter().collect::<Vec<_>>().join(", ");
            let reason = format!(
                "label conflict: the same picture was found for classes {names}; none of it is kept"
            );
            for &i in &members {
                doomed.push(out.join(&rows[i].file));
                rows[i].status = Status::LabelConflict;
                rows[i].reason = reason.clone();
                rows[i].file.clear();
                dropped.entry(rows[i].class.clone()).or_default().1 += 1;
            }
            continue;
        }
        let keep = *members
            .iter()
            .max_by_key(|&&i| (rows[i].status == Status::Test, std::cmp::Reverse(i)))
            .unwrap_or(&members[0]);
        let keep_sha = rows[keep].sha256.clone();
        for &i in &members {
            if i != keep {
                doomed.push(out.join(&rows[i].file));
                rows[i].status = Status::NearDuplicate;
                rows[i].duplicate_of = keep_sha.clone();
                rows[i].file.clear();
                dropped.entry(rows[i].class.clone()).or_default().0 += 1;
            }
        }
    }
    (dropped, doomed)
}

/// Brings rows read from an existing manifest in line with the disk after a crash: a kept file
/// found in the other split folder (a move the manifest did not record) is followed there; one
/// that is gone is marked `missing`, so the next steps never count or move a file that is not there.
fn reconcile(out: &Path, rows: &mut [Row]) {
    for r in rows.iter_mut().filter(|r| r.is_kept()) {
        if out.join(&r.file).is_file() {
            continue;
        }
        let name = Path::new(&r.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = [Status::Train, Status::Test].into_iter().find_map(|split| {
            let rel = format!("{split}/{}/{name}", r.class);
            out.join(&rel).is_file().then_some((split, rel))
        });
        match found {
            Some((split, rel)) => {
                r.file = rel;
                r.status = split;
            }
            None => {
                r.status = Status::Missing;
                r.reason = format!("{} was deleted outside finetune", r.file);
                r.file.clear();
            }
        }
    }
}

/// Names the file each near-duplicate gave way to, where it is now (after the test split moved it).
fn name_kept_files(rows: &mut [Row]) {
    let kept: std::collections::HashMap<String, String> = rows
        .iter()
        .filter(|r| r.is_kept())
        .map(|r| (r.sha256.clone(), r.file.clone()))
        .collect();
    for r in rows
        .iter_mut()
        .filter(|r| r.status == Status::NearDuplicate)
    {
        r.reason = match kept.get(&r.duplicate_of) {
            Some(f) => format!("near-duplicate of {f}"),
            None => "near-duplicate of an image no longer kept".into(),
        };
    }
}

/// Moves seeded random training images to `test/<class>/` until each class has `n` test images.
/// Test images are never moved back, so the test set stays stable across re-runs.
fn split_test(
    out: &Path,
    rows: &mut [Row],
    classes: &[String],
    n: usize,
    seed: u64,
) -> Result<(), DownloadError> {
    for class in classes {
        let have = rows
            .iter()
            .filter(|r| &r.class == class && r.status == Status::Test)
            .count();
        if have >= n {
            continue;
        }
        let mut cand: Vec<usize> = (0..rows.len())
            .filter(|&i| &rows[i].class == class && rows[i].status == Status::Train)
            .collect();
        cand.sort_by(|&a, &b| rows[a].file.cmp(&rows[b].file));
        cand.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let dir = out.join("test").join(class);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        for &i in cand.iter().take(n - have) {
            let name = Path::new(&rows[i].file)
                .file_name()
                .map(|n| n.to_owned())
                .unwrap_or_default();
            let from = out.join(&rows[i].file);
            std::fs::rename(&from, dir.join(&name)).map_err(|e| io_err(&from, e))?;
            rows[i].file = format!("test/{class}/{}", name.to_string_lossy());
            rows[i].status = Status::Test;
        }
    }
    Ok(())
}

/// The summary table printed at the end of a download.
pub fn summary_table(s: &[ClassSummary]) -> String {
    let cols = FailReason::COLUMNS;
    let w = s
        .iter()
        .map(|c| c.class.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut t = format!("{:<w$} {:>6} {:>10}", "class", "found", "downloaded");
    for c in cols {
        t.push_str(&format!(" {c:>9}"));
    }
    t.push_str(&format!(
        " {:>6} {:>9} {:>9} {:>6} {:>5}\n",
        "dups", "near_dups", "conflicts", "train", "test"
    ));
    for c in s {
        t.push_str(&format!(
            "{:<w$} {:>6} {:>10}",
            c.class, c.found, c.downloaded
        ));
        for col in cols {
            t.push_str(&format!(" {:>9}", c.failed.get(col).copied().unwrap_or(0)));
        }
        t.push_str(&format!(
            " {:>6} {:>9} {:>9} {:>6} {:>5}\n",
            c.duplicates, c.near_duplicates, c.label_conflicts, c.train, c.test
        ));
    }
    t
}
