//! fastai's `ClassificationInterpretation` as one self-contained HTML file (`finetune interpret`):
//! the top losses as an image grid, the confusion matrix (counts and row-normalised), the most
//! confused pairs and the per-class report. Images are embedded as small JPEG thumbnails, so the
//! file can be mailed, archived or opened offline; nothing in it loads from the network.

use super::evaluate::Evaluation;
use super::forward::preprocess;
use crate::bundle::Bundle;
use crate::data::decode::decode_file;
use base64::Engine;
use image::RgbImage;
use std::fmt::Write;

/// What the report is about, for its header.
pub struct Context<'a> {
    pub model: &'a std::path::Path,
    pub data: &'a std::path::Path,
    /// `None`: every image of a test folder; otherwise the recorded split it shows.
    pub split: Option<super::splits::SplitChoice>,
}

/// Longest side of a thumbnail: enough to see what went wrong, small enough that a report of
/// dozens of images stays a few MB.
const THUMB: u32 = 192;

/// `img` with its longest side at [`THUMB`] pixels.
fn to_thumb(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) == THUMB {
        return img.clone();
    }
    // Small models' inputs are enlarged too, so a 32-pixel model's mistakes can still be seen.
    let s = THUMB as f64 / w.max(h) as f64;
    let (tw, th) = (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    );
    image::imageops::resize(img, tw, th, image::imageops::FilterType::Triangle)
}

/// The report's pictures of the top losses, `[i]` for `ev.top_losses[i]`: the image as the
/// model saw it, and its Grad-CAM overlays for the predicted and the actual class.
pub struct Pictures {
    pub thumbs: Vec<Option<RgbImage>>,
    /// `[predicted, actual]`, thumbnail-sized.
    pub heatmaps: Vec<Option<[RgbImage; 2]>>,
    /// Why there are no heatmaps (a ViT), said in the report.
    pub no_heatmaps: Option<String>,
}

/// Reads each top-loss image once for its thumbnail and its two heatmaps (one Grad-CAM pass per
/// image, the predicted and the actual class together).
pub fn pictures(bundle: &Bundle, ev: &Evaluation, max_file_bytes: u64) -> Pictures {
    let mut p = Pictures {
        thumbs: Vec::new(),
        heatmaps: Vec::new(),
        no_heatmaps: None,
    };
    let index = |label: &str| ev.classes.iter().position(|c| c == label);
    for l in &ev.top_losses {
        let seen = decode_file(&l.path, max_file_bytes)
            .ok()
            .map(|img| preprocess(&img, &bundle.info));
        p.thumbs.push(seen.as_ref().map(to_thumb));
        let maps = match (&seen, index(&l.predicted), index(&l.actual), &p.no_heatmaps) {
            (Some(img), Some(pred), Some(actual), None) => {
                match super::cam::cams(bundle, &[img, img], &[Some(pred), Some(actual)]) {
                    Ok(c) if c.len() == 2 => {
                        Some([to_thumb(&c[0].overlay(img)), to_thumb(&c[1].overlay(img))])
                    }
                    Ok(_) => None,
                    Err(e) => {
                        p.no_heatmaps = Some(e.to_string());
                        None
                    }
                }
            }
            _ => None,
        };
        p.heatmaps.push(maps);
    }
    p
}

/// fastai's `plot_top_losses` title: prediction / actual / loss / probability of the prediction.
pub fn title(l: &super::evaluate::Loss) -> String {
    format!(
        "{}/{}/{:.2}/{:.2}",
        l.predicted, l.actual, l.loss, l.probability
    )
}

fn jpeg_data_uri(img: &RgbImage) -> String {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    if img.write_with_encoder(enc).is_err() {
        return String::new();
    }
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&out)
    )
}

