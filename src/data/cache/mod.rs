//! The on-disk image cache: every image decoded and resized once, into shards that later runs
//! memory-map instead of decoding again.
//!
//! Layout, one folder per (data folder, transform) under the cache folder:
//! ```text
//! <cache>/<name>-<method>-<size>-<hash>/
//!   index.json          classes, transform, shards, and per source file: size, mtime, shard, row
//!   s000000.npy         uint8 [n,H,W,3] (squish, pad) or [bytes] (crop: each image its own size)
//!   s000000.labels.npy  int64 [n], indices into index.json's classes
//!   lock                flock'd by the run that updates the folder
//! ```
//! Both are plain NPY v1.0 (`numpy.load(p, mmap_mode="r")`). A source file whose size or mtime
//! changed is decoded again into a new shard and only its entry moves; a new size or resize method
//! is another folder. Shards are written to temporaries and renamed, the index after them, so a
//! crash never leaves a half shard in use; a shard found truncated or corrupt is reported by name
//! and its images decoded again.

pub mod index;
mod lock;
pub mod npy;
pub mod reader;
pub mod split;
mod writer;

use super::decode::{decode_file, DecodeError};
use super::items::Item;
use super::progress::Progress;
use super::transform::{presize, ResizeMethod};
pub use index::Transform;
use index::{images_file, labels_file, Entry, Index};
use rayon::prelude::*;
pub use reader::{Loc, Shards};
pub use split::{RankSplit, SplitError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use writer::ShardWriter;

/// Shards close at about this many bytes of pixels (the research behind the format suggests
/// 1–4 GB: few files, each large enough to stream; memory use does not depend on it).
pub const DEFAULT_SHARD_BYTES: u64 = 1 << 30;
/// Images decoded in parallel at a time: bounds the decoded pixels held in memory while building.
const DECODE_CHUNK: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub shard_bytes: u64,
}

impl CacheConfig {
    pub fn new(dir: PathBuf) -> Self {
        CacheConfig {
            dir,
            shard_bytes: DEFAULT_SHARD_BYTES,
        }
    }

    /// `$FINETUNE_IMAGE_CACHE`, else `<finetune cache folder>/images` beside the weights cache
    /// (the CLI's `--cache-dir` default; the Python package uses it too).
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("FINETUNE_IMAGE_CACHE") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => crate::paths::cache_base().join("images"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one run found in and added to the cache.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The data set's cache folder.
    pub dir: PathBuf,
    /// Images taken from existing shards.
    pub reused: usize,
    /// Images decoded and written now.
    pub decoded: usize,
    pub shards_written: usize,
    /// Shard files found truncated or corrupt (their images were decoded again).
    pub rebuilt: Vec<PathBuf>,
    /// Every warning given (also to the caller's [`Progress`] as it happened).
    pub warnings: Vec<String>,
}

impl Summary {
    fn warn(&mut self, msg: String, progress: &dyn Progress) {
        progress.warn(&msg);
        self.warnings.push(msg);
    }
}

/// The requested images, located in mapped shards.
#[derive(Debug)]
pub struct Prepared {
    pub shards: Arc<Shards>,
    /// One per requested item, in order: where its pixels are, or why it could not be decoded.
    pub results: Vec<Result<Loc, DecodeError>>,
    pub summary: Summary,
}

/// The cache folder of a data set under a transform.
pub fn dataset_dir(cache_dir: &Path, canonical_root: &Path, t: &Transform) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(index::FORMAT.to_le_bytes());
    h.update(canonical_root.as_os_str().as_encoded_bytes());
    h.update(serde_json::to_vec(t).unwrap_or_default());
    let hash: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name: String = canonical_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let method = match t.method {
        ResizeMethod::Squish => "squish",
        ResizeMethod::Crop => "crop",
        ResizeMethod::Pad => "pad",
    };
    cache_dir.join(format!("{name}-{method}-{}-{hash}", t.size))
}

/// Checks a shard's two files against the index (exact lengths, headers, shapes); `Err` names the
/// bad file and why.
fn check_shard(dir: &Path, name: &str, meta: &index::ShardMeta) -> Result<(), (PathBuf, String)> {
    let images = dir.join(images_file(name));
    let h = npy::check_file(&images, "|u1").map_err(|w| (images.clone(), w))?;
    if h.shape != meta.shape || h.data_offset != npy::PAGE as u64 {
        return Err((
            images,
            format!("shape {:?}, the index says {:?}", h.shape, meta.shape),
        ));
    }
    if h.file_bytes() != Some(meta.images_bytes) {
        return Err((
            images,
            format!("not the {} bytes the index records", meta.images_bytes),
        ));
    }
    let labels = dir.join(labels_file(name));
    let l = npy::check_file(&labels, "<i8").map_err(|w| (labels.clone(), w))?;
    if l.shape != [meta.n] || l.file_bytes() != Some(meta.labels_bytes) {
        return Err((
            labels,
            format!("shape {:?}, the index says [{}]", l.shape, meta.n),
        ));
    }
    Ok(())
}

