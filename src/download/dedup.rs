//! Near-duplicate detection with a perceptual hash (DCT mean hash, 64 bits, `image_hasher`).

use image_hasher::{HashAlg, HasherConfig, ImageHash};

/// Hashes this many bits apart or fewer are the same picture (re-encoded, resized, lightly edited).
pub const MAX_DISTANCE: u32 = 6;

pub fn hasher() -> image_hasher::Hasher {
    HasherConfig::new()
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .hash_size(8, 8)
        .to_hasher()
}

pub fn phash(img: &image::RgbImage) -> String {
    hasher()
        .hash_image(&image::DynamicImage::ImageRgb8(img.clone()))
        .to_base64()
}

/// Groups of indices whose hashes are within [`MAX_DISTANCE`] (transitively), via union-find.
pub fn groups(hashes: &[String]) -> Vec<Vec<usize>> {
    let parsed: Vec<Option<ImageHash>> = hashes
        .iter()
        .map(|h| ImageHash::from_base64(h).ok())
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
    for i in 0..parsed.len() {
        for j in (i + 1)..parsed.len() {
            if let (Some(a), Some(b)) = (&parsed[i], &parsed[j]) {
                if a.dist(b) <= MAX_DISTANCE {
                    let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                    parent[rj] = ri;
                }
            }
        }
    }
    let mut map: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..parsed.len() {
        let r = find(&mut parent, i);
        map.entry(r).or_default().push(i);
    }
    map.into_values().collect()
}
