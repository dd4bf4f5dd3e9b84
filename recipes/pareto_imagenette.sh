#!/usr/bin/env bash
# The speed-accuracy study behind MODEL_CARD.md "Speed-accuracy front": every row trained with the
# grid-B budget (12 classifier epochs, bf16 autocast, resnet18 from scratch), then measured on all of
# val and timed side by side in one bench run; recipes/report_pareto.py writes the CSV and the figure.
#   bash recipes/pareto_imagenette.sh            # train what is missing, then measure and report
#   STEP=train bash recipes/pareto_imagenette.sh # only train (STEP=measure: only measure and report)
# Runs resume where they stopped (resume=true), so the script can be started again after a kill.
# ROWS=name1,name2 limits the training to those rows (the measurement always takes every trained row).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-runs/pareto} PRECISION=${PRECISION:-bf16} STEP=${STEP:-all}
export BUDGET="data.max_per_class=null data.val_max_per_class=100 data.workers=0 stage1.epochs=2
  stage1.decay_epochs=1 stage2.epochs=12 stage3.epochs=1 $*"
mkdir -p "$OUT"
# ft_*: converting the trained lowres128_s0 network: 2 epochs of fine-tuning at lr 0.01, distilled from it
# (the same budget, schedule and teacher for every ft_ row).
CONVERT="stage2.epochs=2 stage2.lr=0.01 stage2.warmup_epochs=0 distill.teacher=$OUT/lowres128_s0/stage2/model"
# NAME CONFIG OVERRIDES. Order = priority: the rows that decide the front first (the cheap ft_ rows as soon
# as lowres128_s0, their start and teacher, is done), second seeds of the rows near the front next.
# lowres<N>: the plain backbone trained and evaluated at N px (what a user would do instead);
# lowres128 is also the full-resolution network every other row is compared with; mnv3_*: the
# same study on mobilenetv3_large_100 (full resolution, 64 px, and the WAE2 model).
JOBS="lowres128_s0 full_resolution seed=0 data.img_size=128
lowres64_s0 full_resolution seed=0 data.img_size=64
lowres96_s0 full_resolution seed=0 data.img_size=96
haar_s0 wavelet_cnn seed=0 model.front_end=haar
lowres80_s0 full_resolution seed=0 data.img_size=80
wae2_stem_s0 wae2_stem seed=0
ft_wae2_stem_s0 wae2_stem seed=0 $CONVERT model.backbone_from=$OUT/lowres128_s0/stage2/model
ft_lowres64_s0 full_resolution seed=0 data.img_size=64 $CONVERT init_from=$OUT/lowres128_s0/stage2/model
ft_lowres80_s0 full_resolution seed=0 data.img_size=80 $CONVERT init_from=$OUT/lowres128_s0/stage2/model
ft_lowres96_s0 full_resolution seed=0 data.img_size=96 $CONVERT init_from=$OUT/lowres128_s0/stage2/model
dwt97_s0 wavelet_cnn seed=0
wae2_stem_s1 wae2_stem seed=1
lowres64_s1 full_resolution seed=1 data.img_size=64
lowres80_s1 full_resolution seed=1 data.img_size=80
lowres96_s1 full_resolution seed=1 data.img_size=96
mnv3_lowres128_s0 full_resolution seed=0 data.img_size=128 model.backbone=mobilenetv3_large_100
mnv3_wae2_stem_s0 wae2_stem seed=0 model.backbone=mobilenetv3_large_100
mnv3_lowres64_s0 full_resolution seed=0 data.img_size=64 model.backbone=mobilenetv3_large_100
haar_s1 wavelet_cnn seed=1 model.front_end=haar
dwt97_s1 wavelet_cnn seed=1
wae2_s0 wae2 seed=0
lowres112_s0 full_resolution seed=0 data.img_size=112
wae_s0 wae seed=0
lowres128_s1 full_resolution seed=1 data.img_size=128
ft_wae2_s0 wae2 seed=0 $CONVERT model.backbone_from=$OUT/lowres128_s0/stage2/model
wae2_s1 wae2 seed=1
lowres112_s1 full_resolution seed=1 data.img_size=112"
if [ -n "${ROWS:-}" ]; then
  JOBS=$(echo "$JOBS" | grep -E "^($(echo "$ROWS" | tr ',' '|')) ")
fi

if [ "$STEP" != measure ]; then
  echo "$JOBS" | xargs -P 2 -L 1 bash -c '
    name=$0 config=$1; shift  # "$@": the overrides of this row
    accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision "$PRECISION" --dynamo_backend no \
      --num_cpu_threads_per_process 1 recipes/train.py "recipes/configs/$config.yaml" \
      output_dir="$OUT/$name" resume=true $BUDGET "$@" >> "$OUT/$name.log" 2>&1
    rc=$?; echo "$(date -u +%FT%TZ) $name exit $rc"'
fi
[ "$STEP" = train ] && exit 0

# measure: every finished row on all of val (each at its own size), then one bench run over all rows
set -e
M=$OUT/measure VAL=${VAL:-../shared/data/imagenette160/val}
mkdir -p "$M"
BENCH=()
for run in "$OUT"/*_s*/; do
  name=$(basename "$run")
  model=$(ls -d "$run"stage*/model 2>/dev/null | sort | tail -1 || true)  # the last stage's model
  [ -n "$model" ] && [ -f "$run$(basename "$(dirname "$model")")/done.json" ] || { echo "skip $name: not finished"; continue; }
  [ -f "$M/eval_$name.json" ] || timm-wae eval "$model" --data "$VAL" --threads 2 --json "$M/eval_$name.json"
  case $name in *_s0) BENCH+=("$model");; esac  # seed 0 stands for its architecture in the timing
done
[ -f "$M/bench.json" ] || timm-wae bench "${BENCH[@]}" --img-size native --batch-sizes 1,8 --threads 2 \
  --repeats 15 --json "$M/bench.json"
python recipes/report_pareto.py "$OUT"