/// Whether an entry is consistent with its shard and the transform (a hand-edited or damaged
/// index must not send a read outside a shard or mix sizes in a batch).
fn entry_fits(e: &Entry, idx: &Index) -> bool {
    let Some(s) = idx.shards.get(&e.shard) else {
        return false;
    };
    let size = idx.transform.size;
    let dims_ok = match idx.transform.method {
        ResizeMethod::Crop => e.w >= size.w && e.h >= size.h,
        _ => (e.w, e.h) == (size.w, size.h),
    };
    let bytes = e.h as u64 * e.w as u64 * 3;
    let data: u64 = s.shape.iter().product();
    let row_ok = match s.shape.as_slice() {
        [n, h, w, 3] => {
            e.row < *n && (*h, *w) == (e.h as u64, e.w as u64) && e.offset == e.row * bytes
        }
        _ => e.row < s.n,
    };
    dims_ok && row_ok && e.offset.checked_add(bytes).is_some_and(|end| end <= data)
}

/// Locates (decoding and writing what is missing or stale) the images of `items`, which lie in the
/// data folder `root`, prepared by `t`. Holds the data set's lock until its shards are mapped.
pub fn locate(
    cfg: &CacheConfig,
    root: &Path,
    items: &[Item],
    t: Transform,
    max_file_bytes: u64,
    progress: &dyn Progress,
) -> Result<Prepared, CacheError> {
    let canon = std::fs::canonicalize(root).map_err(io_at(root))?;
    let dir = dataset_dir(&cfg.dir, &canon, &t);
    let _lock = lock::lock(&dir, progress).map_err(io_at(&dir))?;
    let index_path = dir.join("index.json");
    let mut summary = Summary {
        dir: dir.clone(),
        ..Default::default()
    };
    let mut idx = match index::load(&index_path) {
        Ok(Some(i)) if i.transform == t && i.root == canon => i,
        Ok(Some(_)) => {
            summary.warn(
                format!(
                    "image cache index {} belongs to other data or settings; starting it again",
                    index_path.display()
                ),
                progress,
            );
            Index::new(canon.clone(), t)
        }
        Ok(None) => Index::new(canon.clone(), t),
        Err(why) => {
            summary.warn(
                format!(
                    "image cache index {} is unreadable ({why}); decoding this data set again",
                    index_path.display()
                ),
                progress,
            );
            Index::new(canon.clone(), t)
        }
    };
    let mut dirty = false;
    let names: Vec<String> = idx.shards.keys().cloned().collect();
    for name in names {
        if let Err((file, why)) = check_shard(&dir, &name, &idx.shards[&name]) {
            let n = idx.entries.values().filter(|e| e.shard == name).count();
            summary.warn(
                format!(
                "image cache shard {} is truncated or corrupt ({why}); decoding its {n} image(s) again",
                file.display()
            ),
                progress,
            );
            summary.rebuilt.push(file);
            idx.drop_shard(&name);
            let _ = std::fs::remove_file(dir.join(images_file(&name)));
            let _ = std::fs::remove_file(dir.join(labels_file(&name)));
            dirty = true;
        }
    }

    // Which items are already cached, unchanged.
    let cap = max_file_bytes;
    let mut keys = Vec::with_capacity(items.len());
    let mut misses = Vec::new();
    let mut stamps = Vec::with_capacity(items.len());
    let mut labels = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = index::key_of(root, &item.path);
        let stamp = index::stamp(&item.path).filter(|(size, _)| *size <= cap);
        let label = idx.class_id(&item.label);
        let hit = stamp.is_some_and(|(size, mtime)| {
            idx.entries.get(&key).is_some_and(|e| {
                e.size == size
                    && e.mtime_ns == mtime
                    && mtime != index::UNKNOWN_MTIME
                    && e.label == label
                    && entry_fits(e, &idx)
            })
        });
        if !hit {
            misses.push(i);
        }
        keys.push(key);
        stamps.push(stamp);
        labels.push(label);
    }
    summary.reused = items.len() - misses.len();
    progress.advance(summary.reused as u64);

    // Decode what is missing, a chunk at a time, into new shards.
    let mut failures: HashMap<usize, DecodeError> = HashMap::new();
    let mut writer: Option<(ShardWriter, Vec<(String, Entry)>)> = None;
    for chunk in misses.chunks(DECODE_CHUNK) {
        let decoded: Vec<_> = chunk
            .par_iter()
            .map(|&i| {
                let r = decode_file(&items[i].path, cap)
                    .map(|img| presize(&img, t.method, t.size, t.pad));
                progress.advance(1);
                r
            })
            .collect();
        for (&i, r) in chunk.iter().zip(decoded) {
            let img = match r {
                Ok(img) => img,
                Err(e) => {
                    idx.entries.remove(&keys[i]);
                    failures.insert(i, e);
                    continue;
                }
            };
            if writer.is_none() {
                let name = format!("s{:06}", idx.next_shard);
                idx.next_shard += 1;
                let w = ShardWriter::create(&dir, name).map_err(io_at(&dir))?;
                writer = Some((w, Vec::new()));
            }
            let Some((w, pending)) = writer.as_mut() else {
                continue;
            };
            let placed = w.push(&img, labels[i]).map_err(io_at(&dir))?;
            // The stamp from before decoding: a file changed meanwhile is decoded again next run.
            let (size, mtime_ns) = stamps[i].unwrap_or((0, index::UNKNOWN_MTIME));
            pending.push((
                keys[i].clone(),
                Entry {
                    size,
                    mtime_ns,
                    shard: w.name.clone(),
                    row: placed.row,
                    offset: placed.offset,
                    h: img.height(),
                    w: img.width(),
                    label: labels[i],
                },
            ));
            summary.decoded += 1;
            if w.bytes() >= cfg.shard_bytes {
                if let Some((w, pending)) = writer.take() {
                    finish_shard(w, pending, &mut idx, &index_path, &mut summary)?;
                }
            }
        }
    }
    if let Some((w, pending)) = writer.take() {
        finish_shard(w, pending, &mut idx, &index_path, &mut summary)?;
    }

    // Entries of files this run did not ask for stay while their source is unchanged.
    let wanted: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let before = idx.entries.len();
    idx.entries.retain(|k, e| {
        wanted.contains(k.as_str())
            || index::stamp(&index::path_of(&canon, k))
                .is_some_and(|(s, m)| s == e.size && m == e.mtime_ns)
    });
    dirty |= idx.entries.len() != before;
    let live: BTreeSet<String> = idx.entries.values().map(|e| e.shard.clone()).collect();
    let empty: Vec<String> = idx
        .shards
        .keys()
        .filter(|s| !live.contains(*s))
        .cloned()
        .collect();
    for s in &empty {
        idx.shards.remove(s);
        dirty = true;
    }
    if dirty {
        index::save(&index_path, &idx).map_err(io_at(&index_path))?;
    }
    remove_unreferenced(&dir, &idx);

    // Map the shards this run reads.
    let mut shards = Shards::default();
    let mut numbers: BTreeMap<String, u32> = BTreeMap::new();
    let mut results = Vec::with_capacity(items.len());
    for (i, key) in keys.iter().enumerate() {
        if let Some(e) = failures.remove(&i) {
            results.push(Err(e));
            continue;
        }
        let e = idx.entries.get(key).ok_or_else(|| CacheError::Bad {
            path: index_path.clone(),
            why: format!("no entry for {key} after writing it"),
        })?;
        let shard = match numbers.get(&e.shard) {
            Some(&n) => n,
            None => {
                let path = dir.join(images_file(&e.shard));
                let meta = &idx.shards[&e.shard];
                let n = shards
                    .map(&path, npy::PAGE as u64, meta.images_bytes)
                    .map_err(|why| CacheError::Bad {
                        path: path.clone(),
                        why,
                    })?;
                numbers.insert(e.shard.clone(), n);
                n
            }
        };
        let loc = Loc {
            shard,
            offset: e.offset,
            h: e.h,
            w: e.w,
        };
        if !shards.contains(&loc) {
            return Err(CacheError::Bad {
                path: shards.path(shard).to_path_buf(),
                why: format!("{key} lies outside the shard"),
            });
        }
        results.push(Ok(loc));
    }
    Ok(Prepared {
        shards: Arc::new(shards),
        results,
        summary,
    })
}

