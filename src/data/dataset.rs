//! Decoded, resized images held in memory, and the batches cut from them.
//!
//! Every image is decoded and resized once, on all cores, before the first epoch; epochs then only
//! copy bytes: from memory, or (with the on-disk cache, [`super::cache`]) from memory-mapped shards
//! that later runs reuse. A file that fails to decode is skipped with one warning naming it (or is
//! fatal under `strict`).

use super::cache::{self, CacheConfig, Loc, Shards};
use super::decode::{decode_file, DecodeError};
use super::items::{self, Item, ItemsError, Skip, Split, SplitKind};
use super::progress::Progress;
use super::tensor::stack_u8;
use super::transform::{crop_window, presize, PadMode, ResizeMethod, Size};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Items(#[from] ItemsError),
    #[error(transparent)]
    Labels(#[from] super::labels::LabelsError),
    #[error("{0} (--strict makes unreadable images fatal; remove the file or drop --strict)")]
    Strict(DecodeError),
    #[error("{0} (--strict makes this fatal; remove the file or drop --strict)")]
    StrictSkipped(Skip),
    #[error("class `{class}` has no usable image in the training set ({dir})")]
    EmptyClass { class: String, dir: String },
    #[error("valid folder has class `{0}`, which the training folder lacks")]
    UnknownValidClass(String),
    #[error("--bs must be at least 1")]
    BatchSize,
}

#[derive(Debug, Clone)]
pub struct DataConfig {
    pub size: Size,
    pub method: ResizeMethod,
    pub pad: PadMode,
    pub bs: usize,
    pub valid_pct: f64,
    pub seed: u64,
    pub strict: bool,
    /// The largest image file read (`--max-file-mb`); bigger ones are skipped like unreadable ones.
    pub max_file_bytes: u64,
    /// Labels from a CSV instead of the folder names (`--labels`).
    pub labels: Option<super::labels::LabelsCsv>,
}

impl DataConfig {
    /// The checks every caller's settings pass through (the CLI's and the Python package's alike);
    /// the split's fraction is checked where the split is made.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.bs == 0 {
            return Err(DataError::BatchSize);
        }
        Ok(())
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            size: Size { w: 192, h: 192 },
            method: ResizeMethod::Squish,
            pad: PadMode::Reflection,
            bs: 64,
            valid_pct: 0.2,
            seed: 42,
            strict: false,
            max_file_bytes: super::files::DEFAULT_MAX_FILE_BYTES,
            labels: None,
        }
    }
}

/// Images ready for batching, with their labels (class indices) and source paths.
#[derive(Debug, Default)]
pub struct ImageSet {
    pixels: Pixels,
    /// Single-label: each image's class index. Multi-label: unused (zeros).
    pub labels: Vec<i64>,
    /// Multi-label (`label_delim`): each image's label indices (possibly none); empty otherwise.
    pub multi: Vec<Vec<u32>>,
    pub paths: Vec<PathBuf>,
}

/// Where an image set's prepared pixels live.
#[derive(Debug)]
enum Pixels {
    Memory(Vec<RgbImage>),
    /// Memory-mapped cache shards (shared by the train and valid sets).
    Cached {
        shards: Arc<Shards>,
        locs: Vec<Loc>,
    },
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::Memory(Vec::new())
    }
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.paths.len()
    }
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
    /// Whether the pixels are read from the on-disk cache (else they are held in memory).
    pub fn is_cached(&self) -> bool {
        matches!(self.pixels, Pixels::Cached { .. })
    }
    /// Image `i` as prepared (for crop: before the window is cut); borrowed when in memory.
    pub fn image(&self, i: usize) -> Cow<'_, RgbImage> {
        match &self.pixels {
            Pixels::Memory(images) => Cow::Borrowed(&images[i]),
            Pixels::Cached { shards, locs } => Cow::Owned(shards.image(&locs[i])),
        }
    }
}

