"""Inference engines side by side, per architecture (docs/benchmarks.md): finetune's inference plan
against onnxruntime and PyTorch eager on the same pixels, and the Python package's `predict_arrays`.

  python bench/engine_bench.py [--archs mobilenet_v2,resnet18,efficientnet_b0,convnext_tiny]
      [--images ../shared/data/clothing-small/train] [--n 256] [--size 160] [--bs 64] [--threads 2]
      [--repeats 3]

Each arch gets a bundle made once by `finetune train` of one epoch on the embedded sample with random
weights (speed does not depend on their values; BatchNorm folds the same). The first N photos of
--images are decoded and squished to the size once (PIL, bilinear) and kept as u8 pixels; every side
then starts from those pixels, normalises them itself and runs batches of --bs with --threads threads,
one process per side, one untimed warm-up batch, best of --repeats passes over all N:
- finetune: `cargo run --release --example engine_speed` (each batch exactly as `predict` runs it:
  pixels stacked, normalised, the plan, probabilities read back); also with FINETUNE_PACK=0 (weights
  not pre-packed for oneDNN), FINETUNE_FUSE=0 (BatchNorm
  folded, activations and residual adds not fused) and FINETUNE_PLAN=0 (the eager network);
- onnxruntime: `session.run` on the bundle's `finetune export`, NumPy normalisation per batch;
- PyTorch eager: the same network in torchvision + fastai's head (bench/torch_models.py), in NCHW and
  in channels-last, under `torch.inference_mode()`;
- Python: `finetune.load(MODEL).predict_arrays(pixels)`.
Every side runs in --procs separate processes and the best counts (on this host a whole process
is now and then 20 % slower than the next, whatever it runs). Then, for the first arch, a second
table: the plan and onnxruntime at each of --batch-sizes (how `predict`'s batch of 64 was chosen).
Prints the markdown tables under the provenance line. Runs one job at a time (timings side by side
are worthless).
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument("--archs", default="mobilenet_v2,resnet18,efficientnet_b0,convnext_tiny")
ap.add_argument("--images", default="../shared/data/clothing-small/train")
ap.add_argument("--n", type=int, default=256)
ap.add_argument("--size", type=int, default=160)
ap.add_argument("--bs", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--procs", type=int, default=2, help="processes per side; the best counts")
ap.add_argument("--batch-sizes", default="1,8,16,32,64,128",
                help="the batch-size table: plan and onnxruntime at each, on the first arch ('' skips it)")
ap.add_argument("--work", default="target/bench/engine")
ap.add_argument("--side", choices=["ort", "torch", "arrays"], help=argparse.SUPPRESS)
ap.add_argument("--model", help=argparse.SUPPRESS)
ap.add_argument("--pixels", help=argparse.SUPPRESS)
ap.add_argument("--layout", default="nchw", help=argparse.SUPPRESS)
args = ap.parse_args()


def load_pixels(path, size):
    import numpy as np

    x = np.fromfile(path, dtype=np.uint8)
    return x.reshape(-1, size, size, 3)


def best_of(run_pass):
    """One warm-up call of the first batch, then the best of --repeats timed passes over all N."""
    run_pass(warm=True)
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        n = run_pass(warm=False)
        best = min(best, time.perf_counter() - t)
    return n / best


def side_ort():
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(f"{args.model}.onnx", so, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    mean = np.array(json.loads(meta["mean"]), np.float32)
    std = np.array(json.loads(meta["std"]), np.float32)
    x = load_pixels(args.pixels, args.size)

    def run_pass(warm):
        n = 0
        for i in range(0, args.bs if warm else len(x), args.bs):
            b = ((x[i : i + args.bs].astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
            n += len(sess.run(["probabilities"], {"input": np.ascontiguousarray(b)})[0])
        return n

    return best_of(run_pass)


def side_torch():
    import torch

    import torch_models

    torch.set_num_threads(args.threads)
    info = json.load(open(os.path.join(args.model, "model.json")))
    net = torch_models.model(info["arch"], len(info["classes"]))
    fmt = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    mean = torch.tensor(info["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["normalization"]["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(load_pixels(args.pixels, args.size))

    def run_pass(warm):
        n = 0
        with torch.inference_mode():
            for i in range(0, args.bs if warm else len(x), args.bs):
                b = ((x[i : i + args.bs].permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous(memory_format=fmt)
                n += len(net(b).softmax(-1))
        return n

    return best_of(run_pass)


def side_arrays():
    import torch

    import finetune

    torch.set_num_threads(args.threads)
    m = finetune.load(args.model, device="cpu")
    x = load_pixels(args.pixels, args.size)

    def run_pass(warm):
        # One call per batch of --bs, as the other sides: one call over all N would be batched
        # by the package itself (64 at a time) whatever --bs says.
        n = 0
        for i in range(0, args.bs if warm else len(x), args.bs):
            n += len(m.predict_arrays(x[i : i + args.bs]))
        return n

    return best_of(run_pass)


if args.side:
    rate = {"ort": side_ort, "torch": side_torch, "arrays": side_arrays}[args.side]()
    print(json.dumps({"img_s": rate}))
    sys.exit()

import provenance  # noqa: E402


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def rate(cmd, env=None):
    """The best images/s of --procs runs of one side's process."""
    return max(last_json(run(cmd, env))["img_s"] for _ in range(args.procs))


