#!/usr/bin/env bash
# The on-disk image cache, measured (README "Benchmark: image cache"): start-up to the first batch on
# clothing-small for a first run (decode + write shards) vs a second run (map the shards) vs
# --no-cache, and peak RSS on generated 2 000- and 20 000-image sets with and without the cache.
# From the repo root, after `cargo build --release --bin finetune --example data_pipeline`:
#   bench/cache_bench.sh startup|memory     (one at a time; timings side by side are worthless)
#   bench/cache_bench.sh report             (the README's two tables, from the last runs' results)
set -euo pipefail
SHARED=${FINETUNE_SHARED:-../shared}
WORK=${WORK:-/tmp/finetune-cache-bench}
PY=${FINETUNE_PYTHON:-.venv/bin/python}
E=./target/release/examples/data_pipeline
F=./target/release/finetune
W=$SHARED/weights/mobilenet_v2-b0353104.pth
mkdir -p "$WORK"
OUT=$WORK/results.jsonl

# run NAME CMD...: wall seconds and peak RSS (GNU time, this process alone) + the command's JSON line.
run() {
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f %M -o "$WORK/rss" "$@" >"$WORK/stdout" 2>"$WORK/stderr" || { cat "$WORK/stderr"; exit 1; }
  t1=$(date +%s.%N)
  local line
  line=$(grep '^{' "$WORK/stdout" | tail -1 || true)
  [ -n "$line" ] || line='{}'
  "$PY" - "$name" "$t0" "$t1" "$(cat "$WORK/rss")" "$line" "$(grep '^data:' "$WORK/stderr" || true)" >>"$OUT" <<'PYEOF'
import json, sys
name, t0, t1, rss, line, data = sys.argv[1:7]
d = json.loads(line)
d.update(name=name, wall_s=float(t1) - float(t0), gnu_time_peak_rss_mb=int(rss) / 1024, data_line=data)
print(json.dumps(d))
PYEOF
  tail -1 "$OUT"
}

# The provenance line of this very run (date, machine, the command as typed), kept for `report`.
provenance() {
  "$PY" -c 'import sys; sys.path.insert(0, "bench"); import provenance; print(provenance.line(sys.argv[1:]))' \
    bench/cache_bench.sh "$1" >"$WORK/provenance-$1.txt"
}

case "${1:-}" in
startup)
  provenance startup
  DATA=$SHARED/data/clothing-small   # train/ (3068) + validation/ (341) folders
  C=$WORK/cache-clothing
  rm -rf "$C"
  run "pipeline no-cache" $E "$DATA" --no-cache --passes 0
  run "pipeline first run" $E "$DATA" --cache-dir "$C" --passes 0
  run "pipeline second run" $E "$DATA" --cache-dir "$C" --passes 0
  rm -rf "$C"
  # The whole command up to where training starts: scan, decode or map, weights, bundle written.
  T=(train "$DATA" --arch mobilenet_v2 --weights "$W" --freeze-epochs 0 --epochs 0 --out "$WORK/model" --force --quiet)
  run "train no-cache" $F "${T[@]}" --no-cache
  run "train first run" $F "${T[@]}" --cache-dir "$C"
  run "train second run" $F "${T[@]}" --cache-dir "$C"
  ;;
memory)
  provenance memory
  for n in 2000 20000; do
    [ -f "$WORK/syn-$n/.done" ] || { rm -rf "$WORK/syn-$n"; "$PY" bench/make_synthetic.py $n "$WORK/syn-$n"; touch "$WORK/syn-$n/.done"; }
  done
  for n in 2000 20000; do
    D=$WORK/syn-$n
    C=$WORK/cache-syn
    rm -rf "$C"
    run "pipeline $n no-cache" $E "$D" --no-cache --passes 1
    run "pipeline $n first run" $E "$D" --cache-dir "$C" --passes 1
    run "pipeline $n second run" $E "$D" --cache-dir "$C" --passes 1 --world 4
    # The same with this data set's shards evicted from the page cache (reads from the disk).
    "$PY" - "$C" <<'PYEOF'
