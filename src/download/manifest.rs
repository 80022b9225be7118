//! `manifest.csv`: one row per image URL ever tried, with where it came from and what became of it.
//! It is what makes re-runs resume: URLs already listed are not fetched again.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Row {
    /// Path relative to the output folder (`train/lion/ab12….jpg`), empty when nothing was kept.
    pub file: String,
    pub class: String,
    pub query: String,
    pub source_url: String,
    pub image_url: String,
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub sha256: String,
    pub phash: String,
    pub status: Status,
    pub reason: String,
    /// For a near-duplicate: the sha256 of the image kept in its place (its path is in `reason`).
    #[serde(default)]
    pub duplicate_of: String,
}

/// What became of a URL, written to `manifest.csv` as its snake_case name (`near_duplicate`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Kept, in `train/<class>/`.
    Train,
    /// Kept, in `test/<class>/`.
    Test,
    /// Not kept: the fetch or the write failed (`reason` says why, its first word the column).
    #[default]
    Failed,
    /// The same bytes as an image kept for another URL.
    Duplicate,
    /// Visually the same as a kept image (`duplicate_of`).
    NearDuplicate,
    /// The same image found for two classes: kept for neither.
    LabelConflict,
    /// A kept file that no longer decodes.
    Invalid,
    /// A kept file deleted outside finetune.
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Train => "train",
            Status::Test => "test",
            Status::Failed => "failed",
            Status::Duplicate => "duplicate",
            Status::NearDuplicate => "near_duplicate",
            Status::LabelConflict => "label_conflict",
            Status::Invalid => "invalid",
            Status::Missing => "missing",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So that a row reads as the CSV does: `row.status == "duplicate"`.
impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Row {
    pub fn is_kept(&self) -> bool {
        matches!(self.status, Status::Train | Status::Test)
    }
}

pub fn read(path: &Path) -> Result<Vec<Row>, String> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    // Bounded like every read of a user's file (a manifest line is a few hundred bytes).
    let bytes = crate::data::files::read_capped(path, 1 << 30)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rdr = csv::Reader::from_reader(bytes.as_slice());
    rdr.deserialize()
        .collect::<Result<Vec<Row>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Written to a temporary file, flushed and renamed, so an interrupted run or a full disk never
/// leaves half a manifest: the previous one stays until the new one is complete.
pub fn write(path: &Path, rows: &[Row]) -> Result<(), String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    crate::atomic::write_file(path, &bytes).map_err(|e| {
        format!(
            "cannot write {}: {e}; the previous manifest is unchanged (free some space and run again to resume)",
            path.display()
        )
    })
}
