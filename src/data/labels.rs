//! Labels from a CSV file, fastai's `ImageDataLoaders.from_csv` / `from_df`: one row per image, a file
//! column (relative to the image folder), a label column, and optionally a column that marks the
//! validation rows (fastai's `ColSplitter`); without it the seeded random split applies.
//!
//! Stricter than fastai, on purpose: an empty label, a file listed twice, a path leaving the image
//! folder or a valid-column value that is not a boolean is an error naming the line, where pandas would
//! read NaN or a truthy string and train on it silently.

pub use super::items::LabelsCsv;
use super::items::{self, looks_like_image, Item, ItemsError, Scan, Skip, Split, SplitKind};
use super::progress::Progress;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// A CSV larger than this is refused (no read is unbounded): 256 MiB holds millions of rows.
const MAX_CSV_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read labels file {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("labels file {path} is {bytes} bytes, more than the {MAX_CSV_BYTES}-byte limit")]
    TooBig { path: PathBuf, bytes: u64 },
    #[error("{path}: no column `{col}` (its columns: {have}); name one with {flag} (a header name or a 0-based position)")]
    Column {
        path: PathBuf,
        col: String,
        have: String,
        flag: &'static str,
    },
    #[error("{path}, line {line}: {msg}")]
    Row {
        path: PathBuf,
        line: u64,
        msg: String,
    },
    #[error("{0}: no rows")]
    Empty(PathBuf),
    #[error(transparent)]
    Items(#[from] ItemsError),
}

fn column(
    headers: &csv::StringRecord,
    col: &str,
    path: &Path,
    flag: &'static str,
) -> Result<usize, LabelsError> {
    if let Some(i) = headers.iter().position(|h| h == col) {
        return Ok(i);
    }
    match col.parse::<usize>() {
        Ok(i) if i < headers.len() => Ok(i),
        _ => Err(LabelsError::Column {
            path: path.to_path_buf(),
            col: col.to_string(),
            have: headers.iter().collect::<Vec<_>>().join(", "),
            flag,
        }),
    }
}

/// fastai's `ColSplitter` reads the column with pandas, where only booleans and numbers are
/// unambiguous; those are the values accepted here.
fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "1.0" | "yes" => Some(true),
        "false" | "0" | "0.0" | "no" => Some(false),
        _ => None,
    }
}

/// One CSV row that names an image: where it is, its label, whether it is a valid row.
struct Row {
    item: Item,
    valid: bool,
}

/// Reads the CSV: every row checked, each file resolved under `images`. Rows naming files that are
/// missing or not images come back as skips (the run goes on without them).
fn read(images: &Path, l: &LabelsCsv) -> Result<(Vec<Row>, Vec<Skip>), LabelsError> {
    if !images.is_dir() {
        return Err(if images.exists() {
            ItemsError::NotDir(images.to_path_buf())
        } else {
            ItemsError::Missing(images.to_path_buf())
        }
        .into());
    }
    let err = |msg: String| LabelsError::Read {
        path: l.path.clone(),
        msg,
    };
    let bytes = std::fs::metadata(&l.path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if bytes > MAX_CSV_BYTES {
        return Err(LabelsError::TooBig {
            path: l.path.clone(),
            bytes,
        });
    }
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(&l.path)
        .map_err(|e| err(e.to_string()))?;
    let headers = r.headers().map_err(|e| row_err(&l.path, &e))?.clone();
    let fn_i = column(&headers, &l.fn_col, &l.path, "--fn-col")?;
    let label_i = column(&headers, &l.label_col, &l.path, "--label-col")?;
    let valid_i = match &l.valid_col {
        Some(c) => Some(column(&headers, c, &l.path, "--valid-col")?),
        None => None,
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: HashMap<PathBuf, u64> = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| row_err(&l.path, &e))?;
        let line = rec.position().map_or(0, |p| p.line());
        let bad = |msg: String| LabelsError::Row {
            path: l.path.clone(),
            line,
            msg,
        };
        let name = rec.get(fn_i).unwrap_or("").trim();
        let label = rec.get(label_i).unwrap_or("").trim();
        if name.is_empty() {
            return Err(bad("empty file name".into()));
        }
        if label.is_empty() && l.label_delim.is_none() {
            return Err(bad(format!("{name} has an empty label")));
        }
        let rel = Path::new(name);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(format!(
                "{name} is not a path inside {}; file names are relative to the image folder",
                images.display()
            )));
        }
        if let Some(first) = seen.insert(rel.to_path_buf(), line) {
            return Err(bad(format!(
                "{name} is listed again (first on line {first})"
            )));
        }
        let valid = match valid_i {
            None => false,
            Some(i) => {
                let v = rec.get(i).unwrap_or("");
                truthy(v).ok_or_else(|| {
                    bad(format!(
                        "the valid column holds `{v}`; use true/false (or 1/0)"
                    ))
                })?
            }
        };
        let path = images.join(rel);
        if !path.is_file() {
            skipped.push(Skip {
                path,
                reason: format!("listed on line {line} of {} but missing", l.path.display()),
            });
            continue;
        }
        if !looks_like_image(&path) {
            skipped.push(Skip {
                path,
                reason: format!("listed on line {line} but not an image"),
            });
            continue;
        }
        rows.push(Row {
            item: Item {
                path,
                label: label.to_string(),
            },
            valid,
        });
    }
    if rows.is_empty() && skipped.is_empty() {
        return Err(LabelsError::Empty(l.path.clone()));
    }
    Ok((rows, skipped))
}

