"""The executor of every stream: host batches read ahead in threads by grain, and closed.

`Batches` reads global batches k = start, start + 1, … in order through grain (`MapDataset`
over batch numbers, then a thread-prefetching iterator), so what batch k holds depends only
on k, never on the timing of the threads. It owns threads, so it is a context manager and is
closed on every exit path: `close()` cancels the reads not started and lets those in flight
finish (each reads one batch), so a run that stops on an error exits promptly and cleanly.
No TensorFlow is involved (tf.data's `numpy_function` cannot be torn down while a read
holds the GIL at interpreter shutdown: tensorflow/tensorflow#21277).
"""

from collections.abc import Callable, Iterator
import sys
from typing import Any, TypeVar

import grain

T = TypeVar("T")
# No stream ends on its own: batch numbers run on (grain needs a length).
_LAST_BATCH = sys.maxsize // 2


class Batches(Iterator[T]):
  """Iterates `read(k)` for k = start, start + 1, …, `threads` reads at a time.

  Args:
    read: k -> the item of global batch k (a pure function of k).
    start: the first batch number.
    threads: reads running in parallel (and batches prepared ahead of the consumer).
    stop: one past the last batch number; None runs on until closed.
  """

  def __init__(
    self, read: Callable[[int], T], start: int, *, threads: int, stop: int | None = None
  ):
    if threads < 1:
      raise ValueError(f"an input stream needs at least one read thread, got {threads}")
    dataset = grain.MapDataset.range(start, _LAST_BATCH if stop is None else stop).map(read)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
    self._iterator = iter(dataset.to_iter_dataset(options))

  def __next__(self) -> T:
    try:
      return next(self._iterator)
    except Exception as error:
      # The reader's error as it was raised, without the note grain appends about the frames
      # it hid, so that a job's error stays the last line it prints.
      notes = getattr(error, "__notes__", [])
      error.__notes__ = [note for note in notes if "grain_py_traceback_filtering" not in note]
      raise

  def close(self) -> None:
    """Stops reading ahead: reads not started are cancelled, those running finish."""
    self._iterator.close()

  def __enter__(self) -> "Batches[T]":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
