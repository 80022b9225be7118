//! The 1000 ImageNet class names, in torchvision's index order.

const RAW: &str = include_str!("imagenet_classes.txt");

pub fn labels() -> Vec<&'static str> {
    RAW.lines().collect()
}
