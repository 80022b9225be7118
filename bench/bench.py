"""Benchmark: finetune vs fastai 2.8 on the same fine_tune(3), 192 px squish, bs 64, same data.

Usage (from the repo root, after `make build`): python bench/bench.py [--per-class N] [--archs a,b]
Prints a markdown table. Runs one job at a time (timings side by side are worthless).
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
ap.add_argument("--seeds", default="42", help="comma-separated seeds; each runs both tools, then mean ± spread")
args = ap.parse_args()

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


def run_finetune(arch, seed):
    out = f"{args.work}/model-{arch}-{seed}"
    w = ["--weights", weights] if arch == "mobilenet_v2" else ["--random-init"]
    t0 = time.time()
    p, train_s, rss = timed(["./target/release/finetune", "train", data, "--arch", arch, *w, "--epochs", "3", "--size", "192",
                             "--bs", "64", "--seed", str(seed), "--out", out, "--force", "--quiet"])
    p2, _, rss2 = timed(["./target/release/finetune", "evaluate", out, f"{data}/test", "--json"])
    total = time.time() - t0
    rows = [l.split(",") for l in open(f"{out}/metrics.csv").read().splitlines()[1:]]
    info = json.load(open(f"{out}/model.json"))
    return {
        "epoch_seconds": [(0 if r[0] == "frozen" else 1, float(r[6])) for r in rows],
        "train_seconds": train_s,
        "total_seconds": total,
        "valid_error": float(rows[-1][4]),
        "test_accuracy": json.loads(p2.stdout)["accuracy"],
        "peak_rss_mb": max(rss, rss2) / 1024,
        "n_train": info["data"]["train_images"],
        "n_valid": info["data"]["valid_images"],
    }


def run_fastai(arch, seed):
    out = f"{args.work}/fastai-{arch}-{seed}.json"
    env = dict(os.environ, TORCH_HOME=os.path.abspath(f"{args.work}/torch-home"))
    timed([sys.executable, "bench/fastai_run.py", data, arch, weights if arch == "mobilenet_v2" else "none", out, str(seed)], env=env)
    return json.load(open(out))


def summary(r):
    frozen = [s for ph, s in r["epoch_seconds"] if ph == 0]
    unfrozen = [s for ph, s in r["epoch_seconds"] if ph == 1]
    mean_unfrozen = sum(unfrozen) / len(unfrozen)
    imgs = (r["n_train"] // 64) * 64
    return [f"{sum(frozen):.1f}", f"{mean_unfrozen:.1f}", f"{imgs / mean_unfrozen:.1f}", f"{r['total_seconds']:.0f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['valid_error']:.4f}", f"{100 * r['test_accuracy']:.2f}%"]


def mean_spread(xs, fmt):
    """Mean ± half the range: with 3 seeds a standard deviation says little more than the range does."""
    m = sum(xs) / len(xs)
    return f"{fmt(m)} ± {fmt((max(xs) - min(xs)) / 2)}"


seeds = [int(s) for s in args.seeds.split(",")]
tools = [("finetune", run_finetune), ("fastai 2.8.12", run_fastai)]
print(f"data: clothing-small, {args.per_class or 'all'} train images per class, validation/ as valid, test/ as test; "
      f"fine_tune(3), 192 px squish, bs 64; seeds {args.seeds}; {os.cpu_count()} CPU cores\n")
print("| arch | tool | seed | frozen epoch s | unfrozen epoch s | train img/s (unfrozen) | total wall s | peak RSS MB | valid error | test accuracy |")
print("|---|---|---|---|---|---|---|---|---|---|")
for arch in args.archs.split(","):
    name = f"{arch}{' (random init)' if arch != 'mobilenet_v2' else ''}"
    results = {tool: [] for tool, _ in tools}
    for seed in seeds:
        for tool, fn in tools:
            r = fn(arch, seed)
            results[tool].append(r)
            json.dump(r, open(f"{args.work}/result-{arch}-{tool.split()[0]}-{seed}.json", "w"), indent=1)
            print(f"| {name} | {tool} | {seed} | " + " | ".join(summary(r)) + " |", flush=True)
    mean_total = {t: sum(r["total_seconds"] for r in rs) / len(rs) for t, rs in results.items()}
    if len(seeds) > 1:
        for tool, rs in results.items():
            print(f"| {name} | {tool} | mean ± spread | | | | {mean_spread([r['total_seconds'] for r in rs], lambda x: f'{x:.0f}')} | | "
                  f"{mean_spread([r['valid_error'] for r in rs], lambda x: f'{x:.4f}')} | "
                  f"{mean_spread([100 * r['test_accuracy'] for r in rs], lambda x: f'{x:.2f}%')} |", flush=True)
    ratio = mean_total["fastai 2.8.12"] / mean_total["finetune"]
    print(f"| {arch} | fastai/finetune wall-time ratio | | | | | {ratio:.2f}× | | | |", flush=True)
