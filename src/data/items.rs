//! Finding labelled images in a folder and splitting them into train and valid sets.

use super::decode::sniff;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ItemsError {
    #[error("folder {0} does not exist; pass the folder that holds one subfolder per class")]
    Missing(PathBuf),
    #[error("{0} is not a folder; pass the folder that holds one subfolder per class")]
    NotDir(PathBuf),
    #[error("cannot read folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no images found under {0}; expected one subfolder per class, each holding images")]
    Empty(PathBuf),
    #[error("{0} holds a single class ({1}); a classifier needs at least two class folders")]
    OneClass(PathBuf, String),
    #[error("class folder {0} has no usable image")]
    EmptyClass(PathBuf),
    #[error("--valid-pct {0} must be in (0, 1)")]
    BadPct(f64),
    #[error("the split leaves no training images ({0} images, valid-pct {1})")]
    NoTrain(usize, f64),
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub path: PathBuf,
    pub label: String,
}

/// What a folder scan turned up besides the items: files that claim to be images but are not.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    pub items: Vec<Item>,
    pub not_images: Vec<PathBuf>,
    /// The scanned folder's direct subfolders (candidate classes).
    pub dirs: Vec<PathBuf>,
}

impl Scan {
    /// A direct subfolder holding no image at any depth: an empty class, the user's mistake.
    pub fn empty_dir(&self) -> Option<&PathBuf> {
        self.dirs
            .iter()
            .find(|d| !self.items.iter().any(|i| i.path.starts_with(d)))
    }
}

const IMAGE_EXTS: [&str; 10] = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "jfif", "jpe",
];

fn has_image_ext(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn head(p: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; 32];
    match std::fs::File::open(p).and_then(|mut f| f.read(&mut buf)) {
        Ok(n) => {
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    }
}

/// Whether a file's first bytes are one of our image formats (a bare JPEG start counts, so a
/// truncated JPEG is reported when it fails to decode rather than silently ignored).
pub fn looks_like_image(p: &Path) -> bool {
    let h = head(p);
    sniff(&h).is_some() || h.starts_with(b"\xff\xd8")
}

/// (folder, file) pairs, and the root's direct subfolders.
type Walk = (Vec<(PathBuf, PathBuf)>, Vec<PathBuf>);

/// Every non-hidden file under `root` with the folder holding it, and `root`'s direct subfolders
/// (less `skip`, whose contents are left out too). The one directory walk behind [`scan`] and
/// [`image_files`].
fn walk(root: &Path, skip: &[&str]) -> Result<Walk, ItemsError> {
    if !root.exists() {
        return Err(ItemsError::Missing(root.to_path_buf()));
    }
    if !root.is_dir() {
        return Err(ItemsError::NotDir(root.to_path_buf()));
    }
    let (mut files, mut top) = (Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| ItemsError::Io {
            path: dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                if dir == root {
                    if skip.contains(&name.as_str()) {
                        continue;
                    }
                    top.push(p.clone());
                }
                stack.push(p);
            } else {
                files.push((dir.clone(), p));
            }
        }
    }
    Ok((files, top))
}

/// Every image under `root` (recursively, by content, hidden entries skipped), sorted.
pub fn image_files(root: &Path) -> Result<Vec<PathBuf>, ItemsError> {
    let (files, _) = walk(root, &[])?;
    let mut out: Vec<PathBuf> = files
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| looks_like_image(p))
        .collect();
    out.sort();
    Ok(out)
}

/// Recursively lists images (recognised by content) labelled by their parent folder's name, as
/// fastai's `get_image_files` + `parent_label`. Hidden entries and `skip` subfolders are ignored.
/// Files named like images whose content is not one are returned in `not_images`; other files
/// (READMEs, `.DS_Store`) are ignored silently.
pub fn scan(root: &Path, skip: &[&str]) -> Result<Scan, ItemsError> {
    let (files, dirs) = walk(root, skip)?;
    let mut out = Scan {
        dirs,
        ..Default::default()
    };
    // Files directly in `root` have no class folder.
    for (dir, p) in files.into_iter().filter(|(d, _)| d != root) {
        if looks_like_image(&p) {
            let label = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.items.push(Item { path: p, label });
        } else if has_image_ext(&p) {
            out.not_images.push(p);
        }
    }
    out.items.sort();
    out.not_images.sort();
    out.dirs.sort();
    Ok(out)
}

