"""Row assembly: the pretraining stream's host batches of cropped, padded, span-masked audio.

`PretrainingStream` joins the pieces of `sslax.data`: the sources and their bad-audio index
(`splits`), the pure schedule of rows, crops and masks (`schedule`), decoding (`decode`,
through `splits.Split.read`) and the executor (`executor`). It reads this process's rows of
each global batch, augments (`data.augment`, off by default), crops and normalises them and
pads them into static shapes. Without augmentation only the crop is read or decoded. The
only state is `{'position': global batches consumed}`, the same on every process and saved
with every checkpoint, so a resumed run continues exactly where it stopped, on any number of
processes.

Bad audio (`data.bad_audio`): what the index shows unusable, or shorter than one frame of the
model, is never scheduled; with 'skip' (the default) each is logged by name and counted in
`bad_audio`, with 'error' the stream stops naming them. What only a full decode reveals (a
truncated FLAC, a corrupt frame) is found when the example is read: with 'skip' the row is
filled from a substitute drawn from (seed, stream position) among the readable examples of
the same source long enough for the row's scheduled length, so batches stay a pure function
of (seed, batch number) and the masks every process computed stay inside the row; the bad
file is logged once and counted (`bad_audio`, `replaced_rows`).
"""

from collections.abc import Callable
import itertools
import threading

from absl import logging
import ml_collections
import numpy as np

from sslax.data import augment, decode, executor, masking, schedule, splits