/// Text for HTML content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}\
figure.loss{margin:0;padding:6px;border:1px solid #ddd;border-radius:6px;background:#fafafa}\
figure.loss img{display:block;max-width:100%;margin:auto}\
figcaption{font-size:.85em;margin-top:4px;word-break:break-all}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}.svgs{display:flex;flex-wrap:wrap;gap:24px}\
.path{color:#666;font-size:.8em}\
.cams .actual,.cams:hover .predicted{display:none}.cams:hover .actual{display:block}";

/// The whole report.
pub fn html(ev: &Evaluation, ctx: &Context, pics: &Pictures) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let what = match ctx.split {
        None => "all images".to_string(),
        Some(c) => format!("the {} split", c.name()),
    };
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>finetune interpret: {model}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Interpretation of {model}</h1>\n\
         <p id=\"summary\">Data: {data} ({what}). Accuracy <b id=\"accuracy\">{acc:.2}%</b> \
         ({correct}/{total}){tta}.</p>\n",
        model = esc(&ctx.model.display().to_string()),
        data = esc(&ctx.data.display().to_string()),
        acc = ev.accuracy * 100.0,
        correct = ev.correct,
        total = ev.total,
        tta = if ev.tta.is_some() { ", with TTA" } else { "" },
    );
    let _ = write!(
        s,
        "<h2>Top losses</h2>\n<p>Each title: prediction/actual/loss/probability (fastai's \
         <code>plot_top_losses</code>). {cams}</p>\n<div class=\"grid\" id=\"top-losses\">\n",
        cams = match &pics.no_heatmaps {
            None => "Each image carries its Grad-CAM heatmap for the predicted class (red: the \
                     regions that drove it); hover over it for the actual class's."
                .to_string(),
            Some(why) => format!("No heatmaps: {}.", esc(why)),
        }
    );
    let tag = |t: &RgbImage, class: &str, alt: &str| {
        format!(
            "<img class=\"{class}\" src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{}\">",
            jpeg_data_uri(t),
            t.width(),
            t.height(),
            esc(alt)
        )
    };
    for (i, l) in ev.top_losses.iter().enumerate() {
        let heat = pics.heatmaps.get(i).and_then(|h| h.as_ref());
        let img = match (heat, pics.thumbs.get(i).and_then(|t| t.as_ref())) {
            (Some([pred, actual]), _) => format!(
                "<div class=\"cams\" title=\"heatmap of {p}; hover: of {a}\">{}{}</div>",
                tag(
                    pred,
                    "cam predicted",
                    &format!("heatmap of {}", l.predicted)
                ),
                tag(actual, "cam actual", &format!("heatmap of {}", l.actual)),
                p = esc(&l.predicted),
                a = esc(&l.actual),
            ),
            (None, Some(t)) => tag(t, "plain", &l.actual),
            (None, None) => "<p>(unreadable now)</p>".to_string(),
        };
        let _ = writeln!(
            s,
            "<figure class=\"loss\" data-rank=\"{rank}\" data-path=\"{path}\" data-loss=\"{loss}\" \
             data-actual=\"{actual}\" data-predicted=\"{pred}\">{img}<figcaption>{title}<br>\
             <span class=\"path\">{path}</span></figcaption></figure>",
            rank = i + 1,
            path = esc(&l.path.display().to_string()),
            loss = l.loss,
            actual = esc(&l.actual),
            pred = esc(&l.predicted),
            title = esc(&title(l)),
        );
    }
    s.push_str(
        "</div>\n<h2>Confusion matrix</h2>\n<p>Rows: actual; columns: predicted. \
                Left: counts; right: each row divided by its total.</p>\n<div class=\"svgs\">\n",
    );
    for normalized in [false, true] {
        let svg = ev.confusion_svg_as(normalized);
        // The SVG's own XML prolog-free markup is valid inline HTML.
        let _ = writeln!(
            s,
            "<div class=\"confusion\" data-normalized=\"{normalized}\">{}</div>",
            svg.trim_end()
        );
    }
    s.push_str("</div>\n<table id=\"confusion\">\n<tr><th>actual \\ predicted</th>");
    for c in &ev.classes {
        let _ = write!(s, "<th>{}</th>", esc(c));
    }
    s.push_str("</tr>\n");
    for (c, row) in ev.classes.iter().zip(&ev.confusion) {
        let _ = write!(s, "<tr><td>{}</td>", esc(c));
        for v in row {
            let _ = write!(s, "<td>{v}</td>");
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n<h2>Most confused</h2>\n");
    if ev.most_confused.is_empty() {
        s.push_str("<p>No confusion.</p>\n");
    } else {
        s.push_str("<table id=\"most-confused\">\n<tr><th>actual</th><th>predicted</th><th>count</th></tr>\n");
        for (a, p, n) in &ev.most_confused {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
                esc(a),
                esc(p)
            );
        }
        s.push_str("</table>\n");
    }
    let calib = match &ev.calibration {
        Some(c) => format!(
            "Temperature {:.3}: expected calibration error {:.4} with the raw softmax, {:.4} \
             calibrated (NLL {:.4} → {:.4}).",
            c.temperature, c.ece_raw, c.ece_calibrated, c.nll_raw, c.nll_calibrated
        ),
        None => "This model has no calibration (run `finetune calibrate MODEL DATA`).".into(),
    };
    let _ = writeln!(
        s,
        "<h2>Reliability</h2>\n<p>Accuracy of the images in each confidence bin against their \
         confidence; on the dashed diagonal a probability means what it says. {}</p>\n\
         <div id=\"reliability\">{}</div>",
        esc(&calib),
        super::trust::report::reliability_svg(&ev.reliability)
    );
    s.push_str(
        "<h2>Per class</h2>\n<table id=\"per-class\">\n<tr><th>class</th><th>precision</th>\
         <th>recall</th><th>f1</th><th>support</th></tr>\n",
    );
    for r in &ev.per_class {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&r.class),
            r.precision,
            r.recall,
            r.f1,
            r.support
        );
    }
    s.push_str("</table>\n");
    if !ev.skipped.is_empty() {
        let _ = writeln!(
            s,
            "<h2>Skipped</h2>\n<ul id=\"skipped\">{}</ul>",
            ev.skipped
                .iter()
                .map(|(p, why)| format!("<li>{}: {}</li>", esc(&p.display().to_string()), esc(why)))
                .collect::<String>()
        );
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// The top losses as one PNG contact sheet (for terminals and CI logs), titled as in the report.
pub fn contact_sheet(ev: &Evaluation, pics: &Pictures) -> RgbImage {
    let thumbs = &pics.thumbs;
    let side = thumbs
        .iter()
        .flatten()
        .map(|t| t.width().max(t.height()))
        .max()
        .unwrap_or(THUMB);
    let cells: Vec<(RgbImage, String)> = ev
        .top_losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut cell = RgbImage::from_pixel(side, side, image::Rgb([235, 235, 235]));
            if let Some(Some(t)) = thumbs.get(i) {
                let (x, y) = ((side - t.width()) / 2, (side - t.height()) / 2);
                image::imageops::replace(&mut cell, t, x as i64, y as i64);
            }
            (cell, title(l))
        })
        .collect();
    crate::train::show_batch::grid(&cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;"
        );
    }
}
