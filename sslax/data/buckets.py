"""Length bucketing into a fixed set of static batch shapes, as a seeded schedule per epoch.

Each bucket is a crop length L_k in samples (an exact frame count for the model's
frontend). An utterance goes to the smallest bucket that holds it; longer ones go to the
largest and are cropped. Bucket k's global batch size is

  B_k = m · floor(B · L_K / (L_k · m))      (B = data.batch_size, L_K the largest bucket,
                                             m = data.bucket_batch_multiple),

so every batch holds about B · L_K padded samples (B_k · L_k is within m · L_k below it)
and, m being a multiple of the batch shards, every B_k divides across them. The train step
is jitted once per bucket: K compiles for K buckets.

An epoch's schedule is a pure function of its seeded permutation: the examples of each
bucket, in permutation order, are cut into full batches; what is left over (fewer than
B_k) moves up to the next bucket, where it fits (with more padding); what is left of the
largest bucket is completed with the epoch's first examples outside it, so every example
appears once per epoch and fewer than B_K appear twice. The batches are then shuffled.
The number of batches and of rows per epoch depend only on the lengths, not the seed.
"""

import numpy as np


def batch_sizes(lengths: tuple[int, ...], batch_size: int, multiple: int) -> tuple[int, ...]:
  """B_k per bucket (module docstring): global batch sizes for `lengths` (samples, sorted)."""
  return tuple(multiple * (batch_size * lengths[-1] // (length * multiple)) for length in lengths)


def assign(num_samples_N: np.ndarray, lengths: tuple[int, ...]) -> np.ndarray:
  """i64[N]: the smallest bucket holding each utterance (the largest for longer ones)."""
  bucket_N = np.searchsorted(np.asarray(lengths), num_samples_N, side="left")
  return np.minimum(bucket_N, len(lengths) - 1)


def epoch_schedule(
  rng: np.random.Generator,
  examples_N: np.ndarray,
  bucket_N: np.ndarray,
  sizes: tuple[int, ...],
) -> list[tuple[int, np.ndarray]]:
  """One epoch's batches in stream order (module docstring).

  Args:
    rng: the epoch's generator (one permutation of the examples, one of the batches).
    examples_N: i64[N] example indices.
    bucket_N: i64[N] bucket of each example (`assign`).
    sizes: global batch size per bucket (`batch_sizes`); N >= sizes[-1].

  Returns:
    [(bucket, i64[sizes[bucket]] example indices)] for every batch of the epoch.
  """
  order = rng.permutation(len(examples_N))
  examples_N, bucket_N = examples_N[order], bucket_N[order]
  batches = []
  carried = examples_N[:0]
  for bucket, size in enumerate(sizes):
    members = np.concatenate([carried, examples_N[bucket_N == bucket]])
    full = len(members) // size * size
    batches += [(bucket, chunk) for chunk in members[:full].reshape(-1, size)]
    carried = members[full:]
  if len(carried):
    others = examples_N[~np.isin(examples_N, carried)]
    batches.append((len(sizes) - 1, np.concatenate([carried, others[: sizes[-1] - len(carried)]])))
  return [batches[i] for i in rng.permutation(len(batches))]
