//! Near-duplicate detection in two stages: a perceptual hash proposes candidate pairs, and a
//! crop-tolerant pixel comparison confirms them.
//!
//! **Stage 1, pHash** (Krawetz / pHash.org: grayscale, shrink, 2-D DCT, keep the low-frequency
//! corner, one bit per coefficient: above or below the **median**), computed by `image_hasher`
//! with `HashAlg::Median`, `preproc_dct()` and `hash_size(16, 16)`: the image is shrunk to 32×32 and
//! the 16×16 low-frequency corner of its DCT gives 256 bits (image_hasher's docs).
//! The first version used `HashAlg::Mean`: the DC coefficient (overall brightness) is so much larger
//! than the others that the mean sat above nearly all of them, hashes were almost all zero bits, and
//! every product photo on a light background "matched" every other. The median splits the
//! coefficients in half whatever the DC term does (unrelated photos differ in ~128 of 256 bits).
//! A crop shifts everything a DCT sees, so each picture is hashed whole and as five 96 % crops
//! (centre and corners), and two pictures' distance is the smallest between one's whole hash and
//! any of the other's.
//!
//! **Stage 2, verification**: pHash alone cannot tell apart two *different* photos of the same
//! composition (two pairs of jeans on the same hanger: 50 of 256 bits apart) from a cropped copy
//! (up to 50 bits). So candidates are compared as 32×32 thumbnails: three colour channels and a
//! band-pass detail channel (prints, seams, textures), each normalised to zero mean and unit norm so
//! brightness and contrast changes cancel, over 361 crop alignments (every crop of 0–6 % per side in
//! 1 % steps, anchored at either edge or centred). The score of an alignment is the smaller of the
//! colour and detail correlations; the best alignment's score must reach [`MIN_SIMILARITY`].
//!
//! Measured (`tests/dedup.rs`, `explore_verification`): among the 362 candidate pairs of the 3068
//! clothing-small train photos, distinct photos scored at most 0.940 (one pair scored 0.99999: the
//! same photo filed under both `shorts` and `skirt` in the source data, a real label conflict);
//! copies re-encoded at JPEG q40, halved, cropped 1–6 % at a corner, an edge or the centre, or
//! brightened/darkened 10 % scored at least 0.991 (a 7 % crop, beyond the design range, 0.935).
//! [`MIN_SIMILARITY`] sits between the two.

use image::RgbImage;
use image_hasher::{HashAlg, HasherConfig, ImageHash};

/// Pairs whose pHash distance is at most this (of 256 bits) are verified. Measured: altered copies
/// ≤ 50; only ~0.1 % of distinct pairs fall this low, so verification stays cheap.
pub const CANDIDATE_DISTANCE: u32 = 64;
/// Verified pairs with at least this thumbnail correlation are the same picture (see the module
/// docs and the README for the measured distributions).
pub const MIN_SIMILARITY: f32 = 0.97;

/// Stored hashes carry this prefix; older ones (the mean-based 64-bit hash) lack it and are
/// recomputed, as the two cannot be compared.
const VERSION: &str = "p3:";
const CROP: u32 = 96;

fn hasher() -> image_hasher::Hasher {
    HasherConfig::new()
        .hash_alg(HashAlg::Median)
        .preproc_dct()
        .hash_size(16, 16)
        .resize_filter(image::imageops::FilterType::Triangle)
        .to_hasher()
}

fn crop(img: &RgbImage, x: u32, y: u32, w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::imageops::crop_imm(img, x, y, w, h).to_image())
}

/// The stored form of a picture's hashes: whole, then the centre and four corner crops.
pub fn phash(img: &RgbImage) -> String {
    let hs = hasher();
    // Hashing looks at 32×32 pixels: shrinking once to 128×128 first makes the six hashes cheap.
    let img = &image::imageops::resize(img, 128, 128, image::imageops::FilterType::Triangle);
    let (w, h) = img.dimensions();
    let (cw, ch) = ((w * CROP / 100).max(1), (h * CROP / 100).max(1));
    let mut bytes = hs
        .hash_image(&image::DynamicImage::ImageRgb8(img.clone()))
        .as_bytes()
        .to_vec();
    for (x, y) in [
        ((w - cw) / 2, (h - ch) / 2),
        (0, 0),
        (w - cw, 0),
        (0, h - ch),
        (w - cw, h - ch),
    ] {
        bytes.extend_from_slice(hs.hash_image(&crop(img, x, y, cw, ch)).as_bytes());
    }
    let joined = ImageHash::<Box<[u8]>>::from_bytes(&bytes).map(|h| h.to_base64());
    format!("{VERSION}{}", joined.unwrap_or_default())
}

/// Whether a stored hash was made by this algorithm (else it must be recomputed).
pub fn is_current(stored: &str) -> bool {
    stored.starts_with(VERSION) && parse(stored).is_some()
}

