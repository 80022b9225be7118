//! Reading a bundle, every read bounded (a bundle may come from anyone).

use super::{
    BundleError, Checkpoint, FeatureStats, ModelInfo, CONFUSION_FILE, EVALUATION_FILE,
    FORMAT_VERSION, INFO_FILE, METRICS_FILE, OOD_FILE, RESUME_DIR, RESUME_STATE, RESUME_WEIGHTS,
    WEIGHTS_FILE,
};
use crate::model::Network;
use std::collections::BTreeMap;
use std::path::Path;

/// The checkpoint of an unfinished bundle: `None` when training finished (nothing to resume).
pub fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, BundleError> {
    let rdir = dir.join(RESUME_DIR);
    let state_path = rdir.join(RESUME_STATE);
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = read_small(&state_path)?;
    let state = serde_json::from_str(&text).map_err(|e| BundleError::Json {
        path: state_path.clone(),
        msg: e.to_string(),
    })?;
    let tensors = crate::model::weights::read_weights(&rdir.join(RESUME_WEIGHTS))?;
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
    let p = dir.join(INFO_FILE);
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
    // Every format from 1 on stays readable (docs/usage.md, "Bundles that keep loading"); 0 is
    // the unversioned format of before 0.1, a newer one is another finetune's to read.
    if found == 0 || found > FORMAT_VERSION {
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
    /// What the "unknown" score's distances are measured against (`ood.safetensors`), when the
    /// bundle records a score that needs them.
    pub stats: Option<FeatureStats>,
    /// Divide the logits by the recorded temperature (the default); `false` gives the raw
    /// softmax (`--raw-probs`).
    pub calibrated: bool,
    /// The share of validation images the "unknown" threshold accepts; `None` never answers
    /// unknown (`--unknown off`, or a bundle without the score).
    pub accept: Option<f64>,
}

impl Bundle {
    /// What the logits are divided by: the recorded temperature, or 1 (raw softmax).
    pub fn temperature(&self) -> f64 {
        match (&self.info.calibration, self.calibrated) {
            (Some(c), true) => c.temperature,
            _ => 1.0,
        }
    }

    /// Answers "unknown" at another acceptance share, or never (`None`); a bundle without the
    /// score stays without it.
    pub fn set_accept(&mut self, accept: Option<f64>) {
        self.accept = accept.filter(|_| self.info.unknown.is_some());
    }

    /// The threshold below which an image's score makes it unknown, if the bundle answers unknown.
    pub fn threshold(&self) -> Option<f64> {
        let u = self.info.unknown.as_ref()?;
        Some(u.threshold_for(self.accept?))
    }
}

/// Loads the bundle in `dir` onto `rt` (a device alone: the `auto` memory format and precision).
pub fn load(dir: &Path, rt: impl Into<crate::model::Runtime>) -> Result<Bundle, BundleError> {
    load_inner(dir, rt.into(), true)
}

/// [`load`] without the "unknown" answer (its statistics not read): what `finetune calibrate`
/// starts from, so a damaged `ood.safetensors` can be fitted again.
pub fn load_unscored(
    dir: &Path,
    rt: impl Into<crate::model::Runtime>,
) -> Result<Bundle, BundleError> {
    load_inner(dir, rt.into(), false)
}

fn load_inner(dir: &Path, rt: crate::model::Runtime, scored: bool) -> Result<Bundle, BundleError> {
    let mut info = read_info(dir)?;
    let net = Network::classifier(info.arch, info.classes.len() as i64, rt);
    let path = dir.join(WEIGHTS_FILE);
    let tensors = crate::model::weights::read_weights(&path)?;
    crate::model::load::load_exact(&net, &path, tensors)?;
    if !scored {
        info.unknown = None;
    }
    let stats = match &info.unknown {
        Some(u) if u.score.needs_stats() => Some(read_stats(dir, &info)?),
        _ => None,
    };
    let accept = info.unknown.as_ref().map(|u| u.accept);
    Ok(Bundle {
        info,
        net,
        stats,
        calibrated: true,
        accept,
    })
}

/// The features' statistics, their shapes checked against the model: a bundle may come from anyone.
fn read_stats(dir: &Path, info: &ModelInfo) -> Result<FeatureStats, BundleError> {
    let path = dir.join(OOD_FILE);
    let bad = |msg: String| BundleError::Json {
        path: path.clone(),
        msg: format!(
            "{msg}; run `finetune calibrate {} DATA` to make it again",
            dir.display()
        ),
    };
    let mut t: std::collections::HashMap<String, tch::Tensor> =
        crate::model::weights::read_weights(&path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
    let mut take = |name: &str| {
        t.remove(name)
            .map(|x| x.to_kind(tch::Kind::Float))
            .ok_or_else(|| bad(format!("it has no `{name}` tensor")))
    };
    let (means, precision, bank) = (take("means")?, take("precision")?, take("bank")?);
    let d = crate::model::FEATURES;
    let pooled = info.arch.head_inputs();
    let rows = if info.task.is_multi() {
        1
    } else {
        info.classes.len() as i64
    };
    let ok = means.size() == [rows, d]
        && precision.size() == [d, d]
        && bank.dim() == 2
        && bank.size()[1] == pooled
        && bank.size()[0] >= 1;
    if !ok {
        return Err(bad(format!(
            "its shapes (means {:?}, precision {:?}, bank {:?}) do not fit a model of {rows} \
             classes, {d} hidden and {pooled} pooled features",
            means.size(),
            precision.size(),
            bank.size()
        )));
    }
    Ok(FeatureStats {
        means,
        precision,
        bank,
    })
}

/// A small optional file of the bundle as text (`None` when absent, unreadable or over 16 MiB).
fn small_text(path: &Path) -> Option<String> {
    let bytes = crate::data::files::read_capped(path, 16 * 1024 * 1024).ok()?;
    String::from_utf8(bytes).ok()
}

/// What `evaluate --save` stored, if anything.
pub fn read_evaluation(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&small_text(&dir.join(EVALUATION_FILE))?).ok()
}

/// The confusion matrix `evaluate --save` drew, if any.
pub fn read_confusion_svg(dir: &Path) -> Option<String> {
    small_text(&dir.join(CONFUSION_FILE)).filter(|s| !s.trim().is_empty())
}

/// The row of `metrics.csv` whose weights the bundle holds, column → value: the last epoch's, or
/// under `--save-best` the last row marked best.
pub fn read_final_metrics(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = small_text(&dir.join(METRICS_FILE))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let best_col = header.iter().position(|h| *h == "best");
    let last = best_col
        .and_then(|c| rows.iter().rev().find(|r| r.get(c) == Some(&"yes")))
        .or(rows.last())?
        .clone();
    Some(
        header
            .iter()
            .zip(last)
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect(),
    )
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
