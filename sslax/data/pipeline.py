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
soundfile. Without augmentation only the crop is converted (stored samples) or decoded
(encoded audio, by seeking). tf.data runs the batch reads in parallel, keeps their order and
prefetches.

Bad audio (`data.bad_audio`): an index built once per split (`split_index`: headers or array
shapes, no full decode) finds examples that are unreadable, empty, truncated (WAV), not mono,
at another sample rate (resampled instead with `data.resample`), or shorter than one frame
of the model. With 'skip' (the default) each is logged by name, counted in `bad_audio` and
never scheduled; with 'error' the stream stops naming them. What only a full decode reveals
(a truncated FLAC, a corrupt frame) is found when the example is read: with 'skip' the row
is filled from a substitute drawn from (seed, stream position) among the readable examples
of the same source long enough for the row's indexed length, so batches stay a pure function
of (seed, batch number) and the masks every process computed from the index stay inside the
row; the bad file is logged once and counted (`bad_audio`, `replaced_rows`).
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import functools
import io
import itertools
import math
import os
import re
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import librosa
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
_AUGMENT_STREAM, _MIXTURE_STREAM, _SUBSTITUTE_STREAM = 4, 5, 6

BAD_AUDIO_SETTINGS = ("skip", "error")  # config.data.bad_audio
# Kinds of bad audio, as counted in `PretrainingStream.bad_audio`.
BAD_AUDIO_KINDS = ("unreadable", "empty", "truncated", "too_short", "not_mono", "wrong_sample_rate")


class BadAudioError(RuntimeError):
  """An example whose audio cannot be used; the message names the dataset, split and example."""

  def __init__(self, message: str, kind: str):
    super().__init__(message)
    self.kind = kind


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


def _soundfile_reason(error: Exception) -> str:
  """libsndfile's reason, without the address of the file object its message names."""
  return str(error).rsplit(": ", 1)[-1].strip() or type(error).__name__


# Formats (soundfile's names) whose seeks are sample-exact.
_EXACT_SEEK_FORMATS = ("WAV", "WAVEX", "W64", "RF64", "AIFF", "FLAC")
# libsndfile's log line for a WAV data chunk longer than the file ('data : 64000 (should be
# 31978)'). Streaming writers declare 0 or 0xFFFFFFFF bytes; those files are whole.
_WAV_DATA_LINE = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def _header(value, feature_rate: int) -> tuple[int, int, int, str, str]:
  """(frames, rate in Hz, channels, kind, reason) of one example's audio, decoding nothing.

  kind and reason are '' for audio that opens whole, else kind is 'unreadable', 'empty' or
  'truncated' (a WAV file shorter than its header says).
  """
  encoded = _encoded(value)
  if encoded is None:
    samples = np.asarray(value)
    channels = 1 if samples.ndim == 1 else int(np.prod(samples.shape[1:]))
    return (samples.shape[0] if samples.ndim else 0), feature_rate, channels, "", ""
  if not encoded:
    return 0, 0, 0, "empty", "empty file (0 bytes)"
  try:
    info = soundfile.info(io.BytesIO(encoded))
  except Exception as error:  # soundfile raises several types for bad files
    return 0, 0, 0, "unreadable", _soundfile_reason(error)
  match = _WAV_DATA_LINE.search(info.extra_info)
  if match and int(match[2]) < int(match[1]) < 0xFFFFFFFF:
    reason = f"the WAV header declares {match[1]} bytes of samples, the file holds {match[2]}"
    return info.frames, info.samplerate, info.channels, "truncated", reason
  return info.frames, info.samplerate, info.channels, "", ""


