"""Would int8 inference keep test accuracy? Issue 23's optional item asks for `--quantize int8` only if
it keeps test accuracy within 0.5 points on the benchmark's held-out test folders; this measures that
before anything is built, with the standard post-training recipe on our own export.

  python bench/int8_probe.py [--models target/bench/model-fastai-split-42,...]
      [--test ../shared/data/clothing-small/test] [--calib ../shared/data/clothing-small/train]
      [--n-calib 256] [--threads 2]

For each bundle (default: the five mobilenet_v2 bundles `bench/same_split.py` trains on the full
clothing-small set, one per seed): `finetune export` to ONNX, then onnxruntime's static
quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on --n-calib
training photos by default, --method percentile|entropy for the others; onnxruntime's own
pre-processing pass first), and the float32 and int8 models run
on the same pixels of every held-out test photo (PIL decode, squish, normalisation: the README's
ONNX snippet). Accuracy is compared on the same pixels, so the difference is quantization's alone.
Speed: the first bundle's two models on the test photos, batches of 64, --threads threads, best of 3.
Prints the markdown table under the provenance line. Not part of the tests.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--models", default=",".join(f"target/bench/model-fastai-split-{s}" for s in (42, 1, 2, 3, 4)))
ap.add_argument("--test", default="../shared/data/clothing-small/test")
ap.add_argument("--calib", default="../shared/data/clothing-small/train")
ap.add_argument("--n-calib", type=int, default=256)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"],
                help="calibration: onnxruntime's MinMax, Percentile (99.999) or Entropy")
ap.add_argument("--work", default="target/bench/int8")
args = ap.parse_args()


def photos(root):
    out = []
    for d, _, fs in sorted(os.walk(root)):
        out += [os.path.join(d, f) for f in sorted(fs) if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    return out


def pixels(files, meta):
    from PIL import Image, ImageOps

    w, h = int(meta["input_width"]), int(meta["input_height"])
    mean = np.array(json.loads(meta["mean"]), np.float32)
    std = np.array(json.loads(meta["std"]), np.float32)
    xs = []
    for f in files:
        img = ImageOps.exif_transpose(Image.open(f)).convert("RGB").resize((w, h), Image.BILINEAR)
        xs.append(((np.asarray(img, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return np.stack(xs).astype(np.float32)


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def predict(sess, x, bs=64):
    return np.concatenate([sess.run(["probabilities"], {"input": x[i : i + bs]})[0] for i in range(0, len(x), bs)])


def quantize(fp32, int8, calib_x):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib_x[i : i + 16] for i in range(0, len(calib_x), 16))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b}

    pre = int8.replace(".onnx", ".pre.onnx")
    quant_pre_process(fp32, pre)
    quantize_static(pre, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                      "entropy": CalibrationMethod.Entropy}[args.method])


def rate(sess, x, bs=64, repeats=3):
    sess.run(["probabilities"], {"input": x[:bs]})
    best = 1e9
    for _ in range(repeats):
        t = time.perf_counter()
        predict(sess, x, bs)
        best = min(best, time.perf_counter() - t)
    return len(x) / best


missing = [m for m in args.models.split(",") if not os.path.exists(os.path.join(m, "model.json"))]
if missing:
    sys.exit(f"no bundle at {', '.join(missing)}: `ONLY=same-split make bench-all` trains the default ones "
             "(or pass --models)")
os.makedirs(args.work, exist_ok=True)
test = photos(args.test)
calib = photos(args.calib)
calib = [calib[i] for i in np.random.default_rng(0).permutation(len(calib))[: args.n_calib]]
rows, speed = [], None
for k, model in enumerate(args.models.split(",")):
    name = os.path.basename(model.rstrip("/"))
    fp32 = f"{args.work}/{name}.onnx"
    int8 = f"{args.work}/{name}.int8-{args.method}.onnx"
    subprocess.run(["./target/release/finetune", "export", model, "--format", "onnx", "--out", fp32],
                   check=True, stdout=subprocess.DEVNULL)
    meta = session(fp32).get_modelmeta().custom_metadata_map
    classes = json.load(open(os.path.join(model, "model.json")))["classes"]
    x = pixels(test, meta)
    y = np.array([classes.index(os.path.basename(os.path.dirname(f))) for f in test])
    quantize(fp32, int8, pixels(calib, meta))
    s32, s8 = session(fp32), session(int8)
    p32, p8 = predict(s32, x), predict(s8, x)
    acc32 = float((p32.argmax(1) == y).mean() * 100)
    acc8 = float((p8.argmax(1) == y).mean() * 100)
    agree = float((p32.argmax(1) == p8.argmax(1)).mean() * 100)
    rows.append((name, acc32, acc8, agree, float(np.abs(p32 - p8).max())))
    print(json.dumps({"model": name, "fp32": acc32, "int8": acc8, "agree": agree}), file=sys.stderr)
    if k == 0:
        speed = (name, rate(s32, x), rate(s8, x), os.path.getsize(fp32), os.path.getsize(int8))

print(provenance.line())
print()
print(f"{len(test)} held-out photos of {args.test}; onnxruntime static quantization (QDQ, per-channel int8 weights, "
      f"uint8 activations, {args.method} calibration on {args.n_calib} training photos); same pixels for both models")
print()
print("| bundle | float32 test accuracy % | int8 test accuracy % | int8 − float32 (points) | same top-1 % | max prob. difference |")
print("|---|---:|---:|---:|---:|---:|")
for name, a32, a8, agree, dmax in rows:
    print(f"| {name} | {a32:.2f} | {a8:.2f} | {a8 - a32:+.2f} | {agree:.1f} | {dmax:.3f} |")
d = np.array([r[2] - r[1] for r in rows])
print(f"| mean of {len(rows)} | {np.mean([r[1] for r in rows]):.2f} | {np.mean([r[2] for r in rows]):.2f} | "
      f"**{d.mean():+.2f}** (min {d.min():+.2f}) | {np.mean([r[3] for r in rows]):.1f} | |")
print()
name, r32, r8, b32, b8 = speed
print(f"Speed ({name}, {len(test)} photos, batches of 64, {args.threads} threads, best of 3): float32 {r32:.1f} img/s, "
      f"int8 {r8:.1f} img/s (**{r8 / r32:.2f}×**); file {b32 / 1e6:.1f} MB → {b8 / 1e6:.1f} MB")
