//! Finding labelled images in a folder and splitting them into train and valid sets.

use super::decode::sniff;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
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
    #[error(
        "class `{class}` ({dir}) has only {count} image(s); a random split needs at least 2 per class \
         (one to train on, one to validate). Add images to that folder, remove it, or pass a folder \
         with explicit train/ and valid/ subfolders"
    )]
    TooFewToSplit {
        class: String,
        dir: PathBuf,
        count: usize,
    },
}

/// Where the labels are when a CSV gives them (`--labels`, read by `data::labels`): the CSV and its
/// columns (a header name, or a 0-based position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelsCsv {
    pub path: PathBuf,
    /// fastai's `fn_col` (default: the first column).
    pub fn_col: String,
    /// fastai's `label_col` (default: the second column).
    pub label_col: String,
    /// fastai's `valid_col`: rows whose value is true/1 form the valid set.
    pub valid_col: Option<String>,
    /// fastai's `label_delim`: each label cell holds a set of labels separated by it (multi-label
    /// classification; an empty cell is an image with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_delim: Option<String>,
}

impl LabelsCsv {
    pub fn new(path: PathBuf) -> Self {
        LabelsCsv {
            path,
            fn_col: "0".into(),
            label_col: "1".into(),
            valid_col: None,
            label_delim: None,
        }
    }
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub path: PathBuf,
    pub label: String,
}

/// What a folder scan turned up besides the items: what it left out (files that claim to be images
/// but are not, special files, symlink loops, unreadable folders), each with its reason.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    pub items: Vec<Item>,
    pub skipped: Vec<Skip>,
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

/// File extensions of the formats we read (a file so named that is no image is reported).
pub const IMAGE_EXTS: [&str; 10] = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "jfif", "jpe",
];

fn has_image_ext(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether a file's first bytes are one of our image formats (a bare JPEG start counts, so a
/// truncated JPEG is reported when it fails to decode rather than silently ignored).
pub fn looks_like_image(p: &Path) -> bool {
    let h = super::files::head(p, 32);
    sniff(&h).is_some() || h.starts_with(b"\xff\xd8")
}

/// A file or folder the walk left out, and why (a warning names each once).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// What [`walk`] found: (folder, file) pairs, `root`'s direct subfolders, and what it left out.
#[derive(Debug, Default)]
struct Walk {
    files: Vec<(PathBuf, PathBuf)>,
    top: Vec<PathBuf>,
    skipped: Vec<Skip>,
}

/// Every non-hidden regular file under `root` with the folder holding it, and `root`'s direct
/// subfolders (less `skip`, whose contents are left out too). The one directory walk behind [`scan`]
/// and [`image_files`].
///
/// Symlinks are resolved; only regular files and folders are kept (FIFOs, sockets and devices are
/// skipped with a reason, as they could block or never end). Each real folder is entered once, so
/// symlink loops (`a -> .`, `b -> ..`) and two links to one folder cost one warning, not an explosion.
/// Linked folders are entered after every real one, so a folder reached both directly and through a
/// link is labelled by its own name.
/// A subfolder that cannot be read is skipped with a reason; only an unreadable `root` is an error.
fn walk(root: &Path, skip: &[&str]) -> Result<Walk, ItemsError> {
    if !root.exists() {
        return Err(ItemsError::Missing(root.to_path_buf()));
    }
    if !root.is_dir() {
        return Err(ItemsError::NotDir(root.to_path_buf()));
    }
    let mut w = Walk::default();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    if let Ok(real) = std::fs::canonicalize(root) {
        seen.insert(real);
    }
    let mut stack = vec![root.to_path_buf()];
    let mut linked: Vec<(PathBuf, PathBuf)> = Vec::new();
    while let Some(dir) = stack
        .pop()
        .or_else(|| next_linked(&mut linked, &mut seen, &mut w, root))
    {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(source) if dir == root => {
                return Err(ItemsError::Io { path: dir, source });
            }
            Err(e) => {
                w.skipped.push(Skip {
                    path: dir,
                    reason: format!("cannot read folder: {e}"),
                });
                continue;
            }
        };
        let mut entries: Vec<std::fs::DirEntry> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Follows symlinks: what matters is what a read would reach.
            let meta = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(err) => {
                    let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
                    w.skipped.push(Skip {
                        path: p,
                        reason: if is_link {
                            format!("broken or looping symlink ({err})")
                        } else {
                            format!("cannot read: {err}")
                        },
                    });
                    continue;
                }
            };
            if meta.is_dir() {
                if dir == root && skip.contains(&name.as_str()) {
                    continue;
                }
                if e.file_type().is_ok_and(|t| t.is_symlink()) {
                    linked.push((dir.clone(), p));
                    continue;
                }
                match std::fs::canonicalize(&p) {
                    Ok(real) if !seen.insert(real.clone()) => {
                        w.skipped.push(already_walked(p, &real));
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        w.skipped.push(Skip {
                            path: p,
                            reason: format!("cannot resolve folder: {err}"),
                        });
                        continue;
                    }
                }
                if dir == root {
                    w.top.push(p.clone());
                }
                stack.push(p);
            } else if let Some(kind) = super::files::special_kind(&meta) {
                w.skipped.push(Skip {
                    path: p,
                    reason: format!("{kind}, not a regular file"),
                });
            } else {
                w.files.push((dir.clone(), p));
            }
        }
    }
    Ok(w)
}

