"""SIGTERM-safe training: every process stops at the same step, after a checkpoint.

Cloud TPU maintenance, spot/preemptible VMs and SLURM time limits (`--signal=TERM@...`)
send SIGTERM to some or all hosts. Stopping only the signalled host would hang the others
in their next collective, so the processes must agree on a step. With several processes
JAX's preemption sync manager (started by `jax.distributed.initialize`) does that:
`reached_preemption_sync_point(step)` turns True on every process at the same step once
any of them got SIGTERM. A single process watches for SIGTERM itself.
"""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Call `reached(step)` after every step; True means: save and exit."""

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._signalled = threading.Event()
    if not self._multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM: stopping after this step with a checkpoint")
    self._signalled.set()

  def reached(self, step: int) -> bool:
    """Whether every process should stop after `step` (the same answer on all of them)."""
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled.is_set()

  def close(self) -> None:
    """Restores the SIGTERM handler this watch replaced."""
    if not self._multi_process:
      signal.signal(signal.SIGTERM, self._previous)

  def __enter__(self) -> "PreemptionWatch":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
