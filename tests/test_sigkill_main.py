"""SIGKILL of the real main job at 10 random moments, mid-save included, then resume:
the end is bitwise the end of an uninterrupted run.

`python -m sslax.main --config=configs/demo.py:tiny` (with one Transformer block and 3 conv
layers, tests/tiny_steps.py) on the demo corpus (the real input stream through grain, the
wav2vec 2.0 step, asynchronous orbax saves), on 8 fake CPU devices, checkpointing every
step. Every run is forked from tests/main_fork_server.py (which imported sslax.main once)
and all share one persistent compilation cache, which the uninterrupted run fills: a
killed run costs a JAX start-up, a restore and its steps.

Kill moments are drawn (seeded) relative to observed progress, as in tests/test_sigkill.py:
one time in five at a random moment of start-up (backend, restore, clean-up of partial
saves), at the latest on its first new step; otherwise once the run has logged a new step,
either as soon as a save's temporary directory exists or after a random part of a step.

What must hold: after each kill the newest complete checkpoint is where the next run
resumes (its log says so, so no run starts over from scratch); partial saves were really
interrupted; at the end no partial save is left, and the parameters
(`checkpoints.load_params`) are bitwise those of the uninterrupted run, with the same loss
and data position logged for every step (same program, inputs and devices: bitwise).
The uninterrupted run, and the last resumed run, checkpoint only at their end, so saving
itself must not alter the state either.
"""

import json
import os
import re
import signal
import time

import jax
import numpy as np
import pytest
from test_sigkill import (
  TMP_MARKER,
  ForkServer,
  checkpoint_dir_entries,
  last_logged_step,
  log_tail,
  partial_saves,
  wait_until,
)
import tiny_steps

from sslax.core import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo.py:tiny"
KILLS = 10
# A kill comes at most two logged steps after the furthest before its run started, and a
# run killed mid-save redoes its last step: 2 x KILLS + 2 steps are never all done first.
TOTAL_STEPS = 2 * KILLS + 2


def log_size(workdir: str) -> int:
  try:
    return os.path.getsize(os.path.join(workdir, "log.txt"))
  except FileNotFoundError:
    return 0


def resumed_from(workdir: str, offset: int = 0) -> list[int]:
  """The checkpoints runs resumed from, as logged after byte `offset` of the log."""
  with open(os.path.join(workdir, "log.txt"), "rb") as f:
    f.seek(offset)
    text = f.read().decode(errors="replace")
  return [int(step) for step in re.findall(r"resumed from checkpoint (\d+)", text)]


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_main_job_killed_at_random_moments_resumes_bitwise(tmp_path, demo_data_dir):
  # tests/main_fork_server.py: the real main job, 8 fake CPU devices.
  server = ForkServer(str(tmp_path / "jax_cache"), ("main_fork_server.py", CONFIG), devices=8)
  # The smaller model (tests/tiny_steps.py): each run traces and loads it faster.
  run = {"total_steps": TOTAL_STEPS, "data.data_dir": demo_data_dir, **tiny_steps.FEWER_LAYERS}
  try:
    reference_dir = str(tmp_path / "reference")
    started = time.monotonic()
    pid = server.start(reference_dir, **run, checkpoint_every=TOTAL_STEPS)
    wait_until(lambda: last_logged_step(reference_dir) >= 1, pid, timeout_s=600)
    # An upper bound (this run also compiles); later, the quickest resumed run's.
    startup_seconds = time.monotonic() - started
    assert server.ended() == {"signal": 0, "exit": 0}, log_tail(reference_dir)

    workdir = str(tmp_path / "killed")
    run.update(checkpoint_every=1, keep_checkpoints=2)
    rng = np.random.default_rng(0)
    landed_mid_save, said_resumed, latest = 0, 0, None
    for _ in range(KILLS):
      furthest, partial_before = last_logged_step(workdir), partial_saves(workdir)
      log_start = log_size(workdir)
      started = time.monotonic()
      pid = server.start(workdir, **run)
      if rng.random() < 0.2:  # during start-up: a random moment, or its first new step
        deadline = time.monotonic() + rng.uniform(0.0, startup_seconds)
        wait_until(
          lambda d=deadline, f=furthest: time.monotonic() > d or last_logged_step(workdir) > f, pid
        )
      else:
        wait_until(lambda f=furthest: last_logged_step(workdir) > f, pid, timeout_s=300)
        startup_seconds = min(startup_seconds, time.monotonic() - started)
        if rng.random() < 0.5:
          wait_until(lambda: any(TMP_MARKER in n for n in checkpoint_dir_entries(workdir)), pid)
        else:  # a random part of a step and its save, as the last one took
          time.sleep(rng.uniform(0.0, 1.0 / read_metrics(workdir)[-1]["steps_per_second"]))
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pytest.fail(f"the run ended before it was killed:\n{log_tail(workdir)}")
      assert server.ended() == {"signal": signal.SIGKILL, "exit": None}, log_tail(workdir)
      landed_mid_save += bool(partial_saves(workdir) - partial_before)
      # The run started from the newest complete checkpoint the kill before it left, or from
      # scratch when there was none (it may have died before saying which).
      froms = resumed_from(workdir, log_start)
      assert froms in ([], [latest] if latest is not None else []), (froms, latest)
      said_resumed += bool(froms)
      steps = [int(name) for name in checkpoint_dir_entries(workdir) if name.isdigit()]
      if steps:
        assert latest is None or max(steps) >= latest, (steps, latest)
        latest = max(steps)
    print(f"{landed_mid_save} kills mid-save, {said_resumed} runs logged their resume")
    assert latest is not None and latest < TOTAL_STEPS
    assert said_resumed >= KILLS // 2, said_resumed
    # Kills really hit saves in progress (each leaves a new partial directory behind); the
    # seeded draws wait for a save's directory 5 times in 10.
    assert landed_mid_save >= KILLS // 3, landed_mid_save

    log_start = log_size(workdir)
    # The rest in one go: saving every step, which made kills land in saves, only slows it.
    server.start(workdir, **dict(run, checkpoint_every=TOTAL_STEPS))
    assert server.ended() == {"signal": 0, "exit": 0}, log_tail(workdir)
    assert resumed_from(workdir, log_start) == [latest]
  finally:
    server.close()
  assert not any(TMP_MARKER in name for name in checkpoint_dir_entries(workdir))  # cleaned up
  jax.tree.map(
    np.testing.assert_array_equal,
    checkpoints.load_params(workdir),
    checkpoints.load_params(reference_dir),
  )
  resumed, uninterrupted = read_metrics(workdir), read_metrics(reference_dir)
  assert [m["step"] for m in resumed] == list(range(1, TOTAL_STEPS + 1))
  for a, b in zip(resumed, uninterrupted, strict=True):
    assert (a["loss"], a["data_position"]) == (b["loss"], b["data_position"]), a["step"]
    assert a["data_position"] == a["step"]  # one global batch per step, none skipped
