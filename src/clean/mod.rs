//! `finetune clean`: fastai's `ImageClassifierCleaner` as a local web page. Every image of a data
//! folder is scored once by a trained model; the page lists a class's images by loss, largest first
//! (the likeliest label mistakes and junk), and the user keeps, deletes or relabels each. Files only
//! ever move inside the data folder, through [`trash`], which logs every action so that undo and
//! `--restore` give everything back.

mod api;
pub mod trash;

pub use api::{router, serve};
use trash::{Trash, TrashError};

use crate::bundle::{self, BundleError};
use crate::infer::predict::{map_batches, preprocess, Options};
use crate::infer::splits::{self, SplitChoice, SplitError};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Items(#[from] crate::data::items::ItemsError),
    #[error(transparent)]
    Trash(#[from] TrashError),
    #[error("no image with id {0}")]
    UnknownId(u64),
    #[error("image {0} is already deleted")]
    Deleted(u64),
    #[error("`{0}` is not a class of this data folder or model: {1}")]
    UnknownClass(String, String),
    #[error("image {id} is already in class `{label}`")]
    SameClass { id: u64, label: String },
    #[error(
        "the labels of this model come from a CSV ({0}): relabel there; only delete works here"
    )]
    CsvLabels(PathBuf),
}

/// One image of the data folder.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    label: String,
    split: SplitChoice,
    /// The model's probabilities in its class order; `None` when the file could not be read.
    probs: Option<Vec<f32>>,
    deleted: bool,
}

/// An image as the API shows it. `id` is opaque: only the server maps it to a file.
#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub id: u64,
    /// Relative to the data folder.
    pub path: String,
    pub label: String,
    pub split: SplitChoice,
    pub predicted: Option<String>,
    pub probability: Option<f64>,
    /// Cross-entropy of the label under the model (`None`: a class the model does not know, or an
    /// unreadable file).
    pub loss: Option<f64>,
}

/// The order of an item list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Largest loss first; unscored images last.
    Loss,
    Path,
}

/// What a user does with one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Delete,
    Move(String),
}

/// How to score the images.
pub struct Scoring {
    pub model: PathBuf,
    pub runtime: crate::model::Runtime,
    pub opts: Options,
}

pub struct Cleaner {
    trash: Trash,
    entries: Vec<Entry>,
    model_classes: Vec<String>,
    classes: Vec<String>,
    csv: Option<PathBuf>,
    /// Multi-label models: the label cells' delimiter.
    delim: Option<String>,
    scoring: Scoring,
    /// Near-duplicates in different splits (entry, entry, cosine similarity), most similar first.
    leaks: Vec<(usize, usize, f32)>,
}

/// Two images of different splits whose embeddings are at least this similar (cosine) are shown
/// as a likely leak: the same photo re-encoded, resized or cropped a little (measured on
/// clothing-small, docs/usage.md "Leakage").
pub const LEAK_SIMILARITY: f32 = 0.95;

/// A pair of images that may be one photo in two splits.
#[derive(Debug, Clone, Serialize)]
pub struct Leak {
    pub a: ItemView,
    pub b: ItemView,
    pub similarity: f32,
}

impl Cleaner {
    /// Scores every image of `data` (the folder the model was trained on) with the model.
    pub fn open(data: &Path, scoring: Scoring) -> Result<Cleaner, CleanError> {
        let trash = Trash::open(data)?;
        let mut c = Cleaner {
            trash,
            entries: Vec::new(),
            model_classes: Vec::new(),
            classes: Vec::new(),
            csv: None,
            delim: None,
            scoring,
            leaks: Vec::new(),
        };
        c.rescore()?;
        Ok(c)
    }

