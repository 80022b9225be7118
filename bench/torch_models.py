"""The PyTorch eager twin of a finetune bundle's network, for the inference benchmarks: torchvision's
body (fastai's cut) and fastai 2.8's `create_head(nf, n)` written out, so a timing never includes
importing fastai. Random weights: speed does not depend on their values."""
import torch
import torchvision
from torch import nn


class ConcatPool(nn.Module):
    """fastai's AdaptiveConcatPool2d."""

    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


def create_head(nf, n):
    """fastai 2.8's create_head(nf, n): concat pool, first BatchNorm, 512 hidden units."""
    return nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2 * nf), nn.Dropout(0.25),
                         nn.Linear(2 * nf, 512, bias=False), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
                         nn.Dropout(0.5), nn.Linear(512, n, bias=False))


BODIES = {
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2().features, 1280),
    "resnet18": (lambda: nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]), 512),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0().features, 1280),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny().features, 768),
}


def model(arch, n_classes):
    """The network of a finetune bundle of `arch` with `n_classes` outputs, in eval mode."""
    if arch not in BODIES:
        raise SystemExit(f"no PyTorch twin for {arch} (have: {', '.join(BODIES)})")
    body, nf = BODIES[arch]
    return nn.Sequential(body(), create_head(nf, n_classes)).eval()
