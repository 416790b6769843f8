"""Streams cropped, padded, span-masked audio batches from TFDS datasets.

Global batches are a pure function of (seed, batch number), whatever the number of
processes. The examples of global batch k come from a schedule:
* plain (the default): each epoch is a seeded permutation of the split's usable examples
  (at least `min_samples` long, known from a per-split length index); batch k holds
  stream positions k·B … (k+1)·B − 1 (epochs follow one another), all `max_samples` long;
* buckets (`data.buckets`): a seeded per-epoch schedule of (bucket, examples) batches,
  one static shape per bucket (`sslax.data.buckets`); a row's position counts the rows
  before it in the stream;
* mixture (`data.mixture`): each row draws its source by temperature sampling and an
  example of it (`sslax.data.mixture`), from a generator seeded by the batch number.
Process i reads rows i·b … (i+1)·b − 1 of each global batch (b = B / process count).
Augmentation (`data.augment`, off by default) and crops are seeded by the row's position;
span masks are drawn for the whole global batch (every process knows every row's length,
augmented length included) and each process keeps its rows. The only state is
`{'position': global batches consumed}`, the same on every process and saved with every
checkpoint, so a resumed run continues exactly where it stopped, on any number of
processes.

Examples are read by random access (`as_data_source` over ArrayRecord files); audio stored
encoded (TFDS `lazy_decode`, e.g. `librispeech/lazy_decode`'s FLAC bytes) is decoded with
soundfile. tf.data runs the batch reads in parallel, keeps their order and prefetches.
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import io
import os
import re

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import soundfile
import tensorflow as tf
import tensorflow_datasets as tfds

from sslax.data import augment, buckets, masking, mixture

# Registers the `sslax_demo_corpus` TFDS builder.
import sslax.data.demo_corpus  # noqa: F401  isort: skip

SAMPLE_RATE = 16_000
_NORMALIZE_EPS = 1e-5  # as fairseq's F.layer_norm over the waveform

# Independent random streams derived from the data seed (sslax.data.labelled uses 3).
_EPOCH_STREAM, _CROP_STREAM, _MASK_STREAM = 0, 1, 2
_AUGMENT_STREAM, _MIXTURE_STREAM = 4, 5


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


def _encoded(value) -> bytes | None:
  """The file bytes of audio stored encoded (TFDS `lazy_decode`), or None for samples."""
  if isinstance(value, bytes):
    return value
  if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size == 1:
    return bytes(value.item())
  return None


def _num_samples(value) -> int:
  """Samples of an audio feature's value; encoded audio is measured from its header."""
  encoded = _encoded(value)
  if encoded is None:
    return np.asarray(value).size
  return soundfile.info(io.BytesIO(encoded)).frames


def split_lengths(builder: tfds.core.DatasetBuilder, split: str, source, audio_key: str):
  """i64[num_examples]: samples per example of `split`, cached beside the prepared data.

  Computed once by reading every example (encoded audio: its header only; process 0
  writes it, atomically); a process that cannot see the file afterwards (data_dir not
  shared) computes it itself.
  """
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
  path = os.path.join(os.fspath(builder.data_dir), f"sslax_lengths_{name}.npy")

  def compute_and_write() -> None:
    lengths = np.zeros(len(source), np.int64)
    for i in range(len(source)):
      try:
        lengths[i] = _num_samples(source[i][audio_key])
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


def read_audio(source, index: int, audio_key: str, where: str) -> np.ndarray:
  """f32[num_samples]: example `index` of a data source, scaled to [-1, 1).

  Samples stored as int16 are divided by 32768; encoded audio (FLAC, WAV, Ogg bytes) is
  decoded with soundfile, which scales 16-bit PCM the same way, and must be mono 16 kHz.
  `where` names the dataset and split in the error raised when the example cannot be read.
  """
  try:
    value = source[index][audio_key]
    encoded = _encoded(value)
    if encoded is None:
      samples = np.asarray(value)
    else:
      samples, rate = soundfile.read(io.BytesIO(encoded), dtype="float32")
      if rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"{rate} Hz audio of shape {samples.shape}; expected mono {SAMPLE_RATE}")
  except Exception as error:
    raise RuntimeError(f"cannot decode example {index} of {where}") from error
  if np.issubdtype(samples.dtype, np.integer):
    samples = samples.astype(np.float32) / 32768.0
  return samples.astype(np.float32).reshape(-1)


def normalize_audio(samples: np.ndarray) -> np.ndarray:
  """Zero mean, unit variance over the utterance (fairseq task.normalize)."""
  return (samples - samples.mean()) / np.sqrt(samples.var() + _NORMALIZE_EPS)


