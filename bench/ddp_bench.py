"""Data-parallel training on this machine (docs/scaling.md, README): the same fine_tune on the full
clothing-small train/ + validation/ folders (mobilenet_v2, 192 px squish, global batch 64), once as
1 process × 2 threads and once as `torchrun --nproc-per-node 2` × 1 thread (--bs 32 each), with
FINETUNE_PROFILE=1 so each epoch's time splits into forward, backward, gradient all-reduce, step.
  python bench/ddp_bench.py [--epochs 1] [--data DIR] [--weights FILE]
Prints the markdown table (under the provenance line). Run on a quiet machine: nothing else timed."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import provenance

REPO = Path(__file__).resolve().parent.parent
F = REPO / "target/release/finetune"
TORCHRUN = Path(sys.executable).with_name("torchrun")
PROFILE = re.compile(
    r"PROFILE (\w+) epoch (\d+): (\d+) batches, total ([\d.]+)s = wait for batch ([\d.]+)s \+ forward ([\d.]+)s"
    r" \+ backward ([\d.]+)s \+ optimizer step ([\d.]+)s \+ gradient all-reduce ([\d.]+)s \+ loss reads ([\d.]+)s"
    r" \+ validation ([\d.]+)s")


def run(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr}")
    rows = []
    for m in PROFILE.finditer(p.stderr):
        phase, epoch, batches, total, wait, fwd, bwd, step, sync, reads, valid = m.groups()
        rows.append(dict(phase=phase, epoch=int(epoch), batches=int(batches), total=float(total),
                         sync=float(sync), valid=float(valid)))
    return rows, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/clothing-small"))
    ap.add_argument("--weights", default=str(REPO.parent / "shared/weights/mobilenet_v2-b0353104.pth"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    data = tmp / "data"
    data.mkdir()
    # train/ + validation/ as the train/valid folders finetune recognises.
    (data / "train").symlink_to(Path(a.data).resolve() / "train")
    (data / "valid").symlink_to(Path(a.data).resolve() / "validation")
    common = ["train", str(data), "--arch", "mobilenet_v2", "--weights", a.weights, "--size", "192",
              "--device", "cpu", "--quiet", "--force"]
    epochs = ["--epochs", str(a.epochs), "--freeze-epochs", "1"]
    env = {**os.environ, "FINETUNE_PROFILE": "1", "FINETUNE_IMAGE_CACHE": str(tmp / "cache")}
    # Warm the image cache first, so neither side pays for decoding.
    run([F, *common, "--epochs", "0", "--freeze-epochs", "0", "--out", str(tmp / "warm")], env)
    one, _ = run([F, *common, *epochs, "--bs", "64", "--threads", "2", "--out", str(tmp / "one")], env)
    two, err = run([TORCHRUN, "--no-python", "--standalone", "--nproc-per-node", "2", F, *common, *epochs, "--bs", "32",
                    "--threads", "1", "--out", str(tmp / "two")], {**env, "OMP_NUM_THREADS": "1"})
    accs = {}
    for k in ("one", "two"):
        info = json.loads((tmp / k / "model.json").read_text())
        accs[k] = info["metrics"]["accuracy"]
    print(provenance.line())
    print()
    print("| run | phase | steps | train img/s | all-reduce s/step | all-reduce share | valid accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, rows, acc in [("1 process × 2 threads, bs 64", one, accs["one"]),
                            ("2 ranks × 1 thread (Gloo), bs 32 each", two, accs["two"])]:
        # torchrun interleaves both ranks' PROFILE lines; rank 0's come first per epoch, and the
        # ranks wait for each other at every step, so either stands for the pair.
        seen = set()
        for r in rows:
            key = (r["phase"], r["epoch"])
            if key in seen:
                continue
            seen.add(key)
            train_s = r["total"] - r["valid"]
            ips = r["batches"] * 64 / train_s
            sync = r["sync"] / r["batches"]
            print(f"| {name} | {r['phase']} {r['epoch']} | {r['batches']} | {ips:.1f} | {sync:.3f} | "
                  f"{r['sync'] / train_s * 100:.0f} % | {acc * 100:.2f} % |")


if __name__ == "__main__":
    main()
