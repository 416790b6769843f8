"""SIGKILL at 20 random moments, mid-save included, never leaves a corrupt latest
checkpoint, and a run resumed after every kill ends bitwise where an uninterrupted one ends.

The job is the toy of tests/toy_job.py (the real loop, Checkpointer with asynchronous
orbax saves, metrics and update step; a step compiles in milliseconds) checkpointing
every step, so kills often land in a save. Runs are forked from one server process that
imported everything once, so each of the 22 runs costs a JAX start-up, not a Python one.
Kill moments are drawn (seeded) relative to observed progress: a run is killed 1-2 steps
after the furthest step logged before it started, either as soon as a save's temporary
directory appears or after a random part of a step; or, one time in five, at a random
moment of its start-up (restore, clean-up of partial saves), at the latest on its first
new step.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import xla_flags

from sslax.core import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = 20
TOTAL_STEPS = 50
RUN = dict(total_steps=TOTAL_STEPS, checkpoint_every=1, keep_checkpoints=2)
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's in-progress save directories


class ForkServer:
  """A fork server (tests/fork_serve.py) started as `python -u SCRIPT ARGS...`: one run at
  a time, forked; by default `python tests/toy_job.py serve`, the toy training run."""

  def __init__(
    self, compilation_cache: str, script_args: tuple[str, ...] = ("toy_job.py", "serve"), devices=1
  ):
    env = dict(
      os.environ,
      # The first (uninterrupted) run compiles and fills the cache; later runs only read.
      JAX_COMPILATION_CACHE_DIR=compilation_cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      XLA_FLAGS=xla_flags.cpu_devices(devices),
      JAX_PLATFORMS="cpu",
      OPENBLAS_NUM_THREADS="1",  # the server must be single-threaded to fork safely
      PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
    )
    script, *args = script_args
    self._process = subprocess.Popen(
      [sys.executable, "-u", os.path.join(REPO, "tests", script), *args],
      cwd=REPO,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
    )

  def _reply(self, timeout_s: float) -> str:
    ready, _, _ = select.select([self._process.stdout], [], [], timeout_s)
    assert ready, f"the fork server gave no answer within {timeout_s} s"
    line = self._process.stdout.readline()
    assert line, f"the fork server died (exit status {self._process.poll()})"
    return line

  def start(self, workdir: str, **overrides) -> int:
    """Starts a run of the toy job in `workdir`; returns its pid."""
    self._process.stdin.write(json.dumps({"workdir": workdir, "config": overrides}) + "\n")
    self._process.stdin.flush()
    return int(self._reply(timeout_s=120))

  def ended(self, timeout_s: float = 300) -> dict:
    """How the last run ended: {'signal': n or 0, 'exit': code or None}."""
    return json.loads(self._reply(timeout_s))

  def close(self) -> None:
    """Ends the server (it exits at the end of its input) and any run it still waits on."""
    try:
      self._process.stdin.close()
      self._process.wait(timeout=60)
    except (BrokenPipeError, subprocess.TimeoutExpired):
      self._process.kill()
      self._process.wait()


def last_logged_step(workdir: str) -> int:
  """The step of metrics.jsonl's last complete line (0 when there is none): a reader can
  see a line the run is still writing, without its newline yet."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.read().split("\n")[:-1]
  except FileNotFoundError:
    return 0
  return json.loads(lines[-1])["step"] if lines else 0


def checkpoint_dir_entries(workdir: str) -> list[str]:
  try:
    return os.listdir(os.path.join(workdir, "checkpoints"))
  except FileNotFoundError:
    return []


def partial_saves(workdir: str) -> set[tuple[str, int]]:
  """(name, inode) of every in-progress or interrupted save's directory: a save of the
  same step started again gets the same name but a new directory."""
  directory = os.path.join(workdir, "checkpoints")
  return {
    (name, os.stat(os.path.join(directory, name)).st_ino)
    for name in checkpoint_dir_entries(workdir)
    if TMP_MARKER in name
  }


