//! Test-set evaluation of a multi-label model (fastai's `MultiCategoryBlock`): `accuracy_multi` (the
//! share of right label decisions at the threshold), samples-averaged F1 (`F1ScoreMulti`), and per
//! label precision, recall, F1 and support, at the chosen threshold.

use super::evaluate::EvalError;
use super::predict::{predict, Options};
use crate::bundle::Bundle;
use crate::data::items::Item;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Test images that have this label.
    pub support: usize,
    /// Test images the model gives this label.
    pub predicted: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MultiEvaluation {
    /// Always `multi_label`, so a reader of `--json` knows which report it holds.
    pub task: &'static str,
    pub thresh: f64,
    /// fastai's `accuracy_multi`: right decisions over every label of every image.
    pub accuracy_multi: f64,
    /// fastai's `F1ScoreMulti(average='samples')` (an image with no true and no predicted label
    /// counts 0, as scikit-learn's default).
    pub f1_samples: f64,
    /// Images whose predicted label set is exactly their true set.
    pub exact_match: f64,
    pub total: usize,
    pub classes: Vec<String>,
    pub per_label: Vec<LabelReport>,
    pub skipped: Vec<(PathBuf, String)>,
    pub tta: Option<super::tta::Tta>,
}

/// `items` carry label cells (`delim`-separated sets); labels the model does not know are refused.
pub fn evaluate_multi(
    bundle: &Bundle,
    items: &[Item],
    delim: &str,
    thresh: f64,
    opts: &Options,
    source: &Path,
) -> Result<MultiEvaluation, EvalError> {
    let classes = bundle.info.classes.clone();
    let n = classes.len();
    let mut truth: Vec<Vec<bool>> = Vec::with_capacity(items.len());
    for it in items {
        let mut t = vec![false; n];
        for l in crate::data::dataset::split_labels(&it.label, delim) {
            match classes.iter().position(|c| c == l) {
                Some(k) => t[k] = true,
                None => {
                    return Err(EvalError::UnknownClass {
                        class: l.to_string(),
                        dir: it.path.clone(),
                        known: classes.join(", "),
                    })
                }
            }
        }
        truth.push(t);
    }
    let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let preds = predict(bundle, &paths, opts);
    let (mut tp, mut fp, mut fn_) = (vec![0usize; n], vec![0usize; n], vec![0usize; n]);
    let (mut right, mut f1_sum, mut exact, mut total) = (0usize, 0.0f64, 0usize, 0usize);
    let mut skipped = Vec::new();
    for (r, t) in preds.into_iter().zip(&truth) {
        let p = match r {
            Ok(p) => p,
            Err(e) => {
                skipped.push((e.path().to_path_buf(), e.reason()));
                continue;
            }
        };
        total += 1;
        let (mut hit, mut npred, mut ntrue) = (0usize, 0usize, 0usize);
        for k in 0..n {
            let yes = p.probs[k] as f64 > thresh;
            right += usize::from(yes == t[k]);
            match (yes, t[k]) {
                (true, true) => tp[k] += 1,
                (true, false) => fp[k] += 1,
                (false, true) => fn_[k] += 1,
                (false, false) => {}
            }
            hit += usize::from(yes && t[k]);
            npred += usize::from(yes);
            ntrue += usize::from(t[k]);
        }
        if npred + ntrue > 0 {
            f1_sum += 2.0 * hit as f64 / (npred + ntrue) as f64;
        }
        exact += usize::from(hit == npred && hit == ntrue);
    }
    if total == 0 {
        return Err(EvalError::NoImages(source.to_path_buf()));
    }
    let ratio = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let per_label = (0..n)
        .map(|k| {
            let precision = ratio(tp[k], tp[k] + fp[k]);
            let recall = ratio(tp[k], tp[k] + fn_[k]);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            LabelReport {
                label: classes[k].clone(),
                precision,
                recall,
                f1,
                support: tp[k] + fn_[k],
                predicted: tp[k] + fp[k],
            }
        })
        .collect();
    Ok(MultiEvaluation {
        task: "multi_label",
        thresh,
        accuracy_multi: right as f64 / (total * n) as f64,
        f1_samples: f1_sum / total as f64,
        exact_match: exact as f64 / total as f64,
        total,
        classes,
        per_label,
        skipped,
        tta: opts.tta,
    })
}

impl MultiEvaluation {
    /// The human report: the metrics line, then one row per label.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "accuracy_multi (thresh {}): {:.2}%   f1_score (samples): {:.4}   exact match: {:.2}%   ({} images{})\n\n",
            self.thresh,
            self.accuracy_multi * 100.0,
            self.f1_samples,
            self.exact_match * 100.0,
            self.total,
            if self.tta.is_some() { ", TTA" } else { "" }
        );
        let w = super::evaluate::name_width(&self.classes);
        s.push_str(&format!(
            "{:<w$}  {:>9}  {:>6}  {:>6}  {:>7}  {:>9}\n",
            "label", "precision", "recall", "f1", "support", "predicted"
        ));
        for r in &self.per_label {
            s.push_str(&format!(
                "{:<w$}  {:>9.3}  {:>6.3}  {:>6.3}  {:>7}  {:>9}\n",
                r.label, r.precision, r.recall, r.f1, r.support, r.predicted
            ));
        }
        if !self.skipped.is_empty() {
            s.push_str(&format!(
                "\nskipped {} unreadable file(s)\n",
                self.skipped.len()
            ));
        }
        s
    }
}
