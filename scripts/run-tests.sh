#!/usr/bin/env bash
# Runs `cargo test --release` over every test file, even after a failure (--no-fail-fast), one test
# at a time; then sums up the skips and names every failed test. Exits non-zero on any failure.
# Run it through `make test` / `make test-avx2`, which set up the venv and point torch-sys at its
# libtorch (LIBTORCH_USE_PYTORCH); run alone, cargo rebuilds against no libtorch and fails.
#   scripts/run-tests.sh [CARGO TEST TARGETS...]   e.g. --test clean --lib
# FINETUNE_TEST_LOG (default target/test.log) keeps the whole output; FINETUNE_SKIP_LOG (default
# target/test-skips.tsv) the skips, started afresh.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${FINETUNE_TEST_LOG:-target/test.log}
skips=${FINETUNE_SKIP_LOG:-target/test-skips.tsv}
export FINETUNE_SKIP_LOG=$skips
mkdir -p "$(dirname "$log")" "$(dirname "$skips")"
rm -f "$skips"
cargo test --release --no-fail-fast "$@" -- --test-threads=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
./scripts/skips.sh "$skips"
# The summary also fails the run when the log shows a failure that cargo's exit code missed.
./scripts/test-summary.sh "$log" "$skips" || { [ "$rc" = 0 ] && rc=1; }
exit "$rc"
