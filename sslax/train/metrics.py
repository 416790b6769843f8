"""Metric reporting: a progress line, TensorBoard scalars and `metrics.jsonl` in the workdir.

Train steps return metric *sums* with their denominators (e.g. `correct` and
`masked_frames`); this module adds them up over a logging interval and divides once, so
means are over frames (pretraining) or utterances (CTC fine-tuning), never means of
per-batch means. The progress line shows the fields a job's metrics have.
"""

import json
import os
import sys
import time

from absl import logging
import numpy as np


def _import_tensorboardx():
  """tensorboardX, imported without torch: its writer imports torch when it is installed
  (2.6 CPU-seconds at every job start) only to accept torch tensors, and sslax logs floats.
  A `None` module entry makes that optional import fail; a later `import torch` still works."""
  if "torch" in sys.modules:
    import tensorboardX

    return tensorboardX
  sys.modules["torch"] = None
  try:
    import tensorboardX
  finally:
    del sys.modules["torch"]
  return tensorboardX


tensorboardX = _import_tensorboardx()

# Sums divided by the number of masked frames when reported.
_PER_MASKED_FRAME = (
  "loss",
  "contrastive_loss",
  "diversity_loss",
  "feature_penalty",
  "prob_perplexity",
  "code_perplexity",
)
# Sums divided by the number of utterances when reported (CTC: fairseq's sentence_avg).
_PER_UTTERANCE = ("loss",)
# Values that are already per step (averaged over the interval when reported).
_PER_STEP = ("learning_rate", "gumbel_temperature", "grad_norm")
# The progress line: (metric names, format), shown when the summary has every name.
_PROGRESS = (
  (("loss",), "loss %.4f"),
  (("wer", "cer"), "wer %.4f cer %.4f"),
  (("accuracy",), "acc %.3f"),
  (("accuracy_unmasked",), "acc_u %.3f"),
  (("prob_perplexity", "code_perplexity"), "ppl %.1f (codes %.1f)"),
  (("infeasible",), "infeasible %d"),
  (("skipped_updates",), "skipped %d"),
  (("learning_rate",), "lr %.2e"),
  (("gumbel_temperature",), "temp %.3f"),
  (("audio_seconds_per_second",), "%.1f s audio/s"),
)


def summarize(sums: dict[str, float], steps: int, seconds: float) -> dict[str, float]:
  """Turns interval sums into reported means; `seconds` is the interval's wall time.

  Pretraining sums (with `masked_frames`) become means per masked frame and `accuracy`
  (HuBERT's also `accuracy_masked` and `accuracy_unmasked`);
  fine-tuning sums (with `utterances`) become means per utterance, `infeasible` stays a count;
  the edit counts of fine-tuning's validation (`sslax.train.ctc_decode.edit_sums`) become
  corpus `wer` and `cer`, `unread_audio` stays a count.
  With `config.nonfinite = 'skip'`, `skipped_updates` counts the interval's skipped steps;
  they add nothing else, so per-step values are means over the updates applied (an
  interval without any reports only the count and the rates).
  """
  if "skipped_updates" in sums and sums["skipped_updates"] == steps:
    # No update applied: the (zeroed) sums mean nothing.
    return {
      "skipped_updates": sums["skipped_updates"],
      "audio_seconds_per_second": 0.0,
      "steps_per_second": steps / max(seconds, 1e-9),
    }
  out = {}
  if "masked_frames" in sums:
    frames = max(sums["masked_frames"], 1.0)
    out.update({name: sums[name] / frames for name in _PER_MASKED_FRAME if name in sums})
    out["accuracy"] = sums["correct"] / frames
  if "count_m_0" in sums:  # HuBERT: fairseq's acc_m_0 and acc_u_0, per label set 0 frame
    out["accuracy_masked"] = sums["correct_m_0"] / max(sums["count_m_0"], 1.0)
    out["accuracy_unmasked"] = sums["correct_u_0"] / max(sums["count_u_0"], 1.0)
  if "utterances" in sums:
    utterances = max(sums["utterances"], 1.0)
    out.update({name: sums[name] / utterances for name in _PER_UTTERANCE})
    out["infeasible"] = sums["infeasible"]
  if "reference_words" in sums:
    out["wer"] = sums["word_edits"] / max(sums["reference_words"], 1.0)
    out["cer"] = sums["character_edits"] / max(sums["reference_characters"], 1.0)
    out["unread_audio"] = sums["unread_audio"]
  applied = steps
  if "skipped_updates" in sums:
    out["skipped_updates"] = sums["skipped_updates"]
    applied = steps - sums["skipped_updates"]
  out.update({name: sums[name] / applied for name in _PER_STEP if name in sums})
  if "audio_samples" in sums:
    out["audio_seconds_per_second"] = sums["audio_samples"] / 16_000 / max(seconds, 1e-9)
  out["steps_per_second"] = steps / max(seconds, 1e-9)
  return out