@dataclasses.dataclass(frozen=True)
class Split:
  """One opened TFDS split: its random-access source, audio feature and length index."""

  name: str
  split: str
  source: Sequence
  audio_key: str
  lengths: np.ndarray  # i64[num_examples] samples

  @classmethod
  def open(cls, name: str, split: str, data_dir: str) -> "Split":
    builder, audio_key = open_split(name, split, data_dir)
    source = builder.as_data_source(split=split)
    return cls(name, split, source, audio_key, split_lengths(builder, split, source, audio_key))

  def read(self, index: int) -> np.ndarray:
    """f32[num_samples] audio of example `index` (`read_audio`)."""
    return read_audio(self.source, index, self.audio_key, f"{self.name}:{self.split}")


class _Clips(Sequence):
  """A split's audio clips as a sequence, each read when drawn (a lazily loaded noise bank)."""

  def __init__(self, split: Split):
    self._split = split

  def __len__(self) -> int:
    return len(self._split.lengths)

  def __getitem__(self, index: int) -> np.ndarray:
    return self._split.read(index)


@dataclasses.dataclass(frozen=True)
class Rows:
  """The rows of one global batch: its crop length and, per row, position and example.

  `examples` index the stream's examples (the sources of a mixture one after another).
  """

  num_samples: int  # S, the batch's padded length
  positions: np.ndarray  # i64[B] global stream positions (seed crops and augmentation)
  examples: np.ndarray  # i64[B] example indices


