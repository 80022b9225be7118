//! The model bundle: `model.safetensors` (every variable, BatchNorm statistics included),
//! `model.json` (what is needed to use it, and how it was made), `metrics.csv`.

use super::{Checkpoint, EpochRow, FineTune};
use crate::data::items::SplitKind;
use crate::data::{PadMode, ResizeMethod, Size};
use crate::model::weights::WeightsError;
use crate::model::{Arch, Network};
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
    #[error("{0} exists and is not a model bundle (it holds other files); choose a new or empty folder for the model; nothing in it was changed")]
    NotReplaceable(PathBuf),
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
    /// What the forward passes computed in (absent in bundles from before `--precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::model::Precision>,
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

/// Whether `dir` may receive a bundle: it does not exist, is empty, or holds a bundle (replaced only
/// as a whole). Anything else is the user's and is never touched.
pub fn check_out_dir(dir: &Path) -> Result<(), BundleError> {
    if !dir.exists() || dir.join("model.json").is_file() {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir)
        .map(|mut r| r.next().is_none())
        .unwrap_or(false);
    if dir.is_dir() && empty {
        Ok(())
    } else {
        Err(BundleError::NotReplaceable(dir.to_path_buf()))
    }
}

/// Writes the bundle into a temporary folder beside `dir` and swaps it into place, so a crash,
/// `kill -9` or a full disk never leaves half a bundle and never destroys the previous one.
/// `resume` (an interrupted or in-progress run) adds what `train --resume` continues from.
pub fn save(
    dir: &Path,
    net: &Network,
    info: &ModelInfo,
    rows: &[EpochRow],
    resume: Option<&Checkpoint>,
) -> Result<(), BundleError> {
    check_out_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    crate::atomic::remove_stale_siblings(dir);
    let tmp = crate::atomic::temp_sibling(dir, "new");
    let _ = std::fs::remove_dir_all(&tmp);
    let written = std::fs::create_dir(&tmp)
        .map_err(io(&tmp))
        .and_then(|()| write_contents(&tmp, net, info, rows, resume))
        .and_then(|()| crate::atomic::replace_dir(&tmp, dir).map_err(io(dir)));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Every tensor is written contiguous (a no-op for those that already are), so channels-last
/// weights and moments land in the standard layout that PyTorch and safetensors readers expect.
fn write_safetensors(path: &Path, vars: &[(String, tch::Tensor)]) -> Result<(), BundleError> {
    let vars: Vec<(&str, tch::Tensor)> = vars
        .iter()
        .map(|(k, t)| (k.as_str(), t.contiguous()))
        .collect();
    tch::Tensor::write_safetensors(&vars, path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

fn write_contents(
    dir: &Path,
    net: &Network,
    info: &ModelInfo,
    rows: &[EpochRow],
    resume: Option<&Checkpoint>,
) -> Result<(), BundleError> {
    let mut vars: Vec<(String, tch::Tensor)> = net
        .vs
        .variables()
        .into_iter()
        // Contiguous (NCHW) whatever the network's memory format: the layout PyTorch writes.
        .map(|(k, v)| (k, v.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors(&dir.join("model.safetensors"), &vars)?;
    let json = serde_json::to_string_pretty(info).map_err(|e| BundleError::Json {
        path: dir.join("model.json"),
        msg: e.to_string(),
    })?;
    write_file(&dir.join("model.json"), json.as_bytes())?;
    let mut csv = String::from("phase,epoch,train_loss,valid_loss,error_rate,accuracy,seconds\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.1}\n",
            r.phase, r.epoch, r.train_loss, r.valid_loss, r.error_rate, r.accuracy, r.seconds
        ));
    }
    write_file(&dir.join("metrics.csv"), csv.as_bytes())?;
    if let Some(ck) = resume {
        let rdir = dir.join(RESUME_DIR);
        std::fs::create_dir(&rdir).map_err(io(&rdir))?;
        write_safetensors(&rdir.join("checkpoint.safetensors"), &ck.tensors)?;
        let state = serde_json::to_string_pretty(&ck.state).map_err(|e| BundleError::Json {
            path: rdir.join("state.json"),
            msg: e.to_string(),
        })?;
        write_file(&rdir.join("state.json"), state.as_bytes())?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    crate::atomic::write_file(path, bytes).map_err(io(path))
}

/// Where an unfinished bundle keeps what `train --resume` needs.
pub const RESUME_DIR: &str = "resume";

/// The checkpoint of an unfinished bundle: `None` when training finished (nothing to resume).
pub fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, BundleError> {
    let rdir = dir.join(RESUME_DIR);
    let state_path = rdir.join("state.json");
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = read_small(&state_path)?;
    let state = serde_json::from_str(&text).map_err(|e| BundleError::Json {
        path: state_path.clone(),
        msg: e.to_string(),
    })?;
    let tensors = crate::model::weights::read_weights(&rdir.join("checkpoint.safetensors"))?;
    Ok(Some(Checkpoint { state, tensors }))
}

/// A bundle's JSON files are small; a cap keeps a hostile one from exhausting memory.
fn read_small(path: &Path) -> Result<String, BundleError> {
    let bytes =
        crate::data::files::read_capped(path, 64 * 1024 * 1024).map_err(|e| BundleError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    String::from_utf8(bytes).map_err(|e| BundleError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

pub fn read_info(dir: &Path) -> Result<ModelInfo, BundleError> {
    let p = dir.join("model.json");
    if !p.is_file() {
        return Err(BundleError::NotBundle(dir.to_path_buf()));
    }
    let text = read_small(&p)?;
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

/// Loads the bundle in `dir` onto `rt` (a device alone: the `auto` memory format and precision).
pub fn load(dir: &Path, rt: impl Into<crate::model::Runtime>) -> Result<Bundle, BundleError> {
    let info = read_info(dir)?;
    let net = Network::classifier(info.arch, info.classes.len() as i64, rt);
    let path = dir.join("model.safetensors");
    let tensors = crate::model::weights::read_weights(&path)?;
    crate::model::load::load_exact(&net, &path, tensors)?;
    Ok(Bundle { info, net })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// model.json is read and written again (resume, `finetune.load(...).info`): every float in it
    /// must come back bit for bit. serde_json's default parser got about 9 % of these wrong by an
    /// ulp (`99.01581625895649` read as `99.01581625895648`), which made a Python test fail now
    /// and then on the run's `seconds`.
    #[test]
    fn floats_survive_a_read_and_a_write() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for _ in 0..20_000 {
            let x: f64 = r.gen::<f64>() * 10f64.powi(r.gen_range(-6..7));
            let text = serde_json::to_string(&x).unwrap();
            let y: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(x.to_bits(), y.to_bits(), "{text} read back as {y:?}");
        }
    }
}
