//! Which of a data folder's images a model trained on and which it was validated on, rebuilt from
//! the split its bundle records, so `interpret --split valid` and `clean` look at exactly the valid
//! set the epoch table was measured on (fastai's `ClassificationInterpretation.from_learner` uses
//! the learner's own `dls.valid`, which a separate program can only rebuild).

use crate::bundle::ModelInfo;
use crate::data::items::{self, Item, ItemsError, Scan, Skip, SplitKind};
use std::path::{Path, PathBuf};

/// A part of a data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitChoice {
    Train,
    Valid,
    /// `DATA/test/` (never used for training).
    Test,
    All,
}

impl SplitChoice {
    pub fn name(self) -> &'static str {
        match self {
            SplitChoice::Train => "train",
            SplitChoice::Valid => "valid",
            SplitChoice::Test => "test",
            SplitChoice::All => "all",
        }
    }

    pub const NAMES: &'static [&'static str] = &["train", "valid", "test", "all"];

    pub fn parse(s: &str) -> Option<SplitChoice> {
        [Self::Train, Self::Valid, Self::Test, Self::All]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

impl std::str::FromStr for SplitChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("split `{s}`: choose one of train, valid, test, all"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    Items(#[from] ItemsError),
    #[error(transparent)]
    Labels(#[from] crate::data::labels::LabelsError),
    #[error(
        "the bundle records no training split (it was not made by `finetune train`); pass a \
         labelled folder without --split to use all of it"
    )]
    NotRecorded,
    #[error("{0} has no test/ folder; choose --split train, valid or all")]
    NoTest(PathBuf),
}

/// Every image with its split, and the files left out.
pub type Labelled = (Vec<(Item, SplitChoice)>, Vec<Skip>);

/// Every image of `data` with the split it belongs to under the model's recorded split: the train
/// and valid sets exactly as `finetune train` drew them, then `data/test/` when present.
pub fn labelled(info: &ModelInfo, data: &Path) -> Result<Labelled, SplitError> {
    labelled_with(info, data, true)
}

/// [`labelled`], saying (`warn`) when the folder's valid set differs from the recorded one; the
/// end of `train` has no reason to (it just read the folder, and counts only readable images).
pub fn labelled_with(info: &ModelInfo, data: &Path, warn: bool) -> Result<Labelled, SplitError> {
    let kind = &info.data.as_ref().ok_or(SplitError::NotRecorded)?.split;
    let split = match kind {
        SplitKind::Random { valid_pct, seed } => items::split(data, *valid_pct, *seed)?,
        // Folder layouts are found again from the folders themselves; the numbers are unused.
        SplitKind::Folders { .. } => items::split(data, 0.2, 0)?,
        SplitKind::Csv {
            labels,
            valid_pct,
            seed,
        } => {
            // Warnings on stderr, as the valid-set check below (not again when `!warn`).
            let console = crate::train::report::ConsoleProgress::new("", true);
            let sink: &dyn crate::data::Progress =
                if warn { &console } else { &crate::data::Quiet };
            crate::data::labels::split(
                data,
                labels,
                valid_pct.unwrap_or(0.2),
                seed.unwrap_or(0),
                sink,
            )?
            .0
        }
    };
    if let Some(d) = info.data.as_ref().filter(|_| warn) {
        if d.valid_images != split.valid.items.len() {
            eprintln!(
                "warning: {} gives {} valid images where the model recorded {}: is it the folder \
                 the model was trained on (unchanged)?",
                data.display(),
                split.valid.items.len(),
                d.valid_images
            );
        }
    }
    let mut skipped = split.train.skipped;
    skipped.extend(split.valid.skipped);
    let mut out: Vec<(Item, SplitChoice)> = Vec::new();
    out.extend(
        split
            .train
            .items
            .into_iter()
            .map(|i| (i, SplitChoice::Train)),
    );
    out.extend(
        split
            .valid
            .items
            .into_iter()
            .map(|i| (i, SplitChoice::Valid)),
    );
    let test = data.join("test");
    if test.is_dir() && !matches!(kind, SplitKind::Csv { .. }) {
        let t = items::scan(&test, &[])?;
        skipped.extend(t.skipped);
        out.extend(t.items.into_iter().map(|i| (i, SplitChoice::Test)));
    }
    Ok((out, skipped))
}

/// The images of one split of `data` (see [`labelled`]).
pub fn choose(info: &ModelInfo, data: &Path, which: SplitChoice) -> Result<Scan, SplitError> {
    let (all, skipped) = labelled(info, data)?;
    if which == SplitChoice::Test && !all.iter().any(|(_, s)| *s == SplitChoice::Test) {
        return Err(SplitError::NoTest(data.to_path_buf()));
    }
    let items = all
        .into_iter()
        .filter(|(_, s)| which == SplitChoice::All || *s == which)
        .map(|(i, _)| i)
        .collect();
    Ok(Scan {
        items,
        skipped,
        ..Default::default()
    })
}
