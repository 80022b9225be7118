"""Mahalanobis "unknown" score variants against the k-NN default, on `finetune embed` features (the
head's input: fastai's concat pool, max half then average half): class means with one shared
covariance (Lee et al., 2018) shrunk towards its mean eigenvalue by 0.01 / 0.1 / 0.5, on the raw
or the L2-normalised features, and the relative Mahalanobis distance (Ren et al., 2021: minus the
distance to one Gaussian of all training features). Labels are the training images' folders. AUROC
and FPR at 95 % TPR per variant, in-distribution test photos against each OOD folder.

    .venv/bin/python bench/ood_maha.py target/release/finetune MODEL TRAIN TEST OOD [OOD2 ...]

Embeddings are kept under target/ood-maha/emb-MODELNAME between runs (delete it after retraining).
"""
import subprocess, sys, os, csv
import numpy as np
fin, model, train, test, *oods = sys.argv[1:]
tmp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "ood-maha",
                   "emb-" + os.path.basename(model.rstrip('/')))
os.makedirs(tmp, exist_ok=True)
def embed(folder, name):
    out = os.path.join(tmp, name + ".npy")
    if not os.path.exists(out):
        subprocess.run([fin, "embed", model, folder, "--out", out], check=True, capture_output=True)
    paths = [r[1] for r in csv.reader(open(out[:-4] + ".csv"))][1:]
    return np.load(out).astype(np.float64), paths
def auroc(i, o):
    s = np.concatenate([i, o]); y = np.r_[np.ones(len(i)), np.zeros(len(o))]
    r = np.empty(len(s)); r[np.argsort(s)] = np.arange(1, len(s) + 1)
    return (r[y == 1].sum() - len(i) * (len(i) + 1) / 2) / (len(i) * len(o))
def fpr95(i, o): return (o >= np.quantile(i, 0.05)).mean()
def norm(x): return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
tr, tp = embed(train, "train"); te, _ = embed(test, "test")
labels = np.array([os.path.basename(os.path.dirname(p)) for p in tp])
od = {os.path.basename(o.rstrip("/")): embed(o, "ood%d" % k)[0] for k, o in enumerate(oods)}
d = tr.shape[1] // 2
print(f"train {tr.shape}, test {te.shape}, " + ", ".join(f"{k} {v.shape}" for k, v in od.items()))
def knn(sl, k, pre=norm):
    bank = pre(tr[:, sl])
    return lambda x: -np.sort(-(pre(x[:, sl]) @ bank.T), axis=1)[:, k - 1]
def maha(sl, shrink, l2=False, relative=False):
    X = tr[:, sl]; X = norm(X) if l2 else X
    classes = sorted(set(labels)); mus = np.stack([X[labels == c].mean(0) for c in classes])
    C = np.zeros((X.shape[1], X.shape[1]))
    for c, mu in zip(classes, mus):
        Z = X[labels == c] - mu; C += Z.T @ Z
    C /= len(X)
    C = (1 - shrink) * C + shrink * np.trace(C) / C.shape[0] * np.eye(C.shape[0])
    P = np.linalg.inv(C)
    mu0 = X.mean(0); Z0 = X - mu0; C0 = Z0.T @ Z0 / len(X)
    C0 = (1 - shrink) * C0 + shrink * np.trace(C0) / C0.shape[0] * np.eye(C0.shape[0]); P0 = np.linalg.inv(C0)
    def f(x):
        x = x[:, sl]; x = norm(x) if l2 else x
        ds = np.stack([np.einsum('ij,jk,ik->i', x - m, P, x - m) for m in mus], 1).min(1)
        if relative:
            ds = ds - np.einsum('ij,jk,ik->i', x - mu0, P0, x - mu0)
        return -ds
    return f
variants = []
for fname, sl in [("concat", slice(None)), ("max", slice(0, d)), ("avg", slice(d, None))]:
    variants.append((f"knn1 {fname}", knn(sl, 1)))
    variants.append((f"knn10 {fname}", knn(sl, 10)))
    for sh in [0.01, 0.1, 0.5]:
        variants.append((f"maha {fname} shrink {sh}", maha(sl, sh)))
        variants.append((f"maha-l2 {fname} shrink {sh}", maha(sl, sh, l2=True)))
    variants.append((f"relmaha {fname} shrink 0.1", maha(sl, 0.1, relative=True)))
print("| variant | " + " | ".join(f"{k} AUROC | {k} FPR@95" for k in od) + " |")
for name, f in variants:
    si = f(te)
    cells = [f"{auroc(si, f(o)):.4f} | {100 * fpr95(si, f(o)):.1f} %" for o in od.values()]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
