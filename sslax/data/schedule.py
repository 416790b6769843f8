"""The pure schedule of a stream: which examples fill global batch k, crops and span masks.

No I/O: everything here is a function of the examples' lengths (from the index of
`sslax.data.splits`), the config and the seed, so every process computes the same schedule
and a global batch is a pure function of (seed, batch number), whatever the number of
processes. The examples of global batch k come from one of three schedules:
* plain (the default): each epoch is a seeded permutation of the usable examples; batch k
  holds stream positions k·B … (k+1)·B − 1 (epochs follow one another), all
  `data.max_samples` long;
* buckets (`data.buckets`): a seeded per-epoch schedule of (bucket, examples) batches, one
  static shape per bucket (`sslax.data.buckets`); a row's position counts the rows before
  it in the stream;
* mixture (`data.mixture`): each row draws its source by temperature sampling and an
  example of it (`sslax.data.mixture`), from a generator seeded by the batch number.
Process i reads rows i·b … (i+1)·b − 1 of each global batch (b = B / process count).
Crops and augmentation are seeded by the row's stream position; span masks are drawn for the
whole global batch from its rows' lengths (augmented lengths included), so every process
knows every row's mask and keeps its own rows'.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools

import ml_collections
import numpy as np

from sslax.data import augment, buckets, masking, mixture

# Independent random streams derived from the data seed (sslax.data.labelled uses 3).
_EPOCH_STREAM, _CROP_STREAM, _MASK_STREAM = 0, 1, 2
_AUGMENT_STREAM, _MIXTURE_STREAM, _SUBSTITUTE_STREAM = 4, 5, 6


@dataclasses.dataclass(frozen=True)
class Rows:
  """The rows of one global batch: its crop length and, per row, position and example.

  `examples` index the stream's examples (the sources of a mixture one after another).
  """

  num_samples: int  # S, the batch's padded length
  positions: np.ndarray  # i64[B] global stream positions (seed crops and augmentation)
  examples: np.ndarray  # i64[B] example indices


class Schedule:
  """The rows, crops and span masks of every global batch of a stream (module docstring).

  Args:
    lengths: i64[N] samples (16 kHz) of every example of the stream's sources, one source
      after another.
    offsets: i64[num_sources + 1] where each source's examples start in `lengths`.
    usable: i64[M] sorted examples the epochs permute (good audio, long enough).
    data: config.data (batch_size, max_samples, buckets, bucket_batch_multiple, mixture,
      mixture_alpha).
    mask_config: config.masking.
    frames_fn: the model's frames for a number of samples.
    augment_config: the augmentation, whose speed changes alter row lengths.
    seed: the data seed.
    process_index, process_count: which rows of each global batch this process reads.
  """

  def __init__(
    self,
    lengths: np.ndarray,
    offsets: np.ndarray,
    usable: np.ndarray,
    data: ml_collections.ConfigDict,
    mask_config: ml_collections.ConfigDict,
    frames_fn: Callable[[int], int],
    augment_config: augment.AugmentConfig,
    *,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    self.lengths, self.offsets, self.usable = lengths, offsets, usable
    self._data = data
    self._mask = mask_config
    self._frames_fn = frames_fn
    self._augment = augment_config
    self._seed = seed
    self._process_index = process_index
    self._process_count = process_count
    self.bucket_lengths, self.bucket_batch_sizes = bucket_shapes(data, frames_fn)
    if data.mixture:
      self.mixture_usable = [
        usable[(usable >= offsets[i]) & (usable < offsets[i + 1])] for i in range(len(offsets) - 1)
      ]
      sizes = np.asarray([len(u) for u in self.mixture_usable])
      self.mixture_probabilities = mixture.probabilities(sizes, data.mixture_alpha)
    if data.buckets:
      self._bucket_of = buckets.assign(lengths[usable], self.bucket_lengths)
      self.batches_per_epoch = len(self.epoch_batches(0))
      self._rows_per_epoch = sum(len(examples) for _, examples in self.epoch_batches(0))

  @functools.lru_cache(maxsize=2)  # noqa: B019  one schedule per stream
  def epoch_indices(self, epoch: int) -> np.ndarray:
    """The usable examples of `epoch` in stream order (a seeded permutation)."""
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    return self.usable[rng.permutation(len(self.usable))]

  @functools.lru_cache(maxsize=2)  # noqa: B019
  def epoch_batches(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """With buckets: `epoch`'s (bucket, example indices) batches in stream order."""
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    return buckets.epoch_schedule(rng, self.usable, self._bucket_of, self.bucket_batch_sizes)

  def example_index(self, position: int) -> int:
    """The example at global stream position `position` (plain schedule)."""
    per_epoch = len(self.usable)
    return int(self.epoch_indices(position // per_epoch)[position % per_epoch])

  @functools.lru_cache(maxsize=16)  # noqa: B019  batches read ahead by the executor
  def batch_rows(self, batch: int) -> Rows:
    """The rows of global batch `batch` (all processes), from the schedule in use."""
    if self._data.buckets:
      epoch, index = divmod(batch, self.batches_per_epoch)
      schedule = self.epoch_batches(epoch)
      first = epoch * self._rows_per_epoch + sum(len(e) for _, e in schedule[:index])
      bucket, examples = schedule[index]
      positions = first + np.arange(len(examples))
      return Rows(self.bucket_lengths[bucket], positions, examples)
    B = self._data.batch_size
    positions = np.arange(batch * B, (batch + 1) * B)
    if self._data.mixture:
      rng = np.random.default_rng([self._seed, _MIXTURE_STREAM, batch])
      _, examples = mixture.draw(rng, B, self.mixture_probabilities, self.mixture_usable)
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

  def augment_rng(self, position: int) -> np.random.Generator:
    """The generator of the augmentation of the row at stream `position`."""
    return np.random.default_rng([self._seed, _AUGMENT_STREAM, position])

  def row_lengths(self, batch: int) -> np.ndarray:
    """i64[B]: unpadded samples of every row of global batch `batch` (after augmentation
    and cropping), from the lengths alone."""
    rows = self.batch_rows(batch)
    lengths = self.lengths[rows.examples]
    if self._augment.speed_prob > 0:
      lengths = np.asarray(
        [
          augment.augmented_length(int(n), self._augment, self.augment_rng(int(p)))
          for n, p in zip(lengths, rows.positions, strict=True)
        ]
      )
    return np.minimum(lengths, rows.num_samples)

  def crop_start(self, position: int, length: int, num_samples: int) -> int:
    """First sample of the crop to `num_samples` of a `length`-sample utterance at stream
    `position`: seeded by the position, uniform over the whole crops; 0 when it fits."""
    if length <= num_samples:
      return 0
    rng = np.random.default_rng([self._seed, _CROP_STREAM, position])
    return int(rng.integers(0, length - num_samples + 1))

  def source_of(self, example: int) -> int:
    """The number of the source (split) holding stream example `example`."""
    return int(np.searchsorted(self.offsets, example, side="right")) - 1

  def substitutes(
    self, position: int, example: int, num_samples: int, length: int
  ) -> Iterator[int]:
    """Examples that may fill the row of a bad `example` at stream `position`, in a seeded
    order: the other usable examples of its source whose row would hold at least `length`
    samples (its scheduled row length, so the masks drawn from it stay inside the row).
    A generator: nothing is computed unless the row needs a substitute."""
    i = self.source_of(example)
    usable = self.usable[(self.usable >= self.offsets[i]) & (self.usable < self.offsets[i + 1])]
    sizes = self.lengths[usable]
    if self._augment.speed_prob > 0:
      factor = augment.speed_factor(self._augment, self.augment_rng(position))
      sizes = np.round(sizes / factor)
    candidates = usable[(np.minimum(sizes, num_samples) >= length) & (usable != example)]
    rng = np.random.default_rng([self._seed, _SUBSTITUTE_STREAM, position])
    for k in rng.permutation(len(candidates)):
      yield int(candidates[k])

  def masks(self, batch: int) -> np.ndarray:
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
    )


def sources_of(data: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(name, split) of every source: `data.mixture`'s pairs, or `data.name`:`data.split`."""
  if not data.mixture:
    return [(data.name, data.split)]
  sources = [tuple(pair) for pair in data.mixture]
  if any(len(pair) != 2 for pair in sources):
    raise ValueError(f"config.data.mixture={data.mixture} must hold (name, split) pairs")
  return sources


def bucket_shapes(data, frames_fn) -> tuple[tuple[int, ...], tuple[int, ...]]:
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


def samples_for_one_frame(frames_fn: Callable[[int], int], limit: int) -> int:
  """The fewest samples (at most `limit`) from which the model makes a frame."""
  low, high = 1, max(limit, 1)
  while low < high:
    middle = (low + high) // 2
    low, high = (middle + 1, high) if frames_fn(middle) < 1 else (low, middle)
  return low


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