/// The sorted class names (index order of the model's outputs).
pub fn classes(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// How the valid set was chosen, for the bundle's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitKind {
    Folders { train: PathBuf, valid: PathBuf },
    Random { valid_pct: f64, seed: u64 },
}

#[derive(Debug, Clone)]
pub struct Split {
    pub train: Scan,
    pub valid: Scan,
    pub kind: SplitKind,
}

/// A seeded random split, the same on every machine: paths are sorted, then permuted by
/// Fisher–Yates (rand 0.8 `SliceRandom::shuffle`) driven by ChaCha8 seeded with `seed_from_u64(seed)`;
/// the first `floor(valid_pct · n)` of the permutation are the valid set, as fastai's RandomSplitter.
pub fn random_split(
    mut items: Vec<Item>,
    valid_pct: f64,
    seed: u64,
) -> Result<(Vec<Item>, Vec<Item>), ItemsError> {
    if !(valid_pct > 0.0 && valid_pct < 1.0) {
        return Err(ItemsError::BadPct(valid_pct));
    }
    items.sort();
    let n = items.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let cut = (valid_pct * n as f64) as usize;
    if cut >= n {
        return Err(ItemsError::NoTrain(n, valid_pct));
    }
    let mut valid: Vec<Item> = idx[..cut].iter().map(|&i| items[i].clone()).collect();
    let mut train: Vec<Item> = idx[cut..].iter().map(|&i| items[i].clone()).collect();
    train.sort();
    valid.sort();
    Ok((train, valid))
}

/// `root/train` + `root/valid|validation` when present, otherwise a random split of `root`
/// (`root/test` is never used for training).
pub fn split(root: &Path, valid_pct: f64, seed: u64) -> Result<Split, ItemsError> {
    let train_dir = root.join("train");
    let valid_dir = ["valid", "validation"]
        .iter()
        .map(|v| root.join(v))
        .find(|p| p.is_dir());
    if let (true, Some(valid_dir)) = (train_dir.is_dir(), valid_dir) {
        let train = scan(&train_dir, &[])?;
        let valid = scan(&valid_dir, &[])?;
        return Ok(Split {
            train,
            valid,
            kind: SplitKind::Folders {
                train: train_dir,
                valid: valid_dir,
            },
        });
    }
    let base = if train_dir.is_dir() {
        train_dir
    } else {
        root.to_path_buf()
    };
    let all = scan(&base, &["test", "valid", "validation"])?;
    let (t, v) = random_split(all.items, valid_pct, seed)?;
    Ok(Split {
        train: Scan {
            items: t,
            not_images: all.not_images,
            dirs: all.dirs,
        },
        valid: Scan {
            items: v,
            ..Default::default()
        },
        kind: SplitKind::Random { valid_pct, seed },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                path: format!("c{}/{i:03}.jpg", i % 3).into(),
                label: format!("c{}", i % 3),
            })
            .collect()
    }

    #[test]
    fn split_is_seeded_and_sized() {
        let (t1, v1) = random_split(items(100), 0.2, 42).unwrap();
        let (t2, v2) = random_split(items(100).into_iter().rev().collect(), 0.2, 42).unwrap();
        assert_eq!((t1.len(), v1.len()), (80, 20));
        assert_eq!(
            v1, v2,
            "same seed and file set, any listing order: same split"
        );
        assert_eq!(t1, t2);
        let (_, v3) = random_split(items(100), 0.2, 43).unwrap();
        assert_ne!(v1, v3, "another seed, another split");
        assert!(v1.iter().all(|v| !t1.contains(v)));
        assert!(random_split(items(10), 1.5, 1).is_err());
    }

    #[test]
    fn split_is_stable_across_versions() {
        // Pinned: a change of RNG or shuffle algorithm would silently change every user's split.
        let (_, v) = random_split(items(20), 0.2, 42).unwrap();
        let names: Vec<String> = v
            .iter()
            .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, PINNED_SPLIT);
    }
    const PINNED_SPLIT: [&str; 4] = ["000.jpg", "006.jpg", "001.jpg", "016.jpg"];
}
