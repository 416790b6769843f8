"""Labelled speech for CTC fine-tuning and evaluation: whole utterances with character labels.

`FinetuningStream` extends the pretraining stream (`sslax.data.pretraining_stream`): the same seeded
epochs over a set of examples, global batches that depend only on (seed, batch number),
per-process rows and the `{'position': ...}` state that resumes exactly. What differs:
utterances are never cropped, so those longer than `data.max_samples` (or with more than
`data.max_label_length` characters, or none) are dropped, counted and logged;
`data.labelled_minutes` keeps a seeded random subset of the split (the shortest prefix of a
permutation drawn from `data.subset_seed` with at least that much audio, so smaller subsets
lie inside larger ones and the choice does not move with `config.seed`); batches carry
labels and channel masks. Bad audio is handled as in pretraining (`data.bad_audio`), except
that a row whose utterance cannot be read is filled by a whole substitute utterance (at
least as long, so the masks stay inside it) with its own labels.

`EvalSet` reads a whole split in order, nothing dropped, for greedy decoding; an utterance
whose audio cannot be read stays in the split as an empty row (its hypothesis is empty, so
it counts as deletions), logged by name and listed in `unread` ('skip'), or stops the
evaluation ('error').
"""

from collections.abc import Callable
import functools
import math

from absl import logging
import ml_collections
import numpy as np

from sslax.core import text
from sslax.data import decode, executor, masking, pretraining_stream, splits

# Random streams of the data seed beyond the pretraining stream's (0-2).
_CHANNEL_STREAM = 3
# Random stream of `data.subset_seed`.
_SUBSET_STREAM = 0


