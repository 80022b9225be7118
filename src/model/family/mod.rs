//! One file per network family: its layers in torchvision's key names, its ONNX form, and the
//! renaming of its timm checkpoints. A family file imports only the bottom of `model/` (`layers`,
//! `onnx`, `weights`): which archs use it, and with what configuration, is the catalogue's and
//! `network`'s business.

pub mod convnext;
pub mod efficientnet;
pub mod efficientnet_lite;
pub mod efficientnet_timm;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod regnet;
pub mod resnet;
pub mod vit;
