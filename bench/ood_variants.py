"""k-NN "unknown" score variants from `finetune embed` features: which features (the head's whole
input — fastai's concat pool, max half then average half — or either half) and which k separate
in-distribution test photos from images of another domain best. AUROC and FPR at 95 % TPR per
variant, the whole training set as the bank (the product samples at most 2048 of it).

    .venv/bin/python bench/ood_variants.py target/release/finetune MODEL TRAIN TEST OOD [OOD2 ...]

With bench/trust_bench.py's work folder (--work W): MODEL W/m-clothing-e0-s160-seed42, TRAIN
W/clothing/train, TEST W/clothing/test, OOD W/cache/wallpapers (and any folder of photos).
"""
import subprocess, sys, os, tempfile
import numpy as np

fin, model, train, test, *oods = sys.argv[1:]
tmp = tempfile.mkdtemp()

def embed(folder, name):
    out = os.path.join(tmp, name + ".npy")
    subprocess.run([fin, "embed", model, folder, "--out", out], check=True, capture_output=True)
    return np.load(out).astype(np.float64)

def auroc(inside, outside):
    s = np.concatenate([inside, outside]); y = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    order = np.argsort(s); ranks = np.empty(len(s)); ranks[order] = np.arange(1, len(s) + 1)
    return (ranks[y == 1].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside))

def fpr95(inside, outside):
    t = np.quantile(inside, 0.05)
    return (outside >= t).mean()

def norm(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

tr, te = embed(train, "train"), embed(test, "test")
od = {os.path.basename(o.rstrip("/")): embed(o, "ood" + str(i)) for i, o in enumerate(oods)}
d = tr.shape[1] // 2
print(f"train {tr.shape}, test {te.shape}, " + ", ".join(f"{k} {v.shape}" for k, v in od.items()))
print("| features | k | " + " | ".join(f"{k} AUROC | {k} FPR@95" for k in od) + " |")
for fname, sl in [("concat", slice(None)), ("first half", slice(0, d)), ("second half", slice(d, None))]:
    bank = norm(tr[:, sl])
    for k in [1, 5, 10, 50]:
        def score(x):
            sims = norm(x[:, sl]) @ bank.T
            kth = -np.sort(-sims, axis=1)[:, k - 1]
            return -np.sqrt(np.maximum(2 - 2 * kth, 0))
        si = score(te)
        cells = []
        for name, o in od.items():
            so = score(o)
            cells.append(f"{auroc(si, so):.4f} | {100 * fpr95(si, so):.1f} %")
        print(f"| {fname} | {k} | " + " | ".join(cells) + " |")