fn finish_shard(
    w: ShardWriter,
    pending: Vec<(String, Entry)>,
    idx: &mut Index,
    index_path: &Path,
    summary: &mut Summary,
) -> Result<(), CacheError> {
    let name = w.name.clone();
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let meta = w.finish().map_err(io_at(dir))?;
    idx.shards.insert(name, meta);
    idx.entries.extend(pending);
    // The index names the shard only once it is complete; saved per shard so an interrupted first
    // run keeps what it finished.
    index::save(index_path, idx).map_err(io_at(index_path))?;
    summary.shards_written += 1;
    Ok(())
}

/// Deletes what the index does not name: shards left without images, files of crashed writers.
/// Only called under the lock, so no other process is writing here.
fn remove_unreferenced(dir: &Path, idx: &Index) {
    let mut keep: BTreeSet<String> = ["index.json", "lock"].map(String::from).into();
    for s in idx.shards.keys() {
        keep.insert(images_file(s));
        keep.insert(labels_file(s));
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with('s') && name.ends_with(".npy")
            || name.starts_with(".s")
            || name.starts_with(".index.json.");
        if ours && !keep.contains(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// One cached data set, for `cache info`.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub dir: PathBuf,
    pub root: Option<PathBuf>,
    pub transform: Option<Transform>,
    pub images: usize,
    pub classes: usize,
    pub shards: usize,
    /// All files of the folder.
    pub bytes: u64,
    /// Shard bytes of images whose source changed or went away (reclaimed by `cache clear`).
    pub stale_bytes: u64,
    pub root_exists: bool,
    /// Why the index could not be read, if so.
    pub problem: Option<String>,
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Whether `dir` looks like a data set folder this cache made (only those are ever deleted).
fn is_dataset_dir(dir: &Path) -> bool {
    dir.is_dir() && (dir.join("index.json").is_file() || dir.join("lock").is_file())
}

/// Every data set cached under `cache_dir` (an absent folder holds none). Reads each index without
/// the lock: it is replaced atomically, so a read sees one whole version.
pub fn info(cache_dir: &Path) -> std::io::Result<Vec<DatasetInfo>> {
    let rd = match std::fs::read_dir(cache_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let dir = e.path();
        if !is_dataset_dir(&dir) {
            continue;
        }
        let mut d = DatasetInfo {
            bytes: folder_bytes(&dir),
            dir: dir.clone(),
            root: None,
            transform: None,
            images: 0,
            classes: 0,
            shards: 0,
            stale_bytes: 0,
            root_exists: false,
            problem: None,
        };
        match index::load(&dir.join("index.json")) {
            Ok(Some(idx)) => {
                d.root_exists = idx.root.is_dir();
                d.images = idx.entries.len();
                d.classes = idx.classes.len();
                d.shards = idx.shards.len();
                d.stale_bytes = idx.stale_bytes();
                d.transform = Some(idx.transform);
                d.root = Some(idx.root);
            }
            Ok(None) => d.problem = Some("no index yet (being built, or interrupted)".into()),
            Err(why) => d.problem = Some(format!("unreadable index: {why}")),
        }
        out.push(d);
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// Which cached data sets `cache clear` removes.
#[derive(Debug, Clone)]
pub enum Clear {
    All,
    /// Those of one data folder (every transform).
    Root(PathBuf),
    /// Those whose data folder no longer exists, or whose index is unreadable.
    Missing,
}

/// Removes the selected data sets' folders, each under its lock (a run that has already mapped
/// its shards keeps reading them; the files go when it exits). Returns what was removed.
pub fn clear(cache_dir: &Path, which: &Clear) -> std::io::Result<Vec<DatasetInfo>> {
    let root = match which {
        Clear::Root(r) => Some(std::fs::canonicalize(r).unwrap_or_else(|_| r.clone())),
        _ => None,
    };
    let mut removed = Vec::new();
    for d in info(cache_dir)? {
        let selected = match which {
            Clear::All => true,
            Clear::Root(_) => d.root.is_some() && d.root == root,
            Clear::Missing => d.problem.is_some() || !d.root_exists,
        };
        if !selected {
            continue;
        }
        let _lock = lock::lock(&d.dir, &super::Quiet)?;
        // A folder that was still being built when listed may be complete now.
        if matches!(which, Clear::Missing)
            && d.root_exists
            && matches!(index::load(&d.dir.join("index.json")), Ok(Some(_)))
        {
            continue;
        }
        std::fs::remove_dir_all(&d.dir)?;
        removed.push(d);
    }
    Ok(removed)
}
