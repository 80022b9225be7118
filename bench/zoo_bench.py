"""Per-architecture speed: finetune vs PyTorch eager on the same network definition.

Usage (repo root, after `cargo build --release --example zoo_speed`):
    python bench/zoo_bench.py [--archs a,b,...] [--bs 32] [--size 192] [--iters 3] [--threads 2]
Prints a markdown table. One job at a time: timings taken beside another job are worthless.

Both sides: the arch with its ImageNet classifier (1000 classes), random weights, a random uint8
batch [bs, size, size, 3] normalised as the arch's weights expect, the same thread count on both sides.
The PyTorch definitions: torchvision's for the torchvision archs (vit_b_16 included), timm's for
vit_s_16 (torchvision has none; finetune reads both layouts) and the timm-only archs,
efficientnet_lite_pytorch for efficientnet_lite0. Training = forward +
cross-entropy + backward + Adam step of every parameter (PyTorch: torch.optim.AdamW, its default
foreach implementation; finetune: fastai's Adam with decoupled weight decay); inference = eval forward
under torch.inference_mode. One untimed warm-up step per case. PyTorch runs NCHW, as a model built by
torchvision or timm does unless the user converts it; finetune runs its default (`--memory-format auto`).
"""
import argparse
import json
import subprocess
import sys
import time

ALL = ("resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d wide_resnet50_2 mobilenet_v2 "
       "regnet_y_400mf regnet_y_800mf regnet_y_1_6gf regnet_x_400mf convnext_tiny convnext_small vit_b_16 "
       "vit_s_16 mobilenet_v3_small mobilenet_v3_large efficientnet_b0 efficientnet_b1 efficientnet_b2 "
       "efficientnet_b3 efficientnet_v2_s efficientnet_lite0 mobilenetv3_small_100 mobilenetv3_large_100 "
       "tf_efficientnetv2_s").split()

ap = argparse.ArgumentParser()
ap.add_argument("--archs", default=",".join(ALL))
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--size", type=int, default=192)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--torch-one", help=argparse.SUPPRESS)
args = ap.parse_args()


def torch_model(arch):
    import torchvision
    if arch == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet
        return EfficientNet.from_name("efficientnet-lite0")
    timm_names = {"vit_s_16": "vit_small_patch16_224",
                  "mobilenetv3_small_100": "mobilenetv3_small_100",
                  "mobilenetv3_large_100": "mobilenetv3_large_100", "tf_efficientnetv2_s": "tf_efficientnetv2_s"}
    if arch in timm_names:
        import timm
        kw = {"dynamic_img_size": True} if arch.startswith("vit") else {}
        return timm.create_model(timm_names[arch], pretrained=False, **kw)
    if arch == "vit_b_16":  # torchvision's ViT is built for one input size
        return torchvision.models.vit_b_16(weights=None, image_size=args.size)
    return getattr(torchvision.models, arch)(weights=None)


def torch_one(arch):
    """Runs in its own process (as finetune's side does), prints one JSON line."""
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = torch_model(arch)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    xb = torch.randint(0, 256, (args.bs, args.size, args.size, 3), dtype=torch.uint8)
    y = torch.randint(0, 1000, (args.bs,))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)

    def inp():
        return (xb.permute(0, 3, 1, 2).float().div(255) - mean) / std

    def train():
        m.train()
        loss = torch.nn.functional.cross_entropy(m(inp().contiguous()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def infer():
        m.eval()
        with torch.inference_mode():
            return m(inp().contiguous()).sum().item()

    def timed(f):
        f()
        t = time.perf_counter()
        for _ in range(args.iters):
            f()
        return (time.perf_counter() - t) / args.iters

    tr, inf = timed(train), timed(infer)
    print(json.dumps({"arch": arch, "params": sum(p.numel() for p in m.parameters()),
                      "train": args.bs / tr, "infer": args.bs / inf}))


if args.torch_one:
    torch_one(args.torch_one)
    sys.exit(0)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


common = ["--bs", str(args.bs), "--size", str(args.size), "--iters", str(args.iters), "--threads", str(args.threads)]
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import provenance  # noqa: E402

print(f"{provenance.line()}\n")
print(f"bs {args.bs}, {args.size} px, {args.iters} timed steps after one warm-up, {args.threads} threads on both sides\n")
print("| arch | params | format | train img/s finetune | train img/s PyTorch | × | inference img/s finetune | inference img/s PyTorch | × |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
for arch in args.archs.split(","):
    ft = run(["./target/release/examples/zoo_speed", arch, *common])
    pt = run([sys.executable, __file__, "--torch-one", arch, *common])
    print(f"| {arch} | {ft['params'] / 1e6:.2f}M | {ft['format']} | {ft['train']:.1f} | {pt['train']:.1f} | "
          f"{ft['train'] / pt['train']:.2f} | {ft['infer']:.1f} | {pt['infer']:.1f} | {ft['infer'] / pt['infer']:.2f} |",
          flush=True)