os.makedirs(args.work, exist_ok=True)
run(["cargo", "build", "--release", "--bin", "finetune", "--example", "engine_speed"])
pixels = f"{args.work}/pixels-{args.n}-{args.size}.u8"
if not os.path.exists(pixels):
    from PIL import Image

    files = []
    for d, _, fs in os.walk(args.images):
        files += [os.path.join(d, f) for f in fs if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    files = sorted(files)[: args.n]
    if len(files) < args.n:
        sys.exit(f"{args.images}: only {len(files)} photos, fewer than --n {args.n}")
    with open(f"{pixels}.tmp", "wb") as f:
        for p in files:
            f.write(Image.open(p).convert("RGB").resize((args.size, args.size), Image.BILINEAR).tobytes())
    os.replace(f"{pixels}.tmp", pixels)


def me_at(bs):
    """This script as one side's process, at batch size `bs`."""
    return [sys.executable, os.path.abspath(__file__), "--n", str(args.n), "--size", str(args.size), "--bs", str(bs),
            "--threads", str(args.threads), "--repeats", str(args.repeats), "--pixels", pixels]


me = me_at(args.bs)
engine = ["./target/release/examples/engine_speed"]
common = ["--bs", str(args.bs), "--threads", str(args.threads), "--repeats", str(args.repeats)]
rows = []
for arch in args.archs.split(","):
    model = f"{args.work}/model-{arch}-{args.size}"
    if not os.path.exists(f"{model}/model.json"):
        run(["./target/release/finetune", "train", "assets/sample/train", "--arch", arch, "--random-init", "--epochs", "1",
             "--size", str(args.size), "--bs", "16", "--out", model, "--force", "--quiet"])
    if not os.path.exists(f"{model}.onnx"):
        run(["./target/release/finetune", "export", model, "--format", "onnx", "--out", f"{model}.onnx"])
    r = {"arch": arch}
    fused = last_json(run([*engine, model, pixels, *common]))
    r["plan"] = fused["img_s"]
    if fused["fused"][0] == 0 and arch != "convnext_tiny":
        sys.exit(f"{arch}: the plan ran no fused convolution ({fused})")
    for _ in range(args.procs - 1):
        r["plan"] = max(r["plan"], last_json(run([*engine, model, pixels, *common]))["img_s"])
    r["nopack"] = rate([*engine, model, pixels, *common], {"FINETUNE_PACK": "0"})
    r["nofuse"] = rate([*engine, model, pixels, *common], {"FINETUNE_FUSE": "0"})
    r["eager"] = rate([*engine, model, pixels, *common], {"FINETUNE_PLAN": "0"})
    r["ort"] = rate([*me, "--side", "ort", "--model", model])
    r["torch_nchw"] = rate([*me, "--side", "torch", "--model", model, "--layout", "nchw"])
    r["torch_nhwc"] = rate([*me, "--side", "torch", "--model", model, "--layout", "nhwc"])
    r["arrays"] = rate([*me, "--side", "arrays", "--model", model])
    rows.append(r)
    print(json.dumps(r), file=sys.stderr, flush=True)

bs_rows = []
if args.batch_sizes:
    arch = args.archs.split(",")[0]
    model = f"{args.work}/model-{arch}-{args.size}"
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        if bs > args.n:
            sys.exit(f"--batch-sizes: {bs} is more than --n {args.n} images")
        per = ["--bs", str(bs), "--threads", str(args.threads), "--repeats", str(args.repeats)]
        r = {"bs": bs, "plan": rate([*engine, model, pixels, *per])}
        r["nopack"] = rate([*engine, model, pixels, *per], {"FINETUNE_PACK": "0"})
        r["ort"] = rate([*me_at(bs), "--side", "ort", "--model", model])
        bs_rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)

print(f"{provenance.line()}\n")
print(f"{args.n} clothing-small photos pre-decoded to {args.size}×{args.size}, batches of {args.bs}, {args.threads} threads "
      f"on every side, img/s, best of {args.repeats} passes in each of {args.procs} processes\n")
print("| arch | finetune plan (folded + fused + packed) | plan, FINETUNE_PACK=0 | plan, FINETUNE_FUSE=0 | FINETUNE_PLAN=0 (eager) | onnxruntime `session.run` | "
      "PyTorch eager NCHW | PyTorch eager channels-last | Python `predict_arrays` | plan / onnxruntime | "
      "`predict_arrays` / plan |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['arch']} | {r['plan']:.1f} | {r['nopack']:.1f} | {r['nofuse']:.1f} | {r['eager']:.1f} | {r['ort']:.1f} | {r['torch_nchw']:.1f} | "
          f"{r['torch_nhwc']:.1f} | {r['arrays']:.1f} | **{r['plan'] / r['ort']:.2f}×** | {r['arrays'] / r['plan']:.2f}× |")

if bs_rows:
    print(f"\n{arch} by batch size (same pixels, {args.threads} threads, img/s, best of {args.repeats} passes "
          f"in each of {args.procs} processes)\n")
    print("| batch size | finetune plan | plan, FINETUNE_PACK=0 | onnxruntime `session.run` | plan / onnxruntime |\n"
          "|---:|---:|---:|---:|---:|")
    for r in bs_rows:
        print(f"| {r['bs']} | {r['plan']:.1f} | {r['nopack']:.1f} | {r['ort']:.1f} | {r['plan'] / r['ort']:.2f}× |")