class PretrainingStream:
  """This process's share of the global batches: audio, audio_paddings and span masks.

  Each batch is a dict of numpy arrays with static shapes:
    audio f32[b, S], audio_paddings f32[b, S] (1.0 = padding),
    mask bool[b, F] (F = frames_fn(S); True = frame to mask),
  where S = data.max_samples, or the batch's bucket length with data.buckets, and
  b = the (bucket's) global batch size / process count.

  Bad audio (module docstring): `bad_audio` counts the examples found unusable, by kind
  (from the index at construction, plus those found when read, on this process), and
  `replaced_rows` the rows this process filled from a substitute.
  """

  _crops_rows = True  # rows are crops; a substitute is cropped to the row's scheduled length

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
    if data.bad_audio not in splits.BAD_AUDIO_SETTINGS:
      raise ValueError(
        f"config.data.bad_audio={data.bad_audio!r} must be one of {splits.BAD_AUDIO_SETTINGS}"
      )
    if data.read_threads < 1:
      raise ValueError(f"config.data.read_threads={data.read_threads} must be at least 1")
    _, batch_sizes = schedule.bucket_shapes(data, frames_fn)
    for size in batch_sizes:
      if size % process_count:
        field = "bucket_batch_multiple" if data.buckets else "batch_size"
        raise ValueError(
          f"config.data.{field}={data[field]} gives a global batch of {size}, which does "
          f"not divide across {process_count} processes"
        )
    self._splits = [
      splits.Split.open(name, split, data.data_dir, resample=data.resample)
      for name, split in schedule.sources_of(data)
    ]
    self._arguments = dict(
      mask_config=mask_config,
      frames_fn=frames_fn,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )
    self._offsets = np.cumsum([0] + [len(s.lengths) for s in self._splits])
    self._lengths = np.concatenate([s.lengths for s in self._splits])
    self._data = data
    self._lock = threading.Lock()  # rows are read in the executor's threads
    self.bad_audio = dict.fromkeys(splits.BAD_AUDIO_KINDS, 0)
    self.replaced_rows = 0
    self._found_unreadable: dict[tuple[str, str, int], str] = {}  # (name, split, i) -> kind
    self._bad = self._index_problems(data, frames_fn)
    self._mask = mask_config
    self._seed = seed
    self._augment = augment.AugmentConfig.from_config(data.augment)
    self._noise_bank = ()
    if self._augment.noise_prob > 0 and self._augment.noise_dataset:
      noise = splits.Split.open(
        self._augment.noise_dataset,
        self._augment.noise_split,
        data.data_dir,
        resample=data.resample,
      )
      splits.report_bad_audio(
        [(noise, i, kind, reason) for i, (kind, reason) in sorted(noise.problems.items())],
        data.bad_audio,
        self.bad_audio,
      )
      self._noise_bank = splits.NoiseClips(noise, self._unreadable)
    usable = self._usable_examples(data)
    if not data.mixture and len(usable) < data.batch_size:
      raise ValueError(
        f"split {data.name}:{data.split} has {len(usable)} examples of at least "
        f"config.data.min_samples={data.min_samples} samples, fewer than "
        f"config.data.batch_size={data.batch_size}"
      )
    for i, split in enumerate(self._splits if data.mixture else ()):
      if not np.any((usable >= self._offsets[i]) & (usable < self._offsets[i + 1])):
        raise ValueError(
          f"config.data.mixture: {split.name}:{split.split} has no example of at least "
          f"config.data.min_samples={data.min_samples} samples"
        )
    self._warn_if_masks_do_not_fit(data, mask_config, frames_fn, usable)
    self.schedule = schedule.Schedule(
      self._lengths,
      self._offsets,
      usable,
      data,
      mask_config,
      frames_fn,
      self._augment,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )
    if data.mixture:
      self._log_mixture(data)
    if data.buckets:
      logging.info(
        "buckets %s samples, global batches %s, %d batches per epoch",
        self.schedule.bucket_lengths,
        self.schedule.bucket_batch_sizes,
        self.schedule.batches_per_epoch,
      )

  def _warn_if_masks_do_not_fit(self, data, mask_config, frames_fn, usable) -> None:
    """Logs `masking.fit_warning` for the rows' lengths: the usable examples, cut at the
    crop (`data.max_samples`), at their median and 10th percentile."""
    rows = np.minimum(self._lengths[usable], data.max_samples)
    median, short = (frames_fn(int(np.percentile(rows, q))) for q in (50, 10))
    warning = masking.fit_warning(
      median,
      short,
      mask_prob=mask_config.mask_prob,
      mask_length=mask_config.mask_length,
      min_masks=mask_config.min_masks,
    )
    if warning:
      logging.warning("%s:%s: %s", data.name, data.split, warning)

  def _index_problems(self, data, frames_fn) -> np.ndarray:
    """bool[num_examples]: the examples the index shows unusable (and those shorter than one
    frame of the model), reported by `splits.report_bad_audio`."""
    one_frame = schedule.samples_for_one_frame(frames_fn, data.max_samples)
    bad = np.zeros(len(self._lengths), bool)
    found = []
    for split, offset in zip(self._splits, self._offsets, strict=False):
      problems = dict(split.problems)
      for i in np.flatnonzero((split.lengths > 0) & (split.lengths < one_frame)):
        problems[int(i)] = (
          "too_short",
          f"{split.lengths[i]} samples, fewer than one frame of the model ({one_frame})",
        )
      for i, (kind, reason) in sorted(problems.items()):
        found.append((split, i, kind, reason))
        bad[offset + i] = True
    splits.report_bad_audio(found, data.bad_audio, self.bad_audio)
    return bad

  def _usable_examples(self, data) -> np.ndarray:
    """i64[N]: the examples epochs permute (good audio of at least `data.min_samples`)."""
    short = ~self._bad & (self._lengths < data.min_samples)
    self.dropped = {"shorter_than_min_samples": int(short.sum())}
    usable = np.flatnonzero(~self._bad & ~short)
    logging.info(
      "%s: %d of %d examples usable; dropped %s; bad audio %s",
      "+".join(f"{s.name}:{s.split}" for s in self._splits),
      len(usable),
      len(self._lengths),
      self.dropped,
      {kind: n for kind, n in self.bad_audio.items() if n},
    )
    return usable

  def _log_mixture(self, data) -> None:
    """Logs each mixture source's usable examples, hours and probability."""
    sizes = np.asarray([len(u) for u in self.schedule.mixture_usable])
    for split, usable, n, p in zip(
      self._splits,
      self.schedule.mixture_usable,
      sizes,
      self.schedule.mixture_probabilities,
      strict=True,
    ):
      logging.info(
        "mixture source %s:%s: %d examples (%.2f h, %.1f%% of examples), drawn with p=%.4f "
        "(alpha=%s)",
        split.name,
        split.split,
        n,
        self._lengths[usable].sum() / decode.SAMPLE_RATE / 3600,
        100 * n / sizes.sum(),
        p,
        data.mixture_alpha,
      )

  def _locate(self, example: int) -> tuple[splits.Split, int]:
    """The split holding stream example `example`, and its index there."""
    i = self.schedule.source_of(example)
    return self._splits[i], example - int(self._offsets[i])

  def _load(self, position: int, example: int, num_samples: int) -> tuple[np.ndarray, int]:
    """Reads, augments, crops and normalises an example: (f32[length <= num_samples], the
    crop's first sample in the (augmented) example).

    Without augmentation only the crop is read (its start comes from the length index).
    Raises BadAudioError naming the example when it cannot be read.
    """
    split, index = self._locate(example)
    if self._augment.enabled:
      samples = augment.augment(
        split.read(index),
        self._augment,
        self.schedule.augment_rng(position),
        self._noise_bank,
      )
      start = self.schedule.crop_start(position, samples.size, num_samples)
      samples = samples[start : start + num_samples]
    else:
      size = int(self._lengths[example])
      start = self.schedule.crop_start(position, size, num_samples)
      samples = split.read(index, start, start + min(size, num_samples))
    if self._data.normalize:
      samples = decode.normalize_audio(samples)
    return samples, start

  def _unreadable(self, split: splits.Split, index: int, error: splits.BadAudioError) -> None:
    """An example found unreadable when read: raises `error` ('error'), or counts it and
    logs it the first time this process finds it ('skip')."""
    if self._data.bad_audio == "error":
      raise error
    with self._lock:
      first = (split.name, split.split, index) not in self._found_unreadable
      if first:
        self._found_unreadable[(split.name, split.split, index)] = error.kind
        self.bad_audio[error.kind] += 1
        counts = {kind: n for kind, n in self.bad_audio.items() if n}
    if first:
      logging.warning(
        "%s; skipped from now on (config.data.bad_audio='skip'); bad audio so far: %s, %d "
        "rows replaced",
        error,
        counts,
        self.replaced_rows,
      )

  def _read_row(
    self, position: int, example: int, num_samples: int, length: int
  ) -> tuple[np.ndarray, int, int]:
    """(f32[n] samples, example read, crop start) of the row at stream `position`: `example`
    (`_load`) or, when it cannot be read and data.bad_audio is 'skip', the first readable
    of the schedule's substitutes, cropped to the row's scheduled `length` when rows are
    crops."""
    substitutes = self.schedule.substitutes(position, example, num_samples, length)
    for candidate in itertools.chain([example], substitutes):
      split, index = self._locate(candidate)
      if (split.name, split.split, index) in self._found_unreadable:
        continue
      crop = num_samples if candidate == example or not self._crops_rows else length
      try:
        samples, start = self._load(position, candidate, crop)
      except splits.BadAudioError as error:
        self._unreadable(split, index, error)
        continue
      if candidate != example:
        with self._lock:
          self.replaced_rows += 1
      return samples, candidate, start
    split, index = self._locate(example)
    raise splits.BadAudioError(
      f"cannot fill the row of {split.describe(index)} at stream position {position}: no other "
      f"example of its source that gives {length} samples can be read",
      "unreadable",
    )

  def host_audio(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This process's rows of global batch `batch`, unmasked: audio f32[b, S],
    audio_paddings f32[b, S], the example each row holds i64[b] (the schedule's examples,
    except a row whose example could not be read, filled from a substitute) and where its
    crop starts in that example, i64[b] samples (in the augmented audio with augmentation).
    """
    rows, mine = self.schedule.batch_rows(batch), self.schedule.host_rows(batch)
    positions, examples = rows.positions[mine], rows.examples[mine]
    lengths = self.schedule.row_lengths(batch)[mine]
    audio = np.zeros((len(examples), rows.num_samples), np.float32)
    paddings = np.ones_like(audio)
    held, starts = examples.copy(), np.zeros_like(examples)
    for row, (position, example, length) in enumerate(
      zip(positions, examples, lengths, strict=True)
    ):
      samples, held[row], starts[row] = self._read_row(
        int(position), int(example), rows.num_samples, int(length)
      )
      audio[row, : samples.size] = samples
      paddings[row, : samples.size] = 0.0
    return audio, paddings, held, starts

  def host_batch(self, batch: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `batch` (shapes in the class docstring)."""
    audio, paddings, _, _ = self.host_audio(batch)
    mask = self.schedule.masks(batch)[self.schedule.host_rows(batch)]
    return {"audio": audio, "audio_paddings": paddings, "mask": mask}

  def batches(
    self, start_position: int = 0, stop: int | None = None
  ) -> executor.Batches[tuple[dict, dict]]:
    """`(host batch, state)` pairs of global batches `start_position` … `stop` − 1 (None:
    forever); `state` is where to resume after the batch. Close it (or use it in a `with`
    block)."""

    def read(batch: int) -> tuple[dict, dict]:
      return self.host_batch(batch), {"position": batch + 1}

    return executor.Batches(read, start_position, threads=self._data.read_threads, stop=stop)

  def held_out(self, split: str) -> "PretrainingStream":
    """The same stream over `split` of the same dataset, to validate on: rows, crops and
    masks drawn as in training, one shape (no buckets), no augmentation, no mixture."""
    data = ml_collections.ConfigDict(self._data.to_dict())
    data.update(split=split, buckets=(), mixture=())
    data.augment.update(speed_prob=0.0, gain_prob=0.0, noise_prob=0.0)
    return self._like(data)

  def _like(self, data: ml_collections.ConfigDict) -> "PretrainingStream":
    """A stream of this class, and its arguments, over `data`."""
    return type(self)(data, **self._arguments)
