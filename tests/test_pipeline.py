"""The pretraining input stream: static shapes, masks, per-process parts, exact resume,
augmentation."""

import ml_collections
import numpy as np
import pytest
import streams

from configs import common
from sslax.data import augment, pretraining_stream
from sslax.models import frontends

CONV = common.WAV2VEC2_CONV_LAYERS


def make_stream(
  data_dir,
  *,
  batch_size=4,
  process_index=0,
  process_count=1,
  normalize=False,
  seed=0,
  min_samples=16_000,
  max_samples=48_080,
  **augment,
):
  data = common.pretrain_config().data
  data.update(
    dict(
      data_dir=data_dir,
      batch_size=batch_size,
      max_samples=max_samples,
      min_samples=min_samples,
      normalize=normalize,
    )
  )
  data.augment.update(augment)
  masking = common.pretrain_config().masking
  return pretraining_stream.PretrainingStream(
    data,
    masking,
    lambda n: int(frontends.num_frames(n, CONV)),
    seed=seed,
    process_index=process_index,
    process_count=process_count,
  )


def take(stream, n, start=0):
  return streams.take(stream.batches(start), n)


def test_batches_have_static_shapes_and_consistent_paddings(demo_data_dir):
  stream = make_stream(demo_data_dir)
  F = frontends.num_frames(48_080, CONV)
  for i, (batch, state) in enumerate(take(stream, 6)):
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
    assert state["position"] == i + 1  # global batches consumed


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


def test_processes_split_the_same_global_batches_whatever_their_number(demo_data_dir):
  whole = make_stream(demo_data_dir, batch_size=12)
  parts = [
    make_stream(demo_data_dir, batch_size=12, process_index=i, process_count=3) for i in range(3)
  ]
  for k in (0, 1, 7):
    expected = whole.host_batch(k)
    rows = [part.host_batch(k) for part in parts]
    for key in expected:
      np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), expected[key])
  # An epoch of stream positions holds every usable example once, and only those.
  usable = whole.schedule.usable
  epoch = [whole.schedule.example_index(p) for p in range(len(usable))]
  assert sorted(epoch) == sorted(usable.tolist())
  assert not np.array_equal(
    whole.schedule.epoch_indices(0), whole.schedule.epoch_indices(1)
  )  # reshuffled
  # The lengths index is right, and row r of batch k is a crop of example batch_indices(k)[r].
  source = whole._splits[0].source
  batch = whole.host_batch(0)
  for row, index in list(zip(batch["audio"], whole.schedule.batch_indices(0), strict=True))[:4]:
    raw = np.asarray(source[int(index)]["speech"]).astype(np.float32) / 32768.0
    assert raw.size == whole._lengths[index]
    n = min(raw.shape[0], 48_080)
    k = int(np.flatnonzero(np.abs(row) > 1e-3)[0])
    starts = np.flatnonzero(raw[k : len(raw) - n + 1 + k] == row[k])
    assert any(np.array_equal(raw[s : s + n], row[:n]) for s in starts)


def test_utterances_below_min_samples_never_appear(demo_data_dir):
  stream = make_stream(demo_data_dir, min_samples=48_000)
  short = np.flatnonzero(stream._lengths < 48_000)
  assert 0 < len(short) < len(stream._lengths)
  assert not set(short.tolist()) & set(stream.schedule.epoch_indices(0).tolist())
  for batch, _ in take(stream, 3):
    assert ((1 - batch["audio_paddings"]).sum(1) >= 48_000).all()


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
    pretraining_stream.PretrainingStream(
      data, ml_collections.ConfigDict(), lambda n: n, seed=0, process_index=0, process_count=2
    )
  data.update(dict(name="no_such_dataset_xyz", batch_size=4))
  with pytest.raises(Exception, match="no_such_dataset_xyz"):
    pretraining_stream.PretrainingStream(
      data, ml_collections.ConfigDict(), lambda n: n, seed=0, process_index=0, process_count=1
    )


