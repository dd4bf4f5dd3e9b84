#!/usr/bin/env bash
# After recipes/imagenette_grid.sh: evaluate every row on the whole val split, time them side by
# side, run the noise test and draw the decomposition figure. Writes JSON under $OUT/measure and
# docs/imagenette_decomposition.png; recipes/report_imagenette.py turns them into docs/reproduction.md tables.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/imagenette}
VAL=${VAL:-../shared/data/imagenette160/val}
M=$OUT/measure
mkdir -p "$M" docs
declare -A ROWS=(
  [full_resolution_s0]=full_resolution_s0/stage2/model [full_resolution_s1]=full_resolution_s1/stage2/model
  [ir]=ir/stage2/model [decomposition_cnn]=decomposition_cnn/stage2/model
  [wavelet_cnn_s0]=wavelet_cnn_s0/stage2/model [wavelet_cnn_s1]=wavelet_cnn_s1/stage2/model
  [il_only]=il_only/stage3/model
  [wae_no_stage3_s0]=wae_s0/stage2/model [wae_no_stage3_s1]=wae_s1/stage2/model
  [wae_s0]=wae_s0/stage3/model [wae_s1]=wae_s1/stage3/model
)
for row in "${!ROWS[@]}"; do  # a row its grid did not train is left out (the report says so)
  [ -d "$OUT/${ROWS[$row]}" ] || { echo "skip $row: no $OUT/${ROWS[$row]}"; unset "ROWS[$row]"; continue; }
  [ -f "$M/eval_$row.json" ] || timm-wae eval "$OUT/${ROWS[$row]}" --data "$VAL" --threads 2 --json "$M/eval_$row.json"
done
# the noise test on seed 0 of both rows (five passes over val each: the slowest part on 2 cores)
for row in full_resolution_s0 wae_s0; do
  [ -f "$M/noise_$row.json" ] || timm-wae eval "$OUT/${ROWS[$row]}" --data "$VAL" --threads 2 \
    --noise 0,0.01,0.02,0.05,0.1 --seed 0 --json "$M/noise_$row.json"
done
BENCH=()  # seed 0 of every row, timed side by side in one run
for row in full_resolution_s0 ir wavelet_cnn_s0 decomposition_cnn il_only wae_no_stage3_s0 wae_s0; do
  if [ -n "${ROWS[$row]:-}" ]; then BENCH+=("$OUT/${ROWS[$row]}"); fi
done
timm-wae bench "${BENCH[@]}" --img-size 128 --batch-sizes 1,8 --threads 2 --repeats 15 --json "$M/bench.json"
timm-wae visualize "$OUT/${ROWS[wae_s0]}" --compare --grid --out "docs/$(basename "$OUT")_decomposition.png" \
  --json "$M/visualize.json" --images \
  "$VAL"/n01440764/$(ls "$VAL"/n01440764 | head -1) "$VAL"/n03028079/$(ls "$VAL"/n03028079 | head -1) \
  "$VAL"/n03394916/$(ls "$VAL"/n03394916 | head -1) "$VAL"/n03888257/$(ls "$VAL"/n03888257 | head -1)
