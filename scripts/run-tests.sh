#!/usr/bin/env bash
# Runs `cargo test --release` over every test file, even after a failure (--no-fail-fast), one test
# at a time per test binary; then sums up the skips and names every failed test. Exits non-zero on
# any failure. Run it through `make test` / `make test-avx2`, which set up the venv and point
# torch-sys at its libtorch (LIBTORCH_USE_PYTORCH); run alone, cargo rebuilds against no libtorch
# and fails.
#   scripts/run-tests.sh [CARGO TEST TARGETS...]   e.g. --test clean --lib
# FINETUNE_TEST_LOG (default target/test.log) keeps the whole output; FINETUNE_SKIP_LOG (default
# target/test-skips.tsv) the skips, started afresh.
#
# The whole suite (no targets named) runs in two lanes at once: the files that spend their time
# in Python, onnxruntime and file I/O (the wheel and Ray, the ONNX export of every architecture,
# Grad-CAM against PyTorch's hooks, the dedup harness) beside all the others. Much of a test's time
# is one-threaded (processes starting, Python importing, pages faulting in), so on 2 cores the two
# lanes finish about a third sooner than one (measured on CI's run); each lane still runs one test
# at a time, and no test depends on the machine's speed. FINETUNE_TEST_LANES=1 runs one lane.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${FINETUNE_TEST_LOG:-target/test.log}
skips=${FINETUNE_SKIP_LOG:-target/test-skips.tsv}
export FINETUNE_SKIP_LOG=$skips
mkdir -p "$(dirname "$log")" "$(dirname "$skips")"
rm -f "$skips"
side=(export python dist dedup cam)
if [ $# -gt 0 ] || [ "${FINETUNE_TEST_LANES:-2}" = 1 ]; then
  cargo test --release --no-fail-fast "$@" -- --test-threads=1 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
else
  # Built once first, so the lanes only run (cargo gives up its build lock before running tests).
  cargo test --release --no-run 2>&1 | tee "$log.build"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then
    a=() b=(--lib --bins)
    for f in tests/*.rs; do
      n=$(basename "$f" .rs)
      if [[ " ${side[*]} " == *" $n "* ]]; then a+=(--test "$n"); else b+=(--test "$n"); fi
    done
    # The side lane writes to its own log, shown whole after the main lane's, never interleaved.
    (cargo test --release --no-fail-fast "${a[@]}" -- --test-threads=1 >"$log.side" 2>&1
     echo $? >"$log.side.rc") &
    side_pid=$!
    cargo test --release --no-fail-fast "${b[@]}" -- --test-threads=1 2>&1 | tee "$log.main"
    rc=${PIPESTATUS[0]}
    wait "$side_pid"
    echo "---- the side lane (${side[*]}), run beside the above ----"
    cat "$log.side"
    [ "$(cat "$log.side.rc" 2>/dev/null)" = 0 ] || rc=1
    cat "$log.build" "$log.main" "$log.side" >"$log"
  else
    cp "$log.build" "$log"
  fi
  rm -f "$log.build" "$log.main" "$log.side" "$log.side.rc"
fi
./scripts/skips.sh "$skips"
# The summary also fails the run when the log shows a failure that cargo's exit code missed.
./scripts/test-summary.sh "$log" "$skips" || { [ "$rc" = 0 ] && rc=1; }
exit "$rc"
