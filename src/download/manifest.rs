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
    /// `train`, `test`, `failed`, `duplicate`, `near_duplicate` or `invalid`.
    pub status: String,
    pub reason: String,
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
    let mut rdr = csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rdr.deserialize()
        .collect::<Result<Vec<Row>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Written to a temporary file and renamed, so an interrupted run never leaves half a manifest.
pub fn write(path: &Path, rows: &[Row]) -> Result<(), String> {
    let tmp = path.with_extension("csv.tmp");
    let mut w = csv::Writer::from_path(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    for r in rows {
        w.serialize(r)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    w.flush().map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
