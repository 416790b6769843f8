"""Builds a TFDS dataset from a user's own audio: a folder, or fairseq-style manifests.

  python -m sslax.data.manifest --name=my_corpus --data_dir=/data/tfds \
    --split=train=/data/manifests/train.tsv --split=dev=/data/my_audio/dev

then train with `--config.data.name=my_corpus --config.data.data_dir=/data/tfds`. With
`--beam_pipeline_options=runner=DirectRunner,direct_num_workers=8` (TFDS's syntax: comma-
separated key=value pipeline options) the files are decoded and written by an Apache Beam
pipeline (`sslax.data.manifest_beam`); the same options with `runner=DataflowRunner`,
`SparkRunner` or `FlinkRunner` run it on a cluster (the README's data section has the
commands). Either way gives the same dataset, example for example.

A split's source is either
* a fairseq manifest (`wav2vec_manifest.py`'s .tsv): the first line is the audio root,
  then one `relative/path<TAB>num_samples` line per file; transcripts, if any, come from
  the `.wrd` file beside it (same stem, one line of words per manifest line), or
* a folder, searched recursively for .wav/.flac/.ogg files (sorted); a transcript, if
  any, is the `.txt` file beside each audio file (same stem) or its line in a LibriSpeech
  chapter's `*.trans.txt`, so an extracted LibriSpeech/Libri-Light folder builds as is.

Every file is decoded once (soundfile), mixed down to mono, resampled to 16 kHz when it
is not (librosa, soxr_hq; with `resample=False` / `--noresample` such a file is skipped
instead; how many were mixed down and resampled is logged) and stored as int16 like TFDS's
`librispeech`: features `id` (the path relative to the root, without extension: the key
HuBERT unit shards use), `speech` and `text` ('' without a transcript). The result is an
ordinary prepared TFDS dataset in ArrayRecord files, read back by `tfds.builder(name,
data_dir=...)` with no code of ours.

A file that cannot be read is skipped, named in a warning and listed, with the reason,
in `sslax_skipped_<split>.tsv` beside the dataset (or, with `on_error='raise'`, stops the
build naming it); nothing is dropped silently. A malformed manifest line is an error
naming the file and line.
"""

import collections
from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import os

from absl import app, flags, logging
import librosa
import numpy as np
import soundfile
import tensorflow as tf
import tensorflow_datasets as tfds

SAMPLE_RATE = 16_000  # Hz, what every sslax model expects
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
VERSION = "1.0.0"


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

  Several channels are averaged; another sample rate is resampled (librosa, soxr_hq) when
  `resample`, else a ValueError. `notes` counts 'mixed_down' and 'resampled' files.
  """
  if _is_remote(path):
    with tf.io.gfile.GFile(path, "rb") as f:
      samples, rate = soundfile.read(f, dtype="float32", always_2d=True)
  else:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
  if samples.shape[0] == 0:
    raise ValueError("no samples")
  if rate != SAMPLE_RATE and not resample:
    raise ValueError(f"{rate} Hz, not {SAMPLE_RATE} Hz (--resample converts it)")
  notes = collections.Counter() if notes is None else notes
  if samples.shape[1] > 1:
    notes["mixed_down"] += 1
  samples = samples.mean(axis=1)
  if rate != SAMPLE_RATE:
    notes["resampled"] += 1
    samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
  return np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def one_line(error: Exception) -> str:
  """An error's message on one line without tabs (for the skipped-files TSV)."""
  return str(error).replace("\t", " ").replace("\n", " ")


FEATURES = tfds.features.FeaturesDict(
  {
    "id": tfds.features.Text(),
    "speech": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE),
    "text": tfds.features.Text(),
  }
)


def _examples(
  entries: list[Entry],
  skipped: list[tuple[str, str]],
  notes: collections.Counter,
  on_error: str,
  resample: bool,
) -> Iterator[tuple[int, dict]]:
  for index, entry in enumerate(entries):
    try:
      speech = decode(entry.path, resample=resample, notes=notes)
    except Exception as error:  # soundfile raises several types for bad files
      if on_error == "raise":
        raise ValueError(f"{entry.path}: cannot decode audio ({error})") from error
      logging.warning("skipping %s: cannot decode audio (%s)", entry.path, error)
      skipped.append((entry.path, one_line(error)))
      continue
    # The entry's position is the key: with shuffling disabled the split keeps this order.
    yield index, {"id": entry.key, "speech": speech, "text": entry.text or ""}


