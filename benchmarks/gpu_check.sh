#!/usr/bin/env bash
# One prepared device check: the train-step benchmark for wav2vec 2.0 Base and Large in
# bf16 on a single H100, within 8 minutes. Results (JSON) go to $OUT (or /tmp).
#
# The device machine has jax, flax, optax and orbax but not ml-collections; carry its
# pure-Python wheel (from the repo root here):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
# then run this script with `.whl` carried:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# fairseq puts 1.4M samples (Base) and 1.2M samples (Large) on each GPU.
timeout 210 python3 benchmarks/train_step.py --config=configs/w2v_base.py \
  --config.compute_dtype=bfloat16 --config.data.batch_size=6 --steps=20 | tee "$out/w2v_base.json"
timeout 250 python3 benchmarks/train_step.py --config=configs/w2v_large.py \
  --config.compute_dtype=bfloat16 --config.data.batch_size=4 --steps=15 | tee "$out/w2v_large.json"
