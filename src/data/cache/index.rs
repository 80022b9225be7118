//! `index.json`: what each shard holds and which source file (at which size and mtime) each cached
//! image came from. It is the only authority: a shard file the index does not name is garbage, and
//! the index is rewritten (atomically) only after the shards it names are complete on disk.

use crate::data::transform::{PadMode, ResizeMethod, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bumped whenever decoding, resizing or the layout changes, so old caches are never read as new.
pub const FORMAT: u32 = 1;
/// `index.json` is read whole; beyond this it is treated as corrupt (about 4 M entries).
pub const MAX_INDEX_BYTES: u64 = 1 << 30;

/// The deterministic item transform whose output the shards hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transform {
    pub size: Size,
    pub method: ResizeMethod,
    pub pad: PadMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    /// The data folder (canonical), for `cache info` and to find sources when pruning.
    pub root: PathBuf,
    pub transform: Transform,
    /// Every class name ever cached here, in first-seen order; shard labels index into it (only
    /// appended to, so old shards' labels stay valid).
    pub classes: Vec<String>,
    pub shards: BTreeMap<String, ShardMeta>,
    /// By source path relative to `root` (see [`key_of`]).
    pub entries: BTreeMap<String, Entry>,
    /// Shard names are `s` + this counter, never reused.
    pub next_shard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// `[n,H,W,3]` uint8 when all images have one size (squish, pad), else `[bytes]` uint8 with
    /// each image at its entry's `offset` (crop keeps each image's own pre-crop size).
    pub shape: Vec<u64>,
    /// Images written (live or not).
    pub n: u64,
    /// Exact sizes of the two files, checked before each use.
    pub images_bytes: u64,
    pub labels_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The source file when it was decoded; a difference in either means it changed.
    pub size: u64,
    pub mtime_ns: i64,
    pub shard: String,
    pub row: u64,
    /// Byte offset of the image in the shard's data (row × H×W×3 for uniform shards).
    pub offset: u64,
    pub h: u32,
    pub w: u32,
    /// Index into [`Index::classes`].
    pub label: u32,
}

/// A source's mtime that never matches a stored one: the file system could not tell.
pub const UNKNOWN_MTIME: i64 = i64::MIN;

impl Index {
    pub fn new(root: PathBuf, transform: Transform) -> Self {
        Index {
            format: FORMAT,
            root,
            transform,
            classes: Vec::new(),
            shards: BTreeMap::new(),
            entries: BTreeMap::new(),
            next_shard: 0,
        }
    }

    /// The label index of `class`, appending it when new.
    pub fn class_id(&mut self, class: &str) -> u32 {
        match self.classes.iter().position(|c| c == class) {
            Some(i) => i as u32,
            None => {
                self.classes.push(class.to_string());
                (self.classes.len() - 1) as u32
            }
        }
    }

    /// Removes `shard` and every entry in it.
    pub fn drop_shard(&mut self, shard: &str) {
        self.shards.remove(shard);
        self.entries.retain(|_, e| e.shard != shard);
    }

    /// Bytes of shard data no entry refers to any more (images of changed or deleted files).
    pub fn stale_bytes(&self) -> u64 {
        let mut live: BTreeMap<&str, u64> = BTreeMap::new();
        for e in self.entries.values() {
            *live.entry(e.shard.as_str()).or_default() += e.h as u64 * e.w as u64 * 3;
        }
        self.shards
            .iter()
            .map(|(name, s)| {
                let data: u64 = s.shape.iter().product();
                data.saturating_sub(live.get(name.as_str()).copied().unwrap_or(0))
            })
            .sum()
    }
}

pub fn images_file(shard: &str) -> String {
    format!("{shard}.npy")
}

pub fn labels_file(shard: &str) -> String {
    format!("{shard}.labels.npy")
}

/// The index key of `path`: relative to `root` when below it, as UTF-8 when it is, else `b64:` and
/// the raw bytes in base64 (file names need not be UTF-8 on Unix).
pub fn key_of(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    match rel.to_str() {
        Some(s) => s.to_string(),
        None => {
            use base64::Engine;
            #[cfg(unix)]
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()).to_vec();
            #[cfg(not(unix))]
            let bytes = rel.to_string_lossy().as_bytes().to_vec();
            format!(
                "b64:{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        }
    }
}

/// The source path of a key (inverse of [`key_of`]).
pub fn path_of(root: &Path, key: &str) -> PathBuf {
    if let Some(b) = key.strip_prefix("b64:") {
        use base64::Engine;
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b) {
            #[cfg(unix)]
            return root
                .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes));
            #[cfg(not(unix))]
            return root.join(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    root.join(key)
}

/// (size, mtime in ns since the epoch) of a regular file; `None` when it is not one.
pub fn stamp(path: &Path) -> Option<(u64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    let mtime = m
        .modified()
        .ok()
        .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(UNKNOWN_MTIME),
            Err(e) => i64::try_from(e.duration().as_nanos())
                .map(|n| -n)
                .unwrap_or(UNKNOWN_MTIME),
        })
        .unwrap_or(UNKNOWN_MTIME);
    Some((m.len(), mtime))
}

/// Reads `index.json` (bounded). `Ok(None)` when absent; `Err` (why) when unreadable or not an
/// index of this format.
pub fn load(path: &Path) -> Result<Option<Index>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes =
        crate::data::files::read_capped(path, MAX_INDEX_BYTES).map_err(|e| e.to_string())?;
    let idx: Index = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if idx.format != FORMAT {
        return Err(format!(
            "format {} (this finetune writes {FORMAT})",
            idx.format
        ));
    }
    Ok(Some(idx))
}

pub fn save(path: &Path, idx: &Index) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(idx).map_err(std::io::Error::other)?;
    crate::atomic::write_file(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let root = Path::new("/data/set");
        for p in ["/data/set/cat/a b.jpg", "/elsewhere/x.png"] {
            let k = key_of(root, Path::new(p));
            assert_eq!(
                path_of(root, &k),
                root.join(Path::new(p).strip_prefix(root).unwrap_or(Path::new(p)))
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let odd = root.join(std::ffi::OsStr::from_bytes(b"cat/\xff.jpg"));
            let k = key_of(root, &odd);
            assert!(k.starts_with("b64:"));
            assert_eq!(path_of(root, &k), odd);
        }
    }
}