@dataclasses.dataclass(frozen=True)
class AudioIndex:
  """What every example of a split stores, from its header (encoded audio) or array shape.

  frames: i64[N] samples per channel as stored, at `rates` (0 when unreadable);
  rates: i64[N] sample rates (Hz; the feature's rate for stored samples);
  channels: i64[N]; kinds: str[N] '' or 'unreadable' / 'empty' / 'truncated';
  reasons: str[N] why, in words.
  """

  frames: np.ndarray
  rates: np.ndarray
  channels: np.ndarray
  kinds: np.ndarray
  reasons: np.ndarray


def split_index(
  builder: tfds.core.DatasetBuilder, split: str, source, audio_key: str
) -> AudioIndex:
  """The `AudioIndex` of `split`, cached beside the prepared data (`sslax_index_<split>.npz`).

  Computed once by reading every example (encoded audio: its header only; process 0 writes
  it, atomically); a process that cannot see the file afterwards (data_dir not shared)
  computes it itself.
  """
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
  path = os.path.join(os.fspath(builder.data_dir), f"sslax_index_{name}.npz")
  feature_rate = builder.info.features[audio_key].sample_rate or 0

  def compute_and_write() -> None:
    rows = []
    for i in range(len(source)):
      try:
        value = source[i][audio_key]
      except Exception as error:  # a corrupt record
        rows.append((0, 0, 0, "unreadable", f"cannot read the record ({error})"))
        continue
      rows.append(_header(value, feature_rate))
    columns = list(zip(*rows, strict=True)) if rows else [()] * 5
    tmp = f"{path}.tmp{jax.process_index()}"
    with open(tmp, "wb") as f:
      np.savez(
        f,
        frames=np.asarray(columns[0], np.int64),
        rates=np.asarray(columns[1], np.int64),
        channels=np.asarray(columns[2], np.int64),
        kinds=np.asarray(columns[3], str),
        reasons=np.asarray(columns[4], str),
      )
    os.replace(tmp, path)

  if not os.path.exists(path) and jax.process_index() == 0:
    compute_and_write()
  multihost_utils.sync_global_devices(f"index {builder.name} {split}")
  if not os.path.exists(path):
    compute_and_write()
  with np.load(path) as stored:
    index = AudioIndex(
      **{field.name: stored[field.name] for field in dataclasses.fields(AudioIndex)}
    )
  if index.frames.shape != (len(source),):
    raise ValueError(
      f"{path} indexes {index.frames.shape[0]} examples, the split has {len(source)}"
    )
  return index


def split_lengths(builder: tfds.core.DatasetBuilder, split: str, source, audio_key: str):
  """i64[num_examples]: samples per example of `split` as stored (0 when unreadable), from
  `split_index`."""
  return split_index(builder, split, source, audio_key).frames


def resampled_length(num_samples: int, rate: int) -> int:
  """Samples of `num_samples` at `rate` Hz resampled to 16 kHz (librosa's ceil(n · ratio))."""
  return int(math.ceil(num_samples * (SAMPLE_RATE / rate)))


def usable_lengths(index: AudioIndex, resample: bool) -> tuple[np.ndarray, dict]:
  """(i64[N] samples each example gives at 16 kHz, 0 when unusable; {example: (kind,
  reason)} of the unusable ones). Other rates are unusable unless `resample`."""
  problems = {
    int(i): (str(index.kinds[i]), str(index.reasons[i])) for i in np.flatnonzero(index.kinds != "")
  }
  lengths = index.frames.copy()
  for i in np.flatnonzero(index.kinds == ""):
    i = int(i)
    frames, rate, channels = int(index.frames[i]), int(index.rates[i]), int(index.channels[i])
    if frames == 0:
      problems[i] = ("empty", "no samples")
    elif channels != 1:
      problems[i] = ("not_mono", f"{channels} channels")
    elif rate != SAMPLE_RATE and not resample:
      problems[i] = (
        "wrong_sample_rate",
        f"{rate} Hz, not {SAMPLE_RATE} Hz (config.data.resample=True resamples it)",
      )
    elif rate != SAMPLE_RATE:
      lengths[i] = resampled_length(frames, rate)
  lengths[list(problems)] = 0
  return lengths, problems