def progress_line(step: int, total_steps: int, summary: dict[str, float]) -> str:
  """'step N/T | loss ... | ...' with the `_PROGRESS` fields the summary has."""
  parts = [f"step {step}/{total_steps}"]
  for names, fmt in _PROGRESS:
    if all(name in summary for name in names):
      parts.append(fmt % tuple(summary[name] for name in names))
  return " | ".join(parts)


class MetricsLogger:
  """Accumulates per-step metric sums and reports them every `log_every` steps.

  Only the primary process writes files; every process may call it.
  """

  def __init__(self, workdir: str, *, total_steps: int, log_every: int, is_primary: bool):
    self._total_steps = total_steps
    self._log_every = log_every
    self._is_primary = is_primary
    self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
    # tensorboardX writes TensorBoard's event files without TensorFlow.
    self._writer = tensorboardX.SummaryWriter(workdir) if is_primary else None
    self._sums: dict[str, float] = {}
    self._steps = 0
    self._start = time.perf_counter()

  def truncate_after(self, step: int) -> None:
    """Drops lines for steps after `step` (written by a run that was killed later), and a
    last line without its newline (a write the kill cut short)."""
    if not self._is_primary or not os.path.exists(self._jsonl_path):
      return
    with open(self._jsonl_path) as f:
      *complete, partial = f.read().split("\n")
    if partial:
      logging.warning("%s: dropped an unfinished last line: %r", self._jsonl_path, partial)
    kept = [line + "\n" for line in complete if json.loads(line)["step"] <= step]
    tmp = self._jsonl_path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self._jsonl_path)

  def add(
    self, step: int, step_metrics: dict[str, np.ndarray], data_position: int
  ) -> dict[str, float] | None:
    """Adds the host copy of step `step`'s metrics; reports when the interval is full and
    returns the reported summary (None when nothing was reported).

    `data_position` is the input position after the step's batch, logged so a reader can
    check that a resumed run neither skipped nor repeated data.
    """
    for name, value in step_metrics.items():
      self._sums[name] = self._sums.get(name, 0.0) + float(value)
    self._steps += 1
    if step % self._log_every == 0 or step == self._total_steps:
      return self._report(step, data_position)
    return None

  def _report(self, step: int, data_position: int) -> dict[str, float]:
    now = time.perf_counter()
    summary = summarize(self._sums, self._steps, now - self._start)
    self._sums, self._steps, self._start = {}, 0, now
    logging.info("%s", progress_line(step, self._total_steps, summary))
    self._write(step, "train", summary, {"step": step, "data_position": data_position, **summary})
    return summary

  def add_validation(
    self, step: int, split: str, sums: dict[str, float], seconds: float
  ) -> dict[str, float]:
    """Reports a validation after update `step`: `sums` of the objective over the held-out
    batches of `split` (summed like a training interval's), or the edit counts of decoding
    it, taking `seconds`; returns the summary. Its line in metrics.jsonl is
    {"step": step, "valid": {"split": split, ...summary}}."""
    summary = summarize(sums, 1, seconds)
    del summary["steps_per_second"]
    logging.info("valid %s after %s", split, progress_line(step, self._total_steps, summary))
    self._write(step, "valid", summary, {"step": step, "valid": {"split": split, **summary}})
    return summary

  def _write(self, step: int, prefix: str, summary: dict[str, float], line: dict) -> None:
    """TensorBoard scalars `prefix/NAME` and a metrics.jsonl line (primary process only)."""
    if not self._is_primary:
      return
    for name, value in summary.items():
      self._writer.add_scalar(f"{prefix}/{name}", value, step)
    self._writer.flush()
    with open(self._jsonl_path, "a") as f:
      f.write(json.dumps(line) + "\n")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()

  def __enter__(self) -> "MetricsLogger":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