    /// Reloads the model (it may have been retrained) and the folder, and scores everything again.
    /// Ids are reassigned.
    pub fn rescore(&mut self) -> Result<(), CleanError> {
        let b = bundle::load(&self.scoring.model, self.scoring.runtime)?;
        let root = self.trash.root().to_path_buf();
        let (items, skipped) = match splits::labelled(&b.info, &root) {
            Ok(x) => x,
            // A bundle from elsewhere: every image, in no split.
            Err(SplitError::NotRecorded) => {
                let all = crate::data::items::labelled(&root)?;
                (
                    all.items
                        .into_iter()
                        .map(|i| (i, SplitChoice::All))
                        .collect(),
                    all.skipped,
                )
            }
            Err(e) => return Err(e.into()),
        };
        for s in &skipped {
            eprintln!("warning: skipping {s}");
        }
        (self.csv, self.delim) = match b.info.data.as_ref().map(|d| &d.split) {
            Some(crate::data::items::SplitKind::Csv { labels, .. }) => (
                Some(labels.path.clone()),
                labels
                    .label_delim
                    .clone()
                    .filter(|_| b.info.task.is_multi()),
            ),
            _ => (None, None),
        };
        let paths: Vec<PathBuf> = items.iter().map(|(i, _)| i.path.clone()).collect();
        // One pass gives the probabilities and the embeddings (for the look-alikes across
        // splits); TTA, when asked, gives the probabilities in its own passes.
        let cap = self.scoring.opts.max_file_bytes;
        let mut probs: Vec<Option<Vec<f32>>> = Vec::with_capacity(paths.len());
        let mut embeddings: Vec<Option<tch::Tensor>> = Vec::with_capacity(paths.len());
        #[derive(Default)]
        struct Row(Vec<f32>, Option<tch::Tensor>);
        let info = &b.info;
        map_batches(
            &paths,
            |p| crate::data::decode::decode_file(p, cap).map(|img| preprocess(&img, info)),
            |imgs| {
                let (a, f) = crate::infer::forward::answers_with_features(&b, imgs);
                a.into_iter()
                    .enumerate()
                    .map(|(i, a)| Row(a.probs, Some(f.pooled.get(i as i64))))
                    .collect()
            },
            |_, r| match r {
                Ok(Row(p, e)) => {
                    probs.push(Some(p));
                    embeddings.push(e);
                }
                Err(_) => {
                    probs.push(None);
                    embeddings.push(None);
                }
            },
        );
        if self.scoring.opts.tta.is_some() {
            let preds = crate::infer::predict::predict(&b, &paths, &self.scoring.opts);
            probs = preds.into_iter().map(|p| p.ok().map(|p| p.probs)).collect();
        }
        self.entries = items
            .into_iter()
            .zip(probs)
            .map(|((item, split), probs)| Entry {
                path: item.path,
                label: item.label,
                split,
                probs,
                deleted: false,
            })
            .collect();
        self.leaks = leaks(&self.entries, &embeddings);
        self.model_classes = b.info.classes.clone();
        let mut classes = self.model_classes.clone();
        for e in &self.entries {
            for l in self.labels_of(&e.label) {
                if !classes.iter().any(|c| c == l) {
                    classes.push(l.to_string());
                }
            }
        }
        self.classes = classes;
        Ok(())
    }

    /// Near-duplicates in different splits, most similar first (deleted images left out).
    pub fn leaks(&self) -> Vec<Leak> {
        self.leaks
            .iter()
            .filter(|(a, b, _)| !self.entries[*a].deleted && !self.entries[*b].deleted)
            .map(|&(a, b, s)| Leak {
                a: self.view(a),
                b: self.view(b),
                similarity: s,
            })
            .collect()
    }

    /// An image's labels: its class, or for a multi-label model each label of its cell.
    fn labels_of<'a>(&'a self, label: &'a str) -> Vec<&'a str> {
        match &self.delim {
            Some(d) => crate::data::dataset::split_labels(label, d).collect(),
            None => vec![label],
        }
    }

    /// The model's classes, then any other class folder of the data.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Images not deleted, and how many of them carry each class (in [`Self::classes`]' order;
    /// a multi-label image counts once for each of its labels), in one pass over the entries.
    pub fn counts(&self) -> (usize, Vec<(&str, usize)>) {
        let mut per: std::collections::HashMap<&str, usize> = Default::default();
        let mut images = 0;
        for e in self.entries.iter().filter(|e| !e.deleted) {
            images += 1;
            for l in self.labels_of(&e.label) {
                *per.entry(l).or_default() += 1;
            }
        }
        let classes = self
            .classes
            .iter()
            .map(|k| (k.as_str(), per.get(k.as_str()).copied().unwrap_or(0)))
            .collect();
        (images, classes)
    }

    /// Deletes and moves in effect (across sessions, as the log says).
    pub fn changes(&self) -> usize {
        self.trash.active().len()
    }

    pub fn root(&self) -> &Path {
        self.trash.root()
    }

