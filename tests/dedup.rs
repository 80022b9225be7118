//! The perceptual hash on real photos: distinct photos are never grouped, altered copies are found.
//! It also prints the measured distances that justify `dedup::MAX_DISTANCE`.

mod common;
use common::jpeg;

use finetune::download::{dedup, process};
use rayon::prelude::*;

/// A photo as `download` keeps it (shrunk to ≤ 400 px, JPEG q90, decoded again) and its hash.
fn stored(encoded: &[u8]) -> (image::RgbImage, String) {
    let (jpeg, _, _) = process(encoded, 400, 90).expect("process");
    let img = finetune::data::decode::decode_bytes(std::path::Path::new("x.jpg"), &jpeg).unwrap();
    let h = dedup::phash(&img);
    (img, h)
}

fn brightness(img: &image::RgbImage, f: f32) -> image::RgbImage {
    let mut o = img.clone();
    for p in o.pixels_mut() {
        for c in 0..3 {
            p[c] = (p[c] as f32 * f).round().clamp(0.0, 255.0) as u8;
        }
    }
    o
}

/// Each alteration of the issue: (name, altered image encoded as a site would serve it).
fn alterations(img: &image::RgbImage) -> Vec<(&'static str, Vec<u8>)> {
    let (w, h) = img.dimensions();
    let half = image::imageops::resize(img, w / 2, h / 2, image::imageops::FilterType::Triangle);
    let (cw, ch) = (w * 96 / 100, h * 96 / 100);
    let crop = image::imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    vec![
        ("jpeg_q40", jpeg(img, 40)),
        ("downscale_50%", jpeg(&half, 90)),
        ("crop_4%_centre", jpeg(&crop, 90)),
        (
            "crop_4%_corner",
            jpeg(
                &image::imageops::crop_imm(img, w - cw, h - ch, cw, ch).to_image(),
                90,
            ),
        ),
        (
            "crop_4%_top",
            jpeg(
                &image::imageops::crop_imm(img, 0, h - ch, w, ch).to_image(),
                90,
            ),
        ),
        ("brightness+10%", jpeg(&brightness(img, 1.1), 90)),
        ("brightness-10%", jpeg(&brightness(img, 0.9), 90)),
    ]
}

