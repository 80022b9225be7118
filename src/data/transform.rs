//! Item transforms: fastai's `Resize(size, method)` for squish, crop and pad.

use super::resize::{resize, resize_region};
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMethod {
    /// Whole image to the target size, ignoring aspect ratio.
    Squish,
    /// Short side to size, then a crop (random when training, centred when validating).
    Crop,
    /// Fit inside, then pad (reflection by default, as fastai).
    Pad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    #[default]
    Reflection,
    Zeros,
}

impl ResizeMethod {
    /// The names the CLI, `model.json` and the Python package share.
    pub const NAMES: &'static [&'static str] = &["squish", "crop", "pad"];

    pub fn name(self) -> &'static str {
        match self {
            ResizeMethod::Squish => "squish",
            ResizeMethod::Crop => "crop",
            ResizeMethod::Pad => "pad",
        }
    }
}

impl PadMode {
    pub const NAMES: &'static [&'static str] = &["reflection", "zeros"];

    pub fn name(self) -> &'static str {
        match self {
            PadMode::Reflection => "reflection",
            PadMode::Zeros => "zeros",
        }
    }
}

impl FromStr for ResizeMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "squish" => Ok(ResizeMethod::Squish),
            "crop" => Ok(ResizeMethod::Crop),
            "pad" => Ok(ResizeMethod::Pad),
            _ => Err(format!("resize `{s}`: choose one of squish, crop, pad")),
        }
    }
}

impl FromStr for PadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reflection" => Ok(PadMode::Reflection),
            "zeros" => Ok(PadMode::Zeros),
            _ => Err(format!("pad mode `{s}`: choose one of reflection, zeros")),
        }
    }
}

/// Target size `W×H`; `192` means `192×192`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub w: u32,
    pub h: u32,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |x: &str| {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (8..=4096).contains(v))
        };
        let bad = || format!("size `{s}` must be an integer or WxH, each between 8 and 4096");
        match s.split_once(['x', 'X']) {
            Some((w, h)) => Ok(Size {
                w: parse(w).ok_or_else(bad)?,
                h: parse(h).ok_or_else(bad)?,
            }),
            None => parse(s).map(|v| Size { w: v, h: v }).ok_or_else(bad),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.w == self.h {
            write!(f, "{}", self.w)
        } else {
            write!(f, "{}x{}", self.w, self.h)
        }
    }
}

/// fastai's presizing: the deterministic part of the transform, done once per image and cached: for squish and pad the
/// final image; for crop the image scaled so the crop window is exactly `size` (the random or central
/// window is cut per batch by [`crop_window`]).
pub fn presize(img: &RgbImage, method: ResizeMethod, size: Size, pad: PadMode) -> RgbImage {
    let (w, h) = img.dimensions();
    match method {
        ResizeMethod::Squish => resize(img, size.w, size.h),
        ResizeMethod::Crop => {
            // fastai: m = min(w/W, h/H); the crop window is (m·W, m·H) in the original.
            let m = (w as f64 / size.w as f64).min(h as f64 / size.h as f64);
            let nw = ((w as f64 / m).round() as u32).max(size.w);
            let nh = ((h as f64 / m).round() as u32).max(size.h);
            resize(img, nw, nh)
        }
        ResizeMethod::Pad => {
            let m = (w as f64 / size.w as f64).max(h as f64 / size.h as f64);
            let nw = ((w as f64 / m).round() as u32).clamp(1, size.w);
            let nh = ((h as f64 / m).round() as u32).clamp(1, size.h);
            let inner = resize_region(img, (0.0, 0.0, w as f64, h as f64), nw, nh);
            pad_to(&inner, size, pad)
        }
    }
}

fn reflect(i: i64, n: i64) -> u32 {
    // Reflection without repeating the edge (PyTorch's `reflection` padding), folded for large pads.
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut k = i.rem_euclid(period);
    if k >= n {
        k = period - k;
    }
    k as u32
}

