#!/usr/bin/env bash
# One command for the first CUDA machine: every registered WAE model against its backbone (batch 1 and 64,
# fp32 and bf16, channels_last off and on, eager and torch.compile, each at its own input size), then a few
# hundred training steps of the ImageNet wae2_resnet50 recipe on synthetic data (images/s, bf16).
#
#   bash recipes/gpu_check.sh            # on a CUDA machine (about 10-20 minutes, most of it compiling)
#   bash recipes/gpu_check.sh --small    # on a CPU: two small models, 64 px, few steps, no compile (the test's)
#
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${1:-}" == --small ]]; then
  bench=(wae2_resnet18 wae_resnet18 --device cpu --img-size 64 --batch-sizes 1,2 --dtypes fp32 --channels-last both
         --paths eager --repeats 2 --warmup 1)
  train=(--device cpu --batch 4 --steps 2 --warmup 1 model.backbone=resnet18 data.img_size=64)
else
  mapfile -t models < <($PY -c "import timm, timm_wae; print('\n'.join(timm.list_models('wae*_*')))")
  bench=("${models[@]}" --device cuda --img-size native --batch-sizes 1,64 --dtypes fp32,bf16 --channels-last both
         --paths eager,compile --repeats 20)
  train=(--device cuda --batch 256 --steps 300 --warmup 30)
fi
$PY -m timm_wae_cli bench "${bench[@]}" --quiet
echo
$PY recipes/train_throughput.py recipes/configs/imagenet/wae2_resnet50_a3.yaml "${train[@]}"
