"""Tests for sslax.data.masking against an exact float64 model of fairseq's span sampler."""

import math

import numpy as np
import pytest

from sslax.data import masking

# fairseq wav2vec 2.0 Base: mask_prob 0.65, mask_length 10, min_masks 2.
BASE = dict(mask_prob=0.65, mask_length=10, min_masks=2)


def _exact_coverage(valid_frames, *, mask_prob, mask_length, min_masks):
  """float64[valid_frames]: P(frame t is masked), computed combinatorially.

  The span count is floor(x) or floor(x) + 1 (x = p * T / L) with probabilities
  1 - frac(x) and frac(x), then at least min_masks; the M starts are a uniform M-subset
  of {0, ..., n - 1}, n = T - L (or M + 1 when that is too few). Frame t is uncovered iff
  none of the c_t starts in [t - L + 1, t] was picked: C(n - c_t, M) / C(n, M).
  """
  x = mask_prob * valid_frames / mask_length
  low = math.floor(x)
  coverage = np.zeros(valid_frames)
  for count, weight in ((low, 1.0 - (x - low)), (low + 1, x - low)):
    spans = max(min_masks, count)
    if weight == 0.0 or spans == 0:
      continue
    n = valid_frames - mask_length
    if n <= spans:
      n = spans + 1
    for t in range(valid_frames):
      covering = max(0, min(t, n - 1) - max(0, t - mask_length + 1) + 1)
      p_uncovered = 1.0
      for i in range(spans):
        p_uncovered *= max(n - covering - i, 0) / (n - i)
      coverage[t] += weight * (1.0 - p_uncovered)
  return coverage