def wait_until(condition, pid: int, timeout_s: float = 120) -> None:
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, "the run made no progress"
    assert os.path.exists(f"/proc/{pid}"), "the run ended before it was killed"
    time.sleep(0.001)


def log_tail(workdir: str) -> str:
  with open(os.path.join(workdir, "log.txt")) as f:
    return f.read()[-5000:]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(tmp_path):
  server = ForkServer(str(tmp_path / "jax_cache"))
  try:
    reference_dir = str(tmp_path / "reference")
    started = time.monotonic()
    pid = server.start(reference_dir, **dict(RUN, keep_checkpoints=TOTAL_STEPS))
    wait_until(lambda: last_logged_step(reference_dir) >= 1, pid)
    # Upper bounds (this first run also compiles and fills the compilation cache).
    startup_seconds = time.monotonic() - started
    assert server.ended() == {"signal": 0, "exit": 0}, log_tail(reference_dir)
    seconds_per_step = (time.monotonic() - started - startup_seconds) / (TOTAL_STEPS - 1)
    reference = {}  # step -> the uninterrupted run's parameters

    def reference_params(step):
      if step not in reference:
        reference[step] = checkpoints.load_params(reference_dir, step)
      return reference[step]

    workdir = str(tmp_path / "killed")
    rng = np.random.default_rng(0)
    landed_mid_save = 0
    latest = None
    for _ in range(KILLS):
      furthest, partial_before = last_logged_step(workdir), partial_saves(workdir)
      pid = server.start(workdir, **RUN)
      if rng.random() < 0.2:  # during start-up: a random moment, or its first new step
        deadline = time.monotonic() + rng.uniform(0.0, startup_seconds)
        wait_until(
          lambda d=deadline, f=furthest: time.monotonic() > d or last_logged_step(workdir) > f, pid
        )
      else:
        target = furthest + int(rng.integers(0, 2))
        wait_until(lambda target=target: last_logged_step(workdir) > target, pid)
        if rng.random() < 0.5:
          wait_until(lambda: any(TMP_MARKER in n for n in checkpoint_dir_entries(workdir)), pid)
        else:
          time.sleep(rng.uniform(0.0, seconds_per_step))
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pytest.fail(f"the run ended before it was killed:\n{log_tail(workdir)}")
      assert server.ended() == {"signal": signal.SIGKILL, "exit": None}, log_tail(workdir)
      landed_mid_save += bool(partial_saves(workdir) - partial_before)
      entries = checkpoint_dir_entries(workdir)
      # The newest complete checkpoint holds exactly the uninterrupted run's state.
      steps = [int(name) for name in entries if name.isdigit()]
      if steps:
        latest = max(steps)
        jax.tree.map(
          np.testing.assert_array_equal, checkpoints.load_params(workdir), reference_params(latest)
        )
    assert latest is not None
    # Kills really hit saves in progress (each leaves a new partial directory behind).
    assert landed_mid_save >= KILLS // 4, landed_mid_save

    server.start(workdir, **RUN)
    assert server.ended() == {"signal": 0, "exit": 0}, log_tail(workdir)
  finally:
    server.close()
  assert not any(TMP_MARKER in name for name in checkpoint_dir_entries(workdir))  # cleaned up
  jax.tree.map(
    np.testing.assert_array_equal, checkpoints.load_params(workdir), reference_params(TOTAL_STEPS)
  )
  resumed = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  uninterrupted = [json.loads(line) for line in open(os.path.join(reference_dir, "metrics.jsonl"))]
  assert [m["step"] for m in resumed] == list(range(1, TOTAL_STEPS + 1))
  for a, b in zip(resumed, uninterrupted, strict=True):
    assert (a["loss"], a["data_position"]) == (b["loss"], b["data_position"]), a["step"]