    fn view(&self, id: usize) -> ItemView {
        let e = &self.entries[id];
        if self.delim.is_some() {
            return self.view_multi(id);
        }
        let top = e.probs.as_ref().and_then(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, &v)| (self.model_classes[i].clone(), v as f64))
        });
        let loss = e.probs.as_ref().and_then(|p| {
            let k = self.model_classes.iter().position(|c| *c == e.label)?;
            Some(-(p[k].max(1e-12) as f64).ln())
        });
        self.item_view(
            id,
            top.as_ref().map(|t| t.0.clone()),
            top.map(|t| t.1),
            loss,
        )
    }

    /// A multi-label image: the labels above 0.5 as its prediction (their lowest probability
    /// beside it) and fastai's `BCEWithLogitsLossFlat` of its label set as its loss.
    fn view_multi(&self, id: usize) -> ItemView {
        let e = &self.entries[id];
        let truth = self.labels_of(&e.label);
        let mut predicted = None;
        let mut probability = None;
        let mut loss = None;
        if let Some(p) = &e.probs {
            let above = crate::infer::predict::decide(
                p,
                crate::bundle::Task::MultiLabel,
                0,
                crate::bundle::DEFAULT_THRESH,
            );
            predicted = Some(
                above
                    .iter()
                    .map(|(i, _)| self.model_classes[*i].as_str())
                    .collect::<Vec<_>>()
                    .join(self.delim.as_deref().unwrap_or(" ")),
            );
            probability = above.last().map(|(_, v)| *v as f64);
            let known = truth
                .iter()
                .all(|t| self.model_classes.iter().any(|c| c == t));
            loss = known.then(|| {
                let bce: f64 = self
                    .model_classes
                    .iter()
                    .zip(p)
                    .map(|(c, &q)| {
                        let q = (q as f64).clamp(1e-12, 1.0 - 1e-12);
                        if truth.contains(&c.as_str()) {
                            -q.ln()
                        } else {
                            -(1.0 - q).ln()
                        }
                    })
                    .sum();
                bce / self.model_classes.len().max(1) as f64
            });
        }
        self.item_view(id, predicted, probability, loss)
    }

    fn item_view(
        &self,
        id: usize,
        predicted: Option<String>,
        probability: Option<f64>,
        loss: Option<f64>,
    ) -> ItemView {
        let e = &self.entries[id];
        ItemView {
            id: id as u64,
            path: self
                .trash
                .rel(&e.path)
                .unwrap_or_else(|_| e.path.display().to_string()),
            label: e.label.clone(),
            split: e.split,
            predicted,
            probability,
            loss,
        }
    }

    /// The images of `class` (all classes: `None`) in `split`, not deleted, in `sort` order.
    pub fn items(&self, class: Option<&str>, split: SplitChoice, sort: Sort) -> Vec<ItemView> {
        let mut v: Vec<ItemView> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                !e.deleted
                    && class.is_none_or(|c| self.labels_of(&e.label).contains(&c))
                    && (split == SplitChoice::All || e.split == split)
            })
            .map(|i| self.view(i))
            .collect();
        match sort {
            Sort::Loss => v.sort_by(|a, b| {
                let key = |x: &ItemView| x.loss.unwrap_or(f64::NEG_INFINITY);
                key(b).total_cmp(&key(a)).then(a.path.cmp(&b.path))
            }),
            Sort::Path => v.sort_by(|a, b| a.path.cmp(&b.path)),
        }
        v
    }

    fn entry(&self, id: u64) -> Result<&Entry, CleanError> {
        self.entries
            .get(usize::try_from(id).unwrap_or(usize::MAX))
            .ok_or(CleanError::UnknownId(id))
    }

    /// The file of image `id` (checked to be under the data folder: a link out of it is refused).
    pub fn image_path(&self, id: u64) -> Result<PathBuf, CleanError> {
        let e = self.entry(id)?;
        Ok(self.trash.inside(&e.path)?)
    }

    /// Deletes (into the trash) or relabels image `id`; returns it as it is now.
    pub fn act(&mut self, id: u64, action: &Action) -> Result<ItemView, CleanError> {
        let e = self.entry(id)?.clone();
        if e.deleted {
            return Err(CleanError::Deleted(id));
        }
        let (label, deleted, at) = match action {
            Action::Delete => {
                // CSV labels need not be folder names (`a/b`, sets): their trash folder is the
                // image's own folder's name.
                let bucket = match &self.csv {
                    None => e.label.clone(),
                    Some(_) => e
                        .path
                        .parent()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "images".into()),
                };
                let (_, at) = self.trash.delete(&e.path, &bucket)?;
                (e.label.clone(), true, at)
            }
            Action::Move(label) => {
                if let Some(csv) = &self.csv {
                    return Err(CleanError::CsvLabels(csv.clone()));
                }
                trash::check_label(label)?;
                if !self.classes.contains(label) {
                    return Err(CleanError::UnknownClass(
                        label.clone(),
                        self.classes.join(", "),
                    ));
                }
                if *label == e.label {
                    return Err(CleanError::SameClass {
                        id,
                        label: label.clone(),
                    });
                }
                let (_, at) = self.trash.relabel(&e.path, label)?;
                (label.clone(), false, at)
            }
        };
        let entry = &mut self.entries[id as usize];
        entry.path = at;
        entry.label = label;
        entry.deleted = deleted;
        Ok(self.view(id as usize))
    }

    /// Reverses the newest action (of this or an earlier session); returns the undo entry and the
    /// image as it is now, when it is one of the listed images.
    pub fn undo(&mut self) -> Result<(trash::Entry, Option<ItemView>), CleanError> {
        let (u, now) = self.trash.undo()?;
        let Some(now) = now else {
            return Ok((u, None));
        };
        let was = self.trash.root().join(&u.from);
        let found = self.entries.iter().position(|e| e.path == was);
        let id = match found {
            Some(i) => i,
            None => {
                // An image deleted in an earlier session comes back unscored (rescore scores it).
                let label = now
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.entries.push(Entry {
                    path: now.clone(),
                    label,
                    split: SplitChoice::All,
                    probs: None,
                    deleted: false,
                });
                self.entries.len() - 1
            }
        };
        // A relabel undone goes back to its old class folder; a delete undone keeps its label
        // (which, with CSV labels, is not a folder's name).
        let was_move = self
            .trash
            .entries()
            .iter()
            .any(|x| Some(x.seq) == u.of && x.action == trash::Kind::Move);
        let e = &mut self.entries[id];
        e.path = now.clone();
        e.deleted = false;
        if was_move {
            if let Some(l) = now.parent().and_then(|p| p.file_name()) {
                e.label = l.to_string_lossy().into_owned();
            }
        }
        Ok((u, Some(self.view(id))))
    }
}

