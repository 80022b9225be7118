//! One forward pass over prepared images: the validation transform and probabilities, the
//! level below `predict` (files, chunks, streaming) and `tta` (augmented passes), which both use it.

use crate::bundle::{Bundle, ModelInfo};
use crate::data::tensor::stack_u8;
use crate::data::transform::{crop_window, prepare};
use tch::nn::ModuleT;

/// The validation transform of one decoded image: the bundle's resize, then the centred window of
/// its input size. Shared by `predict` and `serve`, so both give the same probabilities.
pub fn preprocess(img: &image::RgbImage, info: &ModelInfo) -> image::RgbImage {
    let mut rng = rand::rngs::mock::StepRng::new(0, 0);
    let prepared = prepare(img, info.resize, info.size, info.pad_mode);
    crop_window(&prepared, info.size, false, &mut rng)
}

/// Softmax probabilities of preprocessed images (all of the bundle's input size), one forward pass;
/// one row per image, in the bundle's class order.
pub fn probabilities(bundle: &Bundle, images: &[&image::RgbImage]) -> Vec<Vec<f32>> {
    if images.is_empty() {
        return Vec::new();
    }
    let info = &bundle.info;
    let x = bundle.net.input(
        &stack_u8(images),
        info.normalization.mean,
        info.normalization.std,
    );
    probabilities_of(bundle, &x)
}

/// Probabilities of the network on an already normalised float batch `[N, 3, H, W]` (any device),
/// one row per image: softmax over the classes, or for a multi-label model one sigmoid per label
/// (each label's own probability; they need not sum to 1). Serve's KServe v2 `FP32` input takes
/// this path.
pub fn probabilities_of(bundle: &Bundle, x: &tch::Tensor) -> Vec<Vec<f32>> {
    let x = x.to_device(bundle.net.device());
    let multi = bundle.info.task.is_multi();
    // A bundle's weights never change once loaded: its passes run in the inference plan.
    let p = crate::model::plan::folded(|| {
        tch::no_grad(|| {
            let logits = bundle.net.forward_t(&x, false);
            if multi {
                logits.to_kind(tch::Kind::Float).sigmoid()
            } else {
                logits.softmax(-1, tch::Kind::Float)
            }
        })
    })
    .to_device(tch::Device::Cpu);
    let n = p.size()[1] as usize;
    let flat: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap_or_default();
    flat.chunks(n.max(1)).map(|c| c.to_vec()).collect()
}