fn row_err(path: &Path, e: &csv::Error) -> LabelsError {
    LabelsError::Row {
        path: path.to_path_buf(),
        line: e.position().map_or(0, |p| p.line()),
        msg: match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("{len} fields where the header has {expected_len}"),
            csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".into(),
            _ => e.to_string(),
        },
    }
}

/// One warning for the rows left out: how many, and the first few.
fn report(skipped: &[Skip], csv: &Path, progress: &dyn Progress) {
    if skipped.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let first: Vec<String> = skipped.iter().take(SHOWN).map(|s| s.to_string()).collect();
    let more = skipped.len().saturating_sub(SHOWN);
    progress.warn(&format!(
        "{} row(s) of {} skipped: {}{}",
        skipped.len(),
        csv.display(),
        first.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    ));
}

/// The labelled items of `images` per the CSV, split by its valid column or at random (as
/// [`items::random_split`]); the skips are already reported to `progress`, in one warning.
pub fn split(
    images: &Path,
    l: &LabelsCsv,
    valid_pct: f64,
    seed: u64,
    progress: &dyn Progress,
) -> Result<(Split, Vec<Skip>), LabelsError> {
    let (rows, skipped) = read(images, l)?;
    report(&skipped, &l.path, progress);
    let (train, valid, kind) = match &l.valid_col {
        Some(_) => {
            let (v, t): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| r.valid);
            let items = |rs: Vec<Row>| {
                let mut v: Vec<Item> = rs.into_iter().map(|r| r.item).collect();
                v.sort();
                v
            };
            (
                items(t),
                items(v),
                SplitKind::Csv {
                    labels: l.clone(),
                    valid_pct: None,
                    seed: None,
                },
            )
        }
        None => {
            let all: Vec<Item> = rows.into_iter().map(|r| r.item).collect();
            let (t, v) = items::random_split(all, valid_pct, seed)?;
            (
                t,
                v,
                SplitKind::Csv {
                    labels: l.clone(),
                    valid_pct: Some(valid_pct),
                    seed: Some(seed),
                },
            )
        }
    };
    let scan = |items| Scan {
        items,
        ..Default::default()
    };
    Ok((
        Split {
            train: scan(train),
            valid: scan(valid),
            kind,
        },
        skipped,
    ))
}

