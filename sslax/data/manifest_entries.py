"""A split's audio files as entries, and the decoding of one file: what both dataset builds
share (`sslax.data.manifest` in this process, `sslax.data.manifest_beam` on Beam workers).

`read_entries` lists a split's files from a fairseq manifest (.tsv, transcripts from the
`.wrd` beside it) or a folder (searched recursively; transcripts from a `.txt` beside each
file or a LibriSpeech chapter's `*.trans.txt`), as `Entry`s (key, path, transcript).
`decode` reads one file as int16 mono 16 kHz samples. Local paths or any filesystem
TensorFlow reads (gs://...). The layouts are described in `sslax.data.manifest`.
"""

import collections
import dataclasses
import os

import numpy as np
import soundfile
import tensorflow as tf

from sslax.data import decode as audio_decode

SAMPLE_RATE = 16_000  # Hz, what every sslax model expects
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class UnusableAudio(ValueError):
  """Audio that decodes but cannot be stored (no samples, another rate without resampling);
  its message is the whole reason."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One audio file of a split: its key, path and transcript (None when there is none)."""

  key: str
  path: str
  text: str | None


def read_fairseq_manifest(path: str) -> list[Entry]:
  """Entries of a fairseq .tsv manifest, with transcripts from a `.wrd` file beside it.

  Local paths or any filesystem TensorFlow reads (gs://...), for the manifest and the audio.
  """
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().splitlines()
  if not lines:
    raise ValueError(f"{path}: empty manifest; the first line must be the audio root")
  root = lines[0].strip()
  relative_paths = []
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 2 or not fields[1].strip().isdigit():
      raise ValueError(f"{path}:{number}: expected 'relative/path<TAB>num_samples', got {line!r}")
    relative_paths.append(fields[0])
  words_path = os.path.splitext(path)[0] + ".wrd"
  texts: list[str | None] = [None] * len(relative_paths)
  if tf.io.gfile.exists(words_path):
    with tf.io.gfile.GFile(words_path) as f:
      texts = f.read().splitlines()
    if len(texts) != len(relative_paths):
      raise ValueError(
        f"{words_path} has {len(texts)} lines but {path} lists {len(relative_paths)} files"
      )
  return [
    Entry(os.path.splitext(rel)[0], os.path.join(root, rel), text)
    for rel, text in zip(relative_paths, texts, strict=True)
  ]


def _librispeech_transcripts(directory: str, names: list[str]) -> dict[str, str]:
  """{utterance id: text} from LibriSpeech's `*.trans.txt` files ('ID WORDS...' lines)."""
  texts = {}
  for name in names:
    if name.endswith(".trans.txt"):
      with open(os.path.join(directory, name)) as f:
        for line in f:
          key, _, words = line.strip().partition(" ")
          if key:
            texts[key] = words
  return texts


def scan_folder(folder: str) -> list[Entry]:
  """Audio files under `folder` (sorted), with transcripts from a `.txt` file beside each
  or, for LibriSpeech's layout, from its chapters' `*.trans.txt` files."""
  entries = []
  for directory, _, names in os.walk(folder):
    chapter_texts = _librispeech_transcripts(directory, names)
    for name in names:
      stem, extension = os.path.splitext(name)
      if extension.lower() not in AUDIO_EXTENSIONS:
        continue
      path = os.path.join(directory, name)
      text_path = os.path.join(directory, stem + ".txt")
      text = chapter_texts.get(stem)
      if os.path.exists(text_path):
        with open(text_path) as f:
          text = " ".join(f.read().split())
      entries.append(Entry(os.path.splitext(os.path.relpath(path, folder))[0], path, text))
  if not entries:
    raise ValueError(f"{folder}: no {'/'.join(AUDIO_EXTENSIONS)} files found")
  return sorted(entries, key=lambda e: e.key)


def read_entries(source: str) -> list[Entry]:
  """A split's entries from a manifest file or a folder."""
  if os.path.isdir(source):
    return scan_folder(source)
  if os.path.isfile(source) or (_is_remote(source) and tf.io.gfile.exists(source)):
    return read_fairseq_manifest(source)
  raise FileNotFoundError(f"{source}: neither a manifest file nor a folder")


def _is_remote(path: str) -> bool:
  return "://" in path


def decode(
  path: str, *, resample: bool = True, notes: collections.Counter | None = None
) -> np.ndarray:
  """int16[num_samples] mono 16 kHz audio of a file (local or gs://...).

  Several channels are averaged; another sample rate is resampled (soxr_hq,
  `sslax.data.decode.to_16k`) when `resample`, else an `UnusableAudio` error. `notes` counts
  'mixed_down' and 'resampled' files.
  """
  if _is_remote(path):
    with tf.io.gfile.GFile(path, "rb") as f:
      samples, rate = soundfile.read(f, dtype="float32", always_2d=True)
  else:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
  if samples.shape[0] == 0:
    raise UnusableAudio("no samples")
  if rate != SAMPLE_RATE and not resample:
    raise UnusableAudio(
      f"sample rate {rate} Hz, not {SAMPLE_RATE} Hz (--resample, the default, converts it)"
    )
  notes = collections.Counter() if notes is None else notes
  if samples.shape[1] > 1:
    notes["mixed_down"] += 1
  if rate != SAMPLE_RATE:
    notes["resampled"] += 1
  samples = audio_decode.to_16k(samples.mean(axis=1), rate)
  return np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def one_line(error: Exception) -> str:
  """An error's message on one line without tabs (for the skipped-files TSV)."""
  return str(error).replace("\t", " ").replace("\n", " ")


def why_skipped(path: str, error: Exception) -> str:
  """'PATH: reason' for a file `decode` refused: its reason as is for audio that decoded,
  'cannot decode audio (...)' for audio that did not."""
  if isinstance(error, UnusableAudio):
    return f"{path}: {error}"
  return f"{path}: cannot decode audio ({error})"
