#!/usr/bin/env bash
# Peak resident memory of `hqbench test model=mobilenet_v2_tflite method=fp32|D` at batch 50 (the imagenet
# data default), 100 evaluation and 100 calibration images, measured by GNU time (max RSS of the process).
#   HQBENCH_DATA=../shared/data bash benchmarks/peak_memory.sh LABEL [MODEL]
set -euo pipefail
label=${1:-now}; model=${2:-mobilenet_v2_tflite}
hqbench=${HQBENCH:-.venv/bin/hqbench}
for method in fp32 D; do
  /usr/bin/time -f "$label model=$model method=$method maxrss_kib=%M wall_s=%e" \
    "$hqbench" test model="$model" method=$method data.eval_limit=100 data.calib_size=100 2>&1 | grep maxrss
done
