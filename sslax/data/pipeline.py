"""Streams cropped, padded, span-masked audio batches from a TFDS dataset.

The stream is a pure function of (seed, position): each epoch is a seeded permutation of
the split, each process takes every `process_count`-th example of it (disjoint parts that
together cover the split), crops are seeded by the example's stream position and masks by
the batch's first position. The only state is `{'position': examples consumed}`, saved
with every checkpoint, so a resumed run continues exactly where it stopped.

Examples are read by random access (`as_data_source` over ArrayRecord files); tf.data
runs the reads in parallel, keeps their order, batches and prefetches.
"""

from collections.abc import Callable, Iterator
import functools

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslax.data import masking

# Registers the `sslax_demo_corpus` TFDS builder.
import sslax.data.demo_corpus  # noqa: F401  isort: skip

SAMPLE_RATE = 16_000
_NORMALIZE_EPS = 1e-5  # as fairseq's F.layer_norm over the waveform

# Independent random streams derived from the data seed.
_EPOCH_STREAM, _CROP_STREAM, _MASK_STREAM = 0, 1, 2


def open_split(name: str, split: str, data_dir: str) -> tuple[tfds.core.DatasetBuilder, str]:
  """Prepares (once, offline) and returns the TFDS builder and the name of its audio feature.

  Only process 0 prepares; the others wait for it. Raises ValueError naming the dataset
  when it has no single 16 kHz audio feature.
  """
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    if jax.process_index() == 0:
      builder.download_and_prepare(file_format="array_record")
    multihost_utils.sync_global_devices(f"prepare {name}")
    builder = tfds.builder(name, data_dir=data_dir or None)
  audio_keys = [
    key
    for key, feature in builder.info.features.items()
    if isinstance(feature, tfds.features.Audio)
  ]
  if len(audio_keys) != 1:
    raise ValueError(f"TFDS dataset {name!r} must have one Audio feature, found {audio_keys}")
  rate = builder.info.features[audio_keys[0]].sample_rate
  if rate != SAMPLE_RATE:
    raise ValueError(
      f"TFDS dataset {name!r} feature {audio_keys[0]!r} is sampled at {rate} Hz; "
      f"sslax models expect {SAMPLE_RATE} Hz"
    )
  return builder, audio_keys[0]


class PretrainingStream:
  """This process's share of the global batches: audio, audio_paddings and span masks.

  Each batch is a dict of numpy arrays with static shapes:
    audio f32[b, S] (S = max_samples), audio_paddings f32[b, S] (1.0 = padding),
    mask bool[b, F] (F = frames_fn(S); True = frame to mask),
  where b = global batch size / process count.
  """

  def __init__(
    self,
    data: ml_collections.ConfigDict,
    mask_config: ml_collections.ConfigDict,
    frames_fn: Callable[[int], int],
    *,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    if data.batch_size % process_count:
      raise ValueError(
        f"config.data.batch_size={data.batch_size} does not divide across {process_count} processes"
      )
    if data.min_samples > data.max_samples:
      raise ValueError(
        f"config.data.min_samples={data.min_samples} exceeds "
        f"config.data.max_samples={data.max_samples}"
      )
    builder, self._audio_key = open_split(data.name, data.split, data.data_dir)
    self._source = builder.as_data_source(split=data.split)
    self._num_examples = len(self._source)
    if self._num_examples < process_count:
      raise ValueError(f"split {data.name}:{data.split} has fewer examples than processes")
    self._data = data
    self._mask = mask_config
    self._frames_fn = frames_fn
    self._seed = seed
    self._process_index = process_index
    self._process_count = process_count
    self.host_batch_size = data.batch_size // process_count
    self.num_frames = frames_fn(data.max_samples)

  @functools.lru_cache(maxsize=2)  # noqa: B019  one stream object per job
  def epoch_indices(self, epoch: int) -> np.ndarray:
    """This process's examples of `epoch`, in order: a disjoint slice of a permutation."""
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    permutation = rng.permutation(self._num_examples)
    return permutation[self._process_index :: self._process_count]

  def _example_index(self, position: int) -> int:
    per_epoch = len(self.epoch_indices(0))
    return int(self.epoch_indices(position // per_epoch)[position % per_epoch])

  def _load(self, position: np.int64) -> tuple[np.ndarray, np.int32, np.int64]:
    """Reads, crops and normalises one example: (audio f32[S], valid length, position)."""
    position = int(position)
    index = self._example_index(position)
    try:
      samples = np.asarray(self._source[index][self._audio_key])
    except Exception as error:
      raise RuntimeError(
        f"cannot decode example {index} of {self._data.name}:{self._data.split}"
      ) from error
    if np.issubdtype(samples.dtype, np.integer):
      samples = samples.astype(np.float32) / 32768.0
    samples = samples.astype(np.float32).reshape(-1)
    length = samples.shape[0]
    out = np.zeros(self._data.max_samples, np.float32)
    if length < self._data.min_samples:
      return out, np.int32(length), np.int64(position)
    if length > self._data.max_samples:
      rng = np.random.default_rng([self._seed, _CROP_STREAM, position])
      start = int(rng.integers(0, length - self._data.max_samples + 1))
      samples = samples[start : start + self._data.max_samples]
      length = self._data.max_samples
    if self._data.normalize:
      samples = (samples - samples.mean()) / np.sqrt(samples.var() + _NORMALIZE_EPS)
    out[:length] = samples
    return out, np.int32(length), np.int64(position)

  def _finish_batch(
    self, audio: np.ndarray, lengths: np.ndarray, positions: np.ndarray
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.int64]:
    """Adds paddings and span masks to a batch of cropped audio."""
    paddings = (np.arange(audio.shape[1])[None, :] >= lengths[:, None]).astype(np.float32)
    valid_frames = np.asarray([self._frames_fn(int(n)) for n in lengths])
    rng = np.random.default_rng([self._seed, _MASK_STREAM, int(positions[0])])
    mask = masking.batch_span_masks(
      rng,
      self.num_frames,
      valid_frames,
      mask_prob=self._mask.mask_prob,
      mask_length=self._mask.mask_length,
      min_masks=self._mask.min_masks,
      require_same_masks=self._mask.require_same_masks,
    )
    return audio, paddings, mask, np.int64(positions[-1] + 1)

  def batches(self, start_position: int = 0) -> Iterator[tuple[dict, dict]]:
    """Yields `(batch, state)` forever; `state` is where to resume after this batch."""
    b, S, F = self.host_batch_size, self._data.max_samples, self.num_frames
    ds = tf.data.Dataset.range(start_position, np.iinfo(np.int64).max)
    ds = ds.map(
      lambda p: tf.numpy_function(self._load, [p], (tf.float32, tf.int32, tf.int64)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    ds = ds.filter(lambda audio, length, position: length >= self._data.min_samples)
    ds = ds.batch(b, drop_remainder=True)
    ds = ds.map(
      lambda a, n, p: tf.numpy_function(
        self._finish_batch, [a, n, p], (tf.float32, tf.float32, tf.bool, tf.int64)
      )
    )
    ds = ds.prefetch(self._data.prefetch)
    for audio, paddings, mask, next_position in ds.as_numpy_iterator():
      batch = {
        "audio": audio.reshape(b, S),
        "audio_paddings": paddings.reshape(b, S),
        "mask": mask.reshape(b, F),
      }
      yield batch, {"position": int(next_position)}