class _Unusable(Exception):
  """Raised while decoding; becomes a BadAudioError naming the example."""

  def __init__(self, kind: str, reason: str):
    super().__init__(reason)
    self.kind, self.reason = kind, reason


def _decode(value, start: int, stop: int | None, resample: bool) -> np.ndarray:
  """f32[stop - start] samples start … stop − 1 (16 kHz) of an audio feature's value."""
  encoded = _encoded(value)
  if encoded is None:
    samples = np.asarray(value)
    if samples.ndim != 1 and samples.size != samples.shape[0]:
      raise _Unusable("not_mono", f"samples of shape {samples.shape}, not mono")
    samples = samples.reshape(-1)
    if not samples.size:
      raise _Unusable("empty", "no samples")
    samples = samples[start:stop]
    if np.issubdtype(samples.dtype, np.integer):
      return samples.astype(np.float32) / np.float32(32768.0)
    return samples.astype(np.float32)
  if not encoded:
    raise _Unusable("empty", "empty file (0 bytes)")
  try:
    with soundfile.SoundFile(io.BytesIO(encoded)) as f:
      rate, frames = f.samplerate, f.frames
      if f.channels != 1:
        raise _Unusable("not_mono", f"{f.channels} channels")
      if frames == 0:
        raise _Unusable("empty", "no samples")
      if rate != SAMPLE_RATE and not resample:
        raise _Unusable(
          "wrong_sample_rate",
          f"{rate} Hz, not {SAMPLE_RATE} Hz (config.data.resample=True resamples it)",
        )
      if rate == SAMPLE_RATE:
        stop = frames if stop is None else stop
        # Seeking is sample-exact in PCM and FLAC; a lossy codec (Ogg Vorbis, MP3) decodes
        # differently after a seek, so it is decoded from the start.
        skip = start if f.format in _EXACT_SEEK_FORMATS else 0
        if skip:
          f.seek(skip)
        samples = f.read(stop - skip, dtype="float32")[start - skip :]
        if samples.shape[0] != stop - start:
          raise _Unusable(
            "truncated",
            f"decoded {start + samples.shape[0]} of the {frames} samples its header declares",
          )
        return samples
      samples = f.read(dtype="float32")
  except _Unusable:
    raise
  except Exception as error:  # soundfile raises several types for bad files
    raise _Unusable("unreadable", _soundfile_reason(error)) from error
  if samples.shape[0] != frames:
    raise _Unusable(
      "truncated", f"decoded {samples.shape[0]} of the {frames} samples its header declares"
    )
  samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
  return samples[start:stop]


def read_audio(
  source,
  index: int,
  audio_key: str,
  where: str,
  *,
  start: int = 0,
  stop: int | None = None,
  resample: bool = False,
) -> np.ndarray:
  """f32[stop - start]: samples start … stop − 1 of example `index` of a data source (16
  kHz, scaled to [-1, 1)); `stop=None` reads to the end.

  Samples stored as int16 are divided by 32768, only those of the slice; encoded audio (FLAC,
  WAV, Ogg bytes) is decoded with soundfile, which scales 16-bit PCM the same way, seeking to
  `start` and decoding only the slice. It must be mono and 16 kHz, unless `resample` (then
  the whole file is decoded and resampled with soxr_hq). Raises BadAudioError naming the
  example and `where` (the dataset and split) when it cannot be read or ends early.
  """
  try:
    value = source[index][audio_key]
  except Exception as error:  # a corrupt record
    raise BadAudioError(f"cannot read example {index} of {where}: {error}", "unreadable") from error
  try:
    return _decode(value, start, stop, resample)
  except _Unusable as error:
    raise BadAudioError(
      f"cannot read example {index} of {where}: {error.kind} ({error.reason})", error.kind
    ) from error