def _as_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=8)
def split_transcripts(
  name: str, split: str, data_dir: str, text_key: str, id_key: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(ids, transcripts as stored) of every example of a split, read without decoding audio.

  Raises ValueError naming `config.data.text_key` / `config.data.id_key` when the dataset
  lacks the feature.
  """
  source, _ = splits.open_split(name, split, data_dir)
  for field, key in (("text_key", text_key), ("id_key", id_key)):
    if key not in source.features:
      raise ValueError(
        f"config.data.{field}={key!r}: TFDS dataset {name!r} has no such feature "
        f"(it has {sorted(source.features)})"
      )
  ids = tuple(_as_str(source.get(i, id_key)) for i in range(len(source)))
  transcripts = tuple(_as_str(source.get(i, text_key)) for i in range(len(source)))
  return ids, transcripts


def labelled_subset(
  candidates: np.ndarray, lengths: np.ndarray, minutes: float, seed: int
) -> np.ndarray:
  """The shortest prefix of a seeded permutation of `candidates` with >= `minutes` of audio.

  Args:
    candidates: i64[N] example indices to choose from.
    lengths: i64[num_examples] samples per example of the split (16 kHz).
    minutes: audio to keep; 0 keeps every candidate.
    seed: `data.subset_seed`.

  Returns:
    i64[M] sorted example indices.
  """
  if minutes <= 0:
    return candidates
  order = candidates[np.random.default_rng([seed, _SUBSET_STREAM]).permutation(len(candidates))]
  minutes_N = np.cumsum(lengths[order]) / decode.SAMPLE_RATE / 60.0
  if not len(order) or minutes_N[-1] < minutes:
    total = minutes_N[-1] if len(order) else 0.0
    raise ValueError(
      f"config.data.labelled_minutes={minutes}: the usable utterances hold only {total:.1f} minutes"
    )
  count = int(np.searchsorted(minutes_N, minutes)) + 1
  return np.sort(order[:count])


class FinetuningStream(pretraining_stream.PretrainingStream):
  """This process's share of the fine-tuning batches: whole utterances, labels and masks.

  Each batch is a dict of numpy arrays with static shapes (b = global batch / processes):
    audio f32[b, S], audio_paddings f32[b, S] (S = data.max_samples or the batch's bucket
      with data.buckets; 1.0 = padding),
    mask bool[b, F] time masks from each row's unpadded length (all False when
      `mask_prob` is 0),
    channel_mask bool[b, D] channels zeroed at every frame (D = `channels`),
    labels i32[b, L] vocabulary ids (L = data.max_label_length), label_paddings f32[b, L].
  Masks of both kinds are drawn for the whole global batch from (seed, batch number).
  """

  _crops_rows = False  # whole utterances: a substitute is read whole, with its labels

  def __init__(
    self,
    data: ml_collections.ConfigDict,
    mask_config: ml_collections.ConfigDict,
    frames_fn: Callable[[int], int],
    vocab: text.Vocabulary,
    *,
    channels: int,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    if mask_config.mask_channel_prob > 0 and mask_config.mask_channel_length > channels:
      raise ValueError(
        f"config.masking.mask_channel_length={mask_config.mask_channel_length} exceeds the "
        f"{channels} channels of config.model.embed_dim"
      )
    if data.mixture:
      raise ValueError("config.data.mixture is for pretraining; fine-tuning reads one split")
    self._vocab = vocab
    self._channels = channels
    self._process_count = process_count
    super().__init__(
      data,
      mask_config,
      frames_fn,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )

  def _like(self, data: ml_collections.ConfigDict) -> "FinetuningStream":
    """A fine-tuning stream over `data` with the same vocabulary and channels."""
    return FinetuningStream(data, vocab=self._vocab, channels=self._channels, **self._arguments)

  def _usable_examples(self, data) -> np.ndarray:
    """The `labelled_minutes` subset of the utterances that fit the static shapes (at the
    slowest speed of `data.augment`, which lengthens them)."""
    _, transcripts = split_transcripts(
      data.name, data.split, data.data_dir, data.text_key, data.id_key
    )
    self._transcripts = transcripts
    label_lengths = np.asarray([len(text.normalize(t)) for t in transcripts])
    slowest = min(data.augment.speed_factors) if data.augment.speed_prob > 0 else 1.0
    good = ~self._bad  # audio that can be read (the rest is counted in bad_audio)
    too_long = good & (self._lengths / slowest > data.max_samples)
    too_short = good & (self._lengths < data.min_samples)
    too_many_labels = good & (label_lengths > data.max_label_length)
    unlabelled = good & (label_lengths == 0)
    candidates = np.flatnonzero(good & ~(too_long | too_short | too_many_labels | unlabelled))
    subset = labelled_subset(candidates, self._lengths, data.labelled_minutes, data.subset_seed)
    self.dropped = {
      "longer_than_max_samples": int(too_long.sum()),
      "shorter_than_min_samples": int(too_short.sum()),
      "more_labels_than_max_label_length": int(too_many_labels.sum()),
      "empty_transcript": int(unlabelled.sum()),
    }
    self.labelled_minutes = float(self._lengths[subset].sum() / decode.SAMPLE_RATE / 60)
    logging.info(
      "%s:%s: fine-tuning on %d utterances (%.2f minutes) of %d; dropped %s; bad audio %s",
      data.name,
      data.split,
      len(subset),
      self.labelled_minutes,
      len(self._lengths),
      self.dropped,
      {kind: n for kind, n in self.bad_audio.items() if n},
    )
    if len(subset) < data.batch_size:
      raise ValueError(
        f"{data.name}:{data.split} gives {len(subset)} labelled utterances (dropped: "
        f"{self.dropped}; config.data.labelled_minutes={data.labelled_minutes}), fewer than "
        f"config.data.batch_size={data.batch_size}"
      )
    return subset

  def _global_channel_masks(self, batch: int) -> np.ndarray:
    """bool[B, D]: channel masks of the whole global batch (fairseq mask_channel_*)."""
    B, D = len(self.schedule.batch_indices(batch)), self._channels
    if self._mask.mask_channel_prob == 0:
      return np.zeros((B, D), bool)
    rng = np.random.default_rng([self._seed, _CHANNEL_STREAM, batch])
    return masking.batch_span_masks(
      rng,
      D,
      np.full(B, D),
      mask_prob=self._mask.mask_channel_prob,
      mask_length=self._mask.mask_channel_length,
      min_masks=0,
    )

  def host_batch(self, batch: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `batch` (shapes in the class docstring)."""
    audio, paddings, held, _ = self.host_audio(batch)
    rows = self.schedule.host_rows(batch)
    host = {"audio": audio, "audio_paddings": paddings}
    host["mask"] = self.schedule.masks(batch)[rows]
    b, L = audio.shape[0], self._data.max_label_length
    if self._mask.mask_prob == 0:
      host["mask"] = np.zeros_like(host["mask"])
    host["channel_mask"] = self._global_channel_masks(batch)[rows]
    labels = np.zeros((b, L), np.int32)
    label_paddings = np.ones((b, L), np.float32)
    for row, index in enumerate(held):  # the example each row holds (its substitute's labels)
      ids = self._vocab.encode(self._transcripts[index])
      labels[row, : ids.size] = ids
      label_paddings[row, : ids.size] = 0.0
    host["labels"] = labels
    host["label_paddings"] = label_paddings
    return host


