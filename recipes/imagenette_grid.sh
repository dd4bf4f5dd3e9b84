#!/usr/bin/env bash
# The Imagenette reproduction behind docs/reproduction.md: every row of the table, on one 2-core CPU.
# A pool of two slots (one core each) runs the rows; every row gets the same classifier budget.
#   bash recipes/imagenette_grid.sh [extra key=value overrides for every run]
# OUT (default runs/imagenette) is where the runs go; PRECISION (default no) is Accelerate's
# --mixed_precision: bf16 autocast trains about twice as fast on a CPU with AMX (measured).
# Runs resume where they stopped (resume=true), so the script can be started again after a kill.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-runs/imagenette} PRECISION=${PRECISION:-no}
export BUDGET="data.max_per_class=null data.val_max_per_class=100 data.workers=0 stage1.epochs=1 stage2.epochs=6 stage3.epochs=1 $*"
mkdir -p "$OUT"
# NAME CONFIG OVERRIDES, the rows with two seeds first (the long ones), the cheap baselines last.
# wae_s0/stage2 is also the "WAE without stage 3" row (same seed and budget, before joint fine-tuning).
JOBS="full_resolution_s0 full_resolution seed=0
full_resolution_s1 full_resolution seed=1
wae_s0 wae seed=0
wae_s1 wae seed=1
wavelet_cnn_s0 wavelet_cnn seed=0
wavelet_cnn_s1 wavelet_cnn seed=1
decomposition_cnn decomposition_cnn seed=0
il_only il_only seed=0
ir ir seed=0"
echo "$JOBS" | xargs -P 2 -L 1 bash -c '
  name=$0 config=$1; shift  # "$@": the overrides of this row
  accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision "$PRECISION" --dynamo_backend no \
    --num_cpu_threads_per_process 1 recipes/train.py "recipes/configs/$config.yaml" \
    output_dir="$OUT/$name" resume=true $BUDGET "$@" > "$OUT/$name.log" 2>&1
  rc=$?; echo "$(date -u +%FT%TZ) $name exit $rc"'
