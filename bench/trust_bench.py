#!/usr/bin/env python3
"""Knowing what it does not know: calibration and the "unknown" scores on held-out photos.

For each model (mobilenet_v2 from ../shared/weights, fine-tuned as `finetune train` does, 160 px,
the issue's one frozen epoch unless --epochs says more), trained on a data set made from
../shared/data/clothing-small:

- clothing-small (10 classes) against desktop wallpapers from Debian's background packages
  (another domain: landscapes, abstract art; fetched with `apt-get download` into the cache once,
  left out with a note when apt cannot fetch them);
- "tops" (dress, longsleeve, outwear, shirt, t-shirt) against "bottoms" (hat, pants, shoes, shorts,
  skirt) and the reverse: other clothing on the same backgrounds, the near look-alikes no score
  separates well;

prints, from `finetune evaluate --json --ood` and `finetune predict --json`: test accuracy with and
without calibration (and whether any predicted class changed), test NLL and ECE raw and calibrated,
and for each score (max softmax, energy, Mahalanobis, k-NN) the AUROC, the FPR at 95 % TPR and the
shares called unknown at the model's own threshold (95 % of validation images accepted).

    .venv/bin/python bench/trust_bench.py [--epochs 0] [--size 160] [--work DIR] [--only clothing]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLOTHING = SHARED / "data" / "clothing-small"
TOPS = ["dress", "longsleeve", "outwear", "shirt", "t-shirt"]
BOTTOMS = ["hat", "pants", "shoes", "shorts", "skirt"]
WALLPAPER_PACKAGES = [
    "gnome-backgrounds",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "ukui-wallpapers",
    "sway-backgrounds",
    "lomiri-wallpapers",
]
sys.path.insert(0, str(REPO / "bench"))


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw)


def subset(dst, classes):
    """A folder layout (train/ valid/ test/) of `classes` from clothing-small, as symlinks."""
    for src, name in [("train", "train"), ("validation", "valid"), ("test", "test")]:
        (dst / name).mkdir(parents=True, exist_ok=True)
        for c in classes:
            link = dst / name / c
            if not link.exists():
                link.symlink_to(CLOTHING / src / c)
    return dst


def wallpapers(cache):
    """Desktop backgrounds from Debian's packages, each a distinct image shrunk to 512 px JPEG."""
    out = cache / "wallpapers" / "x"
    if out.is_dir() and any(out.iterdir()):
        return out.parent
    from PIL import Image

    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", *WALLPAPER_PACKAGES], cwd=debs, capture_output=True, text=True)
    if got.returncode != 0:
        print(f"note: apt-get download failed, no wallpapers set:\n{got.stderr[-500:]}")
        return None
    root = cache / "unpacked"
    root.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        x = subprocess.run(["dpkg", "-x", str(deb), str(root / deb.stem)], capture_output=True, text=True)
        if x.returncode != 0:
            print(f"note: {deb.name} not unpacked: {x.stderr.strip()[-200:]}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    seen, n = set(), 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in {".jpg", ".jpeg", ".png", ".webp"}:
            continue
        try:
            im = Image.open(p).convert("RGB")
        except Exception:
            continue
        if min(im.size) < 200:
            continue
        im.thumbnail((512, 512))
        h = hashlib.md5(im.tobytes()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        n += 1
        im.save(out / f"{n:03d}.jpg", quality=90)
    return out.parent


def train(fin, data, out, args):
    weights = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    if not (out / "model.json").is_file():
        sh(fin, "train", data, "--arch", "mobilenet_v2", "--weights", weights, "--size", args.size,
           "--epochs", args.epochs, "--seed", args.seed, "--quiet", "--out", out, "--force")
    return out


def predicted(fin, model, test, *extra):
    r = json.loads(sh(fin, "predict", "--json", model, test, *extra).stdout)
    return {x["path"]: x["predictions"][0]["label"] for x in r}


def row(fin, name, model, test, ood_name, ood):
    ev = json.loads(sh(fin, "evaluate", "--json", model, test, "--ood", ood).stdout)
    raw = json.loads(sh(fin, "evaluate", "--json", "--raw-probs", model, test).stdout)
    same = predicted(fin, model, test) == predicted(fin, model, test, "--raw-probs")
    c = ev["calibration"]
    info = json.loads((model / "model.json").read_text())
    return {
        "model": name,
        "ood": ood_name,
        "test": ev["total"],
        "ood_images": ev["ood"]["ood_images"],
        "accuracy": ev["accuracy"],
        "accuracy_raw": raw["accuracy"],
        "classes_unchanged": same,
        "temperature": c["temperature"],
        "valid_ece": (info["calibration"]["ece_before"], info["calibration"]["ece_after"]),
        "nll": (c["nll_raw"], c["nll_calibrated"]),
        "ece": (c["ece_raw"], c["ece_calibrated"]),
        "scores": ev["ood"]["rows"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=0, help="unfrozen epochs after the frozen one")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=REPO / "target" / "trust-bench")
    ap.add_argument("--only", choices=["clothing"], help="only the 10-class model against the wallpapers")
    args = ap.parse_args()
    fin = os.environ.get("FINETUNE_BIN") or str(REPO / "target" / "release" / "finetune")
    import provenance

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    tops, bottoms = subset(w / "tops", TOPS), subset(w / "bottoms", BOTTOMS)
    full = subset(w / "clothing", TOPS + BOTTOMS)
    walls = wallpapers(w / "cache")
    tag = f"e{args.epochs}-s{args.size}-seed{args.seed}"
    m_full = train(fin, full, w / f"m-clothing-{tag}", args)
    rows = []
    if walls is not None:
        rows.append(row(fin, "clothing-small", m_full, full / "test", "wallpapers", walls))
    if args.only is None:
        m_tops = train(fin, tops, w / f"m-tops-{tag}", args)
        m_bottoms = train(fin, bottoms, w / f"m-bottoms-{tag}", args)
        if walls is not None:
            rows.append(row(fin, "tops", m_tops, tops / "test", "wallpapers", walls))
        rows.append(row(fin, "tops", m_tops, tops / "test", "bottoms (near)", bottoms / "test"))
        rows.append(row(fin, "bottoms", m_bottoms, bottoms / "test", "tops (near)", tops / "test"))

    print(f"# trust_bench: mobilenet_v2, {args.size} px, fine_tune(epochs={args.epochs}), seed {args.seed}")
    print(f"# {provenance.line()}")
    print()
    print("| model | test images | accuracy (calibrated = raw) | classes unchanged | T | test NLL raw → cal | test ECE raw → cal | valid ECE raw → cal |")
    print("|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in rows:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        print(f"| {r['model']} | {r['test']} | {r['accuracy']*100:.2f} % = {r['accuracy_raw']*100:.2f} % | "
              f"{'yes' if r['classes_unchanged'] else 'NO'} | {r['temperature']:.3f} | "
              f"{r['nll'][0]:.4f} → {r['nll'][1]:.4f} | {r['ece'][0]:.4f} → {r['ece'][1]:.4f} | "
              f"{r['valid_ece'][0]:.4f} → {r['valid_ece'][1]:.4f} |")
    print()
    print("| model | vs (images) | score | AUROC | FPR @ 95 % TPR | unknown: ood | unknown: test |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for s in r["scores"]:
            pct = lambda v: "–" if v is None else f"{v*100:.1f} %"
            star = " (default)" if s["default"] else ""
            print(f"| {r['model']} | {r['ood']} ({r['ood_images']}) | {s['score']}{star} | {s['auroc']:.4f} | "
                  f"{s['fpr_at_95_tpr']*100:.1f} % | {pct(s['ood_flagged'])} | {pct(s['test_flagged'])} |")


if __name__ == "__main__":
    main()
