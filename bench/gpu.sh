#!/usr/bin/env bash
# Everything minipost measures on a GPU, in one call within 10 minutes: minipost's GPU measurements (python -m minipost.bench.gpu:
# the log-prob kernels, the fused output layer + log-prob, a 0.6B-shaped GRPO step, the small pipeline cut
# short), the kernels' launch sweep, and the log-prob tests on CUDA. Everything goes to $OUT (default
# bench/results/): the .json of the measurements and the log of each step. Liger-Kernel is measured when its
# wheel lies in $WHEELS (the GPU machine reaches no package registry): `pip download liger-kernel --no-deps -d
# .wheels` here, and the folder (ignored by git) travels with the command.
set -u
OUT=${OUT:-bench/results}
WHEELS=${WHEELS:-.wheels}
mkdir -p "$OUT"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  pip install --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tail -1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.log"
# the commit measured: $COMMIT, else git's (the GPU machine's copy of the tree may have no .git)
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || true)}
timeout 440 python -m minipost.bench.gpu --out "$OUT" --commit "$COMMIT" 2>&1 | tee "$OUT/gpu.log"
timeout 70 python -m minipost.kernels.bench --sweep --no-table --vocab 151936 --dtype bf16 2>&1 | tee "$OUT/sweep.log"
timeout 60 python -m pytest -o addopts="" -p no:xdist -q tests/test_logprobs.py tests/test_linear_logprobs.py \
  2>&1 | tail -5 | tee "$OUT/tests.log"
