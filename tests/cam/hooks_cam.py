"""Grad-CAM computed the way fastai's book does it (chapter 18: a forward hook on the body keeps
its output, a hook on that output keeps its gradient), on a finetune network's weights, for
tests/cam.rs.

Usage: python hooks_cam.py ARCH WEIGHTS.safetensors IO.safetensors OUT.safetensors
WEIGHTS holds the network's variables under finetune's names (`body.` + torchvision's keys,
`head.` + fastai's head indices); IO holds `input` [N,3,H,W] and `classes` [N] (int64). Writes
`cam` [N,h,w] (before upsampling) and `logits` to OUT.
"""
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

arch, weights, io, out = sys.argv[1:5]
sd = load_file(weights)
tv = getattr(torchvision.models, arch)(weights=None)
body_sd = {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}
missing, unexpected = tv.load_state_dict(body_sd, strict=False)
assert not unexpected, unexpected
# Only the ImageNet classifier (which finetune replaces by fastai's head) may be missing.
assert all(k.startswith(("fc.", "classifier.", "head")) for k in missing), missing

if arch.startswith(("resnet", "resnext", "wide_resnet")):
    body = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3, tv.layer4)
elif arch.startswith("regnet"):
    body = nn.Sequential(tv.stem, tv.trunk_output)
else:
    body = tv.features


class AdaptiveConcatPool2d(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


nf = sd["head.2.weight"].shape[0]
n = sd["head.8.weight"].shape[0]
head = nn.Sequential(
    AdaptiveConcatPool2d(), nn.Flatten(), nn.BatchNorm1d(nf), nn.Dropout(0.25),
    nn.Linear(nf, 512, bias=False), nn.ReLU(inplace=True), nn.BatchNorm1d(512), nn.Dropout(0.5),
    nn.Linear(512, n, bias=False),
)
head.load_state_dict({k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")})
model = nn.Sequential(body, head).eval()

kept = {}


def forward_hook(module, inp, output):
    kept["act"] = output
    output.register_hook(lambda g: kept.__setitem__("grad", g))


handle = body.register_forward_hook(forward_hook)
t = load_file(io)
x, classes = t["input"], t["classes"]
logits = model(x)
logits[torch.arange(len(classes)), classes].sum().backward()
handle.remove()
w = kept["grad"].mean(dim=(2, 3), keepdim=True)
cam = (w * kept["act"]).sum(1).clamp(min=0)
save_file({"cam": cam.detach().contiguous(), "logits": logits.detach().contiguous()}, out)