/// Puts back everything the log says was deleted or moved (`finetune clean DATA --restore`).
pub fn restore(data: &Path) -> Result<Vec<trash::Entry>, TrashError> {
    Trash::open(data)?.restore()
}

/// Pairs of entries in different splits (train, valid, test) whose embeddings' cosine similarity is
/// at least [`LEAK_SIMILARITY`], most similar first, at most 1,000. Compared a block of 512 rows at a
/// time, so memory stays at the embeddings plus one `[512, N]` block.
fn leaks(entries: &[Entry], embeddings: &[Option<tch::Tensor>]) -> Vec<(usize, usize, f32)> {
    let idx: Vec<usize> = (0..entries.len())
        .filter(|&i| embeddings[i].is_some() && entries[i].split != SplitChoice::All)
        .collect();
    if idx.len() < 2 {
        return Vec::new();
    }
    let rows: Vec<tch::Tensor> = idx
        .iter()
        .filter_map(|&i| embeddings[i].as_ref().map(|t| t.shallow_clone()))
        .collect();
    let e = crate::infer::trust::scores::normalize(&tch::Tensor::stack(&rows, 0));
    let split: Vec<SplitChoice> = idx.iter().map(|&i| entries[i].split).collect();
    let mut out = Vec::new();
    let n = idx.len() as i64;
    for start in (0..n).step_by(512) {
        let len = 512.min(n - start);
        let sims = e.narrow(0, start, len).matmul(&e.transpose(0, 1));
        let hits = sims.ge(LEAK_SIMILARITY as f64).nonzero();
        let pairs: Vec<i64> = Vec::try_from(hits.flatten(0, -1)).unwrap_or_default();
        for p in pairs.chunks(2) {
            let (a, b) = ((start + p[0]) as usize, p[1] as usize);
            if a < b && split[a] != split[b] {
                let s = sims.double_value(&[p[0], p[1]]) as f32;
                out.push((idx[a], idx[b], s));
            }
        }
    }
    out.sort_by(|x, y| y.2.total_cmp(&x.2));
    out.truncate(1000);
    out
}
