# All set-up is in here: a fresh machine needs only `make demo` or `make test`.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
# torch-sys finds libtorch through the venv's python (LIBTORCH_USE_PYTORCH), unless LIBTORCH is set.
ifeq ($(LIBTORCH),)
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
SETUP := $(VENV)/.ready
else
SETUP :=
endif
export FINETUNE_PYTHON := $(VENV)/bin/python

.PHONY: setup build demo test test-avx2 lint clean-venv bench bench-all wheel dist

$(VENV)/.ready: scripts/setup-venv.sh
	./scripts/setup-venv.sh
	touch $@

setup: $(SETUP)

build: $(SETUP)
	cargo build --release

demo: build
	./scripts/demo.sh

# Every test file runs, even after a failure; the end names each failed test and each skip
# (recorded in target/test-skips.tsv), and the exit code is non-zero on any failure.
# FINETUNE_REQUIRE_ALL=1 (as .ci/run sets) turns any skip into a failure.
test: $(SETUP)
	cargo build --release
	./scripts/run-tests.sh

# The numerically sensitive test files again, on the kernels an AVX2-only processor runs (oneDNN's
# and ATen's dispatch capped), so a bound that holds on one instruction set only fails here, not on
# a user's machine. `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 make test` runs the whole suite so.
# Every file whose bounds were measured against a reference or a second implementation on this
# processor's kernels (about 3 minutes): the parity references, the planned network, Adam's steps,
# TTA against fastai's mix, the zoo weights, the stored bundle fixtures. Left to the first pass:
# files that test files, servers, messages and accuracy margins (train_real), which no kernel
# rounding moves; files whose bounds compare two paths through the same kernels in one process
# (train_recipe, interpret, multilabel, trust: predict vs evaluate vs serve, arithmetic to 1e-12),
# or runs bit for bit (reliability's resume, distributed's ranks), where the instruction set cancels
# out; and export, whose other side, onnxruntime, keeps its own dispatch (no variable caps it), so
# the pass would pair AVX2 libtorch with AVX-512 onnxruntime, which no user's processor does. serve's
# batched-vs-predict bound (1e-5) was measured under both (6e-8). Of distributed, only the test with
# a rounding bound (4 images' kernels against 8's) runs.
AVX2_TESTS := --lib --test clean --test plan --test parity --test tta --test train \
  --test train_archs --test cli_imagenet --test bundle_format
AVX2 := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
test-avx2: $(SETUP)
	cargo build --release
	rc=0; \
	$(AVX2) FINETUNE_TEST_LOG=target/test-avx2.log FINETUNE_SKIP_LOG=target/test-skips-avx2.tsv \
	  ./scripts/run-tests.sh $(AVX2_TESTS) || rc=1; \
	$(AVX2) FINETUNE_TEST_LOG=target/test-avx2-dist.log FINETUNE_SKIP_LOG=target/test-skips-avx2-dist.tsv \
	  ./scripts/run-tests.sh --test distributed averaged_gradients_equal_the_whole_batchs || rc=1; \
	exit $$rc

lint: $(SETUP)
	python3 scripts/check_layers.py
	@# No import circle anywhere (a circle inside a room escapes check_layers' table).
	python3 ../shared/tools/rust_cycles.py src | tee /dev/stderr | grep -qx 'circles=0'
	./scripts/check-nccl-shim.sh
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps
	PYO3_PYTHON=$(PYTHON) cargo clippy --release -p finetune-py -- -D warnings

# The Python package (python/): a wheel for the venv's Python built by maturin (from PyPI, pinned in
# scripts/setup-venv.sh), installed into the venv. It shares target/ with the main build.
PYTHON := $(if $(LIBTORCH),python3,$(VENV)/bin/python)
wheel: $(SETUP)
	cd python && $(PYTHON) -m maturin build --release --interpreter $(PYTHON) --out $(CURDIR)/target/wheels
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-deps --force-reinstall \
	  $$(ls -t $(CURDIR)/target/wheels/finetune-*.whl | head -1)

# The release artefacts in target/dist: a wheel that is the whole product (the `finetune` command
# and `import finetune`, linking the torch wheel's libtorch; `pip install` it anywhere with
# Python 3.11 and glibc 2.34+) and an sdist that builds with Rust and pip (scripts/dist.py).
dist: $(SETUP)
	cargo build --release
	$(PYTHON) scripts/dist.py

clean-venv:
	rm -rf $(VENV)

# finetune vs fastai 2.8 (installs fastai into the venv once). PER_CLASS=0 uses all of clothing-small.
PER_CLASS ?= 60
ARCHS ?= mobilenet_v2,resnet18
bench: build
	$(VENV)/bin/python -c 'import fastai' 2>/dev/null || $(VENV)/bin/python -m pip install -q fastai==2.8.12
	$(VENV)/bin/python bench/bench.py --per-class $(PER_CLASS) --archs $(ARCHS)

# Every benchmark table of the README, regenerated one after the other (hours; a quiet machine; not CI).
bench-all: build
	./scripts/bench-all.sh
