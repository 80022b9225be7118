//! A network = pretrained body + top (fastai head or ImageNet classifier), owning its variables.

use super::head::{FastaiHead, ImagenetClassifier};
use super::mobilenet_v2::MobilenetV2Body;
use super::onnx::{Graph, OnnxExport};
use super::resnet::{ResnetBody, Shape};
use super::Arch;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// Variable-name prefixes: `body.` holds torchvision's keys unchanged; `top.` the ImageNet
/// classifier's torchvision keys; `head.` the fastai head.
pub const BODY: &str = "body";
pub const TOP: &str = "top";
pub const HEAD: &str = "head";

/// A part of a network: trainable with tch, and exportable to ONNX by the same definition.
pub trait Part: ModuleT + OnnxExport {}
impl<T: ModuleT + OnnxExport> Part for T {}

#[derive(Debug)]
pub struct Network {
    pub arch: Arch,
    pub vs: nn::VarStore,
    body: Box<dyn Part>,
    top: Box<dyn Part>,
    /// Names of the learnable parameters (not BN running statistics), recorded at construction
    /// because freezing later changes `requires_grad`.
    params: Vec<String>,
}

fn build_body(arch: Arch, p: &nn::Path) -> Box<dyn Part> {
    match arch {
        Arch::Resnet18 => Box::new(ResnetBody::new(p, [2, 2, 2, 2], false)),
        Arch::Resnet34 => Box::new(ResnetBody::new(p, [3, 4, 6, 3], false)),
        Arch::Resnet50 => Box::new(ResnetBody::new(p, [3, 4, 6, 3], true)),
        Arch::Resnet101 => Box::new(ResnetBody::new(p, [3, 4, 23, 3], true)),
        Arch::Resnet152 => Box::new(ResnetBody::new(p, [3, 8, 36, 3], true)),
        Arch::Resnext50 => Box::new(ResnetBody::with_shape(
            p,
            [3, 4, 6, 3],
            true,
            Shape {
                groups: 32,
                width_per_group: 4,
            },
        )),
        Arch::WideResnet50 => Box::new(ResnetBody::with_shape(
            p,
            [3, 4, 6, 3],
            true,
            Shape {
                groups: 1,
                width_per_group: 128,
            },
        )),
        Arch::MobilenetV2 => Box::new(MobilenetV2Body::new(p)),
    }
}

impl Network {
    /// fastai's `Sequential(body, head)` for `n_classes`, head freshly initialised.
    pub fn classifier(arch: Arch, n_classes: i64, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let body = build_body(arch, &(&root / BODY));
        let top: Box<dyn Part> = Box::new(FastaiHead::new(
            &(&root / HEAD),
            arch.body_channels(),
            n_classes,
        ));
        Self::finish(arch, vs, body, top)
    }

    /// The torchvision network with its 1000-class ImageNet classifier.
    pub fn imagenet(arch: Arch, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let body = build_body(arch, &(&root / BODY));
        let top: Box<dyn Part> = Box::new(ImagenetClassifier::new(&(&root / TOP), arch));
        Self::finish(arch, vs, body, top)
    }

    fn finish(arch: Arch, vs: nn::VarStore, body: Box<dyn Part>, top: Box<dyn Part>) -> Self {
        let mut params: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(k, _)| k)
            .collect();
        params.sort();
        Network {
            arch,
            vs,
            body,
            top,
            params,
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn param_names(&self) -> &[String] {
        &self.params
    }

    /// A BatchNorm weight or bias: a parameter whose layer also has a running mean.
    pub fn is_bn_param(&self, name: &str) -> bool {
        let layer = name.rsplit_once('.').map(|(l, _)| l).unwrap_or("");
        self.vs
            .variables_
            .lock()
            .map(|v| {
                v.named_variables
                    .contains_key(&format!("{layer}.running_mean"))
            })
            .unwrap_or(false)
    }
}

impl ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.top.forward_t(&self.body.forward_t(x, train), train)
    }
}

impl OnnxExport for Network {
    /// The logits, with every weight named after its variable (`body.…`, `head.…`).
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        g.name_variables(self.vs.variables());
        let y = self.body.onnx(g, x);
        self.top.onnx(g, &y)
    }
}