/// Every row's item (the valid column ignored), for `evaluate --labels`.
pub fn items(images: &Path, l: &LabelsCsv) -> Result<(Vec<Item>, Vec<Skip>), LabelsError> {
    let (rows, skipped) = read(images, l)?;
    Ok((rows.into_iter().map(|r| r.item).collect(), skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("sub")).unwrap();
        for n in ["a.png", "b.png", "c.png", "d.png", "sub/e.png"] {
            image::RgbImage::new(4, 4).save(images.join(n)).unwrap();
        }
        std::fs::write(images.join("fake.jpg"), "<html>").unwrap();
        (dir, images)
    }

    fn csv(dir: &Path, text: &str) -> LabelsCsv {
        let p = dir.join("labels.csv");
        std::fs::write(&p, text).unwrap();
        LabelsCsv::new(p)
    }

    /// The warnings a split gave.
    #[derive(Default)]
    struct Warnings(std::sync::Mutex<Vec<String>>);

    impl Progress for Warnings {
        fn warn(&self, msg: &str) {
            self.0.lock().unwrap().push(msg.to_string());
        }
    }

    fn error(images: &Path, l: &LabelsCsv) -> String {
        match split(images, l, 0.2, 42, &super::super::Quiet) {
            Ok(_) => panic!("{} must fail", l.path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_column_splits_and_bad_rows_are_skipped() {
        let (dir, images) = folder();
        let mut l = csv(
            dir.path(),
            "fname,label,is_valid\na.png,cat,False\nb.png,dog,false\nc.png,cat,True\nd.png,dog,0\n\"sub/e.png\",dog,1\nmissing.png,cat,0\nfake.jpg,dog,0\n",
        );
        l.valid_col = Some("is_valid".into());
        let warned = Warnings::default();
        let (s, skipped) = split(&images, &l, 0.2, 42, &warned).unwrap();
        let names = |sc: &Scan| -> Vec<String> {
            sc.items
                .iter()
                .map(|i| {
                    format!(
                        "{}:{}",
                        i.path.strip_prefix(&images).unwrap().display(),
                        i.label
                    )
                })
                .collect()
        };
        assert_eq!(names(&s.train), ["a.png:cat", "b.png:dog", "d.png:dog"]);
        assert_eq!(names(&s.valid), ["c.png:cat", "sub/e.png:dog"]);
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].reason.contains("line 7") && skipped[0].reason.contains("missing"));
        assert!(skipped[1].reason.contains("not an image"));
        // One warning for both, through the caller's sink (the library prints nothing itself).
        let w = warned.0.lock().unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("2 row(s) of ") && w[0].contains("missing.png"),
            "{w:?}"
        );
        drop(w);
        // Columns by position, and the seeded random split without a valid column.
        let l = LabelsCsv {
            fn_col: "0".into(),
            label_col: "label".into(),
            ..l.clone()
        };
        let l = LabelsCsv {
            valid_col: None,
            ..l
        };
        let (s, _) = split(&images, &l, 0.4, 42, &super::super::Quiet).unwrap();
        let all: Vec<Item> = s
            .train
            .items
            .iter()
            .chain(&s.valid.items)
            .cloned()
            .collect();
        assert_eq!(all.len(), 5);
        let (t, v) = items::random_split(all, 0.4, 42).unwrap();
        assert_eq!((t, v), (s.train.items.clone(), s.valid.items.clone()));
    }

    #[test]
    fn malformed_csvs_name_the_line() {
        let (dir, images) = folder();
        let cases = [
            (
                "fname,label\na.png,cat\na.png,dog\n",
                "line 3: a.png is listed again (first on line 2)",
            ),
            ("fname,label\na.png,\n", "line 2: a.png has an empty label"),
            (
                "fname,label\na.png,cat,extra\n",
                "line 2: 3 fields where the header has 2",
            ),
            ("fname,label\n\"a.png,cat\nb.png,dog\n", "line"),
            (
                "fname,label\n../x.png,cat\n",
                "line 2: ../x.png is not a path inside",
            ),
            ("fname,label\n/etc/passwd,cat\n", "is not a path inside"),
            ("fname,label\n", "no rows"),
        ];
        for (text, want) in cases {
            let e = error(&images, &csv(dir.path(), text));
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let mut l = csv(dir.path(), "file,label,v\na.png,cat,maybe\n");
        l.fn_col = "fname".into();
        let e = error(&images, &l);
        assert!(
            e.contains("no column `fname` (its columns: file, label, v)") && e.contains("--fn-col"),
            "{e}"
        );
        l.fn_col = "file".into();
        l.valid_col = Some("v".into());
        assert!(error(&images, &l).contains("line 2: the valid column holds `maybe`"));
        let e = error(&images, &LabelsCsv::new(dir.path().join("nope.csv")));
        assert!(
            e.contains("cannot read labels file") && e.contains("nope.csv"),
            "{e}"
        );
    }
}
