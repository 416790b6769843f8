"""Streams cropped, padded, span-masked audio batches from a TFDS dataset.

Global batches are a pure function of (seed, batch number), whatever the number of
processes: each epoch is a seeded permutation of the split's usable examples (at least
`min_samples` long, known from a per-split length index), global batch k is its examples
k·B … (k+1)·B − 1 (epochs follow one another), and process i reads rows i·b … (i+1)·b − 1
of it. Crops are seeded by the example's global position; span masks are drawn for the
whole global batch (every process knows every row's length) and each process keeps its
rows. The only state is `{'position': global batches consumed}`, the same on every process
and saved with every checkpoint, so a resumed run continues exactly where it stopped, on
any number of processes.

Examples are read by random access (`as_data_source` over ArrayRecord files); tf.data
runs the batch reads in parallel, keeps their order and prefetches.
"""

from collections.abc import Callable, Iterator
import functools
import os
import re

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


def split_lengths(builder: tfds.core.DatasetBuilder, split: str, source, audio_key: str):
  """i64[num_examples]: samples per example of `split`, cached beside the prepared data.

  Computed once by reading every example (process 0 writes it, atomically); a process
  that cannot see the file afterwards (data_dir not shared) computes it itself.
  """
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
  path = os.path.join(os.fspath(builder.data_dir), f"sslax_lengths_{name}.npy")

  def compute_and_write() -> None:
    lengths = np.zeros(len(source), np.int64)
    for i in range(len(source)):
      try:
        lengths[i] = np.asarray(source[i][audio_key]).size
      except Exception as error:
        raise RuntimeError(f"cannot decode example {i} of {builder.name}:{split}") from error
    tmp = f"{path}.tmp{jax.process_index()}.npy"
    np.save(tmp, lengths)
    os.replace(tmp, path)

  if not os.path.exists(path) and jax.process_index() == 0:
    compute_and_write()
  multihost_utils.sync_global_devices(f"lengths {builder.name} {split}")
  if not os.path.exists(path):
    compute_and_write()
  lengths = np.load(path)
  if lengths.shape != (len(source),):
    raise ValueError(f"{path} holds {lengths.shape[0]} lengths for {len(source)} examples")
  return lengths


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
    self._lengths = split_lengths(builder, data.split, self._source, self._audio_key)
    self._usable = np.flatnonzero(self._lengths >= data.min_samples)
    if len(self._usable) < data.batch_size:
      raise ValueError(
        f"split {data.name}:{data.split} has {len(self._usable)} examples of at least "
        f"config.data.min_samples={data.min_samples} samples, fewer than "
        f"config.data.batch_size={data.batch_size}"
      )
    self._data = data
    self._mask = mask_config
    self._frames_fn = frames_fn
    self._seed = seed
    self._process_index = process_index
    self.host_batch_size = data.batch_size // process_count
    self.num_frames = frames_fn(data.max_samples)

  @functools.lru_cache(maxsize=2)  # noqa: B019  one stream object per job
  def epoch_indices(self, epoch: int) -> np.ndarray:
    """The usable examples of `epoch` in stream order (a seeded permutation)."""
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    return self._usable[rng.permutation(len(self._usable))]

  def example_index(self, position: int) -> int:
    """The example at global stream position `position`."""
    per_epoch = len(self._usable)
    return int(self.epoch_indices(position // per_epoch)[position % per_epoch])

  def batch_indices(self, batch: int) -> np.ndarray:
    """i64[B]: the examples of global batch `batch`, in row order (all processes)."""
    B = self._data.batch_size
    return np.asarray([self.example_index(p) for p in range(batch * B, (batch + 1) * B)])

  def _load(self, position: int) -> np.ndarray:
    """Reads, crops and normalises the example at a global position: f32[length <= S]."""
    index = self.example_index(position)
    try:
      samples = np.asarray(self._source[index][self._audio_key])
    except Exception as error:
      raise RuntimeError(
        f"cannot decode example {index} of {self._data.name}:{self._data.split}"
      ) from error
    if np.issubdtype(samples.dtype, np.integer):
      samples = samples.astype(np.float32) / 32768.0
    samples = samples.astype(np.float32).reshape(-1)
    if samples.size > self._data.max_samples:
      rng = np.random.default_rng([self._seed, _CROP_STREAM, position])
      start = int(rng.integers(0, samples.size - self._data.max_samples + 1))
      samples = samples[start : start + self._data.max_samples]
    if self._data.normalize:
      samples = (samples - samples.mean()) / np.sqrt(samples.var() + _NORMALIZE_EPS)
    return samples

  def _global_masks(self, batch: int) -> np.ndarray:
    """bool[B, F]: span masks of the whole global batch, from its rows' lengths only."""
    cropped = np.minimum(self._lengths[self.batch_indices(batch)], self._data.max_samples)
    rng = np.random.default_rng([self._seed, _MASK_STREAM, batch])
    return masking.batch_span_masks(
      rng,
      self.num_frames,
      np.asarray([self._frames_fn(int(n)) for n in cropped]),
      mask_prob=self._mask.mask_prob,
      mask_length=self._mask.mask_length,
      min_masks=self._mask.min_masks,
      require_same_masks=self._mask.require_same_masks,
    )

  def host_batch(self, batch: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `batch` (shapes in the class docstring)."""
    b, S = self.host_batch_size, self._data.max_samples
    first = batch * self._data.batch_size + self._process_index * b
    audio = np.zeros((b, S), np.float32)
    paddings = np.ones((b, S), np.float32)
    for row in range(b):
      samples = self._load(first + row)
      audio[row, : samples.size] = samples
      paddings[row, : samples.size] = 0.0
    rows = slice(self._process_index * b, (self._process_index + 1) * b)
    return {"audio": audio, "audio_paddings": paddings, "mask": self._global_masks(batch)[rows]}

  def batches(self, start_position: int = 0) -> Iterator[tuple[dict, dict]]:
    """Yields `(host batch, state)` forever from global batch `start_position` on; `state`
    is where to resume after this batch."""
    b, S, F = self.host_batch_size, self._data.max_samples, self.num_frames

    def read(batch):
      host = self.host_batch(int(batch))
      return host["audio"], host["audio_paddings"], host["mask"]

    ds = tf.data.Dataset.range(start_position, np.iinfo(np.int64).max)
    ds = ds.map(
      lambda k: (k, *tf.numpy_function(read, [k], (tf.float32, tf.float32, tf.bool))),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    ds = ds.prefetch(self._data.prefetch)
    for batch, audio, paddings, mask in ds.as_numpy_iterator():
      host = {
        "audio": audio.reshape(b, S),
        "audio_paddings": paddings.reshape(b, S),
        "mask": mask.reshape(b, F),
      }
      yield host, {"position": int(batch) + 1}
