//! Fitting what a bundle needs to know how far to trust its answers, from the data it was trained
//! on: the temperature on the validation images, the distance scores' statistics on (a sample of)
//! the training images, and the "unknown" threshold on the validation images' scores. The end of
//! `finetune train` and `finetune calibrate` both run [`calibrate`].

use super::calibration::{self, Targets};
use super::scores::{self, DEFAULT_K};
use crate::bundle::{self, Bundle, BundleError, Calibration, Score, UnknownInfo};
use crate::data::decode::decode_file;
use crate::infer::features::Features;
use crate::infer::predict::{map_batches, preprocess};
use crate::infer::splits::{self, SplitChoice, SplitError};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The score a bundle answers "unknown" with, chosen by measurement (docs/benchmarks.md,
/// "Knowing what it does not know").
pub const DEFAULT_SCORE: Score = Score::Knn;

/// The share of validation images accepted by default.
pub const DEFAULT_ACCEPT: f64 = 0.95;

/// At most this many training images are run to fit the statistics (a seeded sample beyond it):
/// a bounded pass at the end of training whatever the data set's size.
pub const MAX_TRAIN_IMAGES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(
        "{0} gives no readable validation image under the model's recorded split: calibration \
         and the unknown threshold are fitted on validation images (train with a validation set)"
    )]
    NoValid(PathBuf),
    #[error("{0} gives no readable training image under the model's recorded split")]
    NoTrain(PathBuf),
    #[error("{what} must be between 0 and 1 (exclusive), got {value}")]
    Share { what: &'static str, value: f64 },
}

/// How to fit: the acceptance share of the "unknown" threshold (`None`: no unknown answer), the
/// k-NN neighbour, the file cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    pub accept: Option<f64>,
    pub k: usize,
    pub max_file_bytes: u64,
    /// Right after training on the folder: no warning that its valid set differs from the
    /// recorded one (the record counts readable images only).
    pub after_training: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            accept: Some(DEFAULT_ACCEPT),
            k: DEFAULT_K,
            max_file_bytes: crate::data::files::DEFAULT_MAX_FILE_BYTES,
            after_training: false,
        }
    }
}

/// `--unknown`: an acceptance share in (0, 1), or `off` (`Accept(None)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accept(pub Option<f64>);

impl std::str::FromStr for Accept {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Accept(None));
        }
        let v: f64 = s.parse().map_err(|_| {
            format!("`{s}`: give the share of validation images to accept (e.g. 0.95) or `off`")
        })?;
        check_share(v).map_err(|e| e.to_string())?;
        Ok(Accept(Some(v)))
    }
}

fn check_share(value: f64) -> Result<(), TrustError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(TrustError::Share {
            what: "the unknown acceptance share",
            value,
        })
    }
}

/// Features and raw logits of a set of images, one row each.
pub struct Passes {
    pub paths: Vec<PathBuf>,
    /// On the CPU.
    pub f: Features,
    /// Files that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Passes {
    pub fn logits(&self) -> Vec<Vec<f32>> {
        rows(&self.f.logits)
    }
}

/// A 2-D tensor's rows.
pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let n = t.size().get(1).copied().unwrap_or(0).max(1) as usize;
    let flat: Vec<f32> =
        Vec::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap_or_default();
    flat.chunks(n).map(|c| c.to_vec()).collect()
}

/// Runs the network over `paths` (the validation transform) and keeps their features.
pub fn run(bundle: &Bundle, paths: &[PathBuf], max_file_bytes: u64) -> Passes {
    #[derive(Default)]
    struct Row(Option<Features>);
    let mut rows_kept = Vec::new();
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    let info = &bundle.info;
    map_batches(
        paths,
        |p| decode_file(p, max_file_bytes).map(|img| preprocess(&img, info)),
        |b| {
            let f = crate::infer::predict::features(bundle, b);
            (0..b.len() as i64).map(|i| Row(Some(f.row(i)))).collect()
        },
        |p, r| match r {
            Ok(Row(Some(f))) => {
                rows_kept.push(f);
                kept.push(p.clone());
            }
            Ok(Row(None)) => {}
            Err(e) => skipped.push((p.clone(), e.to_string())),
        },
    );
    let widths = [
        info.arch.head_inputs(),
        crate::model::FEATURES,
        info.classes.len() as i64,
    ];
    Passes {
        paths: kept,
        f: Features::cat(&rows_kept, widths),
        skipped,
    }
}

/// Every score of `p`'s images, by score.
pub fn all_scores(bundle: &Bundle, p: &Passes) -> BTreeMap<Score, Vec<f64>> {
    let k = bundle.info.unknown.as_ref().map_or(DEFAULT_K, |u| u.k);
    Score::ALL
        .into_iter()
        .filter(|s| !s.needs_stats() || bundle.stats.is_some())
        .map(|s| (s, scores::score(s, &p.f, bundle.stats.as_ref(), k)))
        .collect()
}

/// Each image's targets: class indices, or label sets for a multi-label model (split by the
/// delimiter it was trained with).
pub enum Labels {
    Single(Vec<usize>),
    Multi(Vec<Vec<bool>>),
}

impl Labels {
    pub fn targets(&self) -> Targets<'_> {
        match self {
            Labels::Single(y) => Targets::Single(y),
            Labels::Multi(t) => Targets::Multi(t),
        }
    }
}

