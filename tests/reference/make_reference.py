"""Writes PyTorch/torchvision reference outputs that the Rust tests compare against.

Usage: python make_reference.py OUTDIR [SHARED_DIR]
Everything is computed live from the venv's torch + torchvision, so CI checks parity with the
exact libtorch the binary links. Parts that need ../shared are skipped (and listed in
OUTDIR/skipped.txt) when it is absent.
"""
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

out = sys.argv[1]
shared = sys.argv[2] if len(sys.argv) > 2 else None
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
skipped = []


def randomize(model):
    """Random weights and non-trivial BatchNorm statistics, so eval-mode BN is really exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_io(name, model, x):
    with torch.no_grad():
        y = model(x)
    save_file({"input": x.contiguous(), "logits": y.contiguous()}, f"{out}/{name}_io.safetensors")


def plain_sd(model):
    return {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# resnet18 / resnet50: random weights, zip .pth (torch >= 1.6 format).
for arch, size in [("resnet18", 224), ("resnet50", 160)]:
    m = randomize(getattr(torchvision.models, arch)(weights=None))
    torch.save(m.state_dict(), f"{out}/{arch}.pth")
    save_io(arch, m, torch.randn(2, 3, size, size))
    if arch == "resnet18":
        save_file(plain_sd(m), f"{out}/resnet18.safetensors")

# A resnet34 checkpoint, for the wrong-arch error test.
torch.save(torchvision.models.resnet34(weights=None).state_dict(), f"{out}/resnet34.pth")

mnv2 = f"{shared}/weights/mobilenet_v2-b0353104.pth" if shared else None
if mnv2 and os.path.exists(mnv2):
    m = torchvision.models.mobilenet_v2(weights=None)
    m.load_state_dict(torch.load(mnv2, map_location="cpu"))
    m.eval()
    save_io("mobilenet_v2", m, torch.randn(2, 3, 224, 224))
    # fp16 copy in the zip format: the model evaluated with the same (rounded) weights is the reference.
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    torch.save(half, f"{out}/mobilenet_v2_fp16.pth")
    m16 = torchvision.models.mobilenet_v2(weights=None)
    m16.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    m16.eval()
    save_io("mobilenet_v2_fp16", m16, torch.randn(2, 3, 224, 224))

    # Real photos through torchvision's reference eval transform (resize 256, centre-crop 224).
    from PIL import Image
    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256),
        torchvision.transforms.CenterCrop(224),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    photos = {}
    for cls in ["shoes", "hat", "pants", "dress"]:
        d = f"{shared}/data/clothing-small/test/{cls}"
        for f in sorted(os.listdir(d))[:2]:
            p = os.path.join(d, f)
            with torch.no_grad():
                prob = m(tf(Image.open(p).convert("RGB"))[None]).softmax(-1)[0]
            top = prob.topk(5)
            photos[p] = [[int(i), float(v)] for v, i in zip(top.values, top.indices)]
    json.dump(photos, open(f"{out}/photos_top5.json", "w"), indent=1)
else:
    skipped.append("mobilenet_v2 parity and real photos: ../shared/weights/mobilenet_v2-b0353104.pth absent")

open(f"{out}/skipped.txt", "w").write("\n".join(skipped))
import hashlib
open(f"{out}/done", "w").write(hashlib.sha256(open(__file__, "rb").read()).hexdigest())
print(f"reference outputs in {out} (torch {torch.__version__}, torchvision {torchvision.__version__})")
