"""The train-step benchmark runs and its FLOP accounting agrees with XLA's."""

import importlib.util
import os

from configs import demo
from sslax import describe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark():
  path = os.path.join(REPO, "benchmarks", "train_step.py")
  spec = importlib.util.spec_from_file_location("train_step_benchmark", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmark_reports_consistent_numbers():
  config = demo.get_config("tiny")
  result = load_benchmark().benchmark(config, steps=3, warmup=1)
  audio_seconds = config.data.batch_size * config.data.max_samples / 16_000
  assert result["step_seconds"] > 0
  assert abs(result["audio_seconds_per_second"] * result["step_seconds"] - audio_seconds) < 1e-6
  expected = describe.train_flops_per_audio_second(config) * audio_seconds / 1e12
  assert abs(result["model_tflops_per_step"] - expected) < 1e-12
  # XLA counts the whole step (optimizer, loss, elementwise ops) on top of the model's
  # matmuls and convolutions: more, but the same order.
  assert 1.0 <= result["xla_tflops_per_step"] / result["model_tflops_per_step"] < 1.6
  assert result["mfu"] is None  # no known peak for a CPU
  assert result["peak_host_rss_gib"] > 0
