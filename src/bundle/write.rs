//! Writing a bundle: all at once, or not at all.

use super::{
    io, BundleError, Checkpoint, EpochRow, FeatureStats, ModelInfo, CONFUSION_FILE,
    EVALUATION_FILE, INFO_FILE, METRICS_FILE, OOD_FILE, RESUME_DIR, RESUME_STATE, RESUME_WEIGHTS,
    WEIGHTS_FILE,
};
use crate::model::Network;
use std::path::Path;

/// Whether `dir` may receive a bundle: it does not exist, is empty, or holds a bundle (replaced only
/// as a whole). Anything else is the user's and is never touched.
pub fn check_out_dir(dir: &Path) -> Result<(), BundleError> {
    if !dir.exists() || dir.join(INFO_FILE).is_file() {
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
    write_safetensors(&dir.join(WEIGHTS_FILE), &vars)?;
    let json = serde_json::to_string_pretty(info).map_err(|e| BundleError::Json {
        path: dir.join(INFO_FILE),
        msg: e.to_string(),
    })?;
    write_file(&dir.join(INFO_FILE), json.as_bytes())?;
    // Under --save-best a last column says which epoch's weights each fit kept.
    let save_best = info
        .training
        .as_ref()
        .and_then(|t| t.recipe.tracking)
        .is_some_and(|t| t.save_best);
    // Multi-label models add fastai's samples-averaged F1 (`accuracy` is `accuracy_multi`).
    let multi = info.task.is_multi();
    let mut csv = String::from("phase,epoch,train_loss,valid_loss,error_rate,accuracy");
    csv.push_str(if multi {
        ",f1_score,seconds"
    } else {
        ",seconds"
    });
    csv.push_str(if save_best { ",best\n" } else { "\n" });
    for r in rows {
        csv.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6}",
            r.phase, r.epoch, r.train_loss, r.valid_loss, r.error_rate, r.accuracy
        ));
        if multi {
            csv.push_str(&format!(",{:.6}", r.f1.unwrap_or(f64::NAN)));
        }
        csv.push_str(&format!(",{:.1}", r.seconds));
        if save_best {
            csv.push_str(if r.best { ",yes" } else { "," });
        }
        csv.push('\n');
    }
    write_file(&dir.join(METRICS_FILE), csv.as_bytes())?;
    if let Some(ck) = resume {
        let rdir = dir.join(RESUME_DIR);
        std::fs::create_dir(&rdir).map_err(io(&rdir))?;
        write_safetensors(&rdir.join(RESUME_WEIGHTS), &ck.tensors)?;
        let state = serde_json::to_string_pretty(&ck.state).map_err(|e| BundleError::Json {
            path: rdir.join(RESUME_STATE),
            msg: e.to_string(),
        })?;
        write_file(&rdir.join(RESUME_STATE), state.as_bytes())?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    crate::atomic::write_file(path, bytes).map_err(io(path))
}

/// Stores what `evaluate --save` measured in the bundle `dir` (each file written atomically: a
/// crash never leaves half of one).
pub fn write_evaluation(
    dir: &Path,
    evaluation: &serde_json::Value,
    confusion_svg: &str,
) -> Result<(), BundleError> {
    let path = dir.join(EVALUATION_FILE);
    let json = serde_json::to_vec_pretty(evaluation).map_err(|e| BundleError::Json {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    write_file(&path, &json)?;
    write_file(&dir.join(CONFUSION_FILE), confusion_svg.as_bytes())
}

/// Records a bundle's calibration and "unknown" statistics (`info.calibration`, `info.unknown`):
/// the statistics first, then `model.json`, each atomically, so a crash between the two leaves
/// statistics that `model.json` does not yet mention (ignored) and never the reverse.
pub fn write_trust(
    dir: &Path,
    info: &ModelInfo,
    stats: Option<&FeatureStats>,
) -> Result<(), BundleError> {
    let ood = dir.join(OOD_FILE);
    match stats {
        Some(s) => {
            let tmp = crate::atomic::temp_sibling(&ood, "new");
            let vars: Vec<(String, tch::Tensor)> = FeatureStats::NAMES
                .iter()
                .zip([&s.means, &s.precision, &s.bank])
                // The bank is the bulk and needs no more than fp16's 3 digits for a cosine.
                .map(|(k, t)| {
                    let kind = if *k == "bank" {
                        tch::Kind::Half
                    } else {
                        tch::Kind::Float
                    };
                    (k.to_string(), t.to_kind(kind))
                })
                .collect();
            write_safetensors(&tmp, &vars)
                .and_then(|()| std::fs::rename(&tmp, &ood).map_err(io(&ood)))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })?;
        }
        None => {
            let _ = std::fs::remove_file(&ood);
        }
    }
    let json = serde_json::to_string_pretty(info).map_err(|e| BundleError::Json {
        path: dir.join(INFO_FILE),
        msg: e.to_string(),
    })?;
    write_file(&dir.join(INFO_FILE), json.as_bytes())
}
