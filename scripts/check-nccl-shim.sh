#!/usr/bin/env bash
# Compiles and links the c10d shim's NCCL build (csrc/dist_shim.cpp with FT_NCCL) against the venv's
# torch wheel, so the GPU-only code is at least checked by a compiler on machines without a GPU.
# NCCL's and CUDA's headers come from the `nvidia-nccl-*` and `nvidia-cuda-runtime` wheels that the
# CUDA build of torch on PyPI depends on; libtorch_cuda and libc10_cuda from the torch wheel itself.
# The object is linked into a throwaway shared library with --no-undefined: every c10d and NCCL
# symbol the shim calls must exist in the wheel's libraries. Nothing is run (no GPU here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FINETUNE_PYTHON:-.venv/bin/python}
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TORCH=$SITE/torch
if [ ! -f "$TORCH/lib/libtorch_cuda.so" ]; then
  echo "check-nccl-shim: $TORCH has no libtorch_cuda.so (a CPU-only torch wheel): nothing to check" >&2
  exit 1
fi
NCCL_INC=$(dirname "$(ls "$SITE"/nvidia/nccl/include/nccl.h 2>/dev/null | head -1)")
CUDA_INC=$(dirname "$(ls "$SITE"/nvidia/cu*/include/cuda_runtime_api.h "$SITE"/nvidia/cuda_runtime/include/cuda_runtime_api.h 2>/dev/null | head -1)")
# cuda_runtime.h includes crt/host_config.h, which the runtime wheel lacks (it ships with nvcc);
# triton, another dependency of the torch wheel, carries CUDA's headers with crt/.
CRT_INC=$(dirname "$(dirname "$(ls "$SITE"/triton/backends/nvidia/include/crt/host_config.h 2>/dev/null | head -1)")")
GLOO_INC=${GLOO_INCLUDE_DIR:-/usr/include}
for h in "$NCCL_INC/nccl.h" "$CUDA_INC/cuda_runtime_api.h" "$CRT_INC/crt/host_config.h" "$GLOO_INC/gloo/algorithm.h"; do
  [ -f "$h" ] || { echo "check-nccl-shim: missing $h (make setup installs the torch wheel's nvidia-* dependencies and libgloo-dev)" >&2; exit 1; }
done
OUT=${TMPDIR:-/tmp}/finetune-nccl-shim.$$
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT
CXX=${CXX:-c++}
"$CXX" -std=c++17 -O0 -fPIC -w -c csrc/dist_shim.cpp -o "$OUT/shim.o" \
  -D_GLIBCXX_USE_CXX11_ABI=1 -DUSE_C10D_GLOO -DFT_NCCL -DUSE_C10D_NCCL -DUSE_CUDA \
  -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" -I"$GLOO_INC" -I"$NCCL_INC" -I"$CUDA_INC" -I"$CRT_INC"
"$CXX" -shared -o "$OUT/libshim.so" "$OUT/shim.o" -Wl,--no-undefined -Wl,--allow-shlib-undefined \
  -L"$TORCH/lib" -Wl,-rpath-link,"$TORCH/lib" -ltorch_cuda -lc10_cuda -ltorch_cpu -lc10
echo "check-nccl-shim: the shim's NCCL build compiles and links against $(basename "$TORCH")'s libtorch_cuda (not run: no GPU)"
