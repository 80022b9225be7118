"""Benchmark: finetune vs fastai 2.8 on the same fine_tune(3), 192 px squish, bs 64, same data.

Usage (from the repo root, after `make build`): python bench/bench.py [--per-class N] [--archs a,b]
    [--seeds 42,1,2] [--protocol folders|seed] [--recipe plain|augment|mixup|label_smoothing]
Prints a markdown table, the mean ± standard deviation over the seeds and the wall-time ratio of the
means. Runs one job at a time (timings side by side are worthless).

Protocols: `folders` (default) trains on clothing-small's train/, validates on its validation/ folder
and tests on test/. `seed` is the seed workflow's: train/ alone, split 80/20 at random by each tool
with the run's seed (finetune's --valid-pct 0.2 --seed S, fastai's RandomSplitter(0.2, seed=S)), test/
as the test set; the split seed varies with the seed on both sides.

Recipes (the same on both sides, fastai's names): `augment` = `--augment` / `batch_tfms=aug_transforms()`
(warp included); `mixup` = `--mixup 0.4` / `cbs=MixUp(0.4)`; `label_smoothing` = `--label-smoothing 0.1` /
`loss_func=LabelSmoothingCrossEntropyFlat(eps=0.1)`. The `augment` row also tests each model with
test-time augmentation (`evaluate --tta` / `learn.tta(dl=test_dl)`, n=4, beta=0.25): without
`--augment` both tools' TTA has nothing to vary and returns the plain prediction, so TTA belongs to the
augmented model, as in fastai's course.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--shared", default="../shared")
ap.add_argument("--per-class", type=int, default=60, help="training images per class (0 = all)")
ap.add_argument("--archs", default="mobilenet_v2,resnet18")
ap.add_argument("--work", default="target/bench")
ap.add_argument("--seeds", default="42", help="comma-separated seeds; each runs both tools, then mean ± sd")
ap.add_argument("--protocol", choices=["folders", "seed"], default="folders")
ap.add_argument("--recipe", choices=["plain", "augment", "mixup", "label_smoothing"], default="plain")
args = ap.parse_args()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

src = f"{args.shared}/data/clothing-small"
data = os.path.abspath(f"{args.work}/data")
weights = os.path.abspath(f"{args.shared}/weights/mobilenet_v2-b0353104.pth")
if not os.path.exists(f"{data}/.done-{args.per_class}"):
    subprocess.run(["rm", "-rf", data], check=True)
    for split_src, split_dst in [("train", "train"), ("validation", "valid"), ("test", "test")]:
        for cls in sorted(os.listdir(f"{src}/{split_src}")):
            files = sorted(os.listdir(f"{src}/{split_src}/{cls}"))
            if split_dst == "train" and args.per_class:
                files = files[: args.per_class]
            os.makedirs(f"{data}/{split_dst}/{cls}", exist_ok=True)
            for f in files:
                os.symlink(os.path.abspath(f"{src}/{split_src}/{cls}/{f}"), f"{data}/{split_dst}/{cls}/{f}")
    open(f"{data}/.done-{args.per_class}", "w").close()


def timed(cmd, **kw):
    """Runs cmd under GNU time; returns its output, wall seconds and peak RSS in KiB of that run alone
    (RUSAGE_CHILDREN would carry over the maximum of earlier runs)."""
    rss_file = f"{args.work}/rss.txt"
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-o", rss_file, "-f", "%M", *cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p, time.time() - t0, int(open(rss_file).read().split()[-1])


# The seed protocol: train/ alone (its class folders) as one data folder, test/ beside it.
seed_data = os.path.abspath(f"{args.work}/seed-protocol")
if args.protocol == "seed" and not os.path.exists(f"{seed_data}/.done"):
    subprocess.run(["rm", "-rf", seed_data], check=True)
    for split_src, split_dst in [("train", "train"), ("test", "test")]:
        os.makedirs(f"{seed_data}/{split_dst}")
        for cls in sorted(os.listdir(f"{src}/{split_src}")):
            os.symlink(os.path.abspath(f"{src}/{split_src}/{cls}"), f"{seed_data}/{split_dst}/{cls}")
    open(f"{seed_data}/.done", "w").close()
train_data = data if args.protocol == "folders" else f"{seed_data}/train"
test_data = f"{data}/test" if args.protocol == "folders" else f"{seed_data}/test"


def run_finetune(arch, seed):
    out = f"{args.work}/model-{args.protocol}-{args.recipe}-{arch}-{seed}"
    recipe = {"augment": ["--augment"], "mixup": ["--mixup", "0.4"],
              "label_smoothing": ["--label-smoothing", "0.1"]}.get(args.recipe, [])
    w = ["--weights", weights] if arch == "mobilenet_v2" else ["--random-init"]
    split = ["--valid-pct", "0.2"] if args.protocol == "seed" else []
    # Cold, like fastai (which decodes every photo in every epoch): a fresh image cache for every run,
    # so each run decodes every photo once and writes its cache inside the timed total.
    cache = os.path.abspath(f"{args.work}/image-cache-run")
    subprocess.run(["rm", "-rf", cache], check=True)
    t0 = time.time()
    p, train_s, rss = timed(["./target/release/finetune", "train", train_data, "--arch", arch, *w, "--epochs", "3", "--size", "192",
                             "--bs", "64", "--seed", str(seed), *split, *recipe, "--out", out, "--force", "--quiet",
                             "--cache-dir", cache])
    p2, _, rss2 = timed(["./target/release/finetune", "evaluate", out, test_data, "--json"])
    total = time.time() - t0
    # TTA after the timed total (fastai's side likewise), so the wall times stay comparable to the plain row.
    tta_accuracy = None
    if args.recipe == "augment":
        p3, _, _ = timed(["./target/release/finetune", "evaluate", out, test_data, "--json", "--tta"])
        tta_accuracy = json.loads(p3.stdout)["accuracy"]
    rows = [l.split(",") for l in open(f"{out}/metrics.csv").read().splitlines()[1:]]
    info = json.load(open(f"{out}/model.json"))
    return {
        "epoch_seconds": [(0 if r[0] == "frozen" else 1, float(r[6])) for r in rows],
        "train_seconds": train_s,
        "total_seconds": total,
        "valid_error": float(rows[-1][4]),
        "test_accuracy": json.loads(p2.stdout)["accuracy"],
        "tta_accuracy": tta_accuracy,
        "peak_rss_mb": max(rss, rss2) / 1024,
        "n_train": info["data"]["train_images"],
        "n_valid": info["data"]["valid_images"],
    }


def run_fastai(arch, seed):
    out = f"{args.work}/fastai-{args.protocol}-{args.recipe}-{arch}-{seed}.json"
    env = dict(os.environ, TORCH_HOME=os.path.abspath(f"{args.work}/torch-home"), FASTAI_RECIPE=args.recipe)
    split = [] if args.protocol == "folders" else ["0.2", test_data]
    timed([sys.executable, "bench/fastai_run.py", train_data, arch, weights if arch == "mobilenet_v2" else "none", out,
           str(seed), *split], env=env)
    return json.load(open(out))


def summary(r):
    frozen = [s for ph, s in r["epoch_seconds"] if ph == 0]
    unfrozen = [s for ph, s in r["epoch_seconds"] if ph == 1]
    mean_unfrozen = sum(unfrozen) / len(unfrozen)
    imgs = (r["n_train"] // 64) * 64
    return [f"{sum(frozen):.1f}", f"{mean_unfrozen:.1f}", f"{imgs / mean_unfrozen:.1f}", f"{r['total_seconds']:.0f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['valid_error']:.4f}", f"{100 * r['test_accuracy']:.2f}%"] + \
        ([f"{100 * r['tta_accuracy']:.2f}%"] if tta else [])


def mean_sd(xs, fmt):
    """Mean ± sample standard deviation over the seeds."""
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    return f"{fmt(m)} ± {fmt(sd)}"


seeds = [int(s) for s in args.seeds.split(",")]
tta = args.recipe == "augment"
tools = [("finetune", run_finetune), ("fastai 2.8.12", run_fastai)]
print(f"{provenance.line()}\n")
print("cache state: cold on both sides: finetune starts every run with an empty image cache (decodes every photo "
      "once, writes its cache, inside the timed total); fastai decodes every photo in every epoch; the files are "
      "in the page cache for both\n")
if args.protocol == "folders":
    print(f"data: clothing-small, {args.per_class or 'all'} train images per class, validation/ as valid, test/ as test; "
          f"fine_tune(3), 192 px squish, bs 64; recipe {args.recipe}; seeds {args.seeds}\n")
else:
    print(f"data: clothing-small train/ split 80/20 at random with each run's seed by each tool, test/ as test; "
          f"fine_tune(3), 192 px squish, bs 64; seeds {args.seeds}\n")
print("| arch | tool | seed | frozen epoch s | unfrozen epoch s | train img/s (unfrozen) | total wall s | peak RSS MB | valid error | test accuracy |"
      + (" test accuracy, TTA |" if tta else ""))
print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if tta else ""))
for arch in args.archs.split(","):
    name = f"{arch}{' (random init)' if arch != 'mobilenet_v2' else ''}"
    results = {tool: [] for tool, _ in tools}
    for seed in seeds:
        for tool, fn in tools:
            r = fn(arch, seed)
            results[tool].append(r)
            tag = args.protocol if args.recipe == "plain" else f"{args.protocol}-{args.recipe}"
            json.dump(r, open(f"{args.work}/result-{tag}-{arch}-{tool.split()[0]}-{seed}.json", "w"), indent=1)
            print(f"| {name} | {tool} | {seed} | " + " | ".join(summary(r)) + " |", flush=True)
    mean_total = {t: sum(r["total_seconds"] for r in rs) / len(rs) for t, rs in results.items()}
    if len(seeds) > 1:
        for tool, rs in results.items():
            print(f"| {name} | {tool} | mean ± sd, {len(rs)} seeds | | | | {mean_sd([r['total_seconds'] for r in rs], lambda x: f'{x:.0f}')} | | "
                  f"{mean_sd([r['valid_error'] for r in rs], lambda x: f'{x:.4f}')} | "
                  f"{mean_sd([100 * r['test_accuracy'] for r in rs], lambda x: f'{x:.2f}%')} |"
                  + (f" {mean_sd([100 * r['tta_accuracy'] for r in rs], lambda x: f'{x:.2f}%')} |" if tta else ""),
                  flush=True)
    ratio = mean_total["fastai 2.8.12"] / mean_total["finetune"]
    print(f"| {arch} | fastai/finetune wall-time ratio (means over {len(seeds)} seed(s)) | | | | | **{ratio:.2f}×** | | | |"
          + (" |" if tta else ""),
          flush=True)
