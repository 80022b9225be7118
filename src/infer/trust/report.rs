//! What `evaluate` reports about trust: calibration on the test images (NLL and ECE with the raw
//! softmax and with the temperature), and with `--ood DIR` how well each "unknown" score tells the
//! test images from images of none of the classes.

use super::calibration::{self, Targets};
use super::fit::{self, all_scores};
use super::scores::{auroc, fpr_at_tpr};
use crate::bundle::{Bundle, Score};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Calibration measured on labelled images.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TestCalibration {
    pub temperature: f64,
    pub nll_raw: f64,
    pub nll_calibrated: f64,
    pub ece_raw: f64,
    pub ece_calibrated: f64,
}

impl TestCalibration {
    /// From the probabilities as answered (`calibrated`: with the temperature `t`): `ln p` equals
    /// the logits over `T` up to a per-image constant, so both softmaxes come back from it
    /// without another pass.
    pub fn measure(probs: &[Vec<f32>], labels: &[usize], t: f64, calibrated: bool) -> Self {
        let logp: Vec<Vec<f32>> = probs
            .iter()
            .map(|p| p.iter().map(|&v| v.max(1e-30).ln()).collect())
            .collect();
        let (raw, cal) = if calibrated {
            (
                calibration::probabilities(&logp, 1.0 / t, false),
                probs.to_vec(),
            )
        } else {
            (probs.to_vec(), calibration::probabilities(&logp, t, false))
        };
        let y = Targets::Single(labels);
        let nll = |p: &[Vec<f32>]| {
            p.iter()
                .zip(labels)
                .map(|(p, &y)| -(p[y].max(1e-30) as f64).ln())
                .sum::<f64>()
                / p.len().max(1) as f64
        };
        TestCalibration {
            temperature: t,
            nll_raw: nll(&raw),
            nll_calibrated: nll(&cal),
            ece_raw: calibration::ece(&raw, y),
            ece_calibrated: calibration::ece(&cal, y),
        }
    }
}

/// One score's separation of in-distribution images from the `--ood` ones.
#[derive(Debug, Clone, Serialize)]
pub struct OodRow {
    pub score: Score,
    /// The score the model answers "unknown" with.
    pub default: bool,
    pub auroc: f64,
    /// The share of `--ood` images accepted at the threshold that keeps 95 % of the test images.
    pub fpr_at_95_tpr: f64,
    /// At the model's own threshold (fitted on its validation images at its acceptance share):
    /// the shares of `--ood` and of test images called unknown.
    pub ood_flagged: Option<f64>,
    pub test_flagged: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OodReport {
    pub ood_dir: PathBuf,
    pub test_images: usize,
    pub ood_images: usize,
    pub accept: Option<f64>,
    pub rows: Vec<OodRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum OodError {
    #[error(transparent)]
    Items(#[from] crate::data::items::ItemsError),
    #[error("no readable image under {0}")]
    Empty(PathBuf),
}

/// Scores `test` (in-distribution images) and every image under `ood_dir` by every score.
pub fn ood_report(
    bundle: &Bundle,
    test: &[PathBuf],
    ood_dir: &Path,
    max_file_bytes: u64,
) -> Result<OodReport, OodError> {
    let (ood_paths, _) = crate::data::items::image_files(ood_dir)?;
    let inside = fit::run(bundle, test, max_file_bytes);
    let outside = fit::run(bundle, &ood_paths, max_file_bytes);
    if outside.paths.is_empty() {
        return Err(OodError::Empty(ood_dir.to_path_buf()));
    }
    let si = all_scores(bundle, &inside);
    let so = all_scores(bundle, &outside);
    let u = bundle.info.unknown.as_ref();
    let share = |v: &[f64], t: f64| {
        v.iter().filter(|&&x| super::scores::below(x, t)).count() as f64 / v.len().max(1) as f64
    };
    let rows = si
        .iter()
        .map(|(s, a)| {
            let b = &so[s];
            let t = u
                .zip(bundle.accept)
                .and_then(|(u, acc)| u.threshold_of(*s, acc));
            OodRow {
                score: *s,
                default: u.is_some_and(|u| u.score == *s),
                auroc: auroc(a, b),
                fpr_at_95_tpr: fpr_at_tpr(a, b, 0.95),
                ood_flagged: t.map(|t| share(b, t)),
                test_flagged: t.map(|t| share(a, t)),
            }
        })
        .collect();
    Ok(OodReport {
        ood_dir: ood_dir.to_path_buf(),
        test_images: inside.paths.len(),
        ood_images: outside.paths.len(),
        accept: bundle.accept,
        rows,
    })
}

impl OodReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "\nunknown images ({} test vs {} from {}):\n{:<12} {:>7} {:>10} {:>12} {:>13}\n",
            self.test_images,
            self.ood_images,
            self.ood_dir.display(),
            "score",
            "AUROC",
            "FPR@95TPR",
            "ood flagged",
            "test flagged"
        );
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        for r in &self.rows {
            s.push_str(&format!(
                "{:<12} {:>7.4} {:>9.1}% {:>12} {:>13}\n",
                format!("{}{}", r.score.name(), if r.default { " *" } else { "" }),
                r.auroc,
                r.fpr_at_95_tpr * 100.0,
                pct(r.ood_flagged),
                pct(r.test_flagged)
            ));
        }
        s.push_str("* the score the model answers unknown with");
        if let Some(a) = self.accept {
            s.push_str(&format!(
                "; flagged: at its threshold accepting {:.0}% of validation images",
                a * 100.0
            ));
        }
        s.push('\n');
        s
    }
}

/// A reliability diagram (15 bins: accuracy against confidence, the diagonal is perfect
/// calibration) as an SVG, for the interpret report.
pub fn reliability_svg(bins: &[(usize, f64, f64)]) -> String {
    let (w, h, m) = (320.0, 320.0, 40.0);
    let inner = w - 2.0 * m;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect x=\"{m}\" y=\"{m}\" width=\"{inner}\" height=\"{inner}\" fill=\"#fafafa\" stroke=\"#999\"/>"
    );
    let bw = inner / bins.len() as f64;
    for (i, (n, _conf, acc)) in bins.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let x = m + i as f64 * bw;
        let bh = acc * inner;
        s.push_str(&format!(
            "<g><title>{n} images, confidence {:.0}–{:.0}%: accuracy {:.1}%</title>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7ab5\"/></g>",
            i as f64 / bins.len() as f64 * 100.0,
            (i + 1) as f64 / bins.len() as f64 * 100.0,
            acc * 100.0,
            m + inner - bh,
            bw - 1.0,
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{m}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">confidence</text>\
         <text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">accuracy</text>\
         <text x=\"{m}\" y=\"{}\" text-anchor=\"middle\">0</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">1</text></svg>",
        m + inner,
        m + inner,
        w / 2.0,
        h - 8.0,
        h / 2.0,
        h / 2.0,
        m + inner + 14.0,
        m + inner,
        m + inner + 14.0,
    ));
    s
}
