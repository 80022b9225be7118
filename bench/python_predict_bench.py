"""The Python package's `Model.predict_arrays` (docs/benchmarks.md): images/s on pixels already
decoded and at the bundle's size (random values: speed does not depend on them), best of 3 calls of
N images, in a fresh process per setting: as installed (glibc's malloc told to keep freed memory,
python/src/lib.rs) and with FINETUNE_MALLOC_TUNE=0 (malloc as Python leaves it).
  python bench/python_predict_bench.py --model target/demo-model [--n 256]
Prints the markdown table under the provenance line."""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

ONE = r"""
import json, sys, time, numpy as np, torch, finetune
m = finetune.load(sys.argv[1], device="cpu")
s = m.info["size"]
x = np.random.default_rng(0).integers(0, 256, size=(int(sys.argv[2]), s["h"], s["w"], 3), dtype=np.uint8)
m.predict_arrays(x[:64])
best = min((lambda t: (m.predict_arrays(x), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(3))
print(json.dumps({"img_s": len(x) / best, "threads": torch.get_num_threads(), "size": s}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=256)
    a = ap.parse_args()
    rows = []
    for name, env in [("as installed (malloc keeps freed memory)", {}),
                      ("FINETUNE_MALLOC_TUNE=0 (Python's malloc as it is)", {"FINETUNE_MALLOC_TUNE": "0"})]:
        p = subprocess.run([sys.executable, "-c", ONE, a.model, str(a.n)], capture_output=True, text=True,
                           env={**os.environ, **env})
        if p.returncode != 0:
            sys.exit(p.stderr)
        rows.append((name, json.loads(p.stdout.strip().splitlines()[-1])))
    print(provenance.line())
    print()
    size = rows[0][1]["size"]
    print(f"{a.n} arrays of {size['w']}×{size['h']} pixels, model {a.model}, {rows[0][1]['threads']} torch threads\n")
    print("| `Model.predict_arrays` | img/s (best of 3) |\n|---|---:|")
    for name, r in rows:
        print(f"| {name} | {r['img_s']:.1f} |")
    print(f"| ratio | **{rows[0][1]['img_s'] / rows[1][1]['img_s']:.2f}×** |")


if __name__ == "__main__":
    main()
