#!/usr/bin/env bash
# The label-quality benchmark behind docs/benchmarks.md: `autoannotator bench` on the UCI sentences,
# each file and all three, with the seeded simulated verifier at P = 0.9.
# Usage: benchmarks/run_uci.sh [DATA_DIR] [OUT_DIR] [BETA] [EPSILONS]
#   (defaults: ../shared/data/uci-sentences, bench-results/uci, 250, "0.000001,0.34")
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/uci-sentences}
out=${2:-bench-results/uci}
beta=${3:-250}
epsilons=${4:-0.000001,0.34}
mkdir -p "$out"
python3 - "$data" "$out/all.csv" <<'PY'
import csv, sys
src, dst = sys.argv[1], sys.argv[2]
rows = []
for name in ("amazon", "yelp", "imdb"):
    with open(f"{src}/{name}.csv", newline="", encoding="utf-8") as fh:
        rows += [dict(r, source=name) for r in csv.DictReader(fh)]
with open(dst, "w", newline="", encoding="utf-8") as fh:
    w = csv.DictWriter(fh, fieldnames=["text", "label", "source"]); w.writeheader(); w.writerows(rows)
PY
for name in amazon yelp imdb all; do
  file="$data/$name.csv"; [ "$name" = all ] && file="$out/all.csv"
  .venv/bin/autoannotator bench "$file" --gold-column label --task "label these reviews for sentiment" \
    --verifier simulated:0.9 --beta "$beta" --epsilon "$epsilons" --sandbox none --out-dir "$out/$name"
done
