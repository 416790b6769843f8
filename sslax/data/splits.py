"""TFDS splits opened for random access, and the index of their bad audio.

`open_split` prepares a dataset once with TFDS (process 0; the others wait), opens it with
`sslax.data.records` (no TensorFlow needed once prepared) and checks it has one 16 kHz
audio feature. `split_index` reads every example's header or array shape once per split
(`sslax_index_<split>.npz` beside the prepared data) and finds audio that is unreadable,
empty, truncated (WAV), not mono or at another sample rate, with no full decode; `Split`
joins a split's source, its usable lengths and what is wrong with the rest, and reads
examples by index (`sslax.data.decode`), naming the example in every error. What only a full
decode reveals (a cut-off FLAC) is found when the example is read.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import os
import re

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from sslax.data import decode, records

# Registers the `sslax_demo_corpus` TFDS builder.
import sslax.data.demo_corpus  # noqa: F401  isort: skip

BAD_AUDIO_SETTINGS = ("skip", "error")  # config.data.bad_audio
# Kinds of bad audio, as counted in a stream's `bad_audio`.
BAD_AUDIO_KINDS = ("unreadable", "empty", "truncated", "too_short", "not_mono", "wrong_sample_rate")


class BadAudioError(RuntimeError):
  """An example whose audio cannot be used; the message names the dataset, split and example."""

  def __init__(self, message: str, kind: str):
    super().__init__(message)
    self.kind = kind


def open_split(name: str, split: str, data_dir: str) -> tuple[records.PreparedSplit, str]:
  """Opens split `split` of TFDS dataset `name` for reading by index; returns it and the
  name of its audio feature. A dataset not yet prepared in `data_dir` is prepared first,
  once, with TFDS (which needs TensorFlow), by process 0 while the others wait.

  Raises ValueError naming the dataset when it has no single 16 kHz audio feature.
  """
  try:
    source = records.PreparedSplit(name, split, data_dir)
  except records.NotPreparedError:
    if jax.process_index() == 0:
      tfds.builder(name, data_dir=data_dir or None).download_and_prepare(file_format="array_record")
    multihost_utils.sync_global_devices(f"prepare {name}")
    source = records.PreparedSplit(name, split, data_dir)
  audio_keys = [key for key in source.features if source.kind(key) == "Audio"]
  if len(audio_keys) != 1:
    raise ValueError(f"TFDS dataset {name!r} must have one Audio feature, found {audio_keys}")
  rate = feature_rate(source, audio_keys[0])
  if rate != decode.SAMPLE_RATE:
    raise ValueError(
      f"TFDS dataset {name!r} feature {audio_keys[0]!r} is sampled at {rate} Hz; "
      f"sslax models expect {decode.SAMPLE_RATE} Hz"
    )
  return source, audio_keys[0]


def feature_rate(source: records.PreparedSplit, audio_key: str) -> int:
  """The sample rate (Hz) an audio feature declares; 0 when it declares none."""
  return int(source.features[audio_key]["audio"].get("sampleRate", 0))


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


def split_index(source: records.PreparedSplit, audio_key: str) -> AudioIndex:
  """The `AudioIndex` of a split, cached beside its prepared data (`sslax_index_<split>.npz`).

  Computed once by reading every example (encoded audio: its header only; process 0 writes
  it, atomically); a process that cannot see the file afterwards (data_dir not shared)
  computes it itself.
  """
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", source.split)
  path = os.path.join(os.fspath(source.directory), f"sslax_index_{name}.npz")
  rate = feature_rate(source, audio_key)

  def compute_and_write() -> None:
    rows = []
    for i in range(len(source)):
      try:
        value = source.get(i, audio_key)
      except Exception as error:  # a corrupt record
        rows.append((0, 0, 0, "unreadable", f"cannot read the record ({error})"))
        continue
      rows.append(decode.header(value, rate))
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
  multihost_utils.sync_global_devices(f"index {source.name} {source.split}")
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
    elif rate != decode.SAMPLE_RATE and not resample:
      problems[i] = (
        "wrong_sample_rate",
        f"{rate} Hz, not {decode.SAMPLE_RATE} Hz (config.data.resample=True resamples it)",
      )
    elif rate != decode.SAMPLE_RATE:
      lengths[i] = decode.resampled_length(frames, rate)
  lengths[list(problems)] = 0
  return lengths, problems


def read_audio(
  source: records.PreparedSplit,
  index: int,
  audio_key: str,
  where: str,
  *,
  start: int = 0,
  stop: int | None = None,
  resample: bool = False,
) -> np.ndarray:
  """f32[stop - start]: samples start … stop − 1 of example `index` of a split (16 kHz,
  scaled to [-1, 1)); `stop=None` reads to the end.

  Samples stored as int16 are divided by 32768, only those of the slice; encoded audio (FLAC,
  WAV, Ogg bytes) is decoded with soundfile, which scales 16-bit PCM the same way, seeking to
  `start` and decoding only the slice. It must be mono and 16 kHz, unless `resample` (then
  the whole file is decoded and resampled with soxr_hq). Raises BadAudioError naming the
  example and `where` (the dataset and split) when it cannot be read or ends early.
  """
  try:
    value = source.get(index, audio_key)
  except Exception as error:  # a corrupt record
    raise BadAudioError(f"cannot read example {index} of {where}: {error}", "unreadable") from error
  try:
    return decode.decode(value, start, stop, resample)
  except decode.AudioFault as error:
    raise BadAudioError(
      f"cannot read example {index} of {where}: {error.kind} ({error.reason})", error.kind
    ) from error


@dataclasses.dataclass(frozen=True)
class Split:
  """One opened TFDS split: its random-access source, audio feature and usable lengths.

  `lengths` are the samples each example gives at 16 kHz (after resampling, with `resample`),
  0 for those the index shows cannot be used; `problems` maps those to (kind, reason).
  """

  name: str
  split: str
  source: records.PreparedSplit
  audio_key: str
  lengths: np.ndarray  # i64[num_examples] samples
  problems: Mapping[int, tuple[str, str]] = dataclasses.field(default_factory=dict)
  id_key: str | None = None  # a Text feature naming each example in messages ('id')
  resample: bool = False

  @classmethod
  def open(cls, name: str, split: str, data_dir: str, *, resample: bool = False) -> "Split":
    source, audio_key = open_split(name, split, data_dir)
    lengths, problems = usable_lengths(split_index(source, audio_key), resample)
    has_id = "id" in source.features and source.kind("id") == "Text"
    return cls(
      name, split, source, audio_key, lengths, problems, "id" if has_id else None, resample
    )

  def describe(self, index: int) -> str:
    """'NAME:SPLIT example INDEX (id ...)', for messages."""
    where = f"{self.name}:{self.split} example {index}"
    if self.id_key is None:
      return where
    try:
      key = self.source.get(index, self.id_key)
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
      value = self.source.get(index, self.audio_key)
    except Exception as error:  # a corrupt record
      raise BadAudioError(f"cannot read {self.describe(index)}: {error}", "unreadable") from error
    try:
      return decode.decode(value, start, stop, self.resample)
    except decode.AudioFault as error:
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


class NoiseClips(Sequence):
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