/// The six 32-byte hashes of a stored string.
fn parse(stored: &str) -> Option<Vec<ImageHash>> {
    let h = ImageHash::<Box<[u8]>>::from_base64(stored.strip_prefix(VERSION)?).ok()?;
    let b = h.as_bytes();
    if b.len() != 6 * 32 {
        return None;
    }
    b.chunks(32)
        .map(|c| ImageHash::from_bytes(c).ok())
        .collect()
}

fn hash_distance(a: &[ImageHash], b: &[ImageHash]) -> u32 {
    let mut m = a[0].dist(&b[0]);
    for k in 1..a.len().min(b.len()) {
        m = m.min(a[0].dist(&b[k])).min(a[k].dist(&b[0]));
    }
    m
}

/// Stage-1 distance between two stored hashes (`None` if either is not a current hash).
pub fn distance(a: &str, b: &str) -> Option<u32> {
    Some(hash_distance(&parse(a)?, &parse(b)?))
}

/// Each image is first squished to BASE×BASE (one resize of the full photo), then every
/// alignment is cut from that and shrunk to THUMB×THUMB.
const BASE: u32 = 96;
const THUMB: u32 = 32;
/// Crop sizes per side, in pixels of BASE (100 %, ~97 %, ~94 %): crops of up to ~6 % on either
/// or both sides, anywhere, are within a pixel or two of one alignment.
const SIDES: [u32; 7] = [96, 95, 94, 93, 92, 91, 90];

/// A picture's thumbnails at every crop alignment: per alignment, three colour channels and one
/// edge channel (grayscale minus its 3×3 blur), each zero-mean and unit-norm.
pub struct Thumbs(Vec<Vec<f32>>);

impl Thumbs {
    pub fn of(img: &RgbImage) -> Thumbs {
        let base = Planes::of(img);
        let mut out = Vec::new();
        for &cw in &SIDES {
            for &ch in &SIDES {
                let xs: &[u32] = if cw == BASE { &[0] } else { &[0, 1, 2] };
                let ys: &[u32] = if ch == BASE { &[0] } else { &[0, 1, 2] };
                for &fy in ys {
                    for &fx in xs {
                        let (x, y) = ((BASE - cw) * fx / 2, (BASE - ch) * fy / 2);
                        out.push(base.thumb(x as f32, y as f32, cw as f32, ch as f32));
                    }
                }
            }
        }
        Thumbs(out)
    }

    /// (colour, edges, both): the best correlation, over alignments, of one's whole thumbnail
    /// with an alignment of the other's; `both` takes the smaller of the two per alignment.
    pub fn similarity_parts(&self, other: &Thumbs) -> (f32, f32, f32) {
        let (a, b) = (&self.0, &other.0);
        let mut best = (f32::MIN, f32::MIN, f32::MIN);
        for k in 0..a.len().min(b.len()) {
            for (x, y) in [(&a[0], &b[k]), (&a[k], &b[0])] {
                let (c, e) = corr(x, y);
                best = (best.0.max(c), best.1.max(e), best.2.max(c.min(e)));
            }
        }
        best
    }

    /// How alike two pictures are, in [-1, 1]: 1 for the same picture.
    pub fn similarity(&self, other: &Thumbs) -> f32 {
        self.similarity_parts(other).2
    }
}

const N: usize = (THUMB * THUMB) as usize;

/// The photo squished to BASE×BASE, as R, G, B planes box-blurred over 3×3 so that sampling them at
/// a third of the resolution (the thumbnail) does not alias. Every alignment's thumbnail is then
/// bilinear samples of these planes: hundreds of alignments cost a few milliseconds, not hundreds
/// of resizes.
struct Planes([Vec<f32>; 3]);

impl Planes {
    fn of(img: &RgbImage) -> Planes {
        let b = BASE as usize;
        let base = image::imageops::resize(img, BASE, BASE, image::imageops::FilterType::Triangle);
        let mut planes: [Vec<f32>; 3] = Default::default();
        for (c, plane) in planes.iter_mut().enumerate() {
            let raw: Vec<f32> = base.pixels().map(|p| p[c] as f32).collect();
            *plane = box_blur(&raw, b, 1);
        }
        Planes(planes)
    }

    /// For each of the THUMB output positions along one axis of a crop starting at `x0` and `len`
    /// long: the two BASE pixels to blend and the weight of the second.
    fn taps(x0: f32, len: f32) -> Vec<(usize, usize, f32)> {
        let last = (BASE - 1) as f32;
        (0..THUMB)
            .map(|i| {
                let x = (x0 + (i as f32 + 0.5) * len / THUMB as f32 - 0.5).clamp(0.0, last);
                let a = x.floor() as usize;
                (a, (a + 1).min(BASE as usize - 1), x - a as f32)
            })
            .collect()
    }

