//! Grad-CAM (Selvaraju et al., 2017; fastai's book, chapter 18): which regions of an image drove
//! a class's logit. The gradients of that logit with respect to the last convolutional block's
//! output (the body's feature map, the map fastai's head pools), averaged over the map into one
//! weight per channel; the weighted sum of the channels, through a ReLU, upsampled bilinearly to
//! the input. The input is the validation transform of `predict` (the bundle's resize and crop),
//! so the map lines up with the image the user is shown.
//!
//! The body runs in the inference plan with no gradients (as every prediction does); only the head
//! is differentiated, with respect to the feature map alone, so a heatmap costs one prediction
//! plus a head's backward pass. Vision transformers have no feature map: refused by name.

use crate::bundle::Bundle;
use crate::data::tensor::stack_u8;
use crate::model::Network;
use image::RgbImage;
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum CamError {
    #[error(
        "Grad-CAM needs a convolutional feature map, and {arch} is a vision transformer (family \
         ViT), whose body gives one token vector; heatmaps work for every convolutional family \
         (resnet, resnext, regnet, convnext, mobilenet, efficientnet)"
    )]
    NotConvolutional { arch: String },
    #[error("there is no class {index}: the model has {n} (0 to {})", n.saturating_sub(1))]
    NoSuchClass { index: usize, n: usize },
    #[error("no class named {name:?}; the model's classes are {classes}")]
    NoSuchLabel { name: String, classes: String },
}

/// One image's heatmap.
#[derive(Debug, Clone, PartialEq)]
pub struct Cam {
    /// The class whose logit was explained (the predicted class unless one was asked for).
    pub class: usize,
    pub width: u32,
    pub height: u32,
    /// `height × width` values in [0, 1], row-major: the map divided by its maximum (all zero
    /// when no region speaks for the class).
    pub heat: Vec<f32>,
}

/// A class by index or by name, checked against the model's classes.
pub fn class_index(classes: &[String], want: &str) -> Result<usize, CamError> {
    if let Some(i) = classes.iter().position(|c| c == want) {
        return Ok(i);
    }
    match want.parse::<usize>() {
        Ok(i) if i < classes.len() => Ok(i),
        Ok(i) => Err(CamError::NoSuchClass {
            index: i,
            n: classes.len(),
        }),
        Err(_) => Err(CamError::NoSuchLabel {
            name: want.to_string(),
            classes: classes.join(", "),
        }),
    }
}

/// Grad-CAM maps at the feature map's resolution, before normalising: `[N, h, w]` (fp32, on the
/// network's device) for a normalised batch `x`, and the class each map explains (`classes[i]`,
/// or the image's arg-max logit when `None`). The raw map is what a PyTorch Grad-CAM with hooks
/// computes; tests compare the two.
pub fn raw(
    net: &Network,
    x: &Tensor,
    classes: &[Option<usize>],
) -> Result<(Tensor, Vec<usize>), CamError> {
    if net.arch.is_vit() {
        return Err(CamError::NotConvolutional {
            arch: net.arch.to_string(),
        });
    }
    let x = x.to_device(net.device());
    let a = crate::model::plan::folded(|| tch::no_grad(|| net.body_output(&x)));
    if a.dim() != 4 {
        return Err(CamError::NotConvolutional {
            arch: net.arch.to_string(),
        });
    }
    tch::with_grad(|| {
        let a = a.detach().set_requires_grad(true);
        let logits = net.top_output(&a);
        let n_classes = logits.size()[1] as usize;
        let argmax: Vec<i64> =
            Vec::try_from(logits.argmax(1, false).to_device(tch::Device::Cpu)).unwrap_or_default();
        let mut chosen = Vec::with_capacity(argmax.len());
        for (i, best) in argmax.iter().enumerate() {
            let c = classes.get(i).copied().flatten().unwrap_or(*best as usize);
            if c >= n_classes {
                return Err(CamError::NoSuchClass {
                    index: c,
                    n: n_classes,
                });
            }
            chosen.push(c);
        }
        let idx = Tensor::from_slice(&chosen.iter().map(|&c| c as i64).collect::<Vec<_>>())
            .to_device(logits.device())
            .unsqueeze(1);
        // In eval mode the images of a batch do not interact, so the gradient of the summed
        // logits is each image's own gradient.
        let picked = logits.gather(1, &idx, false).sum(Kind::Float);
        let g = Tensor::run_backward(&[&picked], &[&a], false, false)
            .into_iter()
            .next()
            .unwrap_or_else(|| a.zeros_like());
        let weights = g.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
        let cam = (weights * a.detach())
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .relu();
        Ok((cam, chosen))
    })
}

/// Heatmaps of preprocessed images (each at the bundle's input size), one pass: the class
/// explained is `classes[i]`, or the predicted one.
pub fn cams(
    bundle: &Bundle,
    images: &[&RgbImage],
    classes: &[Option<usize>],
) -> Result<Vec<Cam>, CamError> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let info = &bundle.info;
    let x = bundle.net.input(
        &stack_u8(images),
        info.normalization.mean,
        info.normalization.std,
    );
    let (h, w) = (x.size()[2], x.size()[3]);
    let (raw, chosen) = raw(&bundle.net, &x, classes)?;
    let up = tch::no_grad(|| {
        raw.unsqueeze(1)
            .upsample_bilinear2d([h, w], false, None, None)
            .squeeze_dim(1)
    });
    let peak = up.amax([1i64, 2].as_slice(), true).clamp_min(1e-12);
    let norm = (up / peak)
        .clamp(0.0, 1.0)
        .to_device(tch::Device::Cpu)
        .contiguous();
    Ok(chosen
        .into_iter()
        .enumerate()
        .map(|(i, class)| Cam {
            class,
            width: w as u32,
            height: h as u32,
            heat: Vec::try_from(norm.get(i as i64).flatten(0, -1)).unwrap_or_default(),
        })
        .collect())
}

