"""Benchmark: `finetune predict` vs PyTorch eager on the same images, decode included on both sides.

Usage (from the repo root, after `make build` and a trained bundle, e.g. from `make bench`):
  python bench/predict_bench.py --model target/bench/model-mobilenet_v2-42 --images ../shared/data/clothing-small/train

PyTorch side: the same network — the bundle's arch from torchvision + fastai's head (`create_head`,
written out in plain PyTorch in bench/torch_models.py; the head `finetune train` builds), random weights (speed does not depend on their values) — NCHW,
`torch.inference_mode()`, the bundle's batch size of `predict` (64), PIL decode + squish resize to
the bundle's size (bilinear, antialiased) + ImageNet normalisation, as a PyTorch user writes it;
once with decoding in the main process and once with a 2-worker DataLoader, the faster counts.
finetune side: `finetune predict MODEL IMAGES --csv --threads T`, one process.
onnxruntime side (the runtime CPU users pick for inference): the bundle exported by
`finetune export --format onnx`, `onnxruntime.InferenceSession` with T intra-op threads, PIL decode +
squish + normalisation in NumPy as the README's ONNX snippet does, batch 64, decode in the main
process and with a 2-worker DataLoader-style pool, the faster counts.
Every side uses the same images and T threads (default 2, all the cores of the machine it was made
for); decode is included everywhere.

Images/s is measured without start-up on both sides: every run is done on the first half of the
images and on all of them, and the rate is (all − half) images / (time(all) − time(half)); end-to-end
wall time for all images is reported beside it. A second table gives `predict`'s start-up: the
process alone (`--version`) and a whole one-photo `predict`, best of 5. Runs one job at a time.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, help="a bundle folder from `finetune train`")
ap.add_argument("--images", required=True, help="a folder of images (searched recursively)")
ap.add_argument("--bs", type=int, default=64)
ap.add_argument("--threads", type=int, default=2, help="compute threads on every side")
ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
ap.add_argument("--ort-only", help=argparse.SUPPRESS)
ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
ap.add_argument("--list", help=argparse.SUPPRESS)
args = ap.parse_args()

EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def image_files(root):
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.join(d, f) for f in files if f.lower().endswith(EXTS)]
    return sorted(out)


def torch_side():
    """One PyTorch run over the files in args.list; prints the seconds from the first decode on."""
    import torch
    from PIL import Image

    import torch_models

    torch.set_num_threads(args.threads)
    info = json.load(open(os.path.join(args.model, "model.json")))
    w, h = info["size"]["w"], info["size"]["h"]
    mean = torch.tensor(info["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["normalization"]["std"]).view(1, 3, 1, 1)
    model = torch_models.model(info["arch"], len(info["classes"]))
    files = open(args.list).read().splitlines()

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            img = Image.open(files[i]).convert("RGB").resize((w, h), Image.BILINEAR)
            return torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)

    dl = torch.utils.data.DataLoader(Files(), batch_size=args.bs, num_workers=args.workers)
    t0 = time.time()
    n = 0
    with torch.inference_mode():
        for xb in dl:
            x = (xb.float() / 255 - mean) / std
            p = model(x).softmax(-1)
            n += len(p)
    print(json.dumps({"seconds": time.time() - t0, "n": n}))


def ort_side(onnx_path):
    """One onnxruntime run over the files in args.list; prints the seconds from the first decode on."""
    import multiprocessing

    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["resize_method"] == "squish", meta["resize_method"]
    files = open(args.list).read().splitlines()
    t0 = time.time()
    n = 0
    jobs = [[(f, meta["input_width"], meta["input_height"], meta["mean"], meta["std"]) for f in files[i : i + args.bs]]
            for i in range(0, len(files), args.bs)]
    if args.workers:
        # As a DataLoader with workers: the next batch is decoded while this one runs.
        pool = multiprocessing.Pool(args.workers)
        pending = pool.map_async(ort_load, jobs[0])
        for k in range(len(jobs)):
            xs = pending.get()
            if k + 1 < len(jobs):
                pending = pool.map_async(ort_load, jobs[k + 1])
            n += len(sess.run(["probabilities"], {"input": np.stack(xs)})[0])
        pool.close()
    else:
        for job in jobs:
            n += len(sess.run(["probabilities"], {"input": np.stack([ort_load(j) for j in job])})[0])
    print(json.dumps({"seconds": time.time() - t0, "n": n}))


def ort_load(job):
    """The README's ONNX snippet: PIL decode (EXIF applied), squish, ImageNet normalisation, CHW."""
    import numpy as np
    from PIL import Image, ImageOps

    path, w, h, mean, std = job
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((int(w), int(h)), Image.BILINEAR)
    x = (np.asarray(img, np.float32) / 255 - np.array(json.loads(mean), np.float32)) / np.array(json.loads(std), np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


if args.torch_only:
    torch_side()
    sys.exit()
if args.ort_only:
    ort_side(args.ort_only)
    sys.exit()

files = image_files(args.images)
half = files[: len(files) // 2]
os.makedirs("target/bench", exist_ok=True)


def wall(cmd, env=None):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.time() - t, p.stdout


def finetune(subset, plan=True, fuse=True):
    lst = f"target/bench/predict-files-{len(subset)}"
    # Symlinks in one folder: the same files, given as one folder argument (no argv limit).
    d = f"{lst}.d"
    if not os.path.isdir(d):
        os.makedirs(d)
        for i, f in enumerate(subset):
            os.symlink(os.path.abspath(f), f"{d}/{i:06d}{os.path.splitext(f)[1]}")
    # FINETUNE_PLAN=0: the same without the inference plan (BatchNorm not folded), for its share.
    # FINETUNE_FUSE=0: folded, but no activation or residual add fused into the convolutions.
    env = {**os.environ, "FINETUNE_PLAN": "1" if plan else "0", "FINETUNE_FUSE": "1" if fuse else "0"}
    t, out = wall(["./target/release/finetune", "predict", args.model, d, "--csv", "--threads", str(args.threads)],
                  env)
    assert len(out.strip().splitlines()) == len(subset) + 1, "one CSV row per image"
    return t


ONNX = "target/bench/predict-model.onnx"
wall(["./target/release/finetune", "export", args.model, "--format", "onnx", "--out", ONNX])


def python_side(side, subset, workers):
    """One run of this script's PyTorch (`--torch-only`) or onnxruntime (`--ort-only ONNX`) side in
    its own process, over `subset`; returns the wall seconds."""
    lst = f"target/bench/predict-files-{len(subset)}.txt"
    open(lst, "w").write("\n".join(os.path.abspath(f) for f in subset))
    t, out = wall([sys.executable, __file__, *side, "--model", args.model, "--images", args.images,
                   "--bs", str(args.bs), "--workers", str(workers), "--list", lst, "--threads", str(args.threads)])
    assert json.loads(out.strip().splitlines()[-1])["n"] == len(subset)
    return t


TORCH, ORT = ["--torch-only"], ["--ort-only", ONNX]


rows = []
for name, fn in [("finetune predict", finetune),
                 ("finetune predict, FINETUNE_PLAN=0 (BatchNorm not folded)", lambda s: finetune(s, plan=False)),
                 ("finetune predict, FINETUNE_FUSE=0 (folded, not fused)", lambda s: finetune(s, fuse=False)),
                 ("PyTorch eager, decode in the main process", lambda s: python_side(TORCH, s, 0)),
                 ("PyTorch eager, DataLoader 2 workers", lambda s: python_side(TORCH, s, 2)),
                 ("onnxruntime (finetune export), decode in the main process", lambda s: python_side(ORT, s, 0)),
                 ("onnxruntime (finetune export), 2 decode workers", lambda s: python_side(ORT, s, 2))]:
    fn(half[:64])  # warm the page cache and the libraries
    t_half, t_all = fn(half), fn(files)
    rate = (len(files) - len(half)) / (t_all - t_half)
    rows.append((name, t_all, rate))
    print(f"{name}: {len(files)} images in {t_all:.1f} s end to end; {rate:.1f} img/s without start-up", flush=True)

# Start-up: what a one-image `predict` costs before its image, best of 5 (page cache warm): the
# process with libtorch loaded (`--version`), then a whole `predict` of one photo.
def best_wall(cmd, n=5):
    return min(wall(cmd, os.environ)[0] for _ in range(n))


startup = [("`finetune --version` (process start, libtorch loaded)",
            best_wall(["./target/release/finetune", "--version"])),
           ("`finetune predict MODEL one.jpg` (+ bundle loaded, one photo decoded and predicted)",
            best_wall(["./target/release/finetune", "predict", args.model, files[0], "--threads", str(args.threads)]))]
for name, t in startup:
    print(f"{name}: {t:.3f} s", flush=True)

best_torch = max(r[2] for r in rows[3:5])
best_ort = max(r[2] for r in rows[5:7])
print(f"\n{provenance.line()}\n")
print(f"{len(files)} images from {args.images}, model {args.model}, bs {args.bs}, {args.threads} threads on every side\n")
print("| side | images | end-to-end wall s | img/s (start-up excluded) |\n|---|---:|---:|---:|")
for name, t, rate in rows:
    print(f"| {name} | {len(files)} | {t:.1f} | {rate:.1f} |")
print(f"| finetune / best PyTorch eager | | | **{rows[0][2] / best_torch:.2f}×** |")
print(f"| finetune / best onnxruntime | | | **{rows[0][2] / best_ort:.2f}×** |")
print(f"| finetune / finetune without the plan | | | **{rows[0][2] / rows[1][2]:.2f}×** |")
print(f"| finetune / finetune without fusion | | | **{rows[0][2] / rows[2][2]:.2f}×** |")
print("\n| start-up (best of 5) | wall s |\n|---|---:|")
for name, t in startup:
    print(f"| {name} | {t:.3f} |")