class EvalSet:
  """A whole split in its stored order, for evaluation: nothing dropped, cropped or masked.

  Global batch k holds examples k·B … (k+1)·B − 1; the last one is completed with empty
  rows (all padding, example index −1). Audio is padded to `max_samples`, the longest
  utterance of the split rounded up to a whole second, so one program serves the split.
  `ids` and `references` (normalised transcripts) cover the whole split on every process.
  An utterance whose audio cannot be read (module docstring) is an empty row; `unread`
  maps it to the kind of fault (counted in `bad_audio`).
  """

  def __init__(
    self,
    data: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    *,
    process_index: int,
    process_count: int,
  ):
    if batch_size % process_count:
      raise ValueError(
        f"config.eval.batch_size={batch_size} does not divide across {process_count} processes"
      )
    if data.bad_audio not in splits.BAD_AUDIO_SETTINGS:
      raise ValueError(
        f"config.data.bad_audio={data.bad_audio!r} must be one of {splits.BAD_AUDIO_SETTINGS}"
      )
    self._split = splits.Split.open(data.name, split, data.data_dir, resample=data.resample)
    self._bad_audio_setting = data.bad_audio
    self.bad_audio = dict.fromkeys(splits.BAD_AUDIO_KINDS, 0)
    problems = sorted(self._split.problems.items())
    splits.report_bad_audio(
      [(self._split, i, kind, reason) for i, (kind, reason) in problems],
      data.bad_audio,
      self.bad_audio,
    )
    self.unread = {i: kind for i, (kind, _) in problems}
    lengths = self._split.lengths
    self.ids, transcripts = split_transcripts(
      data.name, split, data.data_dir, data.text_key, data.id_key
    )
    self.references = tuple(text.normalize(t) for t in transcripts)
    rate = decode.SAMPLE_RATE
    self.max_samples = int(math.ceil(max(int(lengths.max()), 1) / rate) * rate)
    self.num_batches = math.ceil(len(lengths) / batch_size)
    self._normalize = data.normalize
    self._read_threads = data.read_threads
    self._batch_size = batch_size
    self._process_index = process_index
    self.host_batch_size = batch_size // process_count

  def batch_examples(self, batch: int) -> np.ndarray:
    """i64[B]: the examples of global batch `batch` in row order; −1 marks filler rows."""
    indices = np.arange(batch * self._batch_size, (batch + 1) * self._batch_size)
    return np.where(indices < len(self.ids), indices, -1)

  def host_batch(self, batch: int) -> dict[str, np.ndarray]:
    """This process's rows: audio f32[b, max_samples], audio_paddings f32[b, max_samples]."""
    b = self.host_batch_size
    audio = np.zeros((b, self.max_samples), np.float32)
    paddings = np.ones((b, self.max_samples), np.float32)
    rows = self.batch_examples(batch)[self._process_index * b : (self._process_index + 1) * b]
    for row, index in enumerate(rows):
      if index < 0 or index in self.unread:
        continue
      try:
        samples = self._split.read(int(index))
      except splits.BadAudioError as error:
        if self._bad_audio_setting == "error":
          raise
        logging.warning("%s; left as an empty row (config.data.bad_audio='skip')", error)
        self.unread[int(index)] = error.kind
        self.bad_audio[error.kind] += 1
        continue
      if self._normalize:
        samples = decode.normalize_audio(samples)
      audio[row, : samples.size] = samples
      paddings[row, : samples.size] = 0.0
    return {"audio": audio, "audio_paddings": paddings}

  def batches(self) -> executor.Batches[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(this process's host batch, the global batch's example indices) of every batch in
    order, read ahead in threads. Close it (or use it in a `with` block)."""

    def read(batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
      return self.host_batch(batch), self.batch_examples(batch)

    return executor.Batches(read, 0, threads=self._read_threads, stop=self.num_batches)
