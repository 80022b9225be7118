"""Is the seed protocol's accuracy gap the method or the split? finetune trained on fastai's own split.

Usage (from the repo root, after `bench/bench.py --protocol seed --seeds S,...` has run, which leaves
target/bench/seed-protocol/ and fastai's results): python bench/same_split.py [--seeds 42,1,2,3,4]

For each seed S, fastai's split of the seed protocol is rebuilt exactly as `ImageDataLoaders.from_folder(
train=".", valid_pct=0.2, seed=S)` makes it (get_image_files' order, then RandomSplitter(0.2, seed=S)),
written as train/ and valid/ folders of symlinks, and finetune trains on those folders with the
benchmark's settings (fine_tune(3), 192 px squish, bs 64, seed S) and is tested on the same test/.
Printed beside: finetune on its own split and fastai on this split (from bench.py's result files). If
finetune on fastai's split matches fastai, the gap between the tools was the split, not the method.
Timings are not measured here; only accuracy.
"""
import argparse
import json
import os
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--shared", default="../shared")
ap.add_argument("--work", default="target/bench")
ap.add_argument("--seeds", default="42,1,2,3,4")
args = ap.parse_args()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402
from fastai.vision.all import RandomSplitter, get_image_files  # noqa: E402

seed_data = os.path.abspath(f"{args.work}/seed-protocol")
if not os.path.exists(f"{seed_data}/.done"):
    sys.exit(f"no {seed_data}: run `python bench/bench.py --protocol seed --archs mobilenet_v2` first")
weights = os.path.abspath(f"{args.shared}/weights/mobilenet_v2-b0353104.pth")
files = get_image_files(f"{seed_data}/train")


def result(tool, seed):
    p = f"{args.work}/result-seed-mobilenet_v2-{tool}-{seed}.json"
    return json.load(open(p)) if os.path.exists(p) else None


def pct(r, key):
    return "" if r is None else (f"{100 * r[key]:.2f}%" if key == "test_accuracy" else f"{r[key]:.4f}")


print(f"{provenance.line()}\n")
print("| seed | finetune, own split: valid error / test | finetune on fastai's split: valid error / test | "
      "fastai 2.8.12 (bench.py): valid error / test |")
print("|---|---|---|---|")
rows = []
for seed in [int(s) for s in args.seeds.split(",")]:
    train_idx, valid_idx = RandomSplitter(0.2, seed=seed)(files)
    split = f"{args.work}/fastai-split-{seed}"
    subprocess.run(["rm", "-rf", split], check=True)
    for name, idx in [("train", train_idx), ("valid", valid_idx)]:
        for i in idx:
            f = files[i]
            d = f"{split}/{name}/{f.parent.name}"
            os.makedirs(d, exist_ok=True)
            os.symlink(os.path.realpath(f), f"{d}/{f.name}")
    out = f"{args.work}/model-fastai-split-{seed}"
    subprocess.run(["./target/release/finetune", "train", split, "--arch", "mobilenet_v2", "--weights", weights,
                    "--epochs", "3", "--size", "192", "--bs", "64", "--seed", str(seed), "--out", out, "--force",
                    "--quiet"], check=True, capture_output=True)
    ev = subprocess.run(["./target/release/finetune", "evaluate", out, f"{seed_data}/test", "--json"], check=True,
                        capture_output=True, text=True)
    last = open(f"{out}/metrics.csv").read().splitlines()[-1].split(",")
    ours = {"valid_error": float(last[4]), "test_accuracy": json.loads(ev.stdout)["accuracy"]}
    own, fa = result("finetune", seed), result("fastai", seed)
    rows.append((own, ours, fa))
    print(f"| {seed} | {pct(own, 'valid_error')} / {pct(own, 'test_accuracy')} | {pct(ours, 'valid_error')} / "
          f"{pct(ours, 'test_accuracy')} | {pct(fa, 'valid_error')} / {pct(fa, 'test_accuracy')} |", flush=True)


def mean_sd(xs):
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{100 * m:.2f}% ± {100 * sd:.2f}%"


cols = [[r[i] for r in rows if r[i] is not None] for i in range(3)]
print("| mean ± sd of test accuracy | " + " | ".join(mean_sd([r["test_accuracy"] for r in c]) if c else "" for c in cols)
      + " |")
