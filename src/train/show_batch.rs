//! fastai's `show_batch`: the first images of the first training batch, exactly as training will see
//! them (the same seeded shuffle, crop positions and augmentation draws as `finetune train` with the
//! same settings), on a labelled grid, so a user sees what squish, crop or pad and the augmentation
//! strength do before spending an hour on them.

use crate::data::augment::{self, AugConfig};
use crate::data::DataLoaders;
use image::{Rgb, RgbImage};
use tch::Kind;

#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("--n must be between 1 and the batch size ({bs}); got {n}")]
    Count { n: usize, bs: usize },
    #[error("only {train} training images, fewer than one batch of {bs}; lower --bs")]
    NoBatch { train: usize, bs: usize },
}

/// fastai's `get_grid`: `rows = ⌊√n⌋`, `cols = ⌈n / rows⌉` (9 → 3×3, 10 → 3×4).
pub fn grid_shape(n: usize) -> (usize, usize) {
    let rows = ((n as f64).sqrt().floor() as usize).max(1);
    (rows, n.div_ceil(rows))
}

/// The first `n` images of the first training batch (u8, at the model's input size) with their
/// labels, after the crop and, when `aug` is given, the augmentation training applies.
pub fn first_batch(
    dls: &DataLoaders,
    n: usize,
    aug: Option<&AugConfig>,
) -> Result<Vec<(RgbImage, String)>, ShowError> {
    let bs = dls.cfg.bs;
    if n == 0 || n > bs {
        return Err(ShowError::Count { n, bs });
    }
    let mut rng = super::learner::data_rng(dls.cfg.seed);
    let order = dls.train_order(&mut rng);
    let Some(idx) = order.first() else {
        return Err(ShowError::NoBatch {
            train: dls.train.len(),
            bs,
        });
    };
    // The draws in the order the batch producer makes them: crops, then augmentation.
    let (xb, yb) = dls.train_batch(idx, &mut rng);
    let xb = match aug {
        None => xb,
        Some(cfg) => {
            let p = augment::draw(idx.len(), cfg, &mut rng);
            let raw = xb.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
            (augment::apply(&raw, &p) * 255.0)
                .round()
                .clamp(0.0, 255.0)
                .to_kind(Kind::Uint8)
                .permute([0, 2, 3, 1])
        }
    };
    let size = xb.size();
    let (h, w) = (size[1] as u32, size[2] as u32);
    let mut out = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let px = Vec::<u8>::try_from(xb.get(i).contiguous().view([-1])).unwrap_or_default();
        let img = RgbImage::from_raw(w, h, px).unwrap_or_else(|| RgbImage::new(w, h));
        let label = dls
            .classes
            .get(yb.int64_value(&[i]) as usize)
            .cloned()
            .unwrap_or_default();
        out.push((img, label));
    }
    Ok(out)
}

const GAP: u32 = 4;

/// Lays labelled images out as fastai does (see [`grid_shape`]), each with its label underneath.
pub fn grid(items: &[(RgbImage, String)]) -> RgbImage {
    let Some((first, _)) = items.first() else {
        return RgbImage::new(1, 1);
    };
    let (w, h) = first.dimensions();
    // Twice the font size where the cells are wide enough for every caption at that size.
    let longest = items
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0) as u32;
    let scale = if w >= 128 && 16 * longest <= w - 2 {
        2
    } else {
        1
    };
    let caption = 8 * scale + 4;
    let (rows, cols) = grid_shape(items.len());
    let mut out = RgbImage::from_pixel(
        cols as u32 * (w + GAP) + GAP,
        rows as u32 * (h + caption + GAP) + GAP,
        Rgb([255, 255, 255]),
    );
    for (k, (img, label)) in items.iter().enumerate() {
        let x0 = GAP + (k % cols) as u32 * (w + GAP);
        let y0 = GAP + (k / cols) as u32 * (h + caption + GAP);
        image::imageops::replace(&mut out, img, x0 as i64, y0 as i64);
        text(&mut out, label, x0 + 2, y0 + h + 2, scale, w - 2);
    }
    out
}