def build(
  name: str,
  splits: Mapping[str, str],
  data_dir: str,
  *,
  on_error: str = "skip",
  resample: bool = True,
  beam_options: Sequence[str] | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds dataset `name` in `data_dir` from {split: manifest file or folder}.

  Returns the prepared builder. `on_error` is 'skip' (list unreadable files in
  `sslax_skipped_<split>.tsv`) or 'raise'; `resample` converts other sample rates to 16 kHz
  (else such files are unreadable). `beam_options` (Beam pipeline flags, e.g.
  ['--runner=DirectRunner']) decodes and writes the files with Apache Beam; None: in this
  process.
  """
  if on_error not in ("skip", "raise"):
    raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
  entries = {split: read_entries(source) for split, source in splits.items()}
  for split, split_entries in entries.items():
    keys = [e.key for e in split_entries]
    if len(set(keys)) != len(keys):
      raise ValueError(f"split {split!r} ({splits[split]}) lists the same file twice")
  common = dict(
    name=name,
    version=VERSION,
    features=FEATURES,
    data_dir=data_dir,
    description=f"Audio from {dict(splits)}, built by sslax.data.manifest.",
    file_format="array_record",
    disable_shuffling=True,  # keep the manifest's order
  )
  if beam_options is not None:
    from sslax.data import manifest_beam  # Apache Beam is imported only when asked for

    builder, skipped = manifest_beam.build(entries, on_error, resample, beam_options, **common)
  else:
    skipped = {split: [] for split in splits}
    notes = collections.Counter()
    builder = tfds.dataset_builders.store_as_tfds_dataset(
      split_datasets={
        split: _examples(split_entries, skipped[split], notes, on_error, resample)
        for split, split_entries in entries.items()
      },
      **common,
    )
    if notes:
      logging.info("%s: files mixed down to mono / resampled to 16 kHz: %s", name, dict(notes))
  for split, rows in skipped.items():
    if rows:
      path = os.path.join(os.fspath(builder.data_dir), f"sslax_skipped_{split}.tsv")
      with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write("".join(f"{p}\t{reason}\n" for p, reason in rows))
      tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
      logging.warning("%s: %d unreadable files skipped, listed in %s", split, len(rows), path)
  return builder


def beam_flags(options: str) -> list[str]:
  """Beam pipeline flags from TFDS's CLI syntax: 'runner=DirectRunner,direct_num_workers=2'
  -> ['--runner=DirectRunner', '--direct_num_workers=2']."""
  return [f"--{option.strip().removeprefix('--')}" for option in options.split(",") if option]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  splits = {}
  for spec in FLAGS.split:
    split, sep, source = spec.partition("=")
    if not sep or not split or not source:
      raise app.UsageError(f"--split={spec!r}: expected SPLIT=SOURCE")
    splits[split] = source
  options = FLAGS.beam_pipeline_options
  builder = build(
    FLAGS.name,
    splits,
    FLAGS.data_dir,
    on_error=FLAGS.on_error,
    resample=FLAGS.resample,
    beam_options=None if options is None else beam_flags(options),
  )
  for split, info in builder.info.splits.items():
    logging.info("%s: %d examples", split, info.num_examples)


def define_flags() -> None:
  """The command line's flags. Defined only when run as a program: Beam workers import this
  module (through sslax.data.manifest_beam) beside `__main__`, and a library must not take
  flag names such as --name from the programs that import it."""
  flags.DEFINE_string("name", None, "Dataset name (then config.data.name).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (then config.data.data_dir).")
  flags.DEFINE_multi_string(
    "split", None, "SPLIT=SOURCE, SOURCE a fairseq .tsv manifest or a folder; repeatable."
  )
  flags.DEFINE_enum(
    "on_error", "skip", ["skip", "raise"], "Unreadable files: skip and list them, or stop."
  )
  flags.DEFINE_bool(
    "resample", True, "Resample files at other rates to 16 kHz (else they are unreadable)."
  )
  flags.DEFINE_string(
    "beam_pipeline_options",
    None,
    "Build with Apache Beam: comma-separated pipeline options as TFDS's CLI takes them, "
    "e.g. 'runner=DirectRunner,direct_num_workers=4'. Unset: build in this process.",
  )
  flags.mark_flags_as_required(["name", "data_dir", "split"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
