#!/usr/bin/env bash
# The prepared run for a lent GPU machine: one command, under 9 minutes, every log written under $OUT.
#
#   device `run`: command "bash benchmarks/device_check.sh", timeout_s 580 (the steps' limits add up to 530 s)
#
# 1. versions and the GPU (the machine's image has JAX with CUDA, torch, transformers, flax, optax, orbax:
#    all that the sampler, the model and these tests import; nothing is installed);
# 2. the sampler benchmark on the GPU: ours against transformers' `generate` on CUDA, full float32 on both
#    sides, tiny and 50M presets at batch 1, 8 and 32 (the 3x target at batch 8 and above);
# 3. the sampler's and the model's parity tests on the GPU (greedy output against step-by-step full
#    forwards; logits against transformers), so that the benchmark's program is known to be right there.
# Each step has its own time limit so that one that hangs leaves the others their time.
set -u -o pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c 'import jax, flax, optax, orbax.checkpoint, torch, transformers, sys
print("python", sys.version.split()[0], "| jax", jax.__version__, jax.default_backend(), jax.devices(),
      "| flax", flax.__version__, "| torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "| transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/versions.txt"

timeout 280 "$PY" benchmarks/sampler_throughput.py --reps 5 2>&1 | tee "$OUT/sampler_throughput.txt"
echo "sampler benchmark: exit ${PIPESTATUS[0]}" | tee -a "$OUT/sampler_throughput.txt"

# Left out, to fit: the split test (2 XLA:CPU devices in a subprocess, nothing about the GPU), the bfloat16
# and static-padding forwards (not what the benchmark runs). On the 2-core CPU the rest take about 200 s.
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/generate/test_sampler.py tests/models/test_parity.py \
  -k "not split_over_devices and not bfloat16 and not static_padding" 2>&1 | tee "$OUT/parity_tests.txt"
echo "parity tests: exit ${PIPESTATUS[0]}" | tee -a "$OUT/parity_tests.txt"
