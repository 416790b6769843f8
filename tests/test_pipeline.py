"""The pretraining input stream: static shapes, masks, per-process parts, exact resume."""

import itertools

import ml_collections
import numpy as np
import pytest

from configs import common
from sslax.data import pipeline
from sslax.models import frontends

CONV = common.WAV2VEC2_CONV_LAYERS


def make_stream(data_dir, *, process_index=0, process_count=1, normalize=False, seed=0):
  data = common.pretrain_config().data
  data.update(
    dict(
      data_dir=data_dir,
      batch_size=4 * process_count,
      max_samples=48_080,
      min_samples=16_000,
      normalize=normalize,
    )
  )
  masking = common.pretrain_config().masking
  return pipeline.PretrainingStream(
    data,
    masking,
    lambda n: int(frontends.num_frames(n, CONV)),
    seed=seed,
    process_index=process_index,
    process_count=process_count,
  )


def take(stream, n, start=0):
  return list(itertools.islice(stream.batches(start), n))


def test_batches_have_static_shapes_and_consistent_paddings(demo_data_dir):
  stream = make_stream(demo_data_dir)
  F = frontends.num_frames(48_080, CONV)
  for batch, state in take(stream, 6):
    assert batch["audio"].shape == (4, 48_080) and batch["audio"].dtype == np.float32
    assert batch["audio_paddings"].shape == (4, 48_080)
    assert batch["mask"].shape == (4, F) and batch["mask"].dtype == bool
    lengths = (1 - batch["audio_paddings"]).sum(1).astype(int)
    assert (lengths >= 16_000).all()
    # Paddings are a suffix, and padded samples are zero.
    for row, n in zip(batch["audio_paddings"], lengths, strict=True):
      assert not row[:n].any() and row[n:].all()
    assert not (batch["audio"] * batch["audio_paddings"]).any()
    # Masks cover only frames the unpadded audio produces, and about half of them.
    for mask_row, n in zip(batch["mask"], lengths, strict=True):
      valid = frontends.num_frames(int(n), CONV)
      assert not mask_row[valid:].any()
      assert 0.25 < mask_row[:valid].mean() < 0.75
    assert state["position"] >= 4
  # require_same_masks: same masked count in every row.
  assert len(set(batch["mask"].sum(1))) == 1


def test_stream_is_deterministic_and_resumes_exactly(demo_data_dir):
  first = take(make_stream(demo_data_dir), 5)
  again = take(make_stream(demo_data_dir), 5)
  resumed = take(make_stream(demo_data_dir), 2, start=first[2][1]["position"])
  for (a, sa), (b, sb) in zip(first, again, strict=True):
    assert sa == sb
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for (a, sa), (b, sb) in zip(first[3:], resumed, strict=True):
    assert sa == sb
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = take(make_stream(demo_data_dir, seed=1), 1)
  assert not np.array_equal(other_seed[0][0]["audio"], first[0][0]["audio"])


def test_processes_read_disjoint_parts_that_cover_the_split(demo_data_dir):
  streams = [make_stream(demo_data_dir, process_index=i, process_count=3) for i in range(3)]
  for epoch in (0, 1):
    parts = [set(s.epoch_indices(epoch).tolist()) for s in streams]
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # disjoint
    assert set().union(*parts) == set(range(streams[0]._num_examples))  # covering
  # Epochs are reshuffled.
  assert not np.array_equal(streams[0].epoch_indices(0), streams[0].epoch_indices(1))
  # What a process yields comes from its own part: the first rows are its first examples.
  batch, _ = take(streams[1], 1)[0]
  source = streams[1]._source
  for row, index in zip(batch["audio"], streams[1].epoch_indices(0), strict=False):
    raw = np.asarray(source[int(index)]["speech"]).astype(np.float32) / 32768.0
    if raw.shape[0] < 16_000:
      continue
    n = min(raw.shape[0], 48_080)
    # The row is a crop of the raw example: find where it starts.
    k = int(np.flatnonzero(np.abs(row) > 1e-3)[0])
    starts = np.flatnonzero(raw[k : len(raw) - n + 1 + k] == row[k])
    assert any(np.array_equal(raw[s : s + n], row[:n]) for s in starts)
    break


def test_normalize_gives_zero_mean_unit_variance_per_utterance(demo_data_dir):
  batch, _ = take(make_stream(demo_data_dir, normalize=True), 1)[0]
  for row, pad in zip(batch["audio"], batch["audio_paddings"], strict=True):
    valid = row[pad == 0]
    np.testing.assert_allclose(valid.mean(), 0.0, atol=1e-4)
    # Below 1 only by fairseq's epsilon: var / (var + 1e-5), speech var >= 1e-3.
    assert 0.99 < valid.var() <= 1.0


def test_bad_settings_are_clear_errors(demo_data_dir):
  data = common.pretrain_config().data
  data.update(dict(data_dir=demo_data_dir, batch_size=5))
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.PretrainingStream(
      data, ml_collections.ConfigDict(), lambda n: n, seed=0, process_index=0, process_count=2
    )
  data.update(dict(name="no_such_dataset_xyz", batch_size=4))
  with pytest.raises(Exception, match="no_such_dataset_xyz"):
    pipeline.PretrainingStream(
      data, ml_collections.ConfigDict(), lambda n: n, seed=0, process_index=0, process_count=1
    )
