//! Resizing with Pillow's convolution-based bilinear filter (antialiased when shrinking), via
//! `fast_image_resize`, so our pixels match torchvision/fastai's PIL pipeline closely.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// Resizes the `(left, top, width, height)` region of `src` to `w`×`h` in one pass.
pub fn resize_region(src: &RgbImage, region: (f64, f64, f64, f64), w: u32, h: u32) -> RgbImage {
    let (sw, sh) = src.dimensions();
    if (sw, sh) == (w, h) && region == (0.0, 0.0, sw as f64, sh as f64) {
        return src.clone();
    }
    // The buffer is an RgbImage's own, so its length always matches; the fallback is unreachable.
    let Ok(src_img) = Image::from_vec_u8(sw, sh, src.as_raw().clone(), PixelType::U8x3) else {
        return RgbImage::new(w, h);
    };
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(region.0, region.1, region.2, region.3);
    if Resizer::new().resize(&src_img, &mut dst, &opts).is_err() {
        return RgbImage::new(w, h);
    }
    RgbImage::from_raw(w, h, dst.into_vec()).unwrap_or_else(|| RgbImage::new(w, h))
}

pub fn resize(src: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = src.dimensions();
    resize_region(src, (0.0, 0.0, sw as f64, sh as f64), w, h)
}

/// torchvision `Resize(size)` (short side to `size`, long side truncated) then `CenterCrop(crop)`.
pub fn resize_short_then_center_crop(src: &RgbImage, size: u32, crop: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let (nw, nh) = if w <= h {
        (size, (size as u64 * h as u64 / w.max(1) as u64) as u32)
    } else {
        ((size as u64 * w as u64 / h.max(1) as u64) as u32, size)
    };
    let resized = resize(src, nw.max(1), nh.max(1));
    center_crop(&resized, crop, crop)
}

/// torchvision's CenterCrop offsets: Python's `round((H - h) / 2)`, which rounds halves to even
/// (an odd margin of 117 px starts the crop at 58, not 59).
pub fn center_crop(src: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = src.dimensions();
    let left = ((sw as f64 - w as f64) / 2.0).round_ties_even().max(0.0) as u32;
    let top = ((sh as f64 - h as f64) / 2.0).round_ties_even().max(0.0) as u32;
    image::imageops::crop_imm(src, left, top, w.min(sw), h.min(sh)).to_image()
}
