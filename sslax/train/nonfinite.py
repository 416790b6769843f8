"""What a run does when a step's loss or gradient is NaN or Inf: `config.nonfinite`.

'stop': the loop stops the run at the first such step, naming it and the last good
checkpoint (a step is checkpointed only after its metrics were read, so a bad step never
is). 'skip': the jitted step (`guard`) keeps the parameters, optimizer state and model
state of a non-finite step bitwise unchanged, so only the step counter advances and the
batch is consumed; the step's metrics are zeroed but for `skipped_updates` = 1. The loop
(`Monitor`) logs every skip and stops the run once `config.max_consecutive_skips` updates
in a row were skipped: data that is always bad, or a diverged model, is not trained on
forever.

The finite check is part of the jitted step, so no host synchronisation is added: the
host sees the flag with the other metrics, one step late.
"""

from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

MODES = ("stop", "skip")

Step = Callable[[Any, dict, jax.Array], tuple[Any, dict]]


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when `nonfinite` or `max_consecutive_skips` is bad."""
  if config.nonfinite not in MODES:
    raise ValueError(f"config.nonfinite={config.nonfinite!r}; expected one of {MODES}")
  if config.max_consecutive_skips < 1:
    raise ValueError(
      f"config.max_consecutive_skips={config.max_consecutive_skips} must be at least 1"
    )


def guard(step: Step, mode: str) -> Step:
  """`step(state, batch, rng) -> (state, metrics)` with `mode`'s treatment of a bad update.

  `metrics` must hold the step's `loss` (sum) and `grad_norm`: a NaN or Inf in any
  gradient makes the norm non-finite (and so does a float32 overflow of the norm itself,
  at gradients above ~1e19, which no sane update has). 'stop' returns `step` unchanged;
  'skip' selects the old state when either is non-finite (`state.step` still advances)
  and adds `skipped_updates` (0 or 1) to the metrics.
  """
  if mode not in MODES:
    raise ValueError(f"config.nonfinite={mode!r}; expected one of {MODES}")
  if mode == "stop":
    return step

  def skipping_step(state, batch, rng):
    new_state, metrics = step(state, batch, rng)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    kept = state.replace(step=new_state.step)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    # A skipped step adds nothing to the logged sums (its loss may be NaN) but its count.
    metrics = {
      name: jnp.where(finite, value, jnp.zeros_like(value)) for name, value in metrics.items()
    }
    metrics["skipped_updates"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return skipping_step


class Monitor:
  """The host side: reads each step's metrics (one step late) and stops the run when due.

  `consecutive` is the count of updates skipped in a row before this run started (saved
  with every checkpoint, so a resumed run stops where an uninterrupted one would).
  """

  def __init__(self, mode: str, max_consecutive_skips: int, consecutive: int = 0):
    self._mode = mode
    self._max = max_consecutive_skips
    self.consecutive = consecutive

  def check(self, step: int, host_metrics: dict, last_checkpoint: Callable[[], int | None]) -> None:
    """Raises FloatingPointError when the run must stop after step `step`; logs skips.

    `last_checkpoint()` gives the step of the newest checkpoint, named in the error.
    """

    def where():
      latest = last_checkpoint()
      return "none was written yet" if latest is None else f"step {latest} in the workdir"

    loss, grad_norm = host_metrics["loss"], host_metrics["grad_norm"]
    if not np.isfinite(loss) or not np.isfinite(grad_norm):
      # Only 'stop' gets here: a skipping step reports zeros.
      raise FloatingPointError(
        f"loss is {loss} at step {step}; the last good checkpoint: {where()} (gradient norm "
        f"{grad_norm}). Set config.nonfinite='skip' to skip such updates, or lower "
        "config.optim.learning_rate (or set config.optim.clip_norm) and resume"
      )
    if self._mode != "skip":
      return
    if not host_metrics["skipped_updates"]:
      self.consecutive = 0
      return
    self.consecutive += 1
    logging.warning(
      "step %d: non-finite loss or gradient; update skipped (%d in a row, "
      "config.max_consecutive_skips=%d)",
      step,
      self.consecutive,
      self._max,
    )
    if self.consecutive >= self._max:
      raise FloatingPointError(
        f"{self.consecutive} updates in a row skipped for a non-finite loss or gradient, "
        f"steps {step - self.consecutive + 1}-{step} (config.max_consecutive_skips="
        f"{self._max}); the last good checkpoint: {where()}. The data or the model has "
        "gone bad: lower config.optim.learning_rate (or set config.optim.clip_norm), or "
        "check the input data, and resume"
      )