import glob, os, sys
for p in glob.glob(os.path.join(sys.argv[1], "*", "*.npy")):
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PYEOF
    run "pipeline $n second run, shards not in page cache" $E "$D" --cache-dir "$C" --passes 1
    L=(lr-find "$D" --arch mobilenet_v2 --weights "$W" --num-it 2 --plot "$WORK/lr.svg" --quiet)
    run "lr-find $n cache" $F "${L[@]}" --cache-dir "$C"
    run "lr-find $n no-cache" $F "${L[@]}" --no-cache
  done
  du -sh "$WORK"/cache-syn/* >&2
  ;;
report)
  "$PY" - "$OUT" "$WORK" <<'PYEOF'
import json, os, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    rows[d["name"]] = d  # the last run of each name counts
def num(x):
    """A count with thin groups of thousands: 20 000."""
    return f"{x:,.0f}".replace(",", " ")
def measured(mode):
    """The provenance line the run of `mode` printed (report only prints, it measures nothing)."""
    p = os.path.join(sys.argv[2], f"provenance-{mode}.txt")
    return open(p).read().strip() if os.path.exists(p) else f"(no run of `bench/cache_bench.sh {mode}` recorded)"
print(measured("startup") + "\n")
print("| run | data ready s | process start → first batch s | `train --freeze-epochs 0 --epochs 0` (mobilenet_v2) wall s | peak RSS MB (pipeline / train) |")
print("|---|---|---|---|---|")
for key, label in [("no-cache", "`--no-cache` (decode into memory)"), ("first run", "first run (decode, write the shards)"),
                   ("second run", "second run (check and map the shards)")]:
    p, t = rows.get(f"pipeline {key}"), rows.get(f"train {key}")
    if p and t:
        print(f"| {label} | {p['load_s']:.2f} | {p['start_to_first_batch_s']:.2f} | {t['wall_s']:.2f} | "
              f"{p['gnu_time_peak_rss_mb']:.0f} / {t['gnu_time_peak_rss_mb']:.0f} |")
if rows.get("pipeline first run") and rows.get("pipeline second run"):
    a, b = rows["pipeline first run"], rows["pipeline second run"]
    print(f"\nsecond run, process start → first batch: {100 * b['start_to_first_batch_s'] / a['start_to_first_batch_s']:.1f} % of the first run's")
print("\n" + measured("memory") + "\n")
print("| images | mode | data ready s | peak RSS MB, data pipeline, one full pass | peak RSS MB, `lr-find --num-it 2` mobilenet_v2 (model included) |")
print("|---|---|---|---|---|")
for n in (2000, 20000):
    for key, label, lr in [("no-cache", "`--no-cache`", "no-cache"), ("first run", "cache, first run", None),
                           ("second run", "cache, second run", "cache")]:
        p = rows.get(f"pipeline {n} {key}")
        l = rows.get(f"lr-find {n} {lr}") if lr else None
        if p:
            print(f"| {num(n)} | {label} | {p['load_s']:.2f} | {p['gnu_time_peak_rss_mb']:.0f} | "
                  f"{'' if not l else format(l['gnu_time_peak_rss_mb'], '.0f')} |")
a, b = rows.get("pipeline 2000 second run"), rows.get("pipeline 20000 second run")
c, d = rows.get("pipeline 2000 no-cache"), rows.get("pipeline 20000 no-cache")
if a and b and c and d:
    print(f"\nfrom 2 000 to 20 000 images, peak RSS grows by {b['gnu_time_peak_rss_mb'] - a['gnu_time_peak_rss_mb']:.0f} MB "
          f"with the cache (second run) and by {d['gnu_time_peak_rss_mb'] - c['gnu_time_peak_rss_mb']:.0f} MB without it")
# docs/scaling.md's table: reading batches from the shards (u8 gather into the batch tensor, one core),
# from the `memory` runs' second runs (page-cached shards) and the one with its shards evicted first.
BYTES = 192 * 192 * 3
big, small = rows.get("pipeline 20000 second run"), rows.get("pipeline 2000 second run")
cold = rows.get("pipeline 20000 second run, shards not in page cache")
if big and small and cold:
    print("\n" + measured("memory") + "\n")
    print("| read (u8 batches of 64 at 192×192, gathered from the shards) | images/s | |")
    print("|---|---|---|")
    g = big["gather_img_per_s"]
    print(f"| one epoch of random batches, page-cached shards ({num(big['train'] + big['valid'])} images) | {num(g)} | {g * BYTES / 1e9:.1f} GB/s |")
    print(f"| the same, the {num(small['train'] + small['valid'])}-image set | {num(small['gather_img_per_s'])} | |")
    ranks = " / ".join(num(r["img_per_s"]) for r in big["ranks"])
    print(f"| each of {len(big['ranks'])} ranks' `RankSplit` share of {num(big['train'])} training images, in turn | {ranks} | |")
    c = cold["gather_img_per_s"]
    print(f"| one epoch, shards evicted from the page cache first (`POSIX_FADV_DONTNEED`) | {num(c)} | {c * BYTES / 1e9:.1f} GB/s |")
PYEOF
  ;;
*)
  echo "usage: bench/cache_bench.sh startup|memory|report" >&2
  exit 2
  ;;
esac
