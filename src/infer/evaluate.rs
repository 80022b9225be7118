//! Test-set evaluation: accuracy, per-class precision/recall/F1, confusion matrix, most-confused
//! pairs and top losses (fastai's `ClassificationInterpretation`).

use super::predict::{predict, Options};
use crate::bundle::{self, Bundle, BundleError};
use crate::data::items::{self, ItemsError};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Items(#[from] ItemsError),
    #[error(transparent)]
    Labels(#[from] crate::data::labels::LabelsError),
    #[error("test folder class `{class}` ({dir}) is not one of the model's classes: {known}")]
    UnknownClass {
        class: String,
        dir: PathBuf,
        known: String,
    },
    #[error("no readable test image under {0}")]
    NoImages(PathBuf),
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub path: PathBuf,
    pub actual: String,
    pub predicted: String,
    pub probability: f64,
    pub loss: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    /// The mean of the classes' recalls over the classes in the test set (scikit-learn's
    /// `balanced_accuracy_score`): what accuracy would be if every class had as many images.
    pub balanced_accuracy: f64,
    /// The mean of the classes' F1 over the classes in the test set or predicted (scikit-learn's
    /// `f1_score(average="macro")`).
    pub macro_f1: f64,
    pub correct: usize,
    pub total: usize,
    pub classes: Vec<String>,
    /// `confusion[actual][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub per_class: Vec<ClassReport>,
    /// (actual, predicted, count), most frequent first, off-diagonal only.
    pub most_confused: Vec<(String, String, usize)>,
    pub top_losses: Vec<Loss>,
    pub skipped: Vec<(PathBuf, String)>,
    /// The test-time augmentation the probabilities come from (`null`: the plain transform).
    pub tta: Option<super::tta::Tta>,
    /// Calibration on these images: NLL and ECE with the raw softmax and with the model's
    /// temperature (`null`: the bundle has none).
    pub calibration: Option<super::trust::report::TestCalibration>,
    /// Images the model called unknown (`null`: no unknown answer); they still count in the
    /// accuracy by their closest class, and `accepted_accuracy` is the accuracy of the others.
    pub unknown: Option<usize>,
    pub accepted_accuracy: Option<f64>,
    /// The reliability diagram of the probabilities as answered: per confidence bin (15 equal
    /// widths), (images, mean confidence, accuracy).
    pub reliability: Vec<(usize, f64, f64)>,
}

impl Evaluation {
    /// Stores this evaluation in the bundle `dir` (written atomically: a crash never leaves half of
    /// it), with the test folder it was measured on.
    pub fn save(&self, dir: &Path, test_dir: &Path) -> Result<(), BundleError> {
        let mut v = serde_json::to_value(self).map_err(|e| BundleError::Json {
            path: dir.join(bundle::EVALUATION_FILE),
            msg: e.to_string(),
        })?;
        v["test_dir"] = serde_json::json!(test_dir.display().to_string());
        bundle::write_evaluation(dir, &v, &self.confusion_svg())
    }
}

/// Files over `opts.max_file_bytes` are skipped like unreadable ones; `opts.tta` evaluates with
/// test-time augmentation; `labels` takes the labels from a CSV instead of the folder names.
pub fn evaluate(
    bundle: &Bundle,
    test_dir: &Path,
    k_losses: usize,
    opts: &Options,
    labels: Option<&crate::data::labels::LabelsCsv>,
) -> Result<Evaluation, EvalError> {
    let scan = match labels {
        None => items::scan(test_dir, &[])?,
        Some(l) => {
            let (items, skipped) = crate::data::labels::items(test_dir, l)?;
            items::Scan {
                items,
                skipped,
                ..Default::default()
            }
        }
    };
    evaluate_scan(bundle, scan, test_dir, k_losses, opts)
}

/// [`evaluate`] on images already found (`scan`, from `source`): a split of a training folder
/// (`super::splits`) or a test folder.
pub fn evaluate_scan(
    bundle: &Bundle,
    scan: items::Scan,
    source: &Path,
    k_losses: usize,
    opts: &Options,
) -> Result<Evaluation, EvalError> {
    let test_dir = source;
    let classes = bundle.info.classes.clone();
    let mut labels = Vec::new();
    for it in &scan.items {
        match classes.iter().position(|c| *c == it.label) {
            Some(i) => labels.push(i),
            None => {
                return Err(EvalError::UnknownClass {
                    class: it.label.clone(),
                    dir: it.path.parent().unwrap_or(test_dir).to_path_buf(),
                    known: classes.join(", "),
                })
            }
        }
    }
    let paths: Vec<PathBuf> = scan.items.iter().map(|i| i.path.clone()).collect();
    let preds = predict(bundle, &paths, opts);
    let n = classes.len();
    let mut confusion = vec![vec![0usize; n]; n];
    let mut losses = Vec::new();
    let mut skipped: Vec<(PathBuf, String)> = scan
        .skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.clone()))
        .collect();
    let mut answered: Vec<(Vec<f32>, usize)> = Vec::new();
    let (mut unknown, mut accepted, mut accepted_right) = (0usize, 0usize, 0usize);
    for (r, &actual) in preds.into_iter().zip(&labels) {
        match r {
            Ok(p) => {
                let (pred, prob) = p.top(1)[0];
                confusion[actual][pred] += 1;
                if p.unknown {
                    unknown += 1;
                } else {
                    accepted += 1;
                    accepted_right += usize::from(pred == actual);
                }
                answered.push((p.probs.clone(), actual));
                let p_true = p.probs[actual].max(1e-12) as f64;
                losses.push(Loss {
                    path: p.path,
                    actual: classes[actual].clone(),
                    predicted: classes[pred].clone(),
                    probability: prob as f64,
                    loss: -p_true.ln(),
                });
            }
            Err(e) => skipped.push((e.path().to_path_buf(), e.reason())),
        }
    }
    let total: usize = confusion.iter().flatten().sum();
    if total == 0 {
        return Err(EvalError::NoImages(test_dir.to_path_buf()));
    }
    let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassReport> = (0..n)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = (0..n).map(|a| confusion[a][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassReport {
                class: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let mut most_confused: Vec<(String, String, usize)> = (0..n)
        .flat_map(|a| (0..n).map(move |p| (a, p)))
        .filter(|&(a, p)| a != p && confusion[a][p] > 0)
        .map(|(a, p)| (classes[a].clone(), classes[p].clone(), confusion[a][p]))
        .collect();
    most_confused.sort_by(|x, y| y.2.cmp(&x.2).then(x.0.cmp(&y.0)).then(x.1.cmp(&y.1)));
    losses.sort_by(|a, b| b.loss.total_cmp(&a.loss));
    losses.truncate(k_losses);
    let (probs, y): (Vec<Vec<f32>>, Vec<usize>) = answered.into_iter().unzip();
    let reliability = super::trust::calibration::reliability(&probs, &y);
    let calibration = bundle.info.calibration.map(|c| {
        super::trust::report::TestCalibration::measure(&probs, &y, c.temperature, bundle.calibrated)
    });
    let has_unknown = bundle.threshold().is_some();
    let (balanced_accuracy, macro_f1) = class_means(&per_class, &confusion);
    Ok(Evaluation {
        balanced_accuracy,
        macro_f1,
        reliability,
        calibration,
        unknown: has_unknown.then_some(unknown),
        accepted_accuracy: (has_unknown && accepted > 0)
            .then(|| accepted_right as f64 / accepted as f64),
        accuracy: correct as f64 / total as f64,
        correct,
        total,
        classes,
        confusion,
        per_class,
        most_confused,
        top_losses: losses,
        skipped,
        tta: opts.tta,
    })
}

/// Balanced accuracy (mean recall over the classes with test images) and macro F1 (mean F1 over
/// the classes with test images or predictions), as scikit-learn defines them.
fn class_means(per_class: &[ClassReport], confusion: &[Vec<usize>]) -> (f64, f64) {
    let mean = |v: Vec<f64>| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let present = |c: usize| per_class[c].support > 0;
    let predicted = |c: usize| confusion.iter().any(|row| row[c] > 0);
    let n = per_class.len();
    (
        mean(
            (0..n)
                .filter(|&c| present(c))
                .map(|c| per_class[c].recall)
                .collect(),
        ),
        mean(
            (0..n)
                .filter(|&c| present(c) || predicted(c))
                .map(|c| per_class[c].f1)
                .collect(),
        ),
    )
}

impl Evaluation {
    /// The human report: accuracy line, per-class table, confusion matrix, confusions, top losses.
    pub fn to_text(&self) -> String {
        let tta = match &self.tta {
            Some(t) => format!(" with TTA (n {}, beta {}, seed {})", t.n, t.beta, t.seed),
            None => String::new(),
        };
        let mut s = format!(
            "Test accuracy{tta}: {:.2}% ({}/{}); balanced accuracy {:.2}%, macro F1 {:.4}\n",
            self.accuracy * 100.0,
            self.correct,
            self.total,
            self.balanced_accuracy * 100.0,
            self.macro_f1
        );
        if let Some(c) = &self.calibration {
            s.push_str(&format!(
                "Calibration (temperature {:.3}): NLL {:.4} raw -> {:.4} calibrated, ECE {:.4} -> {:.4}\n",
                c.temperature, c.nll_raw, c.nll_calibrated, c.ece_raw, c.ece_calibrated
            ));
        }
        if let Some(u) = self.unknown {
            s.push_str(&format!(
                "Unknown: {u} of {} images ({:.1}%); accuracy on the rest {}\n",
                self.total,
                u as f64 / self.total.max(1) as f64 * 100.0,
                self.accepted_accuracy
                    .map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
            ));
        }
        s.push('\n');
        let w = name_width(&self.classes);
        s.push_str(&format!(
            "{:<w$}  {:>9}  {:>6}  {:>6}  {:>7}\n",
            "class", "precision", "recall", "f1", "support"
        ));
        for r in &self.per_class {
            s.push_str(&format!(
                "{:<w$}  {:>9.3}  {:>6.3}  {:>6.3}  {:>7}\n",
                r.class, r.precision, r.recall, r.f1, r.support
            ));
        }
        s.push_str("\nconfusion matrix (rows: actual, columns: predicted)\n");
        let cw = self
            .confusion
            .iter()
            .flatten()
            .max()
            .map(|m| m.to_string().len())
            .unwrap_or(1)
            .max(3);
        let rw = w + 1 + self.classes.len().to_string().len();
        s.push_str(&format!("{:<rw$} ", ""));
        for i in 0..self.classes.len() {
            s.push_str(&format!(" {:>cw$}", i));
        }
        s.push('\n');
        for (i, row) in self.confusion.iter().enumerate() {
            s.push_str(&format!("{:<rw$} ", format!("{i} {}", self.classes[i])));
            for v in row {
                s.push_str(&format!(" {v:>cw$}"));
            }
            s.push('\n');
        }
        if !self.most_confused.is_empty() {
            s.push_str("\nmost confused (actual -> predicted: count)\n");
            for (a, p, c) in self.most_confused.iter().take(10) {
                s.push_str(&format!("  {a} -> {p}: {c}\n"));
            }
        }
        if !self.top_losses.is_empty() {
            s.push_str("\ntop losses (actual / predicted / probability / loss)\n");
            for l in &self.top_losses {
                s.push_str(&format!(
                    "  {} / {} / {:.3} / {:.3}  {}\n",
                    l.actual,
                    l.predicted,
                    l.probability,
                    l.loss,
                    l.path.display()
                ));
            }
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

/// The width of a text table's first column: the longest class name, at least 5.
pub(crate) fn name_width(names: &[String]) -> usize {
    names
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(5)
        .max(5)
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

impl Evaluation {
    /// The confusion matrix as an SVG heat map (rows actual, columns predicted), like fastai's
    /// `plot_confusion_matrix`. Written directly: a grid of rectangles needs no plotting library.
    pub fn confusion_svg(&self) -> String {
        self.confusion_svg_as(false)
    }

    /// [`Self::confusion_svg`], or with each row divided by its total (fastai's
    /// `plot_confusion_matrix(normalize=True)`): recall on the diagonal, whatever the class sizes.
    pub fn confusion_svg_as(&self, normalized: bool) -> String {
        let n = self.classes.len();
        let cell = 40.0;
        let label_w = 8.0
            * self
                .classes
                .iter()
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(4) as f64
            + 20.0;
        let size = label_w + cell * n as f64 + 20.0;
        let max = self
            .confusion
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut s = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n"
        );
        for (i, row) in self.confusion.iter().enumerate() {
            let y = label_w + i as f64 * cell;
            s.push_str(&format!(
                "<text x='{:.0}' y='{:.0}' text-anchor='end'>{}</text>\n",
                label_w - 6.0,
                y + cell / 2.0 + 4.0,
                xml_escape(&self.classes[i])
            ));
            let row_total = row.iter().sum::<usize>().max(1) as f64;
            for (j, &v) in row.iter().enumerate() {
                let x = label_w + j as f64 * cell;
                let (frac, shown) = if normalized {
                    let f = v as f64 / row_total;
                    (f, format!("{f:.2}"))
                } else {
                    (v as f64 / max, v.to_string())
                };
                let shade = 255.0 - 200.0 * frac;
                let (tx, ty) = (x + cell / 2.0, y + cell / 2.0 + 4.0);
                s.push_str(&format!(
                    "<rect x='{x:.0}' y='{y:.0}' width='{cell}' height='{cell}' fill='rgb({shade:.0},{shade:.0},255)' stroke='#ccc'/><text x='{tx:.0}' y='{ty:.0}' text-anchor='middle'>{shown}</text>\n"
                ));
            }
        }
        for (j, c) in self.classes.iter().enumerate() {
            let x = label_w + j as f64 * cell + cell / 2.0;
            s.push_str(&format!(
                "<text transform='translate({x:.0},{:.0}) rotate(-60)'>{}</text>\n",
                label_w - 6.0,
                xml_escape(c)
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}
