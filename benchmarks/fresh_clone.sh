#!/usr/bin/env bash
# A new user's first run, timed: clone, CI (install + tests), then the README's two result.py commands
# with HQBENCH_DATA unset and every proxy pointing at a closed port, so that any download would fail.
#
#     bash benchmarks/fresh_clone.sh [CLONE_DIR]      # default: ../hqbench-fresh (deleted first)
#
# Prints each step's exit code and wall seconds; the tables go to CLONE_DIR/results/*.log.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
clone="$(realpath -m "${1:-$repo/../hqbench-fresh}")"
rm -rf "$clone" && git clone -q "$repo" "$clone" && cd "$clone" && mkdir -p results
export HQBENCH_CACHE="$clone/.cache/hqbench"  # a new user's empty cache (default: ~/.cache/hqbench)

start=$(date +%s.%N)
bash .ci/run > results/ci.log 2>&1
echo "install + tests (.ci/run): rc=$? $(echo "$(date +%s.%N) - $start" | bc) s"

rm -rf "$HQBENCH_CACHE/synthetic-sar"   # the tests generated scenes; a new user's first run generates them
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 \
       HTTPS_PROXY=http://127.0.0.1:9 COLUMNS=160
for flags in "-A" ""; do
  start=$(date +%s.%N)
  env -u HQBENCH_DATA .venv/bin/python result.py $flags out="results/paper${flags}.json" > "results/result${flags}.log" 2>&1
  echo "result.py $flags: rc=$? $(echo "$(date +%s.%N) - $start" | bc) s"
done
