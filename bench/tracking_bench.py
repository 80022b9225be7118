#!/usr/bin/env python3
"""What experiment tracking costs an epoch: `finetune train` plain, with `--tensorboard DIR` and
with `--mlflow URI` (a real `mlflow server` on 127.0.0.1, started here), interleaved run by run.

mobilenet_v2 from ../shared's weights, 160 px, one frozen epoch and two unfrozen, on the first
60 training photos of each clothing-small class (600 images, 9 batches of 64 an epoch). Prints
each configuration's mean epoch time (metrics.csv's seconds, all 3 epochs of every run) and its
difference from plain, and, measured inside the run (`FINETUNE_PROFILE=1`'s per-fit line), the time
spent in the loop's callbacks — where tracking does all its work (the per-step scalars after each
batch, the epoch's metrics, images and the MLflow request after each epoch) — as a share of the
fits' time, and the share tracking adds over plain's callbacks (checkpoints): the figure the
≤ 1 % goal is about, which the epoch-time difference cannot show below its run-to-run spread.
docs/benchmarks.md quotes the table.

    .venv/bin/python bench/tracking_bench.py [--runs 3] [--work DIR]
"""

import argparse
import csv
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def subset(dst, per_class=60):
    src = SHARED / "data" / "clothing-small" / "train"
    for c in sorted(p.name for p in src.iterdir()):
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / c).iterdir())[:per_class]:
            link = dst / c / f.name
            if not link.exists():
                link.symlink_to(f)
    return dst


def mlflow_server(work):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true")
    p = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                          "--port", str(port), "--workers", "1", "--backend-store-uri",
                          f"sqlite:///{work}/mlflow.db", "--default-artifact-root", str(work / "artifacts")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return p, url
        except OSError:
            time.sleep(1)
    sys.exit("mlflow server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    weights = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    binary = REPO / "target" / "release" / "finetune"
    work = a.work or Path(tempfile.mkdtemp(prefix="tracking-"))
    data = subset(work / "data")
    server, url = mlflow_server(work)
    try:
        configs = {"plain": [], "--tensorboard": ["--tensorboard", str(work / "tb")], "--mlflow": ["--mlflow", url]}
        seconds = {k: [] for k in configs}
        # (seconds in callbacks, seconds of the fits) summed over every fit of every run.
        in_cbs = {k: [0.0, 0.0] for k in configs}
        env = dict(os.environ, FINETUNE_PROFILE="1")
        for r in range(a.runs):
            for name, flags in configs.items():
                out = work / f"m-{name.strip('-')}-{r}"
                p = subprocess.run([str(binary), "train", str(data), "--arch", "mobilenet_v2", "--weights", str(weights),
                                    "--size", "160", "--epochs", "2", "--device", "cpu", "--quiet", "--force",
                                    "--unknown", "off", "--out", str(out), *flags], capture_output=True, text=True,
                                   env=env)
                if p.returncode:
                    sys.exit(p.stderr)
                fits = re.findall(r"PROFILE \S+: callbacks ([0-9.]+)s of ([0-9.]+)s", p.stderr)
                if not fits:
                    sys.exit("no PROFILE callbacks line: is target/release/finetune up to date?")
                for cb, total in fits:
                    in_cbs[name][0] += float(cb)
                    in_cbs[name][1] += float(total)
                with open(out / "metrics.csv") as f:
                    seconds[name] += [float(row["seconds"]) for row in csv.DictReader(f)]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    base = statistics.mean(seconds["plain"])
    print(f"mobilenet_v2, 160 px, 600 images, {a.runs} runs of 3 epochs each, interleaved\n")
    share = {k: 100 * cb / total for k, (cb, total) in in_cbs.items()}
    print("| tracking | mean epoch (s) | spread (s) | vs plain | in callbacks (measured) | added by tracking |")
    print("|---|---|---|---|---|---|")
    for name, s in seconds.items():
        m = statistics.mean(s)
        added = "—" if name == "plain" else f"{share[name] - share['plain']:+.2f} %"
        print(f"| {name} | {m:.2f} | ± {statistics.pstdev(s):.2f} | {100 * (m / base - 1):+.1f} % "
              f"| {in_cbs[name][0]:.2f} s of {in_cbs[name][1]:.0f} s ({share[name]:.2f} %) | {added} |")


if __name__ == "__main__":
    main()