impl Cam {
    /// The heatmap's maximum as (x, y) pixel coordinates.
    pub fn peak(&self) -> (u32, u32) {
        let i = self
            .heat
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0;
        (
            (i as u32) % self.width.max(1),
            (i as u32) / self.width.max(1),
        )
    }

    /// The heatmap over `img` (the preprocessed image it was computed from, or any image of the
    /// same size): a colour scale from blue (nothing) to red (most), more opaque where the map is
    /// high, so the regions that did not count stay readable underneath.
    pub fn overlay(&self, img: &RgbImage) -> RgbImage {
        let img = if img.dimensions() == (self.width, self.height) {
            std::borrow::Cow::Borrowed(img)
        } else {
            std::borrow::Cow::Owned(image::imageops::resize(
                img,
                self.width,
                self.height,
                image::imageops::FilterType::Triangle,
            ))
        };
        RgbImage::from_fn(self.width, self.height, |x, y| {
            let v = self.heat[(y * self.width + x) as usize].clamp(0.0, 1.0);
            let c = jet(v);
            let alpha = 0.2 + 0.45 * v;
            let p = img.get_pixel(x, y).0;
            image::Rgb(
                [0, 1, 2]
                    .map(|k| (p[k] as f32 * (1.0 - alpha) + c[k] as f32 * alpha).round() as u8),
            )
        })
    }

    /// [`Cam::overlay`] as PNG bytes.
    pub fn overlay_png(&self, img: &RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        // Encoding an in-memory RGB buffer cannot fail short of running out of memory.
        let _ = self
            .overlay(img)
            .write_to(&mut out, image::ImageFormat::Png);
        out.into_inner()
    }
}

/// `predict --cam DIR`'s files: for each (image, class), the overlay of that class's heatmap on
/// the image as the model saw it, as `DIR/<file stem>.png` (`<stem>-2.png`, … when two inputs
/// share a stem), written atomically, a few images per pass. Returns the files written and the
/// inputs that could not be read (with why); a Grad-CAM refusal (ViT) stops at the first pass.
pub fn write_overlays(
    bundle: &Bundle,
    items: &[(std::path::PathBuf, usize)],
    dir: &std::path::Path,
    max_file_bytes: u64,
) -> Result<Overlays, CamError> {
    use crate::data::decode::decode_file;
    let mut out = Overlays::default();
    let mut used = std::collections::HashSet::new();
    for chunk in items.chunks(16) {
        let mut ok = Vec::new();
        for (path, class) in chunk {
            match decode_file(path, max_file_bytes) {
                Ok(img) => ok.push((path, *class, super::forward::preprocess(&img, &bundle.info))),
                Err(e) => out.skipped.push((path.clone(), e.reason())),
            }
        }
        let images: Vec<&RgbImage> = ok.iter().map(|(_, _, i)| i).collect();
        let classes: Vec<Option<usize>> = ok.iter().map(|(_, c, _)| Some(*c)).collect();
        for ((path, _, img), cam) in ok.iter().zip(cams(bundle, &images, &classes)?) {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let name = (1..)
                .map(|i| match i {
                    1 => format!("{stem}.png"),
                    _ => format!("{stem}-{i}.png"),
                })
                .find(|n| used.insert(n.clone()))
                .unwrap_or_default();
            let file = dir.join(name);
            match crate::atomic::write_file(&file, &cam.overlay_png(img)) {
                Ok(()) => out.written.push((path.to_path_buf(), file)),
                Err(e) => out.skipped.push((file, format!("cannot write: {e}"))),
            }
        }
    }
    Ok(out)
}

/// What [`write_overlays`] did.
#[derive(Debug, Default)]
pub struct Overlays {
    /// (input, overlay file).
    pub written: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// (input or file, why not).
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

/// The "jet" colour scale (MATLAB's, matplotlib's `jet`): blue, cyan, yellow, red. Written out
/// because it is four line segments, not worth a colour-map crate.
fn jet(v: f32) -> [u8; 3] {
    let ch = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0);
    [ch(3.0), ch(2.0), ch(1.0)].map(|c| (c * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5), [128, 255, 128]);
    }

    #[test]
    fn classes_by_name_or_index() {
        let c = vec!["cat".to_string(), "dog".to_string()];
        assert_eq!(class_index(&c, "dog").unwrap(), 1);
        assert_eq!(class_index(&c, "0").unwrap(), 0);
        let e = class_index(&c, "2").unwrap_err().to_string();
        assert!(e.contains("no class 2") && e.contains("has 2"), "{e}");
        let e = class_index(&c, "horse").unwrap_err().to_string();
        assert!(e.contains("\"horse\"") && e.contains("cat, dog"), "{e}");
    }

    #[test]
    fn peak_and_overlay_follow_the_map() {
        let mut heat = vec![0.0; 6];
        heat[4] = 1.0; // x = 1, y = 1 in a 3 × 2 map
        let cam = Cam {
            class: 0,
            width: 3,
            height: 2,
            heat,
        };
        assert_eq!(cam.peak(), (1, 1));
        let img = RgbImage::from_pixel(3, 2, image::Rgb([100, 100, 100]));
        let o = cam.overlay(&img);
        // Red where the map peaks, a faint blue tint where it is zero.
        assert!(o.get_pixel(1, 1).0[0] > 100 && o.get_pixel(1, 1).0[2] < 100);
        assert!(o.get_pixel(0, 0).0[2] > o.get_pixel(0, 0).0[0]);
    }
}