class PretrainingStream:
  """This process's share of the global batches: audio, audio_paddings and span masks.

  Each batch is a dict of numpy arrays with static shapes:
    audio f32[b, S], audio_paddings f32[b, S] (1.0 = padding),
    mask bool[b, F] (F = frames_fn(S); True = frame to mask),
  where S = data.max_samples, or the batch's bucket length with data.buckets, and
  b = the (bucket's) global batch size / process count.
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
    if data.min_samples > data.max_samples:
      raise ValueError(
        f"config.data.min_samples={data.min_samples} exceeds "
        f"config.data.max_samples={data.max_samples}"
      )
    if data.buckets and data.mixture:
      raise ValueError("config.data.buckets and config.data.mixture cannot be combined yet")
    self.bucket_lengths, self.bucket_batch_sizes = _bucket_shapes(data, frames_fn)
    for size in self.bucket_batch_sizes:
      if size % process_count:
        field = "bucket_batch_multiple" if data.buckets else "batch_size"
        raise ValueError(
          f"config.data.{field}={data[field]} gives a global batch of {size}, which does "
          f"not divide across {process_count} processes"
        )
    self._splits = [Split.open(name, split, data.data_dir) for name, split in _sources(data)]
    self._offsets = np.cumsum([0] + [len(s.lengths) for s in self._splits])
    self._lengths = np.concatenate([s.lengths for s in self._splits])
    self._data = data
    self._mask = mask_config
    self._frames_fn = frames_fn
    self._seed = seed
    self._process_index = process_index
    self._process_count = process_count
    self._augment = augment.AugmentConfig.from_config(data.augment)
    self._noise_bank = ()
    if self._augment.noise_prob > 0 and self._augment.noise_dataset:
      noise = Split.open(self._augment.noise_dataset, self._augment.noise_split, data.data_dir)
      self._noise_bank = _Clips(noise)
    self._usable = self._usable_examples(data)
    if data.mixture:
      self._set_up_mixture(data)
    elif len(self._usable) < data.batch_size:
      raise ValueError(
        f"split {data.name}:{data.split} has {len(self._usable)} examples of at least "
        f"config.data.min_samples={data.min_samples} samples, fewer than "
        f"config.data.batch_size={data.batch_size}"
      )
    if data.buckets:
      self._bucket_of = buckets.assign(self._lengths[self._usable], self.bucket_lengths)
      first = self.epoch_batches(0)
      self._rows_per_epoch = sum(len(examples) for _, examples in first)
      logging.info(
        "buckets %s samples, global batches %s, %d batches per epoch",
        self.bucket_lengths,
        self.bucket_batch_sizes,
        len(first),
      )

  def _usable_examples(self, data) -> np.ndarray:
    """i64[N]: the examples epochs permute (those of at least `data.min_samples`)."""
    return np.flatnonzero(self._lengths >= data.min_samples)

  def _set_up_mixture(self, data) -> None:
    """Per-source usable examples and temperature probabilities, logged with their share."""
    self._mixture_usable = []
    for i, split in enumerate(self._splits):
      usable = self._usable[
        (self._usable >= self._offsets[i]) & (self._usable < self._offsets[i + 1])
      ]
      if not len(usable):
        raise ValueError(
          f"config.data.mixture: {split.name}:{split.split} has no example of at least "
          f"config.data.min_samples={data.min_samples} samples"
        )
      self._mixture_usable.append(usable)
    sizes = np.asarray([len(u) for u in self._mixture_usable])
    self.mixture_probabilities = mixture.probabilities(sizes, data.mixture_alpha)
    hours = [self._lengths[u].sum() / SAMPLE_RATE / 3600 for u in self._mixture_usable]
    for split, n, h, p in zip(self._splits, sizes, hours, self.mixture_probabilities, strict=True):
      logging.info(
        "mixture source %s:%s: %d examples (%.2f h, %.1f%% of examples), drawn with p=%.4f "
        "(alpha=%s)",
        split.name,
        split.split,
        n,
        h,
        100 * n / sizes.sum(),
        p,
        data.mixture_alpha,
      )

  @functools.lru_cache(maxsize=2)  # noqa: B019  one stream object per job
  def epoch_indices(self, epoch: int) -> np.ndarray:
    """The usable examples of `epoch` in stream order (a seeded permutation)."""
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    return self._usable[rng.permutation(len(self._usable))]

  @functools.lru_cache(maxsize=2)  # noqa: B019
  def epoch_batches(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """With buckets: `epoch`'s (bucket, example indices) batches in stream order."""
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    return buckets.epoch_schedule(rng, self._usable, self._bucket_of, self.bucket_batch_sizes)

  def example_index(self, position: int) -> int:
    """The example at global stream position `position` (plain schedule)."""
    per_epoch = len(self._usable)
    return int(self.epoch_indices(position // per_epoch)[position % per_epoch])

  @functools.lru_cache(maxsize=16)  # noqa: B019  batches in flight in tf.data's map
  def batch_rows(self, batch: int) -> Rows:
    """The rows of global batch `batch` (all processes), from the schedule in use."""
    if self._data.buckets:
      per_epoch = len(self.epoch_batches(0))
      epoch, index = divmod(batch, per_epoch)
      schedule = self.epoch_batches(epoch)
      first = epoch * self._rows_per_epoch + sum(len(e) for _, e in schedule[:index])
      bucket, examples = schedule[index]
      positions = first + np.arange(len(examples))
      return Rows(self.bucket_lengths[bucket], positions, examples)
    B = self._data.batch_size
    positions = np.arange(batch * B, (batch + 1) * B)
    if self._data.mixture:
      rng = np.random.default_rng([self._seed, _MIXTURE_STREAM, batch])
      _, examples = mixture.draw(rng, B, self.mixture_probabilities, self._mixture_usable)
    else:
      examples = np.asarray([self.example_index(int(p)) for p in positions])
    return Rows(self._data.max_samples, positions, examples)

  def batch_indices(self, batch: int) -> np.ndarray:
    """i64[B]: the examples of global batch `batch`, in row order (all processes)."""
    return self.batch_rows(batch).examples

  def host_rows(self, batch: int) -> slice:
    """This process's rows of global batch `batch`."""
    b = len(self.batch_rows(batch).examples) // self._process_count
    return slice(self._process_index * b, (self._process_index + 1) * b)

  def _augment_rng(self, position: int) -> np.random.Generator:
    return np.random.default_rng([self._seed, _AUGMENT_STREAM, position])

  def row_lengths(self, batch: int) -> np.ndarray:
    """i64[B]: unpadded samples of every row of global batch `batch` (after augmentation
    and cropping), from the length index alone."""
    rows = self.batch_rows(batch)
    lengths = self._lengths[rows.examples]
    if self._augment.speed_prob > 0:
      lengths = np.asarray(
        [
          augment.augmented_length(int(n), self._augment, self._augment_rng(int(p)))
          for n, p in zip(lengths, rows.positions, strict=True)
        ]
      )
    return np.minimum(lengths, rows.num_samples)

  def _read(self, example: int) -> np.ndarray:
    split = int(np.searchsorted(self._offsets, example, side="right")) - 1
    return self._splits[split].read(example - int(self._offsets[split]))

  def _load(self, position: int, example: int, num_samples: int) -> np.ndarray:
    """Reads, augments, crops and normalises an example: f32[length <= num_samples]."""
    samples = self._read(example)
    if self._augment.enabled:
      samples = augment.augment(
        samples, self._augment, self._augment_rng(position), self._noise_bank
      )
    if samples.size > num_samples:
      rng = np.random.default_rng([self._seed, _CROP_STREAM, position])
      start = int(rng.integers(0, samples.size - num_samples + 1))
      samples = samples[start : start + num_samples]
    if self._data.normalize:
      samples = normalize_audio(samples)
    return samples

  def _global_masks(self, batch: int) -> np.ndarray:
    """bool[B, F]: span masks of the whole global batch, from its rows' lengths only."""
    rows = self.batch_rows(batch)
    rng = np.random.default_rng([self._seed, _MASK_STREAM, batch])
    return masking.batch_span_masks(
      rng,
      self._frames_fn(rows.num_samples),
      np.asarray([self._frames_fn(int(n)) for n in self.row_lengths(batch)]),
      mask_prob=self._mask.mask_prob,
      mask_length=self._mask.mask_length,
      min_masks=self._mask.min_masks,
      require_same_masks=self._mask.require_same_masks,
    )

  def host_batch(self, batch: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `batch` (shapes in the class docstring)."""
    rows, mine = self.batch_rows(batch), self.host_rows(batch)
    positions, examples = rows.positions[mine], rows.examples[mine]
    audio = np.zeros((len(examples), rows.num_samples), np.float32)
    paddings = np.ones_like(audio)
    for row, (position, example) in enumerate(zip(positions, examples, strict=True)):
      samples = self._load(int(position), int(example), rows.num_samples)
      audio[row, : samples.size] = samples
      paddings[row, : samples.size] = 0.0
    return {"audio": audio, "audio_paddings": paddings, "mask": self._global_masks(batch)[mine]}

  def batch_dtypes(self) -> dict[str, type]:
    """Name -> numpy dtype of every array of a host batch, in a fixed order."""
    return {"audio": np.float32, "audio_paddings": np.float32, "mask": bool}

  def batches(self, start_position: int = 0) -> Iterator[tuple[dict, dict]]:
    """Yields `(host batch, state)` forever from global batch `start_position` on; `state`
    is where to resume after this batch."""
    names = list(self.batch_dtypes())

    def read(batch):
      host = self.host_batch(int(batch))
      return [host[name] for name in names]

    dtypes = [tf.as_dtype(dtype) for dtype in self.batch_dtypes().values()]
    ds = tf.data.Dataset.range(start_position, np.iinfo(np.int64).max)
    ds = ds.map(
      lambda k: (k, *tf.numpy_function(read, [k], dtypes)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    ds = ds.prefetch(self._data.prefetch)
    for batch, *arrays in ds.as_numpy_iterator():
      yield dict(zip(names, arrays, strict=True)), {"position": int(batch) + 1}


def _sources(data: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(name, split) of every source: `data.mixture`'s pairs, or `data.name`:`data.split`."""
  if not data.mixture:
    return [(data.name, data.split)]
  sources = [tuple(pair) for pair in data.mixture]
  if any(len(pair) != 2 for pair in sources):
    raise ValueError(f"config.data.mixture={data.mixture} must hold (name, split) pairs")
  return sources


def _bucket_shapes(data, frames_fn) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(crop lengths, global batch sizes) of the buckets; one bucket without `data.buckets`."""
  if not data.buckets:
    return (data.max_samples,), (data.batch_size,)
  lengths = tuple(sorted(int(n) for n in data.buckets))
  if len(set(lengths)) != len(lengths) or lengths[-1] != data.max_samples:
    raise ValueError(
      f"config.data.buckets={tuple(data.buckets)} must be distinct lengths whose largest is "
      f"config.data.max_samples={data.max_samples}"
    )
  for n in lengths:
    if frames_fn(n - 1) == frames_fn(n):
      raise ValueError(
        f"config.data.buckets: {n} samples is not an exact frame count for the model's "
        f"frontend ({frames_fn(n)} frames need only {_exact_length(frames_fn, n)})"
      )
  multiple = data.bucket_batch_multiple
  if multiple < 1 or data.batch_size % multiple:
    raise ValueError(
      f"config.data.bucket_batch_multiple={multiple} must be >= 1 and divide "
      f"config.data.batch_size={data.batch_size}"
    )
  return lengths, buckets.batch_sizes(lengths, data.batch_size, multiple)


def _exact_length(frames_fn, num_samples: int) -> int:
  """The fewest samples that give as many frames as `num_samples` (binary search)."""
  frames, low, high = frames_fn(num_samples), 1, num_samples
  while low < high:
    middle = (low + high) // 2
    low, high = (middle + 1, high) if frames_fn(middle) < frames else (low, middle)
  return low


def check_batch_shards(data: ml_collections.ConfigDict, shards: int) -> None:
  """Raises ValueError naming the field when a global batch (of any bucket) does not
  divide into `shards` (the mesh's batch shards times gradient-accumulation steps)."""
  field = "bucket_batch_multiple" if data.buckets else "batch_size"
  if data[field] % shards:
    raise ValueError(
      f"config.data.{field}={data[field]} must be a multiple of the {shards} batch shards "
      f"(mesh data x fsdp x grad_accum_steps)"
    )