/// Decodes and prepares `paths` in parallel; failures come back as `Err` in place.
pub fn decode_prepared(
    paths: &[PathBuf],
    cfg: &DataConfig,
    progress: &dyn Progress,
) -> Vec<Result<RgbImage, DecodeError>> {
    paths
        .par_iter()
        .map(|p| {
            let r = decode_file(p, cfg.max_file_bytes)
                .map(|img| presize(&img, cfg.method, cfg.size, cfg.pad));
            progress.advance(1);
            r
        })
        .collect()
}

/// The decoded items of a set, in order, with their labels and paths.
struct Kept<P> {
    pixels: Vec<P>,
    labels: Vec<i64>,
    multi: Vec<Vec<u32>>,
    paths: Vec<PathBuf>,
}

/// fastai's `MultiCategorize` reading of a label cell: the labels separated by `delim` (blank
/// pieces dropped, so an empty cell is an image with no label).
pub fn split_labels<'a>(label: &'a str, delim: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    label.split(delim).map(str::trim).filter(|t| !t.is_empty())
}

/// The classes of a training set: its labels (each label of each cell when multi-label), sorted.
pub fn classes_of(items: &[Item], delim: Option<&str>) -> Vec<String> {
    match delim {
        None => items::classes(items),
        Some(d) => items
            .iter()
            .flat_map(|i| split_labels(&i.label, d))
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

/// Keeps the decoded items, in order, with their labels; warns about (or, under `strict`, stops at)
/// each one that failed.
fn keep_decoded<P>(
    items: &[Item],
    decoded: Vec<Result<P, DecodeError>>,
    classes: &[String],
    cfg: &DataConfig,
    skipped: &mut Vec<Skip>,
    progress: &dyn Progress,
) -> Result<Kept<P>, DataError> {
    let (mut pixels, mut labels, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    let mut multi = Vec::new();
    let delim = cfg.labels.as_ref().and_then(|l| l.label_delim.as_deref());
    let index = |l: &str| {
        classes
            .iter()
            .position(|c| c == l)
            .ok_or_else(|| DataError::UnknownValidClass(l.to_string()))
    };
    for (item, r) in items.iter().zip(decoded) {
        match r {
            Ok(p) => {
                match delim {
                    None => labels.push(index(&item.label)? as i64),
                    Some(d) => {
                        let mut set = split_labels(&item.label, d)
                            .map(|l| index(l).map(|i| i as u32))
                            .collect::<Result<Vec<u32>, _>>()?;
                        set.sort_unstable();
                        set.dedup();
                        multi.push(set);
                        labels.push(0);
                    }
                }
                pixels.push(p);
                paths.push(item.path.clone());
            }
            Err(e) if cfg.strict => return Err(DataError::Strict(e)),
            Err(e) => {
                progress.warn(&format!("skipping {e}"));
                skipped.push(Skip {
                    path: item.path.clone(),
                    reason: e.reason(),
                });
            }
        }
    }
    Ok(Kept {
        pixels,
        labels,
        multi,
        paths,
    })
}

fn load_set(
    items: &[Item],
    classes: &[String],
    cfg: &DataConfig,
    skipped: &mut Vec<Skip>,
    progress: &dyn Progress,
) -> Result<ImageSet, DataError> {
    let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let decoded = decode_prepared(&paths, cfg, progress);
    let k = keep_decoded(items, decoded, classes, cfg, skipped, progress)?;
    Ok(ImageSet {
        pixels: Pixels::Memory(k.pixels),
        labels: k.labels,
        multi: k.multi,
        paths: k.paths,
    })
}

type CachedSets = (ImageSet, ImageSet, cache::Summary);

/// The train and valid sets located in the on-disk cache (decoding only what it lacks).
fn load_cached(
    root: &Path,
    (train, valid): (&[Item], &[Item]),
    classes: &[String],
    cfg: &DataConfig,
    cache_cfg: &CacheConfig,
    skipped: &mut Vec<Skip>,
    progress: &dyn Progress,
) -> Result<Result<CachedSets, cache::CacheError>, DataError> {
    let all: Vec<Item> = train.iter().chain(valid).cloned().collect();
    let t = cache::Transform {
        size: cfg.size,
        method: cfg.method,
        pad: cfg.pad,
    };
    let p = match cache::locate(cache_cfg, root, &all, t, cfg.max_file_bytes, progress) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let mut results = p.results;
    let valid_results = results.split_off(train.len());
    let mut set = |items: &[Item], r| -> Result<ImageSet, DataError> {
        let k = keep_decoded(items, r, classes, cfg, skipped, progress)?;
        Ok(ImageSet {
            pixels: Pixels::Cached {
                shards: p.shards.clone(),
                locs: k.pixels,
            },
            labels: k.labels,
            multi: k.multi,
            paths: k.paths,
        })
    };
    let train_set = set(train, results)?;
    let valid_set = set(valid, valid_results)?;
    Ok(Ok((train_set, valid_set, p.summary)))
}

/// Training and validation data, like fastai's `DataLoaders`.
#[derive(Debug)]
pub struct DataLoaders {
    pub classes: Vec<String>,
    pub train: ImageSet,
    pub valid: ImageSet,
    pub cfg: DataConfig,
    pub split: SplitKind,
    /// Every file left out (warned about once each).
    pub skipped: Vec<Skip>,
    /// What the on-disk cache reused and added; `None` when decoded into memory.
    pub cache: Option<cache::Summary>,
}

impl DataLoaders {
    /// Scans `root`, splits it (folders or seeded random), and decodes everything once into memory.
    pub fn from_folder(
        root: &Path,
        cfg: DataConfig,
        progress: &dyn Progress,
    ) -> Result<Self, DataError> {
        Self::from_folder_cached(root, cfg, None, progress)
    }

    /// As [`Self::from_folder`], with the images in the on-disk cache `cache` when given: decoded
    /// only if missing or changed there, then read from memory-mapped shards. If the cache cannot
    /// be used (unwritable folder, full disk), a warning says why and everything is decoded into
    /// memory instead. Either way the batches are the same, byte for byte.
    pub fn from_folder_cached(
        root: &Path,
        cfg: DataConfig,
        cache: Option<&CacheConfig>,
        progress: &dyn Progress,
    ) -> Result<Self, DataError> {
        let (Split { train, valid, kind }, listed) = match &cfg.labels {
            Some(l) => super::labels::split(root, l, cfg.valid_pct, cfg.seed, progress)?,
            None => (items::split(root, cfg.valid_pct, cfg.seed)?, Vec::new()),
        };
        let mut skipped = Vec::new();
        // CSV rows naming missing or non-image files, already reported in one warning.
        for s in listed {
            if cfg.strict {
                return Err(DataError::StrictSkipped(s));
            }
            skipped.push(s);
        }
        for scan in [&train, &valid] {
            for s in &scan.skipped {
                if cfg.strict {
                    return Err(DataError::StrictSkipped(s.clone()));
                }
                progress.warn(&format!("skipping {s}"));
                skipped.push(s.clone());
            }
        }
        if let Some(d) = train.empty_dir() {
            return Err(ItemsError::EmptyClass(d.clone()).into());
        }
        let delim = cfg.labels.as_ref().and_then(|l| l.label_delim.clone());
        let classes = classes_of(&train.items, delim.as_deref());
        let base = match &kind {
            SplitKind::Folders { train, .. } => train.clone(),
            SplitKind::Random { .. } | SplitKind::Csv { .. } => root.to_path_buf(),
        };
        match classes.len() {
            0 => return Err(ItemsError::Empty(base).into()),
            1 => return Err(ItemsError::OneClass(base, classes[0].clone()).into()),
            _ => {}
        }
        progress.start((train.items.len() + valid.items.len()) as u64);
        let mut cached = None;
        if let Some(c) = cache {
            let sets = (train.items.as_slice(), valid.items.as_slice());
            match load_cached(root, sets, &classes, &cfg, c, &mut skipped, progress)? {
                Ok(r) => cached = Some(r),
                Err(e) => {
                    progress.warn(&format!(
                        "image cache not usable ({e}); decoding into memory instead"
                    ));
                    progress.restart();
                }
            }
        }
        let (train_set, valid_set, summary) = match cached {
            Some((t, v, s)) => (t, v, Some(s)),
            None => (
                load_set(&train.items, &classes, &cfg, &mut skipped, progress)?,
                load_set(&valid.items, &classes, &cfg, &mut skipped, progress)?,
                None,
            ),
        };
        progress.finish();
        for (i, c) in classes.iter().enumerate() {
            let present = match delim {
                None => train_set.labels.contains(&(i as i64)),
                Some(_) => train_set.multi.iter().any(|s| s.contains(&(i as u32))),
            };
            if !present {
                let dir = train
                    .items
                    .iter()
                    .find(|it| &it.label == c)
                    .and_then(|it| it.path.parent())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(DataError::EmptyClass {
                    class: c.clone(),
                    dir,
                });
            }
        }
        Ok(DataLoaders {
            classes,
            train: train_set,
            valid: valid_set,
            cfg,
            split: kind,
            skipped,
            cache: summary,
        })
    }

    /// Number of training batches per epoch (last incomplete batch dropped, as fastai).
    pub fn n_train_batches(&self) -> usize {
        self.train.len() / self.cfg.bs.max(1)
    }

    /// Whether each image has a set of labels (`--label-delim`) rather than one class.
    pub fn is_multi_label(&self) -> bool {
        self.cfg
            .labels
            .as_ref()
            .is_some_and(|l| l.label_delim.is_some())
    }

    /// One epoch's shuffled training batches as index lists (the last incomplete one dropped); each is
    /// turned into tensors by [`Self::train_batch`] only when needed, so an epoch never holds a second
    /// copy of the training set.
    pub fn train_order<R: Rng>(&self, rng: &mut R) -> Vec<Vec<usize>> {
        self.train_order_by(rng, self.cfg.bs, false)
    }

    /// [`Self::train_order`] in batches of `bs` (a data-parallel run's global batch, which each
    /// rank then cuts into its share); `balanced`: [`balanced_draws`] instead of a shuffle.
    pub fn train_order_by<R: Rng>(
        &self,
        rng: &mut R,
        bs: usize,
        balanced: bool,
    ) -> Vec<Vec<usize>> {
        let idx = if balanced {
            balanced_draws(&self.train.labels, rng)
        } else {
            let mut idx: Vec<usize> = (0..self.train.len()).collect();
            idx.shuffle(rng);
            idx
        };
        idx.chunks_exact(bs.max(1)).map(<[usize]>::to_vec).collect()
    }

    /// Training images per class (multi-label: per label), in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        if self.is_multi_label() {
            for set in &self.train.multi {
                for &l in set {
                    if let Some(c) = counts.get_mut(l as usize) {
                        *c += 1;
                    }
                }
            }
        } else {
            for &l in &self.train.labels {
                if let Some(c) = counts.get_mut(l as usize) {
                    *c += 1;
                }
            }
        }
        counts
    }

    /// (u8 NHWC images, i64 labels) for training items `idx` (random crop position when cropping).
    pub fn train_batch<R: Rng>(&self, idx: &[usize], rng: &mut R) -> (Tensor, Tensor) {
        self.batch(&self.train, idx, true, rng)
    }

    /// Validation batches in order, nothing dropped; each is made only when reached, so the
    /// validation set is never copied whole.
    pub fn valid_batches(&self) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        self.valid_shard(0, 1)
    }

    /// The validation images `rank`, `rank + world`, ... in batches (a data-parallel rank's share:
    /// the shares together are the whole set, each image once, so summed metrics are the set's).
    pub fn valid_shard(
        &self,
        rank: usize,
        world: usize,
    ) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        let bs = self.cfg.bs.max(1);
        let mine: Vec<usize> = (rank..self.valid.len()).step_by(world.max(1)).collect();
        let batches: Vec<Vec<usize>> = mine.chunks(bs).map(<[usize]>::to_vec).collect();
        batches.into_iter().map(move |idx| {
            let mut rng = rand::rngs::mock::StepRng::new(0, 0);
            self.batch(&self.valid, &idx, false, &mut rng)
        })
    }

    fn batch<R: Rng>(
        &self,
        set: &ImageSet,
        idx: &[usize],
        train: bool,
        rng: &mut R,
    ) -> (Tensor, Tensor) {
        let x = match (&set.pixels, self.cfg.method) {
            (_, ResizeMethod::Crop) => {
                let cut: Vec<RgbImage> = idx
                    .iter()
                    .map(|&i| crop_window(&set.image(i), self.cfg.size, train, rng))
                    .collect();
                stack_u8(&cut.iter().collect::<Vec<_>>())
            }
            (Pixels::Memory(images), _) => {
                stack_u8(&idx.iter().map(|&i| &images[i]).collect::<Vec<_>>())
            }
            (Pixels::Cached { shards, locs }, _) => {
                shards.gather(&idx.iter().map(|&i| locs[i]).collect::<Vec<_>>())
            }
        };
        if self.is_multi_label() {
            // Multi-hot float targets [batch, classes], what binary cross-entropy takes.
            let c = self.classes.len();
            let mut y = vec![0f32; idx.len() * c];
            for (row, &i) in idx.iter().enumerate() {
                for &k in &set.multi[i] {
                    y[row * c + k as usize] = 1.0;
                }
            }
            return (x, Tensor::from_slice(&y).view([idx.len() as i64, c as i64]));
        }
        let labels: Vec<i64> = idx.iter().map(|&i| set.labels[i]).collect();
        (x, Tensor::from_slice(&labels))
    }
}