/// The next linked folder to enter once every real one is done: one whose real folder was not
/// reached another way (the others are skipped with a reason).
fn next_linked(
    linked: &mut Vec<(PathBuf, PathBuf)>,
    seen: &mut HashSet<PathBuf>,
    w: &mut Walk,
    root: &Path,
) -> Option<PathBuf> {
    while let Some((parent, p)) = linked.pop() {
        match std::fs::canonicalize(&p) {
            Ok(real) if !seen.insert(real.clone()) => w.skipped.push(already_walked(p, &real)),
            Ok(_) => {
                if parent == root {
                    w.top.push(p.clone());
                }
                return Some(p);
            }
            Err(err) => w.skipped.push(Skip {
                path: p,
                reason: format!("cannot resolve folder: {err}"),
            }),
        }
    }
    None
}

fn already_walked(path: PathBuf, real: &Path) -> Skip {
    Skip {
        path,
        reason: format!(
            "folder {} was already walked (a symlink loop or a second link to it); not entered again",
            real.display()
        ),
    }
}

/// Every image under `root` (recursively, by content, hidden entries skipped), sorted, and what was
/// left out: files named like images whose content is not one, special files, symlink loops.
pub fn image_files(root: &Path) -> Result<(Vec<PathBuf>, Vec<Skip>), ItemsError> {
    let w = walk(root, &[])?;
    let mut skipped = w.skipped;
    let mut out = Vec::new();
    for (_, p) in w.files {
        if looks_like_image(&p) {
            out.push(p);
        } else if has_image_ext(&p) {
            skipped.push(not_image(p));
        }
    }
    out.sort();
    skipped.sort();
    Ok((out, skipped))
}

fn not_image(path: PathBuf) -> Skip {
    let what = super::decode::describe(&super::files::head(&path, 256));
    Skip {
        path,
        reason: format!("not an image (content is {what})"),
    }
}

/// Recursively lists images (recognised by content) labelled by their parent folder's name, as
/// fastai's `get_image_files` + `parent_label`. Hidden entries and `skip` subfolders are ignored.
/// Files named like images whose content is not one are returned in `not_images`; other files
/// (READMEs, `.DS_Store`) are ignored silently.
pub fn scan(root: &Path, skip: &[&str]) -> Result<Scan, ItemsError> {
    let w = walk(root, skip)?;
    let mut out = Scan {
        dirs: w.top,
        skipped: w.skipped,
        ..Default::default()
    };
    // Files directly in `root` have no class folder.
    for (dir, p) in w.files.into_iter().filter(|(d, _)| d != root) {
        if looks_like_image(&p) {
            let label = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.items.push(Item { path: p, label });
        } else if has_image_ext(&p) {
            out.skipped.push(not_image(p));
        }
    }
    out.items.sort();
    out.skipped.sort();
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
    Folders {
        train: PathBuf,
        valid: PathBuf,
    },
    Random {
        valid_pct: f64,
        seed: u64,
    },
    /// Labels from a CSV (`--labels`): its valid column, or a seeded random split.
    Csv {
        labels: LabelsCsv,
        valid_pct: Option<f64>,
        seed: Option<u64>,
    },
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
    let (mut v, mut t) = (idx[..cut].to_vec(), idx[cut..].to_vec());
    // A class the permutation put wholly into valid would be unknown to the model: the last of its
    // valid images goes back to train. Only small classes are affected; others keep fastai's split.
    for c in classes(&items) {
        if !t.iter().any(|&i| items[i].label == c) {
            if let Some(pos) = v.iter().rposition(|&i| items[i].label == c) {
                t.push(v.remove(pos));
            }
        }
    }
    let mut valid: Vec<Item> = v.iter().map(|&i| items[i].clone()).collect();
    let mut train: Vec<Item> = t.iter().map(|&i| items[i].clone()).collect();
    train.sort();
    valid.sort();
    Ok((train, valid))
}

