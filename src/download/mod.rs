//! `finetune download`: search, fetch in parallel, resize, verify, drop duplicates, split off a test
//! set, and keep a manifest of sources. Re-running with the same arguments resumes and only adds.
//! A class left short by failures or duplicates is topped up from further results (`topup`).

pub mod dedup;
pub mod fetch;
pub mod manifest;
mod summary;
pub mod topup;

pub use summary::{summary_table, ClassSummary};

use crate::data::decode::{decode_bytes, decode_file};
/// What download keeps is bounded by the fetcher's own cap; reading it back uses the default one.
use crate::data::files::DEFAULT_MAX_FILE_BYTES;
use crate::data::resize::resize;
use crate::search::{Cursor, Provider, SearchError, SearchResult};
use fetch::{FailReason, Fetcher};
use manifest::{Row, Status};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// Where the URLs come from.
pub enum Source<'a> {
    Search(&'a mut dyn Provider),
    Lists(BTreeMap<String, Vec<SearchResult>>),
}

/// Receives progress; the CLI shows bars, tests stay silent.
pub trait Progress: Sync {
    fn start_class(&self, _class: &str, _total: usize) {}
    /// `class` keeps `kept` images, `short` fewer than asked for: `total` more URLs are tried.
    fn top_up(&self, _class: &str, _kept: usize, _short: usize, _total: usize) {}
    /// Counts over the whole class so far, top-ups included.
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
    let from_list = matches!(source, Source::Lists(_));
    let mut summaries = Vec::new();
    for class in classes {
        let query = format!("{class}{}", cfg.query_suffix);
        let mut feed = match &mut source {
            Source::Search(p) => topup::Feed::Search {
                provider: &mut **p,
                cursor: Cursor::new(&query),
            },
            Source::Lists(l) => topup::Feed::List(l.get(class).cloned().unwrap_or_default()),
        };
        let mut s = ClassSummary {
            class: class.clone(),
            target: cfg.per_class,
            from_list,
            ..Default::default()
        };
        let mut doomed = Vec::new();
        let filled = topup::fill(
            &fetcher,
            cfg,
            class,
            &query,
            &mut feed,
            &mut rows,
            &mut s,
            &mut doomed,
            progress,
        );
        // Saved whether or not the class finished: a rate limit or a full disk in a later round
        // keeps what the earlier rounds downloaded.
        let saved = manifest::write(&manifest_path, &rows).map_err(DownloadError::Manifest);
        if saved.is_ok() {
            for f in doomed {
                let _ = std::fs::remove_file(cfg.out.join(f));
            }
        }
        filled?;
        saved?;
        summaries.push(s);
    }
    let (dropped, doomed) = drop_near_duplicates(&cfg.out, &mut rows, None);
    for s in &mut summaries {
        let (near, conflicts) = dropped.get(&s.class).copied().unwrap_or((0, 0));
        s.near_duplicates += near;
        s.label_conflicts += conflicts;
    }
    let split = split_test(&cfg.out, &mut rows, classes, cfg.test_per_class, cfg.seed);
    name_kept_files(&mut rows);
    // The manifest is written before the dropped files are deleted: a crash in between leaves
    // stray files, never a manifest row whose file is gone.
    manifest::write(&manifest_path, &rows).map_err(DownloadError::Manifest)?;
    split?;
    for f in doomed {
        let _ = std::fs::remove_file(cfg.out.join(f));
    }
    for s in &mut summaries {
        let count = |st: Status| {
            rows.iter()
                .filter(|r| r.class == s.class && r.status == st)
                .count()
        };
        (s.train, s.test) = (count(Status::Train), count(Status::Test));
        s.short_by = s.target.saturating_sub(s.kept());
        progress.finish_class(s);
    }
    Ok(summaries)
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
/// cannot be both), and none of it is kept. `only` limits the groups to one class (while it is
/// being filled, so that a top-up replaces its near-duplicates). Returns (near-duplicates,
/// conflicts) dropped per class, and the dropped rows' files (relative paths), to be deleted once
/// the manifest no longer lists them.
fn drop_near_duplicates(
    out: &Path,
    rows: &mut [Row],
    only: Option<&str>,
) -> (BTreeMap<String, (usize, usize)>, Vec<String>) {
    let mut doomed = Vec::new();
    let idx: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].is_kept() && dedup::is_current(&rows[i].phash))
        .filter(|&i| only.is_none_or(|c| rows[i].class == c))
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
                doomed.push(rows[i].file.clone());
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
                doomed.push(rows[i].file.clone());
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
