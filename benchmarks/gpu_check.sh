#!/usr/bin/env bash
# The prepared GPU check (issue 28), one command on a lent CUDA machine; figures land in $OUT/gpu_check.json.
#
# Before the call, here (the device machine reaches no registry and gets only this working tree,
# 64 MiB at most: the 92 MB of checkpoints/ must step aside for the call, and the data travel as a subset):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 tflite==2.18.0
#   mkdir -p .data/imagenet/train .data/weights
#   cp -r ../shared/data/imagenet/val ../shared/data/imagenet/LOC_synset_mapping.txt .data/imagenet/   # 41 MB
#   ls -d ../shared/data/imagenet/train/* | head -256 | xargs -I{} cp -r {} .data/imagenet/train/       # ~9 MB
#   cp ../shared/data/weights/tf2_mobilenet_v2_1.0_224_ptq.tflite .data/weights/                       # 4 MB
#   mv checkpoints /tmp/hqbench-checkpoints      # back with `mv /tmp/hqbench-checkpoints checkpoints` after
# then run `bash benchmarks/gpu_check.sh` with carry [".whl", ".data"] and a timeout that leaves a rerun.
# (The 256 calibration images are then the whole train/ folder: the cell's draw differs from a
# checkout's 1000-image folder, so compare its rows with each other, not with docs/RESULTS.md's.)
# A dry run of the same stages on a CPU: python benchmarks/gpu_check.py --device cpu --quick
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HQBENCH_DATA="${HQBENCH_DATA:-$PWD/.data}" HQBENCH_CACHE="${HQBENCH_CACHE:-/tmp/hqbench-cache}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 470 python3 benchmarks/gpu_check.py --out "${OUT:-results}/gpu_check.json" "$@"
