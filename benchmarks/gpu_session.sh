#!/usr/bin/env bash
# One batched session on the GPU machine: GPU tests, the whole CPU suite,
# the random-program test with many examples, the benchmarks (events and ncu).
# Logs go to $OUT (the device tool's output folder) or ./gpu-logs.
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
# Notebook tests need IPython/ipywidgets, which the GPU image lacks: they run in CI.
PYTEST="python3 -m pytest -q -p no:cacheprovider -o addopts= --ignore=tests/test_notebook_magics.py
  --ignore=tests/test_notebook_views.py --ignore=tests/test_notebook_irdiff.py --ignore=tests/test_gradient_check.py"
$PYTEST -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -5
EXAMPLES=${GPUAD_HYPOTHESIS_EXAMPLES:-2000}
GPUAD_HYPOTHESIS_EXAMPLES=$EXAMPLES $PYTEST tests/test_random_programs.py -k "engine or host or kernel" 2>&1 \
  | tee "$OUT/random_programs.log" | tail -3
python3 benchmarks/bench_gradients.py --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -3
ncu --csv --metrics gpu__time_duration.sum python3 benchmarks/bench_gradients.py --reps 3 --batch 1 \
  > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 benchmarks/ncu_summary.py "$OUT/ncu.csv" --out "$OUT/kernel_times.json" | tee "$OUT/kernel_times.txt"