def _runs(mask_F):
  """(start, length) of each maximal run of True."""
  padded = np.concatenate([[False], mask_F, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def test_exact_fraction_matches_paper():
  # 15.6 s crop at 50 Hz: the paper's "approximately 49% of all time steps are masked".
  coverage = _exact_coverage(780, **BASE)
  assert abs(coverage.mean() - 0.49) < 0.005
  # Long-utterance limit without replacement is still ~0.489, not 1 - exp(-0.65) = 0.478.
  assert abs(_exact_coverage(5000, **BASE).mean() - 0.4895) < 0.001


def test_sampled_coverage_matches_exact_per_frame():
  valid, padded, trials = 780, 900, 4000
  rng = np.random.default_rng(0)
  masks_TxF = np.stack([masking.span_mask(rng, padded, valid, **BASE) for _ in range(trials)])
  assert not masks_TxF[:, valid:].any()
  exact_F = _exact_coverage(valid, **BASE)
  observed_F = masks_TxF[:, :valid].mean(axis=0)
  # Per-frame binomial standard error; 5 sigma over 780 frames (a sampler whose starts
  # came from range(T) or range(T - L + 1) misses the last frames by > 10 sigma).
  se_F = np.sqrt(exact_F * (1 - exact_F) / trials) + 1e-3 / trials
  assert np.all(np.abs(observed_F - exact_F) < 5 * se_F + 1e-12)
  assert observed_F[-1] == 0.0  # a span never reaches the last frame of a long utterance
  # The per-utterance fraction: its mean within 4 standard errors of the exact value.
  fraction_T = masks_TxF[:, :valid].mean(axis=1)
  assert abs(fraction_T.mean() - exact_F.mean()) < 4 * fraction_T.std() / np.sqrt(trials)


@pytest.mark.parametrize("valid", [11, 12, 15, 20, 25, 40])
def test_short_utterance_coverage_matches_exact(valid):
  # Exercises fairseq's widened start range (n = M + 1) and the clipping at the end.
  trials = 4000
  rng = np.random.default_rng(valid)
  masks_TxF = np.stack([masking.span_mask(rng, 50, valid, **BASE) for _ in range(trials)])
  assert not masks_TxF[:, valid:].any()
  exact_F = _exact_coverage(valid, **BASE)
  se_F = np.sqrt(exact_F * (1 - exact_F) / trials)
  assert np.all(np.abs(masks_TxF[:, :valid].mean(axis=0) - exact_F) < 5 * se_F + 1e-12)


def test_padding_never_masked():
  rng = np.random.default_rng(1)
  valid_B = rng.integers(0, 400, size=64)
  mask_BxF = masking.batch_span_masks(rng, 400, valid_B, **BASE)
  assert mask_BxF.shape == (64, 400) and mask_BxF.dtype == bool
  for row, valid in enumerate(valid_B):
    assert not mask_BxF[row, valid:].any()


def test_single_span_has_mask_length():
  rng = np.random.default_rng(2)
  for _ in range(200):
    # mask_prob 0 draws exactly min_masks spans.
    mask_F = masking.span_mask(rng, 300, 250, mask_prob=0.0, mask_length=10, min_masks=1)
    ((start, length),) = _runs(mask_F)
    assert length == 10 and start < 250 - 10  # starts lie in range(T - L)


def test_unclipped_runs_are_whole_spans():
  rng = np.random.default_rng(3)
  for _ in range(200):
    mask_F = masking.span_mask(rng, 500, 500, **BASE)
    # Overlapping spans merge into longer runs, but no run is shorter than a span.
    assert all(length >= 10 for _, length in _runs(mask_F))


def test_min_masks_respected():
  rng = np.random.default_rng(4)
  counts = [
    masking.span_mask(rng, 10_000, 10_000, mask_prob=0.0, mask_length=10, min_masks=3).sum()
    for _ in range(300)
  ]
  # Three spans of 10; they overlap with probability ~0.6%, which only lowers the count.
  assert all(20 <= count <= 30 for count in counts)
  assert np.mean(np.equal(counts, 30)) > 0.95
  # A short utterance still gets min_masks spans (here more than p * T / L = 0.975).
  for _ in range(100):
    assert masking.span_mask(rng, 20, 15, **BASE).sum() >= 10


def test_deterministic_given_seed():
  valid_B = np.array([500, 321, 77])
  draw = lambda seed: masking.batch_span_masks(  # noqa: E731
    np.random.default_rng(seed), 512, valid_B, **BASE
  )
  np.testing.assert_array_equal(draw(7), draw(7))
  assert np.any(draw(7) != draw(8))


@pytest.mark.parametrize("valid", [0, 1, 2, 5, 9, 10, 11, 12, 13])
@pytest.mark.parametrize("min_masks", [0, 1, 2])
def test_edge_lengths(valid, min_masks):
  rng = np.random.default_rng(valid * 10 + min_masks)
  for _ in range(50):
    mask_F = masking.span_mask(rng, 16, valid, mask_prob=0.65, mask_length=10, min_masks=min_masks)
    assert mask_F.shape == (16,) and not mask_F[valid:].any()
    if min_masks > 0 and valid >= 2:
      # M distinct starts from at most M + 1 candidates include 0 or 1, both valid frames.
      assert mask_F.any()


def test_zero_length_and_empty_batches():
  rng = np.random.default_rng(9)
  mask_BxF = masking.batch_span_masks(rng, 30, np.array([0, 25, 0]), **BASE)
  # Each row is masked on its own: empty rows stay empty, the full row is masked in its
  # valid frames only (fairseq's per-row min_masks=2 spans of 10 frames).
  assert not mask_BxF[[0, 2]].any()
  assert mask_BxF[1, :25].sum() >= 10 and not mask_BxF[1, 25:].any()
  empty = masking.batch_span_masks(rng, 30, np.zeros(0, int), **BASE)
  assert empty.shape == (0, 30)


def test_rejects_bad_arguments():
  rng = np.random.default_rng(10)
  with pytest.raises(ValueError):
    masking.span_mask(rng, 10, 11, **BASE)
  with pytest.raises(ValueError):
    masking.span_mask(rng, 10, 5, mask_prob=0.5, mask_length=0, min_masks=1)
