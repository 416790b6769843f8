"""Metric reporting: a progress line, TensorBoard scalars and `metrics.jsonl` in the workdir.

Train steps return metric *sums* with their denominators (e.g. `correct` and
`masked_frames`); this module adds them up over a logging interval and divides once, so
means are over frames, never means of per-batch means.
"""

import json
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

# Sums divided by the number of masked frames when reported.
_PER_MASKED_FRAME = (
  "loss",
  "contrastive_loss",
  "diversity_loss",
  "feature_penalty",
  "prob_perplexity",
  "code_perplexity",
)
# Values that are already per step (averaged over the interval when reported).
_PER_STEP = ("learning_rate", "gumbel_temperature", "grad_norm")


def summarize(sums: dict[str, float], steps: int, seconds: float) -> dict[str, float]:
  """Turns interval sums into reported means; `seconds` is the interval's wall time."""
  frames = max(sums["masked_frames"], 1.0)
  out = {name: sums[name] / frames for name in _PER_MASKED_FRAME if name in sums}
  out["accuracy"] = sums["correct"] / frames
  out.update({name: sums[name] / steps for name in _PER_STEP if name in sums})
  out["audio_seconds_per_second"] = sums["audio_samples"] / 16_000 / max(seconds, 1e-9)
  out["steps_per_second"] = steps / max(seconds, 1e-9)
  return out


class MetricsLogger:
  """Accumulates per-step metric sums and reports them every `log_every` steps.

  Only the primary process writes files; every process may call it.
  """

  def __init__(self, workdir: str, *, total_steps: int, log_every: int, is_primary: bool):
    self._total_steps = total_steps
    self._log_every = log_every
    self._is_primary = is_primary
    self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._writer = tf.summary.create_file_writer(workdir) if is_primary else None
    self._sums: dict[str, float] = {}
    self._steps = 0
    self._start = time.perf_counter()

  def truncate_after(self, step: int) -> None:
    """Drops lines for steps after `step` (written by a run that was killed later)."""
    if not self._is_primary or not os.path.exists(self._jsonl_path):
      return
    with open(self._jsonl_path) as f:
      kept = [line for line in f if json.loads(line)["step"] <= step]
    tmp = self._jsonl_path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self._jsonl_path)

  def add(self, step: int, step_metrics: dict[str, np.ndarray], data_position: int) -> None:
    """Adds the host copy of step `step`'s metrics; reports when the interval is full.

    `data_position` is the input position after the step's batch, logged so a reader can
    check that a resumed run neither skipped nor repeated data.
    """
    for name, value in step_metrics.items():
      self._sums[name] = self._sums.get(name, 0.0) + float(value)
    self._steps += 1
    if step % self._log_every == 0 or step == self._total_steps:
      self._report(step, data_position)

  def _report(self, step: int, data_position: int) -> None:
    now = time.perf_counter()
    summary = summarize(self._sums, self._steps, now - self._start)
    self._sums, self._steps, self._start = {}, 0, now
    logging.info(
      "step %d/%d | loss %.4f | acc %.3f | ppl %.1f (codes %.1f) | lr %.2e | temp %.3f | "
      "%.1f s audio/s",
      step,
      self._total_steps,
      summary["loss"],
      summary["accuracy"],
      summary["prob_perplexity"],
      summary["code_perplexity"],
      summary["learning_rate"],
      summary["gumbel_temperature"],
      summary["audio_seconds_per_second"],
    )
    if not self._is_primary:
      return
    with self._writer.as_default(step=step):
      for name, value in summary.items():
        tf.summary.scalar(f"train/{name}", value)
    self._writer.flush()
    with open(self._jsonl_path, "a") as f:
      f.write(json.dumps({"step": step, "data_position": data_position, **summary}) + "\n")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