/// Where a data folder's labelled images are: its own `train/` and `valid/` (or `validation/`)
/// folders, or one folder (`root/train` when only that exists, else `root`) to split at random.
enum Layout {
    Folders { train: PathBuf, valid: PathBuf },
    One(PathBuf),
}

fn layout(root: &Path) -> Layout {
    let train = root.join("train");
    let valid = ["valid", "validation"]
        .iter()
        .map(|v| root.join(v))
        .find(|p| p.is_dir());
    match (train.is_dir(), valid) {
        (true, Some(valid)) => Layout::Folders { train, valid },
        (true, None) => Layout::One(train),
        (false, _) => Layout::One(root.to_path_buf()),
    }
}

/// Folders a one-folder layout leaves out: the test set, and valid folders beside a lone `train/`.
const NOT_TRAINING: [&str; 3] = ["test", "valid", "validation"];

/// Every labelled image [`split`] would divide, undivided, with what was skipped in any of its
/// folders: for scoring a folder with a model that did not record its split (`clean`), where a
/// class of a single image is no error.
pub fn labelled(root: &Path) -> Result<Scan, ItemsError> {
    match layout(root) {
        Layout::Folders { train, valid } => {
            let mut all = scan(&train, &[])?;
            let valid = scan(&valid, &[])?;
            all.items.extend(valid.items);
            all.skipped.extend(valid.skipped);
            all.dirs.extend(valid.dirs);
            all.items.sort();
            all.skipped.sort();
            all.dirs.sort();
            Ok(all)
        }
        Layout::One(base) => scan(&base, &NOT_TRAINING),
    }
}

/// `root/train` + `root/valid|validation` when present, otherwise a random split of `root`
/// (`root/test` is never used for training).
pub fn split(root: &Path, valid_pct: f64, seed: u64) -> Result<Split, ItemsError> {
    let base = match layout(root) {
        Layout::Folders { train, valid } => {
            return Ok(Split {
                train: scan(&train, &[])?,
                valid: scan(&valid, &[])?,
                kind: SplitKind::Folders { train, valid },
            })
        }
        Layout::One(base) => base,
    };
    let all = scan(&base, &NOT_TRAINING)?;
    let mut counts: std::collections::BTreeMap<&str, (usize, &Path)> = Default::default();
    for it in &all.items {
        let e = counts
            .entry(it.label.as_str())
            .or_insert((0, it.path.parent().unwrap_or(&base)));
        e.0 += 1;
    }
    if let Some((class, (count, dir))) = counts.iter().find(|(_, (n, _))| *n < 2) {
        return Err(ItemsError::TooFewToSplit {
            class: class.to_string(),
            dir: dir.to_path_buf(),
            count: *count,
        });
    }
    let (t, v) = random_split(all.items, valid_pct, seed)?;
    Ok(Split {
        train: Scan {
            items: t,
            skipped: all.skipped,
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

    /// `labelled` lists what `split` divides, without its two-per-class rule, and reports what
    /// it skipped in the valid folder too.
    #[test]
    fn labelled_lists_every_image_split_would_divide() {
        let d = tempfile::tempdir().unwrap();
        let png = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::RgbImage::new(2, 2).save(p).unwrap();
        };
        png(&d.path().join("a/1.png"));
        png(&d.path().join("a/2.png"));
        png(&d.path().join("b/1.png"));
        png(&d.path().join("test/a/9.png"));
        assert!(matches!(
            split(d.path(), 0.5, 0),
            Err(ItemsError::TooFewToSplit { .. })
        ));
        let all = labelled(d.path()).unwrap();
        let names: Vec<_> = all.items.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(
            names,
            ["a", "a", "b"],
            "test/ is left out, b's one image kept"
        );

        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("train/a/1.png"));
        png(&d.path().join("valid/a/2.png"));
        std::fs::write(d.path().join("valid/a/broken.jpg"), b"not a jpeg").unwrap();
        let all = labelled(d.path()).unwrap();
        assert_eq!(all.items.len(), 2);
        assert_eq!(all.skipped.len(), 1, "{:?}", all.skipped);
        assert!(all.skipped[0].path.ends_with("valid/a/broken.jpg"));
    }

    #[test]
    fn every_class_keeps_a_training_image() {
        // Two images of class `rare` among many: whatever the seed, `rare` must be in train.
        for seed in 0..200 {
            let mut it = items(30);
            for i in 0..2 {
                it.push(Item {
                    path: format!("rare/{i}.jpg").into(),
                    label: "rare".into(),
                });
            }
            let (t, v) = random_split(it, 0.5, seed).unwrap();
            assert!(t.iter().any(|i| i.label == "rare"), "seed {seed}");
            assert_eq!(t.len() + v.len(), 32);
        }
    }
}
