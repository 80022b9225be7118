//! `--urls-from FILE`: image URLs without searching. One URL per line (for a single class), or CSV
//! with a header holding `class` and `url` (or `image`) columns.

use super::{SearchError, SearchResult};
use std::collections::BTreeMap;
use std::path::Path;

/// URLs per class, in file order. `classes` names the class of a plain list (exactly one).
pub fn read_url_list(
    path: &Path,
    classes: &[String],
) -> Result<BTreeMap<String, Vec<SearchResult>>, SearchError> {
    let err = |msg: String| SearchError::UrlList {
        path: path.to_path_buf(),
        msg,
    };
    // Bounded like every read of a user's file: a list of millions of URLs is well under 1 GB.
    let bytes = crate::data::files::read_capped(path, 1 << 30).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| err(e.to_string()))?;
    let mut out: BTreeMap<String, Vec<SearchResult>> = BTreeMap::new();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if first.contains(',') && first.contains("class") {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(text.as_bytes());
        let headers = rdr.headers().map_err(|e| err(e.to_string()))?.clone();
        let col = |names: &[&str]| {
            headers
                .iter()
                .position(|h| names.contains(&h.trim().to_ascii_lowercase().as_str()))
        };
        let ci = col(&["class", "label"]).ok_or_else(|| err("no `class` column".into()))?;
        let ui =
            col(&["url", "image", "image_url"]).ok_or_else(|| err("no `url` column".into()))?;
        let ti = col(&["title"]);
        for (n, rec) in rdr.records().enumerate() {
            let rec = rec.map_err(|e| err(format!("row {}: {e}", n + 2)))?;
            let (Some(c), Some(u)) = (rec.get(ci), rec.get(ui)) else {
                continue;
            };
            if u.trim().is_empty() || c.trim().is_empty() {
                continue;
            }
            out.entry(c.trim().to_string())
                .or_default()
                .push(SearchResult {
                    image: u.trim().to_string(),
                    title: ti.and_then(|i| rec.get(i)).unwrap_or_default().to_string(),
                    ..Default::default()
                });
        }
        if !classes.is_empty() {
            out.retain(|c, _| classes.contains(c));
        }
    } else {
        let [class] = classes else {
            return Err(err(format!(
                "a plain URL list belongs to exactly one class, but {} were given; use CSV with a `class,url` header",
                classes.len()
            )));
        };
        let urls = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| SearchResult {
                image: l.to_string(),
                ..Default::default()
            })
            .collect();
        out.insert(class.clone(), urls);
    }
    for v in out.values_mut() {
        let mut seen = std::collections::HashSet::new();
        v.retain(|r| seen.insert(r.image.clone()));
    }
    Ok(out)
}
