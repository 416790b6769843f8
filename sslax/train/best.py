"""The best checkpoint by validation WER (or CER), kept beside the latest ones.

After each validation that reports WER (CTC fine-tuning with `config.valid`), the train
state is saved to `workdir/checkpoints_best` when its (WER, CER) on the validation split
is lower than the best so far; an equal one keeps the earlier (fairseq's
checkpoint_best.pt with `best_checkpoint_metric: wer`). `config.valid.best_metric='cer'`
ranks by (CER, WER) instead: with a few labelled minutes a character model's WER stays near
1 (or above, with insertions) for hundreds of updates, and a model emitting only blanks
(WER 1.0) would beat one that spells words approximately (WER 1.01, CER 0.77).
One checkpoint is kept there, in
the layout of `workdir/checkpoints`, its scores in its `data` item. Orbax writes it into
a temporary directory and renames it when complete, and deletes the previous best only
then, so a run killed at any moment keeps a complete best; a resumed run compares with
it. `python -m sslax.main ... --config.job=evaluate` scores it by default
(`config.eval.checkpoint`).
"""

from typing import Any

from absl import logging

from sslax.core import checkpoints

METRICS = ("wer", "cer")


class BestCheckpoint:
  """Keeps the state of the lowest validation (metric, other metric) in
  `workdir/checkpoints_best`, `metric` being 'wer' or 'cer'.

  `scores` is {'step', 'split', 'wer', 'cer'} of the kept checkpoint, or None.
  """

  def __init__(self, workdir: str, split: str, metric: str = "wer"):
    if metric not in METRICS:
      raise ValueError(f"config.valid.best_metric={metric!r}; expected one of {METRICS}")
    self._split = split
    self._order = (metric, *(m for m in METRICS if m != metric))
    self._checkpointer = checkpoints.Checkpointer(
      workdir, keep=1, clean_up=True, folder=checkpoints.BEST
    )
    step = self._checkpointer.latest_step()
    self.scores = None if step is None else self._checkpointer.data(step)
    if self.scores is not None:
      logging.info("best checkpoint so far: %s", self.scores)

  def offer(self, step: int, state: Any, summary: dict[str, float]) -> bool:
    """Keeps `state` (after update `step`) if `summary`'s scores, in the metric's order, beat
    the best; returns whether it did. Every process calls it with the same summary."""
    best = self.scores
    if best is not None and [summary[m] for m in self._order] >= [best[m] for m in self._order]:
      return False
    if best is not None and best["step"] >= step:
      # A resumed run redid updates up to the best and did better (on another device count,
      # say): orbax writes no step twice and would keep the higher step.
      self._checkpointer.delete(best["step"])
    self.scores = {"step": step, "split": self._split, "wer": summary["wer"], "cer": summary["cer"]}
    self._checkpointer.save(step, state, self.scores)
    logging.info(
      "best %s %s so far: WER %.4f, CER %.4f after update %d, kept in %s",
      self._split,
      self._order[0].upper(),
      summary["wer"],
      summary["cer"],
      step,
      checkpoints.BEST,
    )
    return True

  def close(self) -> None:
    """Waits for the pending save, then releases orbax's threads."""
    self._checkpointer.close()

  def __enter__(self) -> "BestCheckpoint":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
