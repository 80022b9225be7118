//! The model bundle: `model.safetensors` (every variable, BatchNorm statistics included),
//! `model.json` (what is needed to use it, and how it was made), `metrics.csv`.

use crate::data::items::SplitKind;
use crate::data::{PadMode, ResizeMethod, Size};
use crate::model::weights::WeightsError;
use crate::model::{Arch, Network};
use crate::train::{EpochRow, FineTune};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped when a bundle written by this version cannot be read by older ones.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0} is not a model bundle: it has no model.json (make one with `finetune train ... --out DIR`)")]
    NotBundle(PathBuf),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path} has format version {found}, this finetune reads version {FORMAT_VERSION}; re-export it with finetune {made_by} or retrain")]
    Version {
        path: PathBuf,
        found: u32,
        made_by: String,
    },
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingInfo {
    pub fine_tune: FineTune,
    pub bs: usize,
    pub seed: u64,
    pub wd: f64,
    pub label_smoothing: f64,
    #[serde(default)]
    pub augment: bool,
    pub pretrained_weights: Option<String>,
    pub device: String,
    pub interrupted: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataInfo {
    pub source: PathBuf,
    pub split: SplitKind,
    pub train_images: usize,
    pub valid_images: usize,
    pub skipped_files: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalMetrics {
    pub valid_loss: f64,
    pub error_rate: f64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub format_version: u32,
    pub finetune_version: String,
    pub arch: Arch,
    pub classes: Vec<String>,
    pub size: Size,
    pub resize: ResizeMethod,
    pub pad_mode: PadMode,
    pub normalization: Normalization,
    pub training: Option<TrainingInfo>,
    pub data: Option<DataInfo>,
    pub metrics: Option<FinalMetrics>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the bundle into `dir` (created if needed). Files are written under temporary names and
/// renamed, so an interrupted save never leaves a half-written model beside a good model.json.
pub fn save(
    dir: &Path,
    net: &Network,
    info: &ModelInfo,
    rows: &[EpochRow],
) -> Result<(), BundleError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut vars: Vec<(String, tch::Tensor)> = net
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(tch::Device::Cpu)))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = dir.join(".model.safetensors.tmp");
    tch::Tensor::write_safetensors(&vars, &tmp).map_err(|e| BundleError::Io {
        path: tmp.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(io(dir))?;
    let json = serde_json::to_string_pretty(info).map_err(|e| BundleError::Json {
        path: dir.join("model.json"),
        msg: e.to_string(),
    })?;
    write_atomic(&dir.join("model.json"), json.as_bytes())?;
    let mut csv = String::from("phase,epoch,train_loss,valid_loss,error_rate,accuracy,seconds\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.1}\n",
            r.phase, r.epoch, r.train_loss, r.valid_loss, r.error_rate, r.accuracy, r.seconds
        ));
    }
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

pub fn read_info(dir: &Path) -> Result<ModelInfo, BundleError> {
    let p = dir.join("model.json");
    if !p.is_file() {
        return Err(BundleError::NotBundle(dir.to_path_buf()));
    }
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| BundleError::Json {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    let found = v
        .get("format_version")
        .and_then(|x| x.as_u64())
        .unwrap_or(0) as u32;
    if found != FORMAT_VERSION {
        let made_by = v
            .get("finetune_version")
            .and_then(|x| x.as_str())
            .unwrap_or("?")
            .to_string();
        return Err(BundleError::Version {
            path: p,
            found,
            made_by,
        });
    }
    serde_json::from_value(v).map_err(|e| BundleError::Json {
        path: p,
        msg: e.to_string(),
    })
}

/// A loaded bundle, ready for inference.
pub struct Bundle {
    pub info: ModelInfo,
    pub net: Network,
}

pub fn load(dir: &Path, device: tch::Device) -> Result<Bundle, BundleError> {
    let info = read_info(dir)?;
    let net = Network::classifier(info.arch, info.classes.len() as i64, device);
    let path = dir.join("model.safetensors");
    let tensors = crate::model::weights::read_weights(&path)?;
    crate::model::load::load_exact(&net, &path, tensors)?;
    Ok(Bundle { info, net })
}