fn pad_to(inner: &RgbImage, size: Size, mode: PadMode) -> RgbImage {
    let (iw, ih) = inner.dimensions();
    let left = (size.w - iw) as i64 / 2;
    let top = (size.h - ih) as i64 / 2;
    RgbImage::from_fn(size.w, size.h, |x, y| {
        let sx = x as i64 - left;
        let sy = y as i64 - top;
        let inside = sx >= 0 && sy >= 0 && sx < iw as i64 && sy < ih as i64;
        match (inside, mode) {
            (true, _) => *inner.get_pixel(sx as u32, sy as u32),
            (false, PadMode::Zeros) => image::Rgb([0, 0, 0]),
            (false, PadMode::Reflection) => {
                *inner.get_pixel(reflect(sx, iw as i64), reflect(sy, ih as i64))
            }
        }
    })
}

/// Cuts the `size` window from a prepared crop-method image: random position when training,
/// centred otherwise. Other methods' images already have the target size.
pub fn crop_window<R: Rng>(img: &RgbImage, size: Size, train: bool, rng: &mut R) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (size.w, size.h) {
        return img.clone();
    }
    let (fx, fy) = if train {
        (rng.gen::<f64>(), rng.gen::<f64>())
    } else {
        (0.5, 0.5)
    };
    crop_at(img, size, fx, fy)
}

/// Cuts the `size` window whose top-left corner lies at fractions `fx`, `fy` of the free room
/// (0.5, 0.5: centred); an image of the target size comes back unchanged.
pub fn crop_at(img: &RgbImage, size: Size, fx: f64, fy: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (size.w, size.h) {
        return img.clone();
    }
    let left = (fx * w.saturating_sub(size.w) as f64) as u32;
    let top = (fy * h.saturating_sub(size.h) as f64) as u32;
    image::imageops::crop_imm(img, left, top, size.w, size.h).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 7])
        })
    }

    #[test]
    fn sizes() {
        assert_eq!("192".parse::<Size>().unwrap(), Size { w: 192, h: 192 });
        assert_eq!("224x160".parse::<Size>().unwrap(), Size { w: 224, h: 160 });
        assert!("0".parse::<Size>().is_err() && "axb".parse::<Size>().is_err());
    }

    #[test]
    fn every_method_gives_the_target_size() {
        let s = Size { w: 64, h: 48 };
        let mut rng = rand::thread_rng();
        for img in [gradient(300, 100), gradient(100, 300), gradient(10, 10)] {
            for m in [ResizeMethod::Squish, ResizeMethod::Crop, ResizeMethod::Pad] {
                let p = presize(&img, m, s, PadMode::Reflection);
                let out = crop_window(&p, s, true, &mut rng);
                assert_eq!(out.dimensions(), (64, 48), "{m:?} {:?}", img.dimensions());
            }
        }
    }

    #[test]
    fn pad_zeros_and_reflection() {
        let img = gradient(200, 100); // fits as 64x32 inside 64x64: 16 rows of padding above and below
        let z = presize(
            &img,
            ResizeMethod::Pad,
            Size { w: 64, h: 64 },
            PadMode::Zeros,
        );
        assert_eq!(z.get_pixel(30, 0).0, [0, 0, 0]);
        assert_ne!(z.get_pixel(30, 32).0, [0, 0, 0]);
        let r = presize(
            &img,
            ResizeMethod::Pad,
            Size { w: 64, h: 64 },
            PadMode::Reflection,
        );
        assert_eq!(
            r.get_pixel(30, 15),
            r.get_pixel(30, 17),
            "row above the image mirrors the row below its edge"
        );
    }

    #[test]
    fn centre_crop_when_validating() {
        let img = gradient(100, 50);
        let p = presize(
            &img,
            ResizeMethod::Crop,
            Size { w: 50, h: 50 },
            PadMode::Zeros,
        );
        assert_eq!(p.dimensions(), (100, 50));
        let c = crop_window(&p, Size { w: 50, h: 50 }, false, &mut rand::thread_rng());
        assert_eq!(c.get_pixel(0, 0), p.get_pixel(25, 0));
    }
}
