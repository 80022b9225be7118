//! Getting a run ready: the pretrained weights it starts from, its data decoded (through the
//! image cache) and its network built. `train` and `lr-find` both start here.

use super::error::{dp, RunError};
use crate::data::items::SplitKind;
use crate::data::{CacheConfig, DataConfig, DataLoaders, Progress};
use crate::model::{load_checkpoint, ArchSpec, Network, Portion, Runtime};
use std::path::{Path, PathBuf};

/// Where the pretrained body comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Pretrained {
    /// The known ImageNet file for the architecture: from the cache, else downloaded.
    Known,
    File(PathBuf),
    /// Random weights (for tests; accuracy will be poor).
    Random,
}

impl Pretrained {
    /// From `--weights FILE` and `--random-init` (or the Python package's `weights=`,
    /// `random_init=`): at most one of them.
    pub fn choose(weights: Option<PathBuf>, random_init: bool) -> Result<Self, RunError> {
        match (weights, random_init) {
            (Some(_), true) => Err(RunError::WeightsAndRandom),
            (None, true) => Ok(Pretrained::Random),
            (Some(w), false) => Ok(Pretrained::File(w)),
            (None, false) => Ok(Pretrained::Known),
        }
    }

    /// The weights file, `None` for random weights; `progress` shows a download bar.
    pub fn resolve(&self, arch: ArchSpec, progress: bool) -> Result<Option<PathBuf>, RunError> {
        match self {
            Pretrained::Random => Ok(None),
            Pretrained::File(p) if p.is_file() => Ok(Some(p.clone())),
            Pretrained::File(p) => Err(RunError::NoWeightsFile(dp(p))),
            Pretrained::Known => Ok(Some(crate::model::registry::resolve(arch, progress)?)),
        }
    }
}

/// What a run shows while it gets ready.
pub struct Feedback<'a> {
    /// Advanced while images decode.
    pub progress: &'a dyn Progress,
    /// Show a bar while pretrained weights download.
    pub download_bar: bool,
    /// Receives the summary lines (data, model, resuming).
    pub log: &'a mut dyn FnMut(&str),
}

/// Loads data (through the image cache `cache` when given) and a pretrained network ready for a
/// [`super::Learner`] (used by train and lr-find).
#[allow(clippy::too_many_arguments)]
pub fn load_run_inputs(
    arch: ArchSpec,
    pretrained: &Pretrained,
    data: &Path,
    cfg: DataConfig,
    cache: Option<&CacheConfig>,
    rt: Runtime,
    fb: &mut Feedback,
) -> Result<(Network, DataLoaders, Option<PathBuf>), RunError> {
    cfg.validate()?;
    tch::manual_seed(cfg.seed as i64);
    // A ViT cuts the image into 16-pixel patches: a smaller side would leave no patch at all.
    if arch.arch.is_vit() && (cfg.size.w < 16 || cfg.size.h < 16) {
        return Err(RunError::TooSmallForVit {
            w: cfg.size.w,
            h: cfg.size.h,
            arch,
        });
    }
    let weights = pretrained.resolve(arch, fb.download_bar)?;
    let t0 = std::time::Instant::now();
    let dls = DataLoaders::from_folder_cached(data, cfg, cache, fb.progress)?;
    (fb.log)(&format!(
        "data: {} classes, {} train + {} valid images ({}), {} skipped, {} in {:.1}s",
        dls.classes.len(),
        dls.train.len(),
        dls.valid.len(),
        match &dls.split {
            SplitKind::Folders { .. } => "train/valid folders".to_string(),
            SplitKind::Random { valid_pct, seed } =>
                format!("random {:.0}% split, seed {seed}", valid_pct * 100.0),
            SplitKind::Csv {
                labels,
                valid_pct,
                seed,
            } => match (valid_pct, seed) {
                (Some(p), Some(s)) => format!(
                    "labels from {}, random {:.0}% split, seed {s}",
                    labels.path.display(),
                    p * 100.0
                ),
                _ => format!(
                    "labels from {}, valid rows by its `{}` column",
                    labels.path.display(),
                    labels.valid_col.as_deref().unwrap_or("")
                ),
            },
        },
        dls.skipped.len(),
        match &dls.cache {
            Some(c) => format!(
                "image cache {} ({} reused, {} decoded)",
                c.dir.display(),
                c.reused,
                c.decoded
            ),
            None => "decoded into memory".to_string(),
        },
        t0.elapsed().as_secs_f64()
    ));
    if dls.n_train_batches() == 0 {
        return Err(RunError::TooFewImages {
            train: dls.train.len(),
            bs: dls.cfg.bs,
        });
    }
    let net = Network::classifier(arch.arch, dls.classes.len() as i64, rt);
    if let Some(w) = &weights {
        load_checkpoint(&net, w, Portion::Body)?;
    }
    Ok((net, dls, weights))
}
