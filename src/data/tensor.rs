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
    if device == Device::Cpu {
        if let Some(x) = normalize_by_table(batch_u8, mean, std, format) {
            return x;
        }
    }
    let x = format.apply(&batch_u8.to_device(device).permute([0, 3, 1, 2]));
    normalize_float(&(x.to_kind(Kind::Float) / 255.0), mean, std)
}

/// The CPU's [`normalize_as`] in one pass: each byte looked up in a 3×256 table of its channel's
/// normalised values. The tensor route makes four passes over the float batch (convert, ÷255,
/// −mean, ÷std), 6 % of a mobilenet_v2 inference batch at 160 px; the table's entries are
/// computed with the same float32 operations in the same order, so the values are bit-identical
/// (a test compares every entry). Hand-written because no tensor op maps bytes through a table.
/// `None` for anything but a contiguous u8 `[N, H, W, 3]` batch.
fn normalize_by_table(
    batch_u8: &Tensor,
    mean: [f64; 3],
    std: [f64; 3],
    format: MemoryFormat,
) -> Option<Tensor> {
    use rayon::prelude::*;
    let size = batch_u8.size();
    if batch_u8.kind() != Kind::Uint8
        || batch_u8.device() != Device::Cpu
        || size.len() != 4
        || size[3] != 3
        || !batch_u8.is_contiguous()
        || batch_u8.numel() == 0
    {
        return None;
    }
    let mut table = [[0f32; 256]; 3];
    for (c, row) in table.iter_mut().enumerate() {
        let (m, s) = (mean[c] as f32, std[c] as f32);
        for (b, v) in row.iter_mut().enumerate() {
            *v = (b as f32 / 255.0 - m) / s;
        }
    }
    let (n, h, w) = (size[0], size[1], size[2]);
    let pixels = (h * w) as usize;
    let out = match format {
        MemoryFormat::Nhwc => Tensor::empty([n, h, w, 3], (Kind::Float, Device::Cpu)),
        MemoryFormat::Nchw => Tensor::empty([n, 3, h, w], (Kind::Float, Device::Cpu)),
    };
    let len = batch_u8.numel();
    // SAFETY: both tensors are contiguous CPU tensors of `len` elements of these types, alive for
    // the whole function; `out` is new, so nothing else reads or writes it meanwhile.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(batch_u8.data_ptr() as *const u8, len),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, len),
        )
    };
    // One image per task: each image's bytes and floats are one contiguous run in both layouts.
    let one = pixels * 3;
    dst.par_chunks_mut(one)
        .zip(src.par_chunks(one))
        .for_each(|(d, s)| match format {
            MemoryFormat::Nhwc => {
                for (d, s) in d.chunks_exact_mut(3).zip(s.chunks_exact(3)) {
                    d[0] = table[0][s[0] as usize];
                    d[1] = table[1][s[1] as usize];
                    d[2] = table[2][s[2] as usize];
                }
            }
            MemoryFormat::Nchw => {
                let (r, gb) = d.split_at_mut(pixels);
                let (g, b) = gb.split_at_mut(pixels);
                for (i, s) in s.chunks_exact(3).enumerate() {
                    r[i] = table[0][s[0] as usize];
                    g[i] = table[1][s[1] as usize];
                    b[i] = table[2][s[2] as usize];
                }
            }
        });
    Some(match format {
        MemoryFormat::Nhwc => out.permute([0, 3, 1, 2]),
        MemoryFormat::Nchw => out,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The table gives the tensor route's exact floats: every byte value in every channel, both
    /// layouts, odd image sizes.
    #[test]
    fn table_equals_tensor_route_bit_for_bit() {
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        let bytes: Vec<u8> = (0..2 * 16 * 24 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let u8 = Tensor::from_slice(&bytes).view([2, 16, 24, 3]);
        for format in [MemoryFormat::Nhwc, MemoryFormat::Nchw] {
            let got = normalize_by_table(&u8, mean, std, format).expect("contiguous u8 NHWC");
            let x = format.apply(&u8.permute([0, 3, 1, 2]));
            let want = normalize_float(&(x.to_kind(Kind::Float) / 255.0), mean, std);
            assert!(format.holds(&got), "{format}");
            assert_eq!(got.size(), want.size());
            assert!(got.equal(&want), "{format}: not bit-identical");
        }
        // Every byte value reaches its entry: 256 values × 3 channels.
        let all: Vec<u8> = (0..=255u8).flat_map(|b| [b, b, b]).collect();
        let u8 = Tensor::from_slice(&all).view([1, 16, 16, 3]);
        let got = normalize_by_table(&u8, mean, std, MemoryFormat::Nhwc).unwrap();
        let want = normalize_float(
            &(u8.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0),
            mean,
            std,
        );
        assert!(got.equal(&want));
        // Anything else takes the tensor route.
        assert!(
            normalize_by_table(&u8.permute([0, 3, 1, 2]), mean, std, MemoryFormat::Nhwc).is_none()
        );
        assert!(
            normalize_by_table(&u8.to_kind(Kind::Float), mean, std, MemoryFormat::Nhwc).is_none()
        );
    }
}
