//! Decoded, resized images held in memory, and the batches cut from them.
//!
//! Every image is decoded and resized once, on all cores, before the first epoch; epochs then only
//! copy bytes. A file that fails to decode is skipped with one warning naming it (or is fatal under
//! `strict`).

use super::decode::{decode_file, DecodeError};
use super::items::{self, Item, ItemsError, Skip, Split, SplitKind};
use super::tensor::stack_u8;
use super::transform::{crop_window, prepare, PadMode, ResizeMethod, Size};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Items(#[from] ItemsError),
    #[error("{0} (--strict makes unreadable images fatal; remove the file or drop --strict)")]
    Strict(DecodeError),
    #[error("{0} (--strict makes this fatal; remove the file or drop --strict)")]
    StrictSkipped(Skip),
    #[error("class `{class}` has no usable image in the training set ({dir})")]
    EmptyClass { class: String, dir: String },
    #[error("valid folder has class `{0}`, which the training folder lacks")]
    UnknownValidClass(String),
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
        }
    }
}

/// Images ready for batching, with their labels (class indices) and source paths.
#[derive(Debug, Default)]
pub struct ImageSet {
    pub images: Vec<RgbImage>,
    pub labels: Vec<i64>,
    pub paths: Vec<PathBuf>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Decodes and prepares `paths` in parallel; failures come back as `Err` in place.
pub fn decode_prepared(
    paths: &[PathBuf],
    cfg: &DataConfig,
    progress: &indicatif::ProgressBar,
) -> Vec<Result<RgbImage, DecodeError>> {
    paths
        .par_iter()
        .map(|p| {
            let r = decode_file(p).map(|img| prepare(&img, cfg.method, cfg.size, cfg.pad));
            progress.inc(1);
            r
        })
        .collect()
}

fn load_set(
    items: &[Item],
    classes: &[String],
    cfg: &DataConfig,
    skipped: &mut Vec<Skip>,
    bar: &indicatif::ProgressBar,
) -> Result<ImageSet, DataError> {
    let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let decoded = decode_prepared(&paths, cfg, bar);
    let mut set = ImageSet::default();
    for (item, r) in items.iter().zip(decoded) {
        match r {
            Ok(img) => {
                let Some(label) = classes.iter().position(|c| *c == item.label) else {
                    return Err(DataError::UnknownValidClass(item.label.clone()));
                };
                set.images.push(img);
                set.labels.push(label as i64);
                set.paths.push(item.path.clone());
            }
            Err(e) if cfg.strict => return Err(DataError::Strict(e)),
            Err(e) => {
                eprintln!("warning: skipping {e}");
                skipped.push(Skip {
                    path: item.path.clone(),
                    reason: e.reason(),
                });
            }
        }
    }
    Ok(set)
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
}

impl DataLoaders {
    /// Scans `root`, splits it (folders or seeded random), and decodes everything once.
    pub fn from_folder(
        root: &Path,
        cfg: DataConfig,
        bar: &indicatif::ProgressBar,
    ) -> Result<Self, DataError> {
        let Split { train, valid, kind } = items::split(root, cfg.valid_pct, cfg.seed)?;
        let mut skipped = Vec::new();
        for scan in [&train, &valid] {
            for s in &scan.skipped {
                if cfg.strict {
                    return Err(DataError::StrictSkipped(s.clone()));
                }
                eprintln!("warning: skipping {s}");
                skipped.push(s.clone());
            }
        }
        if let Some(d) = train.empty_dir() {
            return Err(ItemsError::EmptyClass(d.clone()).into());
        }
        let classes = items::classes(&train.items);
        let base = match &kind {
            SplitKind::Folders { train, .. } => train.clone(),
            SplitKind::Random { .. } => root.to_path_buf(),
        };
        match classes.len() {
            0 => return Err(ItemsError::Empty(base).into()),
            1 => return Err(ItemsError::OneClass(base, classes[0].clone()).into()),
            _ => {}
        }
        bar.set_length((train.items.len() + valid.items.len()) as u64);
        let train_set = load_set(&train.items, &classes, &cfg, &mut skipped, bar)?;
        let valid_set = load_set(&valid.items, &classes, &cfg, &mut skipped, bar)?;
        bar.finish_and_clear();
        for (i, c) in classes.iter().enumerate() {
            if !train_set.labels.contains(&(i as i64)) {
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
        })
    }

    /// Number of training batches per epoch (last incomplete batch dropped, as fastai).
    pub fn n_train_batches(&self) -> usize {
        self.train.len() / self.cfg.bs.max(1)
    }

    /// One epoch's shuffled training batches as index lists (the last incomplete one dropped); each is
    /// turned into tensors by [`Self::train_batch`] only when needed, so an epoch never holds a second
    /// copy of the training set.
    pub fn train_order<R: Rng>(&self, rng: &mut R) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..self.train.len()).collect();
        idx.shuffle(rng);
        idx.chunks_exact(self.cfg.bs.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// (u8 NHWC images, i64 labels) for training items `idx` (random crop position when cropping).
    pub fn train_batch<R: Rng>(&self, idx: &[usize], rng: &mut R) -> (Tensor, Tensor) {
        self.batch(&self.train, idx, true, rng)
    }

    /// Validation batches in order, nothing dropped.
    pub fn valid_batches(&self) -> Vec<(Tensor, Tensor)> {
        let idx: Vec<usize> = (0..self.valid.len()).collect();
        let mut rng = rand::rngs::mock::StepRng::new(0, 0);
        idx.chunks(self.cfg.bs.max(1))
            .map(|c| self.batch(&self.valid, c, false, &mut rng))
            .collect()
    }

    fn batch<R: Rng>(
        &self,
        set: &ImageSet,
        idx: &[usize],
        train: bool,
        rng: &mut R,
    ) -> (Tensor, Tensor) {
        let cut: Vec<RgbImage>;
        let refs: Vec<&RgbImage> = if self.cfg.method == ResizeMethod::Crop {
            cut = idx
                .iter()
                .map(|&i| crop_window(&set.images[i], self.cfg.size, train, rng))
                .collect();
            cut.iter().collect()
        } else {
            idx.iter().map(|&i| &set.images[i]).collect()
        };
        let labels: Vec<i64> = idx.iter().map(|&i| set.labels[i]).collect();
        (stack_u8(&refs), Tensor::from_slice(&labels))
    }
}
