#!/usr/bin/env bash
# Every benchmark behind a README figure, one after the other (never two at once: timings taken
# beside another job are worthless), on a quiet machine. Not part of the tests: it takes hours on
# 2 cores (the fastai pairs most of it). Each script prints its markdown table under a line naming
# the date, the machine and the command; they are collected in target/bench/results/*.md, from which
# the README's tables are copied. ONLY=name[,name] runs some of them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
R=target/bench/results
mkdir -p "$R"
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
run() {
  local name=$1; shift
  want "$name" || return 0
  echo "bench-all: $name: $*" >&2
  "$@" | tee "$R/$name.md"
}
$PY -c 'import fastai' 2>/dev/null || $PY -m pip install -q fastai==2.8.12
cargo build --release --bin finetune --example zoo_speed --example data_pipeline --example engine_speed
[ -f target/demo-model/model.json ] || ./scripts/demo.sh
run fastai-folders $PY bench/bench.py --per-class 0 --archs mobilenet_v2 --seeds 42,1,2
run fastai-resnet18 $PY bench/bench.py --per-class 0 --archs resnet18 --seeds 42
run fastai-seed-protocol $PY bench/bench.py --protocol seed --per-class 0 --archs mobilenet_v2 --seeds 42,1,2,3,4
run same-split $PY bench/same_split.py --seeds 42,1,2,3,4
for recipe in augment mixup label_smoothing; do
  run "fastai-recipe-$recipe" $PY bench/bench.py --per-class 0 --archs mobilenet_v2 --seeds 42,1,2 --recipe "$recipe"
done
run zoo $PY bench/zoo_bench.py
run predict $PY bench/predict_bench.py --model target/demo-model --images ../shared/data/clothing-small/train
run engine $PY bench/engine_bench.py
run int8 $PY bench/int8_probe.py
run int8-percentile $PY bench/int8_probe.py --method percentile
run serve $PY bench/serve_bench.py --model target/demo-model
# serve per arch, on the engine benchmark's bundles (it makes them), finetune alone at 8 and 32 clients.
E=target/bench/engine
run serve-archs $PY bench/serve_bench.py --no-eager --clients 8,32 \
  --model $E/model-mobilenet_v2-160,$E/model-resnet18-160,$E/model-efficientnet_b0-160,$E/model-convnext_tiny-160
run ddp $PY bench/ddp_bench.py
# Accuracy figures, not timings: calibration and the "unknown" scores (docs/benchmarks.md).
run trust $PY bench/trust_bench.py
run imbalance $PY bench/imbalance_bench.py
run tracking $PY bench/tracking_bench.py
run python-predict $PY bench/python_predict_bench.py --model target/demo-model
if want cache; then
  bench/cache_bench.sh startup >&2
  bench/cache_bench.sh memory >&2
  run cache bench/cache_bench.sh report
fi
echo "bench-all: tables in $R/" >&2
