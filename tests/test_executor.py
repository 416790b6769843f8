"""The streams' executor: batches in order whatever the threads do, errors raised as they
were, and reader threads that end when the stream is closed, even while reads are running."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sslax.data import executor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reader_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name.startswith("grain-prefetch")]


def slow_read(k: int) -> tuple[int, np.ndarray]:
  """Batch k after a delay that varies with k, so reads finish out of order."""
  time.sleep(np.random.default_rng(k).uniform(0.0, 0.02))
  return k, np.full(3, k)


def test_items_come_in_batch_order_from_the_start_whatever_the_threads_do():
  with executor.Batches(slow_read, 7, threads=4) as batches:
    items = [next(batches) for _ in range(30)]
  assert [k for k, _ in items] == list(range(7, 37))
  for k, array in items:
    np.testing.assert_array_equal(array, np.full(3, k))


def test_a_bounded_stream_ends_after_its_last_batch():
  with executor.Batches(slow_read, 2, threads=3, stop=6) as batches:
    assert [k for k, _ in batches] == [2, 3, 4, 5]


def test_a_read_error_is_raised_as_it_was_at_its_batch():
  def read(k):
    if k == 3:
      raise FileNotFoundError(f"batch {k}: /data/missing.flac")
    return k

  with executor.Batches(read, 0, threads=2) as batches:
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match=r"batch 3: /data/missing.flac"):
      next(batches)


def test_close_cancels_reads_not_started_and_the_threads_end():
  started = []
  release = threading.Event()

  def read(k):
    started.append(k)
    release.wait(timeout=10)  # a read in flight when the stream is closed
    return k

  batches = executor.Batches(read, 0, threads=2)
  consumer = threading.Thread(target=lambda: next(batches))
  consumer.start()
  deadline = time.monotonic() + 10
  while len(started) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
  assert len(started) == 2  # two reads running, none queued beyond the threads
  batches.close()
  release.set()
  consumer.join(timeout=10)
  deadline = time.monotonic() + 10
  while reader_threads() and time.monotonic() < deadline:
    time.sleep(0.01)
  assert not reader_threads()
  assert len(started) == 2  # nothing was started after the close
  with pytest.raises(Exception, match="closed"):
    next(batches)


def test_at_least_one_thread():
  with pytest.raises(ValueError, match="at least one read thread, got 0"):
    executor.Batches(slow_read, 0, threads=0)


# A process whose stream fails after its first batch while other reads are in flight, and
# whose error unwinds through the `with` block: what a training run that stops does.
_FAILING_RUN = """
import time
from sslax.data import executor

def read(k):
  time.sleep(0.05)
  if k == 1:
    raise RuntimeError("cannot read batch 1")
  return k

with executor.Batches(read, 0, threads=4) as batches:
  for k in batches:
    time.sleep(0.01)
"""


def test_a_process_stopped_by_a_read_error_exits_at_once_with_its_error():
  for _ in range(3):
    started = time.monotonic()
    result = subprocess.run(
      [sys.executable, "-c", _FAILING_RUN],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.rstrip().endswith("RuntimeError: cannot read batch 1")
    assert "Fatal Python error" not in result.stderr
    assert time.monotonic() - started < 30