fn labels_of(info: &bundle::ModelInfo, items: &[(PathBuf, String)]) -> Labels {
    let index = |name: &str| info.classes.iter().position(|c| c == name);
    if info.task.is_multi() {
        let delim = info
            .data
            .as_ref()
            .and_then(|d| match &d.split {
                crate::data::items::SplitKind::Csv { labels, .. } => labels.label_delim.clone(),
                _ => None,
            })
            .unwrap_or_else(|| " ".into());
        Labels::Multi(
            items
                .iter()
                .map(|(_, l)| {
                    let mut t = vec![false; info.classes.len()];
                    for name in crate::data::dataset::split_labels(l, &delim) {
                        if let Some(i) = index(name) {
                            t[i] = true;
                        }
                    }
                    t
                })
                .collect(),
        )
    } else {
        // A class the model does not know cannot be a target; such images are dropped before.
        Labels::Single(items.iter().map(|(_, l)| index(l).unwrap_or(0)).collect())
    }
}

/// What [`calibrate`] fitted and measured.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub calibration: Calibration,
    pub unknown: Option<UnknownInfo>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Fits the temperature and the "unknown" score of the bundle in `dir` on `data` (the folder it
/// was trained on: its recorded split is rebuilt) and records both in the bundle.
pub fn calibrate(
    dir: &Path,
    data: &Path,
    rt: impl Into<crate::model::Runtime>,
    opts: &FitOptions,
) -> Result<Fitted, TrustError> {
    if let Some(a) = opts.accept {
        check_share(a)?;
    }
    let mut b = bundle::load_unscored(dir, rt)?;
    let (all, _) = splits::labelled_with(&b.info, data, !opts.after_training)?;
    let known = |l: &str| b.info.task.is_multi() || b.info.classes.iter().any(|c| c == l);
    let pick = |which: SplitChoice| -> Vec<(PathBuf, String)> {
        all.iter()
            .filter(|(it, s)| *s == which && known(&it.label))
            .map(|(it, _)| (it.path.clone(), it.label.clone()))
            .collect()
    };
    let valid = pick(SplitChoice::Valid);
    let mut train = pick(SplitChoice::Train);
    let seed = b.info.training.as_ref().map_or(0, |t| t.seed);
    if train.len() > MAX_TRAIN_IMAGES {
        train.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        train.truncate(MAX_TRAIN_IMAGES);
        train.sort();
    }
    let by_path = |v: &[(PathBuf, String)], p: &Passes| -> Vec<(PathBuf, String)> {
        let m: std::collections::HashMap<&PathBuf, &String> =
            v.iter().map(|(a, b)| (a, b)).collect();
        p.paths
            .iter()
            .filter_map(|q| m.get(q).map(|l| (q.clone(), (*l).clone())))
            .collect()
    };
    let vp = run(
        &b,
        &valid.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        opts.max_file_bytes,
    );
    if vp.paths.is_empty() {
        return Err(TrustError::NoValid(data.to_path_buf()));
    }
    let vlabels = labels_of(&b.info, &by_path(&valid, &vp));
    let multi = b.info.task.is_multi();
    let logits = vp.logits();
    let t = calibration::fit_temperature(&logits, vlabels.targets());
    let calibration = Calibration {
        temperature: t,
        images: logits.len(),
        nll_before: calibration::nll(&logits, vlabels.targets(), 1.0),
        nll_after: calibration::nll(&logits, vlabels.targets(), t),
        ece_before: calibration::ece(
            &calibration::probabilities(&logits, 1.0, multi),
            vlabels.targets(),
        ),
        ece_after: calibration::ece(
            &calibration::probabilities(&logits, t, multi),
            vlabels.targets(),
        ),
    };
    let mut skipped = vp.skipped.clone();
    let (unknown, stats) = match opts.accept {
        None => (None, None),
        Some(accept) => {
            let tp = run(
                &b,
                &train.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
                opts.max_file_bytes,
            );
            skipped.extend(tp.skipped.iter().cloned());
            if tp.paths.is_empty() {
                return Err(TrustError::NoTrain(data.to_path_buf()));
            }
            let tlabels = match labels_of(&b.info, &by_path(&train, &tp)) {
                Labels::Single(y) => Some(y),
                Labels::Multi(_) => None,
            };
            let stats = scores::fit_stats(&tp.f, tlabels.as_deref(), b.info.classes.len(), seed);
            b.stats = Some(stats);
            let mut info = UnknownInfo {
                score: DEFAULT_SCORE,
                k: opts.k,
                accept,
                threshold: 0.0,
                train_images: tp.paths.len(),
                valid_images: vp.paths.len(),
                valid_quantiles: BTreeMap::new(),
            };
            b.info.unknown = Some(info.clone());
            info.valid_quantiles = all_scores(&b, &vp)
                .into_iter()
                .map(|(s, v)| (s, scores::quantiles(&v)))
                .collect();
            info.threshold = info.threshold_for(accept);
            (Some(info), b.stats.take())
        }
    };
    let mut info = bundle::read_info(dir)?;
    info.calibration = Some(calibration);
    info.unknown = unknown.clone();
    bundle::write_trust(dir, &info, stats.as_ref())?;
    Ok(Fitted {
        calibration,
        unknown,
        skipped,
    })
}