    /// The THUMB×THUMB view of the crop (x, y, w, h) of BASE: colour channels, then the detail
    /// channel, each zero-mean and unit-norm.
    fn thumb(&self, x: f32, y: f32, w: f32, h: f32) -> Vec<f32> {
        let (s, b) = (THUMB as usize, BASE as usize);
        let (cols, rows) = (Self::taps(x, w), Self::taps(y, h));
        let mut v = vec![0f32; 4 * N];
        for (c, p) in self.0.iter().enumerate() {
            for (yy, &(y0, y1, fy)) in rows.iter().enumerate() {
                let (r0, r1) = (&p[y0 * b..y0 * b + b], &p[y1 * b..y1 * b + b]);
                let out = &mut v[c * N + yy * s..c * N + yy * s + s];
                for (o, &(x0, x1, fx)) in out.iter_mut().zip(&cols) {
                    let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
                    let bot = r1[x0] + (r1[x1] - r1[x0]) * fx;
                    *o = top + (bot - top) * fy;
                }
            }
        }
        // Band-pass detail (3×3 box blur minus 7×7 box blur of the luminance): prints, seams and
        // textures that tell two garments of the same shape apart, smooth enough that a sub-pixel
        // misalignment of a cropped copy barely changes it.
        let lum: Vec<f32> = (0..N)
            .map(|i| 0.299 * v[i] + 0.587 * v[N + i] + 0.114 * v[2 * N + i])
            .collect();
        let (fine, coarse) = (box_blur(&lum, s, 1), box_blur(&lum, s, 3));
        for i in 0..N {
            v[3 * N + i] = fine[i] - coarse[i];
        }
        for ch in v.chunks_mut(N) {
            let mean = ch.iter().sum::<f32>() / N as f32;
            ch.iter_mut().for_each(|x| *x -= mean);
            let norm = ch.iter().map(|x| x * x).sum::<f32>().sqrt();
            // A flat channel carries no pattern: it matches nothing but another flat channel.
            let k = if norm > 1e-3 { 1.0 / norm } else { 0.0 };
            ch.iter_mut().for_each(|x| *x *= k);
        }
        v
    }
}

/// Mean over the (2r+1)² box around each pixel of a square `s`×`s` plane (clipped at the borders),
/// by a summed-area table.
fn box_blur(p: &[f32], s: usize, r: usize) -> Vec<f32> {
    let w = s + 1;
    let mut sat = vec![0f64; w * w];
    for y in 0..s {
        for x in 0..s {
            sat[(y + 1) * w + x + 1] =
                p[y * s + x] as f64 + sat[y * w + x + 1] + sat[(y + 1) * w + x] - sat[y * w + x];
        }
    }
    let mut out = vec![0f32; s * s];
    for y in 0..s {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(s));
        for x in 0..s {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(s));
            let sum = sat[y1 * w + x1] - sat[y0 * w + x1] - sat[y1 * w + x0] + sat[y0 * w + x0];
            out[y * s + x] = (sum / ((y1 - y0) * (x1 - x0)) as f64) as f32;
        }
    }
    out
}

/// (mean correlation of the colour channels, correlation of the edge channel).
fn corr(a: &[f32], b: &[f32]) -> (f32, f32) {
    let d = |r: std::ops::Range<usize>| {
        a[r.clone()]
            .iter()
            .zip(&b[r])
            .map(|(x, y)| x * y)
            .sum::<f32>()
    };
    (d(0..3 * N) / 3.0, d(3 * N..4 * N))
}

/// Groups of indices that show the same picture (transitively): pairs whose hashes are within
/// [`CANDIDATE_DISTANCE`] and whose thumbnails, from `image(i)`, correlate at least
/// [`MIN_SIMILARITY`]. An index whose image cannot be loaded groups with nothing.
pub fn groups(
    hashes: &[String],
    image: impl Fn(usize) -> Option<RgbImage> + Sync,
) -> Vec<Vec<usize>> {
    use rayon::prelude::*;
    let parsed: Vec<Option<Vec<ImageHash>>> = hashes.iter().map(|h| parse(h)).collect();
    let candidates: Vec<(usize, usize)> = (0..parsed.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let parsed = &parsed;
            (i + 1..parsed.len()).filter_map(move |j| match (&parsed[i], &parsed[j]) {
                (Some(a), Some(b)) if hash_distance(a, b) <= CANDIDATE_DISTANCE => Some((i, j)),
                _ => None,
            })
        })
        .collect();
    let involved: std::collections::BTreeSet<usize> =
        candidates.iter().flat_map(|&(i, j)| [i, j]).collect();
    let thumbs: std::collections::HashMap<usize, Thumbs> = involved
        .into_par_iter()
        .filter_map(|k| Some((k, Thumbs::of(&image(k)?))))
        .collect();
    let same: Vec<(usize, usize)> = candidates
        .into_par_iter()
        .filter(|(i, j)| match (thumbs.get(i), thumbs.get(j)) {
            (Some(a), Some(b)) => a.similarity(b) >= MIN_SIMILARITY,
            _ => false,
        })
        .collect();
    let mut parent: Vec<usize> = (0..hashes.len()).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        let mut i = i;
        while p[i] != r {
            let n = p[i];
            p[i] = r;
            i = n;
        }
        r
    }
    for (i, j) in same {
        let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
        if ri != rj {
            parent[rj.max(ri)] = ri.min(rj);
        }
    }
    let mut map: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..parsed.len() {
        let r = find(&mut parent, i);
        map.entry(r).or_default().push(i);
    }
    map.into_values().collect()
}
