"""Static-shape length buckets: one shape per bucket, every example once per epoch, resume."""

import collections

import jax
import numpy as np
import pytest
from streams import take

from configs import common
from sslax.data import buckets, pretraining_stream, schedule
from sslax.models import frontends

CONV = common.WAV2VEC2_CONV_LAYERS
BUCKETS = (48_080, 96_080, 160_080)  # 320·F + 80: 150, 300 and 500 frames


def frames_fn(n):
  return int(frontends.num_frames(n, CONV))


def make_stream(data_dir, *, process_index=0, process_count=1, **data_fields):
  data = common.pretrain_config().data
  data.update(
    dict(
      data_dir=data_dir,
      batch_size=8,
      max_samples=160_080,
      min_samples=16_000,
      buckets=BUCKETS,
      bucket_batch_multiple=2,
    )
  )
  data.update(data_fields)
  return pretraining_stream.PretrainingStream(
    data,
    common.pretrain_config().masking,
    frames_fn,
    seed=0,
    process_index=process_index,
    process_count=process_count,
  )


def test_batch_sizes_hold_total_audio_roughly_constant():
  sizes = buckets.batch_sizes(BUCKETS, 8, 2)
  assert sizes == (26, 12, 8)  # 2·floor(8·160080 / (L·2))
  for size, length in zip(sizes, BUCKETS, strict=True):
    assert size % 2 == 0 and size * length <= 8 * 160_080 < (size + 2) * length


def test_an_epoch_has_one_shape_per_bucket_and_every_example_once(demo_data_dir):
  stream = make_stream(demo_data_dir)
  per_epoch = len(stream.schedule.epoch_batches(0))
  usable = stream.schedule.usable
  seen, shapes = collections.Counter(), set()
  step = jax.jit(lambda audio, mask: (audio.sum(), mask.sum()))
  for k, (batch, state) in enumerate(take(stream.batches(), per_epoch)):
    assert state == {"position": k + 1}
    B, S = batch["audio"].shape
    assert (B, S) in {(26, 48_080), (12, 96_080), (8, 160_080)}
    assert batch["mask"].shape == (B, frames_fn(S))
    shapes.add((B, S))
    step(batch["audio"], batch["mask"])
    examples = stream.schedule.batch_indices(k)
    lengths = stream._lengths[examples]
    # Each row is its whole utterance (cropped only in the largest bucket), in a bucket no
    # smaller than the smallest that holds it.
    np.testing.assert_array_equal((1 - batch["audio_paddings"]).sum(1), np.minimum(lengths, S))
    smallest = np.minimum(np.searchsorted(BUCKETS, lengths), 2)
    assert (np.asarray(BUCKETS)[smallest] <= S).all()
    seen.update(examples.tolist())
  assert len(shapes) == len(BUCKETS)
  # The jitted step compiled once per bucket shape.
  assert step._cache_size() == len(BUCKETS)
  assert sorted(seen) == sorted(usable.tolist())
  fills = sum(seen.values()) - len(usable)
  assert 0 <= fills < 8 and all(count <= 2 for count in seen.values())
  assert sum(count == 2 for count in seen.values()) == fills
  # The next epoch is reshuffled and has as many batches.
  assert len(stream.schedule.epoch_batches(1)) == per_epoch
  assert not np.array_equal(
    stream.schedule.batch_indices(0), stream.schedule.batch_indices(per_epoch)
  )


def test_bucketed_stream_resumes_exactly_and_splits_over_processes(demo_data_dir):
  stream = make_stream(demo_data_dir)
  per_epoch = len(stream.schedule.epoch_batches(0))
  start = per_epoch - 1  # across the epoch boundary
  first = [stream.host_batch(k) for k in (start, start + 1)]
  resumed = take(make_stream(demo_data_dir).batches(start), 2)
  for expected, (batch, _) in zip(first, resumed, strict=True):
    for key in expected:
      np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
  assert resumed[-1][1] == {"position": start + 2}
  halves = [make_stream(demo_data_dir, process_index=i, process_count=2) for i in range(2)]
  for k in (0, 1):
    whole = stream.host_batch(k)
    parts = [half.host_batch(k) for half in halves]
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_bucket_settings_are_clear_errors(demo_data_dir):
  with pytest.raises(ValueError, match=r"config.data.buckets: 48000 samples .* 47760"):
    make_stream(demo_data_dir, buckets=(48_000, 160_080))
  with pytest.raises(ValueError, match="config.data.max_samples"):
    make_stream(demo_data_dir, buckets=(48_080, 96_080))
  with pytest.raises(ValueError, match="config.data.bucket_batch_multiple=3"):
    make_stream(demo_data_dir, bucket_batch_multiple=3)
  with pytest.raises(ValueError, match="config.data.bucket_batch_multiple=2 .* 4 processes"):
    make_stream(demo_data_dir, batch_size=8, process_count=4)
  data = common.pretrain_config().data
  data.update(dict(buckets=BUCKETS, batch_size=8, bucket_batch_multiple=2, max_samples=160_080))
  schedule.check_batch_shards(data, 2)
  with pytest.raises(ValueError, match="config.data.bucket_batch_multiple=2 .* 4 batch shards"):
    schedule.check_batch_shards(data, 4)