def normalize_audio(samples: np.ndarray) -> np.ndarray:
  """Zero mean, unit variance over the utterance (fairseq task.normalize)."""
  return (samples - samples.mean()) / np.sqrt(samples.var() + _NORMALIZE_EPS)


@dataclasses.dataclass(frozen=True)
class Split:
  """One opened TFDS split: its random-access source, audio feature and usable lengths.

  `lengths` are the samples each example gives at 16 kHz (after resampling, with `resample`),
  0 for those the index shows cannot be used; `problems` maps those to (kind, reason).
  """

  name: str
  split: str
  source: Sequence
  audio_key: str
  lengths: np.ndarray  # i64[num_examples] samples
  problems: Mapping[int, tuple[str, str]] = dataclasses.field(default_factory=dict)
  id_key: str | None = None  # a Text feature naming each example in messages ('id')
  resample: bool = False

  @classmethod
  def open(cls, name: str, split: str, data_dir: str, *, resample: bool = False) -> "Split":
    builder, audio_key = open_split(name, split, data_dir)
    source = builder.as_data_source(split=split)
    lengths, problems = usable_lengths(split_index(builder, split, source, audio_key), resample)
    features = builder.info.features
    has_id = "id" in features and isinstance(features["id"], tfds.features.Text)
    return cls(
      name, split, source, audio_key, lengths, problems, "id" if has_id else None, resample
    )

  def describe(self, index: int) -> str:
    """'NAME:SPLIT example INDEX (id ...)', for messages."""
    where = f"{self.name}:{self.split} example {index}"
    if self.id_key is None:
      return where
    try:
      key = self.source[index][self.id_key]
    except Exception:  # the record itself is unreadable
      return where
    return f"{where} (id {key.decode() if isinstance(key, bytes) else key!r})"

  def read(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """f32[stop - start]: samples start … stop − 1 of example `index` (`read_audio`).

    Raises BadAudioError naming the example (`describe`) when it cannot be read.
    """
    if index in self.problems:
      kind, reason = self.problems[index]
      raise BadAudioError(f"cannot read {self.describe(index)}: {kind} ({reason})", kind)
    try:
      return _decode(self.source[index][self.audio_key], start, stop, self.resample)
    except _Unusable as error:
      raise BadAudioError(
        f"cannot read {self.describe(index)}: {error.kind} ({error.reason})", error.kind
      ) from error


def report_bad_audio(found: list[tuple[Split, int, str, str]], setting: str, counts: dict) -> None:
  """Handles examples found unusable, as (split, example, kind, reason): with setting 'skip'
  logs each by name and adds it to `counts` (kind -> examples); with 'error' raises
  BadAudioError naming them."""
  if not found:
    return
  if setting == "error":
    shown = "; ".join(f"{s.describe(i)}: {kind} ({reason})" for s, i, kind, reason in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    raise BadAudioError(
      f"config.data.bad_audio='error' and {len(found)} examples have bad audio: {shown}{more} "
      "(config.data.bad_audio='skip' skips them)",
      found[0][2],
    )
  for split, index, kind, reason in found:
    counts[kind] += 1
    logging.warning("skipping %s: %s (%s)", split.describe(index), kind, reason)
  logging.warning(
    "skipped %d examples with bad audio (config.data.bad_audio='skip'): %s",
    len(found),
    {kind: n for kind, n in counts.items() if n},
  )


class _Clips(Sequence):
  """A split's usable audio clips as a sequence, each read when drawn (a lazily loaded noise
  bank). A clip found unreadable is replaced by the next one ('skip') or stops ('error')."""

  def __init__(self, split: Split, on_bad: Callable[[Split, int, BadAudioError], None]):
    self._split = split
    self._clips = np.flatnonzero(split.lengths > 0)
    self._on_bad = on_bad
    if not len(self._clips):
      raise ValueError(f"noise dataset {split.name}:{split.split} has no readable clip")

  def __len__(self) -> int:
    return len(self._clips)

  def __getitem__(self, index: int) -> np.ndarray:
    for k in range(len(self._clips)):
      clip = int(self._clips[(index + k) % len(self._clips)])
      try:
        return self._split.read(clip)
      except BadAudioError as error:
        self._on_bad(self._split, clip, error)
    # Not a BadAudioError: the example being augmented is not at fault.
    raise RuntimeError(
      f"no clip of noise dataset {self._split.name}:{self._split.split} can be read"
    )


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

  Bad audio (module docstring): `bad_audio` counts the examples found unusable, by kind
  (from the index at construction, plus those found when read, on this process), and
  `replaced_rows` the rows this process filled from a substitute.
  """

  _crops_rows = True  # rows are crops; a substitute is cropped to the row's indexed length

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
    if data.bad_audio not in BAD_AUDIO_SETTINGS:
      raise ValueError(
        f"config.data.bad_audio={data.bad_audio!r} must be one of {BAD_AUDIO_SETTINGS}"
      )
    self.bucket_lengths, self.bucket_batch_sizes = _bucket_shapes(data, frames_fn)
    for size in self.bucket_batch_sizes:
      if size % process_count:
        field = "bucket_batch_multiple" if data.buckets else "batch_size"
        raise ValueError(
          f"config.data.{field}={data[field]} gives a global batch of {size}, which does "
          f"not divide across {process_count} processes"
        )
    self._splits = [
      Split.open(name, split, data.data_dir, resample=data.resample)
      for name, split in _sources(data)
    ]
    self._offsets = np.cumsum([0] + [len(s.lengths) for s in self._splits])
    self._lengths = np.concatenate([s.lengths for s in self._splits])
    self._data = data
    self._lock = threading.Lock()  # rows are read in tf.data's threads
    self.bad_audio = dict.fromkeys(BAD_AUDIO_KINDS, 0)
    self.replaced_rows = 0
    self._found_unreadable: dict[tuple[str, str, int], str] = {}  # (name, split, i) -> kind
    self._bad = self._index_problems(data, frames_fn)
    self._mask = mask_config
    self._frames_fn = frames_fn
    self._seed = seed
    self._process_index = process_index
    self._process_count = process_count
    self._augment = augment.AugmentConfig.from_config(data.augment)
    self._noise_bank = ()
    if self._augment.noise_prob > 0 and self._augment.noise_dataset:
      noise = Split.open(
        self._augment.noise_dataset,
        self._augment.noise_split,
        data.data_dir,
        resample=data.resample,
      )
      report_bad_audio(
        [(noise, i, kind, reason) for i, (kind, reason) in sorted(noise.problems.items())],
        data.bad_audio,
        self.bad_audio,
      )
      self._noise_bank = _Clips(noise, self._unreadable)
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

  def _index_problems(self, data, frames_fn) -> np.ndarray:
    """bool[num_examples]: the examples the index shows unusable (and those shorter than one
    frame of the model), reported by `report_bad_audio`."""
    one_frame = _samples_for_one_frame(frames_fn, data.max_samples)
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
    report_bad_audio(found, data.bad_audio, self.bad_audio)
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

  def _source(self, example: int) -> int:
    """The number of the source (split) holding stream example `example`."""
    return int(np.searchsorted(self._offsets, example, side="right")) - 1

  def _locate(self, example: int) -> tuple[Split, int]:
    """The split holding stream example `example`, and its index there."""
    i = self._source(example)
    return self._splits[i], example - int(self._offsets[i])

  def crop_start(self, position: int, length: int, num_samples: int) -> int:
    """First sample of the crop to `num_samples` of a `length`-sample utterance at stream
    `position`: seeded by the position, uniform over the whole crops; 0 when it fits."""
    if length <= num_samples:
      return 0
    rng = np.random.default_rng([self._seed, _CROP_STREAM, position])
    return int(rng.integers(0, length - num_samples + 1))

  def _load(self, position: int, example: int, num_samples: int) -> tuple[np.ndarray, int]:
    """Reads, augments, crops and normalises an example: (f32[length <= num_samples], the
    crop's first sample in the (augmented) example).

    Without augmentation only the crop is read (its start comes from the length index).
    Raises BadAudioError naming the example when it cannot be read.
    """
    split, index = self._locate(example)
    if self._augment.enabled:
      samples = augment.augment(
        split.read(index), self._augment, self._augment_rng(position), self._noise_bank
      )
      start = self.crop_start(position, samples.size, num_samples)
      samples = samples[start : start + num_samples]
    else:
      size = int(self._lengths[example])
      start = self.crop_start(position, size, num_samples)
      samples = split.read(index, start, start + min(size, num_samples))
    if self._data.normalize:
      samples = normalize_audio(samples)
    return samples, start

  def _unreadable(self, split: Split, index: int, error: BadAudioError) -> None:
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

  def _substitutes(self, position: int, example: int, num_samples: int, length: int):
    """Examples that may fill the row of a bad `example` at stream `position`, in a seeded
    order: the other usable examples of its source whose row would hold at least `length`
    samples (its indexed row length, so the masks drawn from it stay inside the row).
    A generator: nothing is computed unless the row needs a substitute."""
    i = self._source(example)
    usable = self._usable[
      (self._usable >= self._offsets[i]) & (self._usable < self._offsets[i + 1])
    ]
    sizes = self._lengths[usable]
    if self._augment.speed_prob > 0:
      factor = augment.speed_factor(self._augment, self._augment_rng(position))
      sizes = np.round(sizes / factor)
    candidates = usable[(np.minimum(sizes, num_samples) >= length) & (usable != example)]
    rng = np.random.default_rng([self._seed, _SUBSTITUTE_STREAM, position])
    for k in rng.permutation(len(candidates)):
      yield int(candidates[k])

  def _read_row(
    self, position: int, example: int, num_samples: int, length: int
  ) -> tuple[np.ndarray, int, int]:
    """(f32[n] samples, example read, crop start) of the row at stream `position`: `example`
    (`_load`) or, when it cannot be read and data.bad_audio is 'skip', the first readable
    of its `_substitutes`, cropped to the row's indexed `length` when rows are crops."""
    substitutes = self._substitutes(position, example, num_samples, length)
    for candidate in itertools.chain([example], substitutes):
      split, index = self._locate(candidate)
      if (split.name, split.split, index) in self._found_unreadable:
        continue
      crop = num_samples if candidate == example or not self._crops_rows else length
      try:
        samples, start = self._load(position, candidate, crop)
      except BadAudioError as error:
        self._unreadable(split, index, error)
        continue
      if candidate != example:
        with self._lock:
          self.replaced_rows += 1
      return samples, candidate, start
    split, index = self._locate(example)
    raise BadAudioError(
      f"cannot fill the row of {split.describe(index)} at stream position {position}: no other "
      f"example of its source that gives {length} samples can be read",
      "unreadable",
    )

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

  def host_audio(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This process's rows of global batch `batch`, unmasked: audio f32[b, S],
    audio_paddings f32[b, S], the example each row holds i64[b] (`batch_indices`' rows,
    except a row whose example could not be read, filled from a substitute) and where its
    crop starts in that example, i64[b] samples (in the augmented audio with augmentation).
    """
    rows, mine = self.batch_rows(batch), self.host_rows(batch)
    positions, examples = rows.positions[mine], rows.examples[mine]
    lengths = self.row_lengths(batch)[mine]
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
    mask = self._global_masks(batch)[self.host_rows(batch)]
    return {"audio": audio, "audio_paddings": paddings, "mask": mask}

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


def _samples_for_one_frame(frames_fn: Callable[[int], int], limit: int) -> int:
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
