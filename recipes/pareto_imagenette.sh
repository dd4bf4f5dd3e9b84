#!/usr/bin/env bash
# The speed-accuracy study behind docs/speed_accuracy.md: every row trained with the
# grid-B budget (12 classifier epochs, bf16 autocast, resnet18 from scratch), then measured on all of
# val and timed side by side in one bench run; recipes/report_pareto.py writes the CSV and the figure.
#   bash recipes/pareto_imagenette.sh            # train what is missing, then measure and report
#   STEP=train bash recipes/pareto_imagenette.sh # only train (STEP=measure: only measure and report)
# Runs resume where they stopped (resume=true), so the script can be started again after a kill.
# ROWS=name1,name2 limits the training to those runs (the measurement always takes every row).
# The conversion study runs the same way from its own rows and report (STEP=eval: only evaluate the runs):
#   OUT=runs/conversion ROWS_FILE=recipes/conversion_rows.txt REPORT=recipes/report_conversion.py \
#     bash recipes/pareto_imagenette.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-runs/pareto} PRECISION=${PRECISION:-bf16} STEP=${STEP:-all}
ROWS_FILE=${ROWS_FILE:-recipes/pareto_rows.txt} REPORT=${REPORT:-recipes/report_pareto.py}
export TEACHER=${TEACHER:-runs/pareto/lowres128_s0/stage2/model}  # the trained network the conversion rows start from
export BUDGET="data.max_per_class=null data.val_max_per_class=100 data.workers=0 stage1.epochs=2
  stage1.decay_epochs=1 stage2.epochs=12 stage3.epochs=1 $*"
mkdir -p "$OUT"
# ft_*: converting the trained lowres128_s0 network: 2 epochs of fine-tuning at lr 0.01, distilled from it
# (the same budget, schedule and teacher for every ft_ row).
CONVERT="stage2.epochs=2 stage2.lr=0.01 stage2.warmup_epochs=0 distill.teacher=$OUT/lowres128_s0/stage2/model"
# the runs, in priority order: $ROWS_FILE ($OUT, $CONVERT and $TEACHER expanded)
JOBS=$(grep -v '^#' "$ROWS_FILE" | sed "s|\$CONVERT|$CONVERT|; s|\$OUT|$OUT|g; s|\$TEACHER|$TEACHER|g")
if [ -n "${ROWS:-}" ]; then
  JOBS=$(echo "$JOBS" | grep -E "^($(echo "$ROWS" | tr ',' '|')) ")
fi

if [ "$STEP" != measure ] && [ "$STEP" != eval ]; then
  echo "$JOBS" | xargs -P 2 -L 1 bash -c '
    name=$0 config=$1; shift  # "$@": the overrides of this row
    accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision "$PRECISION" --dynamo_backend no \
      --num_cpu_threads_per_process 1 recipes/train.py "recipes/configs/$config.yaml" \
      output_dir="$OUT/$name" resume=true $BUDGET "$@" >> "$OUT/$name.log" 2>&1
    rc=$?; echo "$(date -u +%FT%TZ) $name exit $rc"'
fi
[ "$STEP" = train ] && exit 0

# measure: every finished run on all of val (each at its own size); then one bench run over every row's
# architecture (untrained folders: the rows trained earlier are timed beside today's); the errors of runs
# whose folders are gone come from docs/pareto_runs.csv, which the report keeps up to date
set -e
M=$OUT/measure VAL=${VAL:-../shared/data/imagenette160/val}
mkdir -p "$M"
for run in "$OUT"/*_s*/; do
  name=$(basename "$run")
  model=$(ls -d "$run"stage*/model 2>/dev/null | sort | tail -1 || true)  # the last stage's model
  [ -n "$model" ] && [ -f "$run$(basename "$(dirname "$model")")/done.json" ] || { echo "skip $name: not finished"; continue; }
  [ -f "$M/eval_$name.json" ] || timm-wae eval "$model" --data "$VAL" --threads 2 --json "$M/eval_$name.json"
done
[ "$STEP" = eval ] && exit 0
python recipes/pareto_architectures.py "$OUT/arch" --rows "$ROWS_FILE"
# a bench run that lacks a row's architecture (rows added since) is kept aside, and every row is timed again
if [ -f "$M/bench.json" ] && ! python -c 'import json, sys
timed = {r["model"].rstrip("/") for r in json.load(open(sys.argv[1]))["results"]}
sys.exit(any(a.rstrip("/") not in timed for a in sys.argv[2:]))' "$M/bench.json" "$OUT"/arch/*/; then
  echo "bench.json lacks a row: timing every row again"; mv "$M/bench.json" "$M/bench.$(date -u +%Y%m%dT%H%M%S).json"
fi
[ -f "$M/bench.json" ] || timm-wae bench "$OUT"/arch/*/ --img-size native --batch-sizes 1,8 --threads 2 \
  --repeats 15 --json "$M/bench.json"
python "$REPORT" "$OUT" --rows "$ROWS_FILE" --page
