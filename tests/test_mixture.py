"""Temperature-sampled mixtures: the formula, the drawn shares, seeded rows, resume."""

import logging

import numpy as np
import pytest
from streams import take

from configs import common
from sslax.data import mixture, pretraining_stream, splits
from sslax.models import frontends

SOURCES = (("sslax_demo_corpus", "train"), ("sslax_demo_corpus", "dev"))


def make_stream(data_dir, **data_fields):
  data = common.pretrain_config().data
  data.update(
    dict(
      data_dir=data_dir,
      batch_size=8,
      max_samples=48_080,
      min_samples=16_000,
      mixture=SOURCES,
      mixture_alpha=0.5,
    )
  )
  data.update(data_fields)
  return pretraining_stream.PretrainingStream(
    data,
    common.pretrain_config().masking,
    lambda n: int(frontends.num_frames(n, common.WAV2VEC2_CONV_LAYERS)),
    seed=0,
    process_index=0,
    process_count=1,
  )


def test_probabilities_follow_the_temperature_formula():
  # Hand-computed: sizes 100 and 25 at alpha 0.5 weigh 10 and 5.
  np.testing.assert_allclose(mixture.probabilities(np.array([100, 25]), 0.5), [2 / 3, 1 / 3])
  np.testing.assert_allclose(mixture.probabilities(np.array([100, 25]), 1.0), [0.8, 0.2])
  np.testing.assert_allclose(mixture.probabilities(np.array([100, 25]), 0.0), [0.5, 0.5])


def test_drawn_shares_match_the_formula_and_are_logged(demo_data_dir, caplog):
  with caplog.at_level(logging.INFO):
    stream = make_stream(demo_data_dir)
  n = np.asarray([len(u) for u in stream.schedule.mixture_usable])
  lengths = stream._lengths
  assert n[0] == (lengths[: stream._offsets[1]] >= 16_000).sum() and n[1] > 0
  p = np.sqrt(n) / np.sqrt(n).sum()
  np.testing.assert_allclose(stream.schedule.mixture_probabilities, p, rtol=1e-12)
  assert f"p={p[1]:.4f}" in caplog.text and "sslax_demo_corpus:dev" in caplog.text
  # Over 1,000 batches (8,000 rows) the share of each source is p within 4 sigma.
  examples = np.concatenate([stream.schedule.batch_indices(k) for k in range(1_000)])
  from_dev = (examples >= stream._offsets[1]).mean()
  sigma = np.sqrt(p[1] * (1 - p[1]) / examples.size)
  assert abs(from_dev - p[1]) < 4 * sigma, (from_dev, p[1])
  assert (stream._lengths[examples] >= 16_000).all()
  # By example count alone (alpha 1) dev would get a much smaller share.
  assert p[1] > n[1] / n.sum() + 8 * sigma


def test_mixture_rows_are_seeded_read_from_their_source_and_resume(demo_data_dir):
  stream = make_stream(demo_data_dir)
  first = take(stream.batches(), 3)
  resumed = take(make_stream(demo_data_dir).batches(2), 1)
  for key in first[2][0]:
    np.testing.assert_array_equal(resumed[0][0][key], first[2][0][key])
  assert resumed[0][1] == {"position": 3}
  dev = splits.Split.open("sslax_demo_corpus", "dev", demo_data_dir)
  train = splits.Split.open("sslax_demo_corpus", "train", demo_data_dir)
  offset = stream._offsets[1]
  for k, (batch, _) in enumerate(first):
    for row, example in enumerate(stream.schedule.batch_indices(k)):
      split, index = (dev, example - offset) if example >= offset else (train, example)
      raw = split.read(int(index))
      n = int((1 - batch["audio_paddings"][row]).sum())
      assert n == min(raw.size, 48_080)
      # The row is a crop of its example.
      crop = batch["audio"][row, :n]
      starts = np.flatnonzero(raw[: raw.size - n + 1] == crop[0])
      assert any(np.array_equal(raw[s : s + n], crop) for s in starts)
  other = make_stream(demo_data_dir, mixture_alpha=1.0)
  assert not np.array_equal(
    other.schedule.mixture_probabilities, stream.schedule.mixture_probabilities
  )


def test_mixture_settings_are_clear_errors(demo_data_dir):
  with pytest.raises(ValueError, match="config.data.mixture"):
    make_stream(demo_data_dir, mixture=(("sslax_demo_corpus",),))
  with pytest.raises(ValueError, match="config.data.buckets and config.data.mixture"):
    make_stream(demo_data_dir, buckets=(48_080,))
