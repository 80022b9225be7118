//! Images to normalised float tensors of logical shape NCHW (in either memory format).

use super::layout::MemoryFormat;
use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// Stacks same-sized images into a u8 NHWC tensor (the cheap form kept in caches and moved to the
/// device), leaving the float conversion to [`normalize`] on the device.
pub fn stack_u8(images: &[&RgbImage]) -> Tensor {
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((0, 0));
    let mut buf = Vec::with_capacity(images.len() * (w * h * 3) as usize);
    for im in images {
        buf.extend_from_slice(im.as_raw());
    }
    Tensor::from_slice(&buf).reshape([images.len() as i64, h as i64, w as i64, 3])
}

/// u8 NHWC → float `[N, 3, H, W]` in `[0, 1]` → normalised with the weights' `mean` and `std`, on
/// `device`, channels-last (the permuted u8 batch's own strides; every elementwise step keeps them).
pub fn normalize(batch_u8: &Tensor, device: Device, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    normalize_as(batch_u8, device, mean, std, MemoryFormat::Nhwc)
}

/// [`normalize`] into `format`. NHWC needs no reordering at all; NCHW reorders the u8 bytes (a
/// quarter of the floats' size) before the conversion. The values are the same either way.
pub fn normalize_as(
    batch_u8: &Tensor,
    device: Device,
    mean: [f64; 3],
    std: [f64; 3],
    format: MemoryFormat,
) -> Tensor {
    let x = format.apply(&batch_u8.to_device(device).permute([0, 3, 1, 2]));
    normalize_float(&(x.to_kind(Kind::Float) / 255.0), mean, std)
}

/// Float NCHW in `[0, 1]` → normalised, on the tensor's device.
pub fn normalize_float(x: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    let device = x.device();
    let m = Tensor::from_slice(&mean)
        .to_kind(Kind::Float)
        .to_device(device)
        .view([1, 3, 1, 1]);
    let s = Tensor::from_slice(&std)
        .to_kind(Kind::Float)
        .to_device(device)
        .view([1, 3, 1, 1]);
    (x - m) / s
}
