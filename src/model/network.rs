//! A network = pretrained body + top (fastai head or ImageNet classifier), owning its variables.

use super::head::{FastaiHead, ImagenetClassifier};
use super::memory_format::{self, MemoryFormat};
use super::mobilenet_v2::MobilenetV2Body;
use super::resnet::{ResnetBody, Shape};
use super::Arch;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// Variable-name prefixes: `body.` holds torchvision's keys unchanged; `top.` the ImageNet
/// classifier's torchvision keys; `head.` the fastai head.
pub const BODY: &str = "body";
pub const TOP: &str = "top";
pub const HEAD: &str = "head";

#[derive(Debug)]
pub struct Network {
    pub arch: Arch,
    pub vs: nn::VarStore,
    body: Box<dyn ModuleT>,
    top: Box<dyn ModuleT>,
    /// Names of the learnable parameters (not BN running statistics), recorded at construction
    /// because freezing later changes `requires_grad`.
    params: Vec<String>,
    /// The layout of the convolution weights and of every activation (see [`MemoryFormat`]).
    format: MemoryFormat,
}

fn build_body(arch: Arch, p: &nn::Path) -> Box<dyn ModuleT> {
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
        let top: Box<dyn ModuleT> = Box::new(FastaiHead::new(
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
        let top: Box<dyn ModuleT> = Box::new(ImagenetClassifier::new(&(&root / TOP), arch));
        Self::finish(arch, vs, body, top)
    }

    fn finish(arch: Arch, vs: nn::VarStore, body: Box<dyn ModuleT>, top: Box<dyn ModuleT>) -> Self {
        let mut params: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(k, _)| k)
            .collect();
        params.sort();
        let mut net = Network {
            arch,
            vs,
            body,
            top,
            params,
            format: MemoryFormat::Nchw,
        };
        let device = net.device();
        net.set_memory_format(memory_format::default_choice().resolve(device, arch));
        net
    }

    pub fn memory_format(&self) -> MemoryFormat {
        self.format
    }

    /// Puts every 4-D variable (the convolution weights) into `format`, in place: the variables
    /// keep their identity (optimizer and checkpoints hold the same tensors) and their values,
    /// so weights loaded before or after this are the same network. Inputs follow in `forward_t`.
    pub fn set_memory_format(&mut self, format: MemoryFormat) {
        tch::no_grad(|| {
            for (_, mut v) in self.vs.variables() {
                if v.dim() == 4 && !format.holds(&v) {
                    let t = format.apply(&v.detach());
                    v.set_data(&t);
                }
            }
        });
        self.format = format;
    }

    /// A u8 NHWC batch as this network's normalised float input on its device: in channels-last the
    /// permuted u8 batch already has the right strides, so the only copy is the float conversion.
    pub fn input(&self, batch_u8: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Tensor {
        crate::data::tensor::normalize_as(batch_u8, self.device(), mean, std, self.format)
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
    /// `x` is taken in the network's memory format (converted when it is not, e.g. a contiguous
    /// NCHW batch given to a channels-last network).
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.format.apply(x);
        self.top.forward_t(&self.body.forward_t(&x, train), train)
    }
}