#[test]
fn near_duplicates_are_found_and_distinct_photos_kept() {
    let Some(shared) = common::shared() else {
        return common::skip(
            "../shared not found (clothing-small validation photos)",
            common::NEEDS_SHARED,
        );
    };
    let root = shared.join("data/clothing-small/validation");
    let (files, _) = finetune::data::items::image_files(&root).unwrap();
    assert_eq!(
        files.len(),
        341,
        "clothing-small/validation holds 341 photos"
    );

    let t0 = std::time::Instant::now();
    // (image as stored, hash) for the originals, then for altered copies of 100 of them.
    let originals: Vec<(image::RgbImage, String)> = files
        .par_iter()
        .map(|p| stored(&std::fs::read(p).unwrap()))
        .collect();
    let picked: Vec<usize> = (0..files.len()).step_by(3).take(100).collect();
    assert_eq!(picked.len(), 100);
    let altered: Vec<(usize, &'static str, image::RgbImage, String)> = picked
        .par_iter()
        .flat_map_iter(|&i| {
            let img = finetune::data::decode::decode_file(
                &files[i],
                finetune::data::files::DEFAULT_MAX_FILE_BYTES,
            )
            .unwrap();
            alterations(&img).into_iter().map(move |(kind, bytes)| {
                let (im, h) = stored(&bytes);
                (i, kind, im, h)
            })
        })
        .collect();

    println!("[{:.1}s] hashed", t0.elapsed().as_secs_f64());
    // The measured distributions behind the thresholds.
    let thumbs: Vec<dedup::Thumbs> = originals
        .par_iter()
        .map(|(im, _)| dedup::Thumbs::of(im))
        .collect();
    let (mut min_hash, mut candidates, mut max_sim) = (u32::MAX, 0, f32::MIN);
    for i in 0..originals.len() {
        for j in i + 1..originals.len() {
            let d = dedup::distance(&originals[i].1, &originals[j].1).unwrap();
            min_hash = min_hash.min(d);
            if d <= dedup::CANDIDATE_DISTANCE {
                candidates += 1;
                max_sim = max_sim.max(thumbs[i].similarity(&thumbs[j]));
            }
        }
    }
    let pairs = originals.len() * (originals.len() - 1) / 2;
    println!(
        "distinct photos: {pairs} pairs, closest hashes {min_hash} bits apart, {candidates} candidate pairs (≤ {} bits), best thumbnail correlation among them {max_sim:.4} (threshold {})",
        dedup::CANDIDATE_DISTANCE,
        dedup::MIN_SIMILARITY
    );
    let mut by_kind: std::collections::BTreeMap<&str, (usize, usize, u32, f32)> =
        Default::default();
    let scores: Vec<(u32, f32)> = altered
        .par_iter()
        .map(|(i, _, im, h)| {
            let d = dedup::distance(&originals[*i].1, h).unwrap();
            (d, thumbs[*i].similarity(&dedup::Thumbs::of(im)))
        })
        .collect();
    for ((_, kind, _, _), &(d, sim)) in altered.iter().zip(&scores) {
        let e = by_kind.entry(kind).or_insert((0, 0, 0, f32::MAX));
        e.1 += 1;
        e.2 = e.2.max(d);
        e.3 = e.3.min(sim);
        if d <= dedup::CANDIDATE_DISTANCE && sim >= dedup::MIN_SIMILARITY {
            e.0 += 1;
        }
    }
    for (kind, (f, n, d, sim)) in &by_kind {
        println!("{kind:>16}: {f}/{n} found; hash distance ≤ {d}, correlation ≥ {sim:.4}");
    }

    println!("[{:.1}s] measured", t0.elapsed().as_secs_f64());
    // The real grouping, as download runs it, over originals and copies together.
    let mut all: Vec<(usize, &image::RgbImage, &String)> = originals
        .iter()
        .enumerate()
        .map(|(i, (im, h))| (i, im, h))
        .collect();
    all.extend(altered.iter().map(|(i, _, im, h)| (*i, im, h)));
    let hashes: Vec<String> = all.iter().map(|(_, _, h)| (*h).clone()).collect();
    let groups = dedup::groups(&hashes, |k| Some(all[k].1.clone()));
    let mut found = 0;
    for g in &groups {
        let mut owners: Vec<usize> = g.iter().map(|&k| all[k].0).collect();
        owners.sort();
        owners.dedup();
        assert_eq!(
            owners.len(),
            1,
            "distinct photos grouped as near-duplicates: {:?}",
            owners
                .iter()
                .map(|&o| files[o].display().to_string())
                .collect::<Vec<_>>()
        );
        // Copies grouped with their original.
        if g.iter().any(|&k| k < originals.len()) {
            found += g.iter().filter(|&&k| k >= originals.len()).count();
        }
    }
    let rate = found as f64 / altered.len() as f64;
    println!("[{:.1}s] grouped", t0.elapsed().as_secs_f64());
    println!("grouping: {found}/{} altered copies found with their original ({:.1}%), 0 distinct photos grouped", altered.len(), rate * 100.0);
    assert!(
        rate >= 0.95,
        "only {:.1}% of altered copies found",
        rate * 100.0
    );
    for (kind, (f, n, _, _)) in &by_kind {
        assert!(*f as f64 >= 0.95 * *n as f64, "{kind}: only {f}/{n} found");
    }
}

/// Measurement harness behind the verification design (run by hand: `--ignored --nocapture`):
/// distinct candidate pairs from all 3068 clothing-small train photos vs altered validation copies.
#[test]
#[ignore]
fn explore_verification() {
    let shared = common::shared().unwrap();
    let (train, _) =
        finetune::data::items::image_files(&shared.join("data/clothing-small/train")).unwrap();
    let orig: Vec<(image::RgbImage, String)> = train
        .par_iter()
        .map(|p| stored(&std::fs::read(p).unwrap()))
        .collect();
    let mut cand = Vec::new();
    for i in 0..orig.len() {
        for j in i + 1..orig.len() {
            let d = dedup::distance(&orig[i].1, &orig[j].1).unwrap();
            if d <= dedup::CANDIDATE_DISTANCE {
                cand.push((i, j, d));
            }
        }
    }
    println!(
        "train: {} photos, {} candidate pairs",
        orig.len(),
        cand.len()
    );
    let (val, _) =
        finetune::data::items::image_files(&shared.join("data/clothing-small/validation")).unwrap();
    let alt: Vec<(image::RgbImage, &str, image::RgbImage)> = val
        .par_iter()
        .step_by(3)
        .take(100)
        .flat_map_iter(|p| {
            let b = std::fs::read(p).unwrap();
            let o = stored(&b).0;
            let img = finetune::data::decode::decode_file(
                p,
                finetune::data::files::DEFAULT_MAX_FILE_BYTES,
            )
            .unwrap();
            let (w, h) = img.dimensions();
            let mut v = alterations(&img);
            for (name, pct) in [
                ("crop_3%_corner", 97u32),
                ("crop_5%_corner", 95),
                ("crop_7%_corner", 93),
                ("crop_1%_corner", 99),
            ] {
                let (cw, ch) = (w * pct / 100, h * pct / 100);
                v.push((
                    name,
                    jpeg(
                        &image::imageops::crop_imm(&img, w - cw, h - ch, cw, ch).to_image(),
                        90,
                    ),
                ));
            }
            for (name, pct) in [("crop_3%_centre", 97u32), ("crop_5%_left", 95)] {
                let (cw, ch) = (w * pct / 100, h * pct / 100);
                let (x, y, hh) = if name.ends_with("left") {
                    (w - cw, 0, h)
                } else {
                    ((w - cw) / 2, (h - ch) / 2, ch)
                };
                v.push((
                    name,
                    jpeg(
                        &image::imageops::crop_imm(&img, x, y, cw, hh).to_image(),
                        90,
                    ),
                ));
            }
            v.into_iter()
                .map(move |(k, b)| (o.clone(), k, stored(&b).0))
        })
        .collect();
    let t = std::time::Instant::now();
    let th: std::collections::HashMap<usize, dedup::Thumbs> = cand
        .iter()
        .flat_map(|(i, j, _)| [*i, *j])
        .collect::<std::collections::BTreeSet<_>>()
        .into_par_iter()
        .map(|i| (i, dedup::Thumbs::of(&orig[i].0)))
        .collect();
    let sims: Vec<((f32, f32, f32), usize, usize)> = cand
        .iter()
        .map(|(i, j, _)| (th[i].similarity_parts(&th[j]), *i, *j))
        .collect();
    println!("thumbs+compare {:.1}s", t.elapsed().as_secs_f64());
    for part in 0..3 {
        let get = |s: &(f32, f32, f32)| [s.0, s.1, s.2][part];
        let mut v: Vec<&((f32, f32, f32), usize, usize)> = sims.iter().collect();
        v.sort_by(|a, b| get(&b.0).total_cmp(&get(&a.0)));
        println!(
            " part {part}: distinct top values {:?}",
            v.iter().take(8).map(|x| get(&x.0)).collect::<Vec<_>>()
        );
        for x in v.iter().take(3) {
            println!("     {} {}", train[x.1].display(), train[x.2].display());
        }
    }
    let mut per: std::collections::BTreeMap<&str, Vec<(f32, f32, f32)>> = Default::default();
    for (o, k, a) in &alt {
        per.entry(k)
            .or_default()
            .push(dedup::Thumbs::of(o).similarity_parts(&dedup::Thumbs::of(a)));
    }
    for (k, v) in per {
        for part in 0..3 {
            let mut x: Vec<f32> = v.iter().map(|s| [s.0, s.1, s.2][part]).collect();
            x.sort_by(|a, b| a.total_cmp(b));
            println!(
                "  altered {k:>16} part {part}: min {:.4} p5 {:.4} median {:.4}",
                x[0], x[5], x[50]
            );
        }
    }
}
