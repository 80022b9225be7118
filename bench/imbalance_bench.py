#!/usr/bin/env python3
"""Learning from skewed data: plain training against `--class-weights auto` and `--balanced`.

A skewed copy of ../shared/data/clothing-small: the training images of half the classes (the
minority: dress, hat, outwear, shorts, skirt) cut to a tenth, every other class and the
validation and test sets untouched. mobilenet_v2 from ../shared/weights is fine-tuned as
`finetune train` does (160 px, one frozen epoch and --epochs unfrozen ones) with each option and
each seed, then `finetune evaluate --json` on the full test set prints: accuracy, balanced
accuracy, macro F1, and the minority classes' mean recall; then fastai 2.8's `WeightedDL` on the
same data and recipe (bench/fastai_weighted.py; `--no-fastai` leaves it out); the last rows are
the means over the seeds, the figures docs/benchmarks.md quotes.

    .venv/bin/python bench/imbalance_bench.py [--seeds 1 2 3] [--epochs 1] [--size 160] [--work DIR]
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLOTHING = SHARED / "data" / "clothing-small"
MINORITY = ["dress", "hat", "outwear", "shorts", "skirt"]
OPTIONS = {"plain": [], "class-weights auto": ["--class-weights", "auto"], "balanced": ["--balanced"]}
sys.path.insert(0, str(REPO / "bench"))


def skewed(dst, keep=0.1):
    """train/ (minority classes cut to `keep` of their images, chosen with a fixed seed), valid/
    and test/ as symlinks to clothing-small."""
    rng = random.Random(0)
    for src, name in [("train", "train"), ("validation", "valid"), ("test", "test")]:
        for c in sorted(p.name for p in (CLOTHING / src).iterdir()):
            out = dst / name / c
            out.mkdir(parents=True, exist_ok=True)
            files = sorted((CLOTHING / src / c).iterdir())
            if name == "train" and c in MINORITY:
                files = sorted(rng.sample(files, max(1, round(len(files) * keep))))
            for f in files:
                link = out / f.name
                if not link.exists():
                    link.symlink_to(f)
    return dst


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


def scores(r):
    """accuracy, balanced accuracy, macro F1 and minority recall of fastai_weighted.py's answers,
    as `finetune evaluate --json` defines them (recall and F1 per class; a class never predicted
    has precision 0)."""
    classes, actual, predicted = r["classes"], r["actual"], r["predicted"]
    per = []
    for i, _ in enumerate(classes):
        tp = sum(1 for a, p in zip(actual, predicted) if a == i and p == i)
        support = sum(1 for a in actual if a == i)
        guessed = sum(1 for p in predicted if p == i)
        recall = tp / support if support else 0.0
        precision = tp / guessed if guessed else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per.append((recall, f1, support))
    accuracy = sum(1 for a, p in zip(actual, predicted) if a == p) / len(actual)
    present = [x for x in per if x[2]]
    minority = statistics.mean(per[classes.index(c)][0] for c in MINORITY)
    return (accuracy, statistics.mean(x[0] for x in present), statistics.mean(x[1] for x in present), minority)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--no-fastai", dest="fastai", action="store_false",
                    help="leave out fastai's WeightedDL rows (they need fastai in the venv)")
    a = ap.parse_args()
    weights = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    if not weights.is_file():
        sys.exit(f"{weights} is missing: this benchmark needs ../shared/weights")
    binary = REPO / "target" / "release" / "finetune"
    work = a.work or Path(tempfile.mkdtemp(prefix="imbalance-"))
    data = skewed(work / "data")
    counts = {c: len(list((data / "train" / c).iterdir())) for c in sorted(p.name for p in (data / "train").iterdir())}
    print(f"skewed clothing-small: {counts} training images; minority {', '.join(MINORITY)}")
    print(f"mobilenet_v2, {a.size} px, 1 frozen + {a.epochs} unfrozen epoch(s), seeds {a.seeds}\n")
    print("| option | seed | accuracy | balanced accuracy | macro F1 | minority recall |")
    print("|---|---|---|---|---|---|")
    results = {}
    for name, flags in OPTIONS.items():
        for seed in a.seeds:
            out = work / f"{name.replace(' ', '-')}-{seed}"
            run(binary, "train", data, "--arch", "mobilenet_v2", "--weights", weights, "--size", a.size,
                "--epochs", a.epochs, "--seed", seed, "--device", "cpu", "--quiet", "--force",
                "--unknown", "off", "--out", out, *flags)
            ev = json.loads(run(binary, "evaluate", "--json", "--device", "cpu", out, data / "test").stdout)
            recall = {r["class"]: r["recall"] for r in ev["per_class"]}
            minority = statistics.mean(recall[c] for c in MINORITY)
            row = (ev["accuracy"], ev["balanced_accuracy"], ev["macro_f1"], minority)
            results.setdefault(name, []).append(row)
            print(f"| {name} | {seed} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)
    if a.fastai:
        for seed in a.seeds:
            got = work / f"fastai-{seed}.json"
            run(sys.executable, REPO / "bench" / "fastai_weighted.py", data, weights, a.size, a.epochs, seed, got)
            row = scores(json.loads(got.read_text()))
            results.setdefault("fastai WeightedDL", []).append(row)
            print(f"| fastai WeightedDL | {seed} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)
    print()
    print("| option (mean of seeds) | accuracy | balanced accuracy | macro F1 | minority recall |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        means = [statistics.mean(r[i] for r in rows) for i in range(4)]
        spread = statistics.pstdev(r[3] for r in rows)
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in means) + f" (± {spread:.3f}) |")


if __name__ == "__main__":
    main()
