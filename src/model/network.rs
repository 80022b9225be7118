//! A network = pretrained body + top (fastai head or ImageNet classifier), owning its variables.

use super::family::{convnext, vit};
use super::head::{FastaiHead, ImagenetClassifier};
use super::layers::Part;
use super::memory_format::MemoryFormat;
use super::onnx::{Graph, OnnxExport};
use super::precision::{Autocast, Precision};
use super::runtime::Runtime;
use super::Arch;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// Variable-name prefixes: `body.` holds torchvision's keys unchanged; `top.` the ImageNet
/// classifier's torchvision keys; `head.` the fastai head.
pub const BODY: &str = "body";
pub const TOP: &str = "top";
pub const HEAD: &str = "head";

/// What sits on the body: fastai's head (a classifier being fine-tuned, whose penultimate
/// features the "unknown" score and embeddings read) or torchvision's ImageNet classifier.
#[derive(Debug)]
enum Top {
    Fastai(FastaiHead),
    Imagenet(ImagenetClassifier),
}

impl Top {
    fn part(&self) -> &dyn Part {
        match self {
            Top::Fastai(h) => h,
            Top::Imagenet(c) => c,
        }
    }
}

#[derive(Debug)]
pub struct Network {
    pub arch: Arch,
    pub vs: nn::VarStore,
    body: Box<dyn Part>,
    top: Top,
    /// Names of the learnable parameters (not BN running statistics), recorded at construction
    /// because freezing later changes `requires_grad`.
    params: Vec<String>,
    /// The layout of the convolution weights and of every activation (see [`MemoryFormat`]).
    format: MemoryFormat,
    /// fp32, or the autocast type of every forward pass (see [`Precision`]).
    precision: Precision,
}

impl Network {
    /// fastai's `Sequential(body, head)` for `n_classes`, head freshly initialised, on `rt` (a
    /// device alone takes the `auto` memory format and precision).
    pub fn classifier(arch: Arch, n_classes: i64, rt: impl Into<Runtime>) -> Self {
        let rt = rt.into();
        let vs = nn::VarStore::new(rt.device);
        let root = vs.root();
        let body = arch.build_body(&(&root / BODY));
        let head = &root / HEAD;
        let top = Top::Fastai(if arch.is_vit() {
            FastaiHead::unpooled(&head, arch.body_channels(), n_classes)
        } else {
            FastaiHead::new(&head, arch.body_channels(), n_classes)
        });
        Self::finish(arch, vs, body, top, rt)
    }

    /// The torchvision network with its 1000-class ImageNet classifier.
    pub fn imagenet(arch: Arch, rt: impl Into<Runtime>) -> Self {
        let rt = rt.into();
        let vs = nn::VarStore::new(rt.device);
        let root = vs.root();
        let body = arch.build_body(&(&root / BODY));
        let top = Top::Imagenet(ImagenetClassifier::new(&(&root / TOP), arch));
        Self::finish(arch, vs, body, top, rt)
    }

    fn finish(arch: Arch, vs: nn::VarStore, body: Box<dyn Part>, top: Top, rt: Runtime) -> Self {
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
            precision: Precision::Fp32,
        };
        let device = net.device();
        net.set_memory_format(rt.memory_format.resolve(device, arch));
        net.precision = rt.precision.resolve(device);
        net
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Mixed precision is a property of the forward pass only (weights stay fp32), so switching
    /// needs no conversion.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
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
        super::plan::weights_changed();
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

    /// A BatchNorm weight or bias: a parameter whose layer also has a running mean; or, as fastai's
    /// `norm_types` include `nn.LayerNorm`, a LayerNorm's (ConvNeXt, ViT).
    pub fn is_bn_param(&self, name: &str) -> bool {
        let layer = name.rsplit_once('.').map(|(l, _)| l).unwrap_or("");
        if let Some(l) = layer.strip_prefix(&format!("{BODY}.")) {
            if (self.arch.is_convnext() && convnext::is_layer_norm(l))
                || (self.arch.is_vit() && vit::is_layer_norm(l))
            {
                return true;
            }
        }
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

impl Network {
    /// An eval-mode pass that also returns the features (see [`FastaiHead::features`]):
    /// `[pooled [N, 2·nf], hidden [N, 512], logits [N, classes]]`, all fp32. `None` for a network
    /// without fastai's head (an ImageNet classifier).
    pub fn features(&self, x: &Tensor) -> Option<[Tensor; 3]> {
        let Top::Fastai(head) = &self.top else {
            return None;
        };
        let x = self.format.apply(x);
        let _autocast = Autocast::enter(self.device(), self.precision);
        Some(
            head.features(&self.body.forward_t(&x, false))
                .map(|t| t.to_kind(tch::Kind::Float)),
        )
    }
}

impl Network {
    /// The body's output in eval mode, fp32 (the last convolutional block's feature map
    /// `[N, C, h, w]` for a CNN, the class token's features `[N, D]` for ViT): what Grad-CAM
    /// differentiates the class logit against.
    pub fn body_output(&self, x: &Tensor) -> Tensor {
        let x = self.format.apply(x);
        let _autocast = Autocast::enter(self.device(), self.precision);
        self.body.forward_t(&x, false).to_kind(tch::Kind::Float)
    }

    /// The logits of a body output (see [`Network::body_output`]), eval mode, fp32: split from
    /// the body so a caller can take gradients with respect to the feature map alone.
    pub fn top_output(&self, features: &Tensor) -> Tensor {
        self.top.part().forward_t(features, false)
    }
}

impl ModuleT for Network {
    /// `x` is taken in the network's memory format (converted when it is not, e.g. a contiguous
    /// NCHW batch given to a channels-last network).
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.format.apply(x);
        let _autocast = Autocast::enter(self.device(), self.precision);
        let y = self
            .top
            .part()
            .forward_t(&self.body.forward_t(&x, train), train);
        // Logits leave as fp32 whatever ran inside (a no-op for fp32).
        y.to_kind(tch::Kind::Float)
    }
}

impl OnnxExport for Network {
    /// The logits, with every weight named after its variable (`body.…`, `head.…`).
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        g.name_variables(self.vs.variables());
        let y = self.body.onnx(g, x);
        self.top.part().onnx(g, &y)
    }
}