def assert_same_batches(first, second):
  for (a, sa), (b, sb) in zip(first, second, strict=True):
    assert sa == sb
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_without_augmentation_rows_are_the_seeded_crops_of_the_raw_audio(demo_data_dir):
  # The documented crop, computed here from scratch: bit-identical to the stream before
  # augmentation existed (probabilities 0 skip it entirely).
  stream = make_stream(demo_data_dir)
  source = stream._splits[0].source
  for k, (batch, _) in enumerate(take(stream, 2)):
    for row, index in enumerate(stream.schedule.batch_indices(k)):
      raw = np.asarray(source[int(index)]["speech"]).astype(np.float32) / 32768.0
      start = 0
      if raw.size > 48_080:
        rng = np.random.default_rng([0, 1, k * 4 + row])  # (seed, crop stream, position)
        start = int(rng.integers(0, raw.size - 48_080 + 1))
      crop = raw[start : start + 48_080]
      np.testing.assert_array_equal(batch["audio"][row, : crop.size], crop)
      assert batch["audio_paddings"][row, : crop.size].sum() == 0


AUGMENT_ALL = dict(speed_prob=1.0, speed_factors=(0.9, 1.1), gain_prob=1.0, noise_prob=1.0)


def test_augmented_batches_are_seeded_and_resume_exactly(demo_data_dir):
  clean = take(make_stream(demo_data_dir), 3)
  augmented = take(make_stream(demo_data_dir, **AUGMENT_ALL), 3)
  again = take(make_stream(demo_data_dir, **AUGMENT_ALL), 3)
  resumed = take(make_stream(demo_data_dir, **AUGMENT_ALL), 1, start=2)
  assert_same_batches(augmented, again)
  assert_same_batches(augmented[2:], resumed)
  stream = make_stream(demo_data_dir, **AUGMENT_ALL)
  for k, ((a, _), (c, _)) in enumerate(zip(augmented, clean, strict=True)):
    assert not np.array_equal(a["audio"], c["audio"])
    # Speed changes lengths; paddings and masks follow the augmented, cropped lengths.
    lengths = (1 - a["audio_paddings"]).sum(1).astype(int)
    np.testing.assert_array_equal(lengths, stream.schedule.row_lengths(k))
    # Each row's speed is the first draw of its (seed, augment stream, position) generator.
    speeds = [
      augment.speed_factor(stream._augment, np.random.default_rng([0, 4, k * 4 + r]))
      for r in range(4)
    ]
    raw = stream._lengths[stream.schedule.batch_indices(k)]
    expected = [min(round(n / f), 48_080) for n, f in zip(raw, speeds, strict=True)]
    np.testing.assert_array_equal(lengths, expected)
    for mask_row, n in zip(a["mask"], lengths, strict=True):
      assert not mask_row[frontends.num_frames(int(n), CONV) :].any()


def test_noise_bank_comes_from_a_tfds_split(demo_data_dir):
  # Utterances of the demo corpus are at most 10 s: nothing is cropped, so the SNR holds.
  noise = dict(max_samples=160_080, noise_prob=1.0, snr_db=(0.0, 0.0))
  generated = make_stream(demo_data_dir, **noise)
  banked = make_stream(demo_data_dir, noise_dataset="sslax_demo_corpus", noise_split="dev", **noise)
  assert len(banked._noise_bank) == 60 and generated._noise_bank == ()
  clean = make_stream(demo_data_dir, max_samples=160_080).host_batch(0)
  g, b = generated.host_batch(0), banked.host_batch(0)
  np.testing.assert_array_equal(b["audio"], banked.host_batch(0)["audio"])
  assert not np.array_equal(b["audio"], g["audio"])
  # 0 dB: the added noise has the power of the speech.
  for row in range(4):
    valid = b["audio_paddings"][row] == 0
    speech, added = clean["audio"][row, valid], b["audio"][row, valid] - clean["audio"][row, valid]
    np.testing.assert_allclose(np.mean(added**2), np.mean(speech**2), rtol=1e-3)
