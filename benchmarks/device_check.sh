#!/usr/bin/env bash
# The prepared run for a lent GPU machine: one command of at most 9.5 minutes, every log written under $OUT.
#
#   device `run`: command "bash benchmarks/device_check.sh", timeout_s 580
#
# The steps' limits add up to 560 s (20 s to spare), sized from session 13's run on an H200 (the sampler
# benchmark took about 290 s there, most of it compiling: 10-68 s a shape). With a machine's start that fills
# most of a session's 15 device minutes, so there is no room for a rerun: run it once and give it back.
# 1. versions and the GPU (the machine's image has JAX with CUDA, torch, transformers, flax, optax, orbax and
#    Pillow: all that the sampler, the model and these tests import; nothing is installed);
# 2. the sampler's and the model's greedy parity tests on the GPU (greedy output against step-by-step full
#    forwards, and against transformers' generate), so that the benchmark's program is known to be right
#    there beyond the benchmark's own token check;
# 3. the GRPO benchmark on the GPU (issue 21 asks for it there): the rewards of 4,096 completions on the
#    card against VLM-R1's Python loop on the host (>= 50x), and one GRPO step of the tiny and the 50M models
#    against transformers' `generate` + a PyTorch loss on the same card (>= 3x);
# 4. with ACCEL3B=1 instead of 3: one SFT and one GRPO step of the 3B preset against transformers on the same
#    card, with MFU (benchmarks/accelerator_3b.py; issue 23's device benchmark);
# 5. with SAMPLER=1 instead of 3 (its table has its H200 figures from session 13): the sampler benchmark on
#    the GPU, ours against transformers' `generate` on CUDA, tiny and 50M presets at batch 1, 8 and 32.
#    HF_CACHE=static (default dynamic, as in session 13's table) gives transformers a static cache, with
#    which `generate` compiles its forward with torch.compile on CUDA: the fastest reference it offers.
# JAX_PLATFORMS=cuda: a CUDA plugin that fails to start is an error, not a quiet run on the CPU.
# Each step has its own time limit so that one that hangs leaves the others their time; the exit status is
# the worst of the steps'.
set -u -o pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
worst=0

{
  date -u
  timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 60 "$PY" -c 'import jax, flax, optax, orbax.checkpoint, PIL, torch, transformers, sys
print("python", sys.version.split()[0], "| jax", jax.__version__, jax.default_backend(), jax.devices(),
      "| flax", flax.__version__, "| Pillow", PIL.__version__, "| torch", torch.__version__,
      "cuda", torch.cuda.is_available(), "| transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/versions.txt"
rc=${PIPESTATUS[0]}; worst=$((rc > worst ? rc : worst))

# Left out, to fit: the model's logits and KV-cache tests (their reference forwards run op by op, which on a
# GPU compiles a kernel per op and length: in session 13 none finished within 150 s), the split test (2
# XLA:CPU devices in a subprocess, nothing about the GPU), the bfloat16, static-padding, window-attention and
# rope-index checks.
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/generate/test_sampler.py tests/models/test_parity.py \
  -k "greedy" 2>&1 | tee "$OUT/parity_tests.txt"
rc=${PIPESTATUS[0]}; worst=$((rc > worst ? rc : worst))
echo "parity tests: exit $rc" | tee -a "$OUT/parity_tests.txt"

if [ "${ACCEL3B:-0}" = 1 ]; then
  # issue 23: one SFT and one GRPO step of the 3B preset (bfloat16, random weights) against transformers on
  # the same card, with MFU; each side in its own process
  timeout 380 "$PY" benchmarks/accelerator_3b.py --steps 3 2>&1 | tee "$OUT/accelerator_3b.txt"
  rc=${PIPESTATUS[0]}; worst=$((rc > worst ? rc : worst))
  echo "3B benchmark: exit $rc" | tee -a "$OUT/accelerator_3b.txt"
elif [ "${SAMPLER:-0}" = 1 ]; then
  timeout 330 "$PY" benchmarks/sampler_throughput.py --reps 3 --hf-cache "${HF_CACHE:-dynamic}" 2>&1 | tee "$OUT/sampler_throughput.txt"
  rc=${PIPESTATUS[0]}; worst=$((rc > worst ? rc : worst))
  echo "sampler benchmark: exit $rc" | tee -a "$OUT/sampler_throughput.txt"
else
  timeout 330 "$PY" benchmarks/grpo.py --parts rewards step --models tiny 50m --reps 3 2>&1 | tee "$OUT/grpo.txt"
  rc=${PIPESTATUS[0]}; worst=$((rc > worst ? rc : worst))
  echo "grpo benchmark: exit $rc" | tee -a "$OUT/grpo.txt"
fi
exit $worst
