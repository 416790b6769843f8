"""Reading a few batches of a stream in tests, closing its reader threads afterwards."""

import itertools


def take(batches, n: int) -> list:
  """The first `n` items of a stream's `batches()` (an `executor.Batches`), then closed."""
  with batches:
    return list(itertools.islice(batches, n))
