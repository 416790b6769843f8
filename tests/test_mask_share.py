"""Every row's masked share is what fairseq's algorithm gives a row of its length, whatever
the global batch around it: its size, the other rows' lengths, the buckets, the processes.

The reference is fairseq's `compute_mask_indices` (fairseq/data/data_utils.py: static spans,
probabilistic rounding of the span count, starts drawn without replacement from
`sz - mask_length` candidates, spans cut at the row's end) re-written here in float64
numpy for one row at a time, independently of `sslax.data.masking`. Rows come from
384-row global batches of a LibriSpeech-like length distribution (2-35 s, most 8-17 s),
cropped to 15.6 s as wav2vec 2.0 Base is, with and without length buckets.
"""

import ml_collections
import numpy as np
import pytest

from configs import common
from sslax.data import augment, schedule
from sslax.models import frontends

CROP = 249_680  # 780 frames: the exact frame count nearest wav2vec 2.0 Base's 250k crop
BUCKETS = (96_080, 160_080, CROP)


def frames(num_samples: int) -> int:
  return int(frontends.num_frames(num_samples, common.WAV2VEC2_CONV_LAYERS))


def fairseq_share(rng, valid_frames, mask_prob, mask_length, min_masks) -> float:
  """The masked share of one row of `valid_frames` by fairseq's compute_mask_indices."""
  sz = valid_frames
  num_mask = max(min_masks, int(mask_prob * sz / float(mask_length) + rng.random()))
  min_len = mask_length
  if sz - min_len <= num_mask:
    min_len = sz - num_mask - 1
  starts = rng.choice(sz - min_len, num_mask, replace=False)
  covered = (starts[:, None] + np.arange(mask_length)[None, :]).ravel()  # each span's frames
  return len(np.unique(covered[covered < sz])) / sz


def librispeech_like_lengths(rng, n: int) -> np.ndarray:
  """i64[n] samples: 15 % of 2-8 s, 70 % of 8-17 s, 15 % of 17-35 s."""
  seconds = np.concatenate(
    [
      rng.uniform(2, 8, int(0.15 * n)),
      rng.uniform(8, 17, int(0.70 * n)),
      rng.uniform(17, 35, n - int(0.15 * n) - int(0.70 * n)),
    ]
  )
  return rng.permutation((seconds * 16_000).astype(np.int64))


def make_schedule(lengths, mask, buckets=(), process_index=0, process_count=1):
  data = ml_collections.ConfigDict(
    dict(
      batch_size=384,
      max_samples=CROP,
      buckets=buckets,
      bucket_batch_multiple=8,
      mixture=(),
      mixture_alpha=0.5,
    )
  )
  return schedule.Schedule(
    lengths,
    np.asarray([0, len(lengths)]),
    np.flatnonzero(lengths >= 32_000),
    data,
    ml_collections.ConfigDict(mask),
    frames,
    augment.AugmentConfig(),
    seed=0,
    process_index=process_index,
    process_count=process_count,
  )


MASKS = {
  "wav2vec2": dict(mask_prob=0.65, mask_length=10, min_masks=2),
  "hubert": dict(mask_prob=0.8, mask_length=10, min_masks=2),
  "ctc_large": dict(mask_prob=0.5, mask_length=10, min_masks=2),
}


@pytest.mark.parametrize("buckets", [(), BUCKETS], ids=["one_shape", "buckets"])
@pytest.mark.parametrize("name", list(MASKS))
def test_each_row_is_masked_as_fairseq_masks_a_row_of_its_length(name, buckets):
  mask = MASKS[name]
  rng = np.random.default_rng(1)
  plan = make_schedule(librispeech_like_lengths(rng, 6_000), mask, buckets)
  valid, ours, theirs = [], [], []
  for k in range(12):
    masks_BxF = plan.masks(k)
    for row, n in enumerate(plan.row_lengths(k)):
      f = frames(int(n))
      assert not masks_BxF[row, f:].any()  # never a padded frame
      valid.append(f)
      ours.append(masks_BxF[row, :f].mean())
      theirs.append(np.mean([fairseq_share(rng, f, **mask) for _ in range(4)]))
  valid, ours, theirs = map(np.asarray, (valid, ours, theirs))
  assert len(valid) >= 12 * 384 * (0.5 if buckets else 1)
  # Rows grouped by length (quantiles: about 500 rows each): within 2 points of fairseq.
  edges = np.quantile(valid, np.linspace(0, 1, 9))
  group = np.clip(np.searchsorted(edges, valid, side="right") - 1, 0, 7)
  for g in np.unique(group):
    rows = group == g
    assert abs(ours[rows].mean() - theirs[rows].mean()) < 0.02, (g, valid[rows].mean())
  # Full crops: the share the papers state (about 49 % at p 0.65, 57 % at p 0.8).
  full = valid == frames(CROP)
  assert full.sum() > 500
  assert abs(ours[full].mean() - theirs[full].mean()) < 0.005
  if name == "wav2vec2":
    assert 0.48 < ours[full].mean() < 0.50


def test_a_short_row_leaves_the_others_their_share():
  """The batch that starved every row before: full crops and one 2 s utterance."""
  lengths = np.full(2_000, 400_000)
  lengths[::100] = 32_000  # about 4 rows of 2 s in every global batch
  plan = make_schedule(lengths, MASKS["wav2vec2"])
  shares = []
  for k in range(3):
    masks_BxF = plan.masks(k)
    full = plan.row_lengths(k) == CROP
    assert (~full).sum() >= 1
    shares.append(masks_BxF[full, : frames(CROP)].mean())
  assert 0.48 < np.mean(shares) < 0.50


@pytest.mark.parametrize("buckets", [(), BUCKETS], ids=["one_shape", "buckets"])
def test_two_processes_hold_the_rows_and_masks_of_one(buckets):
  lengths = librispeech_like_lengths(np.random.default_rng(2), 3_000)
  whole = make_schedule(lengths, MASKS["wav2vec2"], buckets)
  parts = [make_schedule(lengths, MASKS["wav2vec2"], buckets, i, 2) for i in range(2)]
  for k in range(4):
    for name in ("masks", "row_lengths", "batch_indices"):
      joined = np.concatenate([getattr(part, name)(k)[part.host_rows(k)] for part in parts], axis=0)
      np.testing.assert_array_equal(joined, getattr(whole, name)(k), err_msg=f"{name} {k}")