/// A confusion matrix as a picture (TensorBoard's images): rows actual, columns predicted, each
/// cell shaded by its share of the row (white 0, blue all) with its count; the class names down
/// the left and, numbered, along the top.
pub fn confusion_image(classes: &[String], m: &[Vec<usize>]) -> RgbImage {
    const CELL: u32 = 36;
    let n = classes.len() as u32;
    let left = 8 * 12 + 8;
    let top = 8 + 8 + 4;
    let mut out = RgbImage::from_pixel(
        left + n * CELL + 4,
        top + n * CELL + 4,
        Rgb([255, 255, 255]),
    );
    for (r, row) in m.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        let y = top + r as u32 * CELL;
        text(
            &mut out,
            &format!("{r} {}", classes[r]),
            2,
            y + CELL / 2 - 4,
            1,
            left - 4,
        );
        for (c, &v) in row.iter().enumerate() {
            let x = left + c as u32 * CELL;
            let share = v as f64 / total;
            let shade = |full: f64| (255.0 - share * (255.0 - full)).round() as u8;
            let fill = Rgb([shade(40.0), shade(90.0), shade(200.0)]);
            for yy in y + 1..y + CELL {
                for xx in x + 1..x + CELL {
                    out.put_pixel(xx, yy, fill);
                }
            }
            text(
                &mut out,
                &v.to_string(),
                x + 4,
                y + CELL / 2 - 4,
                1,
                CELL - 6,
            );
        }
    }
    for c in 0..n {
        text(
            &mut out,
            &c.to_string(),
            left + c * CELL + 4,
            6,
            1,
            CELL - 6,
        );
    }
    out
}

/// Draws `s` in the 8×8 bitmap font, `scale`× larger, clipped to `max_w` pixels ("…" shows a cut).
/// Hand-written because image crates draw text only from font files, which a headless run may lack.
fn text(img: &mut RgbImage, s: &str, x: u32, y: u32, scale: u32, max_w: u32) {
    use font8x8::UnicodeFonts;
    let fits = (max_w / (8 * scale)) as usize;
    let chars: Vec<char> = s.chars().collect();
    let shown: Vec<char> = if chars.len() > fits && fits > 0 {
        chars[..fits - 1].iter().copied().chain(['~']).collect()
    } else {
        chars
    };
    for (i, c) in shown.iter().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(*c)
            .or_else(|| font8x8::LATIN_FONTS.get(*c))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (i as u32 * 8 + col) * scale + dx;
                        let py = y + row as u32 * scale + dy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb([0, 0, 0]));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_shapes_are_fastais() {
        assert_eq!(grid_shape(9), (3, 3));
        assert_eq!(grid_shape(10), (3, 4));
        assert_eq!(grid_shape(1), (1, 1));
        assert_eq!(grid_shape(4), (2, 2));
        assert_eq!(grid_shape(5), (2, 3));
    }

    #[test]
    fn cells_hold_the_images_and_a_caption() {
        let red = RgbImage::from_pixel(20, 10, Rgb([200, 0, 0]));
        let blue = RgbImage::from_pixel(20, 10, Rgb([0, 0, 200]));
        let g = grid(&[(red, "cat".into()), (blue, "dog".into())]);
        // One row of two cells: 2·(20 + 4) + 4 wide, 10 + 12 + 4 + 4 high.
        assert_eq!(g.dimensions(), (52, 30));
        assert_eq!(g.get_pixel(4, 4), &Rgb([200, 0, 0]));
        assert_eq!(g.get_pixel(28, 4), &Rgb([0, 0, 200]));
        let caption_ink = (4..24)
            .flat_map(|x| (16..24).map(move |y| (x, y)))
            .filter(|&(x, y)| g.get_pixel(x, y) == &Rgb([0, 0, 0]))
            .count();
        assert!(caption_ink > 10, "the label is drawn under the image");
    }
}
