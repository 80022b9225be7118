#!/usr/bin/env bash
# The GPU benchmark (issue 10's fast path): one script, a few minutes, for a CUDA machine with
# torch 2.11.0. Run from the repo root after `cargo build --release --bin finetune --example zoo_speed
# --example engine_speed`
# (here or there). The binaries find libtorch by rpath; on another machine this script points
# LD_LIBRARY_PATH at that machine's torch and its CUDA libraries.
#
#   bench/gpu_bench.sh                 # on the GPU
#   DEVICE=cpu BS=8 ITERS=1 REPEAT=1 EPOCHS=0 bench/gpu_bench.sh   # a dry run of the script on a CPU
#
# Prints JSON lines (zoo_speed) and one line for the seed-sized fine_tune(3).
set -euo pipefail
DEVICE=${DEVICE:-cuda}
BS=${BS:-256}
ITERS=${ITERS:-20}
REPEAT=${REPEAT:-5}
EPOCHS=${EPOCHS:-3}
PY=${PYTHON:-python3}
TORCH=$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')
SITE=$(dirname "$TORCH")
LIBS="$TORCH/lib"
for d in "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu*/lib; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

BIN=./target/release/finetune
ZOO=./target/release/examples/zoo_speed

# 1. Throughput, random weights, ImageNet classifier: training (forward + backward + fastai Adam,
#    fp16 with loss scaling) and inference images/s at 192 px, per precision.
for arch in resnet18 mobilenet_v2; do
  for p in fp32 bf16 fp16; do
    $ZOO "$arch" --device "$DEVICE" --precision "$p" --bs "$BS" --size 192 --iters "$ITERS"
  done
done

# 2. The seed-sized job: ~800 photos (the embedded sample's 160 training photos five times over,
#    under distinct names; assets/sample's test photos as the valid set), resnet18, fine_tune(3),
#    192 px, --precision auto. Training seconds are the sum of the epoch times in metrics.csv.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for cls in assets/sample/train/*/; do
  c=$(basename "$cls")
  mkdir -p "$WORK/data/train/$c" "$WORK/data/valid/$c"
  for k in $(seq "$REPEAT"); do
    for f in "$cls"*; do ln -s "$PWD/$f" "$WORK/data/train/$c/$k-$(basename "$f")"; done
  done
  for f in assets/sample/test/"$c"/*; do ln -s "$PWD/$f" "$WORK/data/valid/$c/"; done
done
start=$(date +%s.%N)
$BIN train "$WORK/data" --arch resnet18 --random-init --epochs "$EPOCHS" --size 192 --bs 64 \
  --device "$DEVICE" --precision auto --out "$WORK/model" --no-cache --quiet
end=$(date +%s.%N)
$PY - "$WORK/model" "$start" "$end" <<'EOF'
import csv, json, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = list(csv.DictReader(open(f"{out}/metrics.csv")))
info = json.load(open(f"{out}/model.json"))
print(json.dumps({"job": "fine_tune(3) resnet18 192px", "train_images": info["data"]["train_images"],
                  "precision": info["training"]["precision"], "device": info["training"]["device"],
                  "epoch_seconds": [float(r["seconds"]) for r in rows],
                  "training_seconds": sum(float(r["seconds"]) for r in rows),
                  "process_seconds": end - start}))
EOF

# 3. Data-parallel on every GPU of the machine (NCCL; needs a build with FINETUNE_NCCL=1 on this
#    machine: `FINETUNE_NCCL=1 cargo build --release --bin finetune`). The same seed-sized job, global
#    batch 64 × GPUs, 1 GPU vs all of them; images/s from the epoch times in metrics.csv.
NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
if [ "$DEVICE" = cuda ] && [ "$NGPU" -ge 2 ]; then
  for n in 1 "$NGPU"; do
    $PY -m torch.distributed.run --no-python --standalone --nproc-per-node "$n" $BIN train "$WORK/data" \
      --arch resnet18 --random-init --epochs "$EPOCHS" --size 192 --bs 64 --device cuda --precision auto \
      --dist-backend "${DIST_BACKEND:-auto}" --out "$WORK/ddp$n" --no-cache --quiet --force >/dev/null
    $PY - "$WORK/ddp$n" "$n" <<'EOF2'
import csv, json, sys
out, n = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(f"{out}/metrics.csv")))
t = json.load(open(f"{out}/model.json"))["training"]
images = json.load(open(f"{out}/model.json"))["data"]["train_images"]
secs = sum(float(r["seconds"]) for r in rows if r["phase"] == "unfrozen")
epochs = sum(1 for r in rows if r["phase"] == "unfrozen")
print(json.dumps({"job": "data-parallel resnet18 192px", "gpus": n, "backend": t.get("dist_backend", "none"),
                  "global_batch": t.get("global_batch", t["bs"]), "unfrozen_img_per_s": images * epochs / secs,
                  "accuracy": rows[-1]["accuracy"]}))
EOF2
  done
else
  echo "data-parallel: skipped (needs 2+ GPUs; this machine has $NGPU)"
fi

# 4. The inference plan on the GPU (after `cargo build --release --example engine_speed`): the
#    section-2 bundle's forward passes on 1024 random 192 px images, batches of $BS, as `predict` runs
#    them: the plan (BatchNorm folded, cuDNN's conv+ReLU and conv+add+ReLU), without fusion, without
#    the plan; fp32 and --precision auto (bf16/fp16 autocast).
ENGINE=./target/release/examples/engine_speed
if [ -x "$ENGINE" ] && [ -f "$WORK/model/model.json" ]; then
  $PY -c 'import numpy as np, sys; np.random.default_rng(0).integers(0, 256, size=(1024, 192, 192, 3), dtype=np.uint8).tofile(sys.argv[1])' "$WORK/pixels.u8"
  for p in fp32 auto; do
    for v in "" FINETUNE_FUSE=0 FINETUNE_PLAN=0; do
      env $v "$ENGINE" "$WORK/model" "$WORK/pixels.u8" --device "$DEVICE" --precision "$p" --bs "$BS" --repeats 3 \
        | sed "s/^{/{\"variant\": \"${v:-plan}\", /"
    done
  done
else
  echo "engine: skipped (build the engine_speed example; needs section 2's bundle)"
fi
