#!/usr/bin/env bash
# Reads a `cargo test` log (scripts/run-tests.sh keeps one) and names every failed test with its
# file, and every test binary that died without a verdict, then one closing line of totals.
# Exits 1 when anything failed, so a summary can never say "0 failed" over a failed run.
log=${1:-target/test.log}
skips=${2:-target/test-skips.tsv}
nskip=0
[ -s "$skips" ] && nskip=$(wc -l < "$skips")
awk -v nskip="$nskip" '
  /^ *Running / { file = $2; if (file == "unittests") file = $3; next }
  /^ *Doc-tests / { file = "doc-tests " $2; next }
  /^---- .* stdout ----$/ { name = $0; sub(/^---- /, "", name); sub(/ stdout ----$/, "", name);
                             failed[++nf] = file ": " name; next }
  /^test .* \.\.\. ignored/ { n = $2; ignored[++ni] = file ": " n; next }
  /^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } ; next }
  /^error: [0-9]+ targets? failed:/ { intargets = 1; next }
  intargets && /^ +`/ { t = $0; gsub(/^ +|`/, "", t); targets[++nt] = t; next }
  /^error: (could not compile|failed to run custom build command|no test target)/ { build[++nb] = $0; next }
  { intargets = 0 }
  END {
    # #[ignore] marks measurement harnesses run by hand (`--ignored --nocapture`), named here so
    # none passes for a test that ran.
    for (i = 1; i <= ni; i++) print "ignored (a harness run by hand): " ignored[i]
    for (i = 1; i <= nf; i++) print "FAILED " failed[i]
    # A binary that crashed (a signal, an abort) has no "test result" line: cargo names it.
    if (nt > 0) { printf "test: %d test target%s failed:", nt, nt == 1 ? "" : "s"; for (i = 1; i <= nt; i++) printf " %s", targets[i]; print "" }
    if (nt > 0 && f == 0) f = nt
    # A build that failed ran nothing: say so rather than "0 failed".
    for (i = 1; i <= nb; i++) print "test: the build failed, no test ran: " build[i]
    if (nb > 0 && f == 0) f = nb
    printf "tests: %d passed, %d failed, %d skipped\n", p, f, nskip
    exit (f > 0 || nt > 0 || nb > 0) ? 1 : 0
  }' "$log"
