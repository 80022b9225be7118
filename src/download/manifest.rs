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
    /// `train`, `test`, `failed`, `duplicate`, `near_duplicate`, `label_conflict`, `invalid`, or
    /// `missing` (a kept file deleted outside finetune).
    pub status: String,
    pub reason: String,
    /// For a near-duplicate: the sha256 of the image kept in its place (its path is in `reason`).
    #[serde(default)]
    pub duplicate_of: String,
}

impl Row {
    pub fn is_kept(&self) -> bool {
        self.status == "train" || self.status == "test"
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
