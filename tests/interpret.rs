//! `finetune interpret`: the report shows `evaluate`'s top losses in loss order, its confusion
//! matrix, is well-formed HTML needing no network, and `--split valid` is the very valid set the
//! model's epoch table was measured on.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// Every opening tag named `name`, as text.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let end = rest[i..].find('>').unwrap() + i;
        out.push(&rest[i..=end]);
        rest = &rest[end..];
    }
    out
}

/// Elements nest properly: every non-void element opened is closed, in order.
fn assert_well_formed(html: &str) {
    const VOID: [&str; 6] = ["meta", "img", "br", "rect", "!doctype", "link"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with("!--") {
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect::<String>()
            .to_ascii_lowercase();
        if tag.starts_with('/') {
            let top = stack.pop();
            assert_eq!(
                top.as_deref(),
                Some(name.as_str()),
                "</{name}> closes {top:?}"
            );
        } else if !self_closing && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
        // <style> and <script> content holds no '<' here, so the scan stays in step.
    }
    assert!(stack.is_empty(), "left open: {stack:?}");
}

fn interpret(args: &[&str], data: &Path, out: &Path) -> String {
    let o = run(bin()
        .args(["interpret", "--device", "cpu", "--threads", "1"])
        .args(args)
        .arg(sample_model())
        .arg(data)
        .arg("--out")
        .arg(out));
    assert!(o.status.success(), "{}", o.stderr);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn report_shows_evaluates_top_losses_in_order_and_its_confusion_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let test = repo().join("assets/sample/test");
    let png = tmp.path().join("top.png");
    let html = interpret(
        &["--top", "8", "--png", png.to_str().unwrap()],
        &test,
        &tmp.path().join("r.html"),
    );
    let o = run(bin()
        .args(["evaluate", "--json", "--top-losses", "8", "--device", "cpu"])
        .args(["--threads", "1"])
        .arg(sample_model())
        .arg(&test));
    assert!(o.status.success(), "{}", o.stderr);
    let ev: Value = serde_json::from_str(&o.stdout).unwrap();

    let figs = tags(&html, "figure");
    let want = ev["top_losses"].as_array().unwrap();
    assert_eq!(figs.len(), want.len());
    let mut last = f64::INFINITY;
    for (k, (f, w)) in figs.iter().zip(want).enumerate() {
        assert_eq!(attr(f, "data-rank").unwrap(), (k + 1).to_string());
        assert_eq!(attr(f, "data-path").unwrap(), w["path"].as_str().unwrap());
        assert_eq!(
            attr(f, "data-actual").unwrap(),
            w["actual"].as_str().unwrap()
        );
        assert_eq!(
            attr(f, "data-predicted").unwrap(),
            w["predicted"].as_str().unwrap()
        );
        let loss: f64 = attr(f, "data-loss").unwrap().parse().unwrap();
        // Exact: `interpret` is `evaluate` (the same batches, one thread each, the same kernels)
        // plus a report; only the decimal round trip through the page can differ.
        assert!((loss - w["loss"].as_f64().unwrap()).abs() < 1e-12);
        assert!(loss <= last, "loss order");
        last = loss;
    }
    // Each top loss has its pictures inline (its heatmaps for the predicted and the actual
    // class): nothing is loaded from anywhere.
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count(), 16);
    assert_eq!(html.matches("<img class=\"cam predicted\"").count(), 8);
    assert_eq!(html.matches("<img class=\"cam actual\"").count(), 8);
    for remote in ["src=\"http", "href=", "url(", "<link", "<script"] {
        assert!(!html.contains(remote), "{remote}");
    }
    // fastai's title under each: prediction/actual/loss/probability.
    let w0 = &want[0];
    let title = format!(
        "{}/{}/{:.2}/{:.2}",
        w0["predicted"].as_str().unwrap(),
        w0["actual"].as_str().unwrap(),
        w0["loss"].as_f64().unwrap(),
        w0["probability"].as_f64().unwrap()
    );
    assert!(
        html.contains(&format!("<figcaption>{title}<br>")),
        "{title}"
    );

    // The confusion table's cells are evaluate's counts.
    let table = &html[html.find("<table id=\"confusion\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let cells: Vec<usize> = table
        .split("<td>")
        .skip(1)
        .filter_map(|c| c.split('<').next()?.parse().ok())
        .collect();
    let counts: Vec<usize> = ev["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
        })
        .collect();
    assert_eq!(cells, counts);
    let acc = format!("{:.2}%", ev["accuracy"].as_f64().unwrap() * 100.0);
    assert!(html.contains(&format!("<b id=\"accuracy\">{acc}</b>")));
    // Counts and normalised, then the reliability diagram (a bar per non-empty confidence bin).
    assert_eq!(
        html.matches("<svg ").count(),
        3,
        "counts, normalised, reliability"
    );
    assert!(
        html.contains("<div id=\"reliability\"><svg "),
        "no reliability diagram"
    );
    assert_well_formed(&html);

    // The contact sheet: fastai's grid for 8 images (2 rows of 4) of 192-pixel cells.
    let img = image::open(&png).unwrap().to_rgb8();
    assert!(
        img.width() > 4 * 192 && img.height() > 2 * 192,
        "{:?}",
        img.dimensions()
    );
    assert!(img.width() < 5 * 192 && img.height() < 3 * 192);
}

#[test]
fn split_valid_is_the_valid_set_the_model_was_measured_on() {
    let tmp = tempfile::tempdir().unwrap();
    let html = interpret(
        &["--split", "valid", "--top", "3"],
        &repo().join("assets/sample"),
        &tmp.path().join("v.html"),
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(sample_model().join("model.json")).unwrap())
            .unwrap();
    let acc = info["metrics"]["accuracy"].as_f64().unwrap();
    let n = info["data"]["valid_images"].as_u64().unwrap();
    let summary = &html[html.find("<p id=\"summary\">").unwrap()..];
    assert!(
        summary.contains(&format!(
            "{:.2}%</b> ({}/{n})",
            acc * 100.0,
            (acc * n as f64).round() as u64
        )),
        "the epoch table's accuracy on its {n} valid images: {}",
        &summary[..200]
    );
    assert!(summary.contains("the valid split"));
}

#[test]
fn bad_requests_are_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.html");
    refused(
        bin()
            .args(["interpret", "--device", "cpu", "--split", "test"])
            .arg(sample_model())
            .arg(repo().join("assets/sample/train"))
            .arg("--out")
            .arg(&out),
        "has no test/ folder; choose --split train, valid or all",
    );
    refused(
        bin()
            .args(["interpret", "--device", "cpu", "--top", "0"])
            .arg(sample_model())
            .arg(repo().join("assets/sample/test"))
            .arg("--out")
            .arg(&out),
        "--top must be at least 1",
    );
    assert!(!out.exists(), "nothing written on a refusal");
}