/// fastai's `WeightedDL` with each image weighted `1 / n_class` (its class's image count): as many
/// draws as there are images, with replacement, so every class is equally likely at each draw
/// (`np.random.choice(n, n, p=wgts)`).
pub fn balanced_draws<R: Rng>(labels: &[i64], rng: &mut R) -> Vec<usize> {
    let mut count = std::collections::HashMap::new();
    for &l in labels {
        *count.entry(l).or_insert(0usize) += 1;
    }
    let weights: Vec<f64> = labels.iter().map(|l| 1.0 / count[l] as f64).collect();
    match rand::distributions::WeightedIndex::new(&weights) {
        Ok(dist) => (0..labels.len()).map(|_| rng.sample(&dist)).collect(),
        // No images: nothing to draw.
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Classes of 900, 90 and 10 images are drawn a third of the time each: over 20 epochs
    /// (20,000 draws) each share within 0.02 of 1/3 (six binomial standard deviations, 0.0033),
    /// every image of the smallest class drawn, and an epoch as long as the training set.
    #[test]
    fn balanced_draws_give_every_class_an_equal_share() {
        let labels: Vec<i64> = [(0, 900), (1, 90), (2, 10)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut per_class = [0usize; 3];
        let mut seen_small = std::collections::HashSet::new();
        for _ in 0..20 {
            let draws = balanced_draws(&labels, &mut rng);
            assert_eq!(draws.len(), labels.len());
            for i in draws {
                per_class[labels[i] as usize] += 1;
                if labels[i] == 2 {
                    seen_small.insert(i);
                }
            }
        }
        for (c, n) in per_class.iter().enumerate() {
            let share = *n as f64 / 20_000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "class {c}: {share}");
        }
        assert_eq!(seen_small.len(), 10);
        assert!(balanced_draws(&[], &mut rng).is_empty());
    }
}
