#!/usr/bin/env bash
# One batched session on the GPU machine: GPU tests and the random-program
# test with many examples, spread over processes. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
PYTEST="python3 -m pytest -q -p no:cacheprovider -o addopts="
# Random programs: PROCS processes x EACH examples per test, different seeds.
PROCS=${PROCS:-12}; EACH=${EACH:-170}
for k in $(seq 1 "$PROCS"); do
  GPUAD_HYPOTHESIS_RANDOM=1 GPUAD_HYPOTHESIS_EXAMPLES=$EACH \
    $PYTEST tests/test_random_programs.py -k "random_program" --hypothesis-seed="$k" \
    > "$OUT/random_$k.log" 2>&1 &
done
# Notebook tests need IPython/ipywidgets, which the GPU image lacks: they run in CI.
$PYTEST -m gpu tests --ignore=tests/test_notebook_magics.py --ignore=tests/test_notebook_views.py \
  --ignore=tests/test_notebook_irdiff.py --ignore=tests/test_gradient_check.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -3
wait
for k in $(seq 1 "$PROCS"); do echo "seed $k: $(tail -1 "$OUT/random_$k.log")"; done | tee "$OUT/random_summary.txt"
tar czf "$OUT/random_logs.tgz" -C "$OUT" $(cd "$OUT" && ls random_*.log) && rm -f "$OUT"/random_*.log
