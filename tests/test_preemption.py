"""SIGTERM stops a run after a checkpointed step; the same command resumes it exactly.

A single process watches for SIGTERM itself: checked here with the toy job of
tests/toy_job.py, run in this process, signalling itself mid-run. Several processes agree
on a step through JAX's preemption sync manager: tests/test_multiprocess.py sends SIGTERM
to one of four processes.
"""

import contextlib
import json
import logging
import os
import signal

import jax
import numpy as np
import toy_job

from sslax import loop
from sslax.core import checkpoints


class SigtermBefore:
  """A toy stream that sends SIGTERM to this process as it hands out global batch `index`."""

  def __init__(self, stream, index: int):
    self._stream, self._index = stream, index

  def batches(self, position: int = 0):
    return contextlib.closing(self._signalled(position))

  def _signalled(self, position: int):
    with self._stream.batches(position) as batches:
      for batch, data_state in batches:
        if position == self._index:
          # Never signal unwatched: the default action would end the test session.
          assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch, data_state
        position += 1


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_sigterm_stops_after_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, caplog):
  config = toy_job.config(total_steps=10, checkpoint_every=100)
  reference = str(tmp_path / "reference")
  loop.train(config, reference, toy_job.setup())

  def signalled_setup(config, workdir, mesh):
    stream, trainer = toy_job.setup()(config, workdir, mesh)
    return SigtermBefore(stream, index=4), trainer  # global batch 4: step 5

  workdir = str(tmp_path / "preempted")
  handler = signal.getsignal(signal.SIGTERM)
  with caplog.at_level(logging.WARNING):
    loop.train(config, workdir, signalled_setup)
  assert "preempted: checkpoint 5 written; run the same command again" in caplog.text
  assert signal.getsignal(signal.SIGTERM) == handler  # the watch gave it back
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["5"]
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3, 4, 5]

  loop.train(config, workdir, toy_job.setup())
  resumed, uninterrupted = read_metrics(workdir), read_metrics(reference)
  assert [m["step"] for m in resumed] == list(range(1, 11))
  for a, b in zip(resumed, uninterrupted, strict=True):
    # Same program, inputs and devices: bitwise the same.
    assert (a["loss"], a["data_position"]) == (b["loss"], b["data_position"]), a["step"]
  jax.tree.map(
    np.testing.assert_array_equal,
    checkpoints.load_params(workdir),
    checkpoints.load_params(reference),
  )


def test_a_resumed_run_drops_the_metrics_line_a_kill_cut_short(tmp_path, caplog):
  """A run killed while appending to metrics.jsonl leaves a line without its newline; the
  run that resumes drops it (and the lines after its checkpoint) and logs every step once."""
  workdir = str(tmp_path)
  loop.train(toy_job.config(total_steps=4, checkpoint_every=2), workdir, toy_job.setup())
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "data_position": 5, "loss": 0.12')  # no newline: cut short
  loop.train(toy_job.config(total_steps=6, checkpoint_every=2), workdir, toy_job.setup())
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]
  assert "dropped an unfinished last line" in caplog.text
