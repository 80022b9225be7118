#!/usr/bin/env bash
# Sums up the tests that skipped (recorded by tests/common's `skip` and python/tests/conftest.py):
# one line per reason, with how to run them. A skip is never silent.
log=${1:-target/test-skips.tsv}
if [ ! -s "$log" ]; then
  echo "test: no test skipped"
  exit 0
fi
awk -F'\t' '{ n[$2 "\t" $3]++; t[$2 "\t" $3] = t[$2 "\t" $3] "\n    " $1 }
  END { for (k in n) { split(k, a, "\t");
    printf "test: %d test%s skipped: %s (to run: %s)%s\n", n[k], n[k] == 1 ? "" : "s", a[1], a[2], t[k] } }' "$log"
