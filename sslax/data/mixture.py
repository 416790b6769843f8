"""Temperature sampling over several sources (XLS-R, Babu et al. 2021: α = 0.5).

Source i, with n_i usable examples, is drawn with probability p_i ∝ n_i^α (α = 1: in
proportion to size; α = 0: uniformly), as fairseq's `_get_sample_prob` does over dataset
lengths. Every row of a global batch picks its source from p and then an example of that
source uniformly, with replacement (fairseq's ResamplingDataset), from a generator seeded
by (seed, batch number): a batch is a pure function of (seed, batch number), whatever
came before it.
"""

import numpy as np


def probabilities(sizes: np.ndarray, alpha: float) -> np.ndarray:
  """f64[num_sources]: p_i = n_i^α / Σ_j n_j^α for sizes n_i > 0."""
  weights = np.asarray(sizes, np.float64) ** alpha
  return weights / weights.sum()


def draw(
  rng: np.random.Generator, batch_size: int, p: np.ndarray, usable: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
  """(i64[B] source, i64[B] example within its source) of one global batch.

  Args:
    rng: the batch's generator.
    batch_size: B rows.
    p: f64[num_sources] source probabilities (`probabilities`).
    usable: per source, the example indices that may be drawn (non-empty).
  """
  source_B = rng.choice(len(p), size=batch_size, p=p)
  example_B = np.asarray(
    [usable[s][rng.integers(len(usable[s]))] for s in source_B], dtype=np.int64
  )
  return source_B, example_B
