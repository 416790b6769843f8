"""Times the jitted, sharded wav2vec 2.0 train step on synthetic batches.

  python benchmarks/train_step.py --config=configs/w2v_base.py --config.data.batch_size=8 \
    --config.compute_dtype=bfloat16

Reports step time (median of `--steps` after `--warmup`, each ended by
`block_until_ready`), seconds of audio per second, model FLOPs per step (the analytic
formula of `sslax.describe`, cross-checked against XLA's `cost_analysis`), MFU against the
device's peak when known, peak device memory and compile time. It feeds synthetic batches
and imports neither TensorFlow nor TFDS, so it runs on bare accelerator machines.
"""

import json
import os
import resource
import statistics
import sys
import time

# Config files import `configs.common`: make the repository root importable when this
# file runs as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402  (after the sys.path line)
import jax
from ml_collections import config_flags
import numpy as np

from sslax import describe
from sslax.core import sharding
from sslax.core import state as state_lib
from sslax.data import masking
from sslax.train import wav2vec2_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.mark_flags_as_required(["config"])

# Dense bf16 peak FLOP/s per device: NVIDIA H100 SXM datasheet (989 TFLOP/s without
# sparsity); Google Cloud TPU system architecture pages (v4 275, v5e 197, v5p 459).
PEAK_BF16_FLOPS = {
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
  """The device's dense peak for `dtype`, when this table knows it."""
  if dtype != "bfloat16":
    return None
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in device.device_kind.lower():
      return flops
  return None


def synthetic_batch(config) -> dict[str, np.ndarray]:
  """Full-length random audio with fairseq span masks: the densest batch a step sees."""
  rng = np.random.default_rng(0)
  b, S = config.data.batch_size, config.data.max_samples
  frames = wav2vec2_step.frames_fn(config)(S)
  mask = masking.batch_span_masks(
    rng,
    frames,
    np.full(b, frames),
    mask_prob=config.masking.mask_prob,
    mask_length=config.masking.mask_length,
    min_masks=config.masking.min_masks,
  )
  audio = rng.normal(size=(b, S)).astype(np.float32) * 0.1
  return {"audio": audio, "audio_paddings": np.zeros((b, S), np.float32), "mask": mask}


def benchmark(config, steps: int, warmup: int) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  trainer = wav2vec2_step.build_trainer(config, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(0))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
  with sharding.activate(mesh):
    batch = sharding.global_batch(synthetic_batch(config), mesh)
    start = time.perf_counter()
    compiled = trainer.step.lower(state, batch, step_rng).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    times = []
    for i in range(warmup + steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batch, step_rng)
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - start)
  step_seconds = statistics.median(times)
  audio_seconds = config.data.batch_size * config.data.max_samples / 16_000
  model_flops = describe.train_flops_per_audio_second(config) * audio_seconds
  device = jax.devices()[0]
  peak = peak_flops(device, config.compute_dtype)
  memory = device.memory_stats() or {}
  if "peak_bytes_in_use" in memory:
    peak_memory = {"peak_device_memory_gib": memory["peak_bytes_in_use"] / 2**30}
  else:  # CPU backends keep no allocator statistics: report the process's peak RSS.
    peak_memory = {"peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
  return {
    "device": f"{jax.device_count()} x {device.device_kind}",
    "batch": f"{config.data.batch_size} x {config.data.max_samples} samples",
    "compute_dtype": config.compute_dtype,
    "step_seconds": step_seconds,
    "audio_seconds_per_second": audio_seconds / step_seconds,
    "model_tflops_per_step": model_flops / 1e12,
    # XLA costs the partitioned program, i.e. one device's share of the step.
    "xla_tflops_per_step": cost.get("flops", float("nan")) * jax.device_count() / 1e12,
    "mfu": model_flops / step_seconds / (peak * jax.device_count()) if peak else None,
    **peak_memory,
    "compile_seconds": compile_seconds,
    "loss": float(metrics["loss"] / metrics["masked_frames"]),
  }


def main(argv):
  del argv
  result = benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value)
  result["command"] = " ".join(["python"] + sys.argv)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
