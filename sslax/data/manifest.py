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

A file that cannot be read (or is at another rate with `--noresample`) is skipped, named
in a warning and listed, with the reason, in `sslax_skipped_<split>.tsv` beside the dataset
(or, with `on_error='raise'`, stops the build naming it); nothing is dropped silently. A
split whose every file is skipped is an error naming it (TFDS cannot store an empty split);
an in-process build still writes its list, a Beam build stops with TFDS's error naming the
split (its workers' lists are not finalised when the pipeline fails). A malformed
manifest line is an error naming the file and line; so is a split name TFDS cannot read
back (`all` means every split together).

A dataset version is written once: building a `--name` that exists in `--data_dir` is an
error unless `--overwrite`, which deletes it and builds it anew from the `--split` flags
given. To add a split, rebuild with `--overwrite` and every split the dataset should hold
(the existing splits are decoded again), or build the new split under another `--name`.
"""

import collections
from collections.abc import Iterator, Mapping, Sequence
import os
import re

from absl import app, flags, logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslax.core import chatter
from sslax.data import manifest_entries

VERSION = "1.0.0"
# What TFDS's split expressions ('train[:10%]', 'train+dev') read as a split name; 'all'
# (any case) is the expression for every split together, which TFDS refuses as a name.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
RESERVED_SPLIT_NAMES = ("all",)


class EmptySplitError(ValueError):
  """Every file of a split was skipped, so there is nothing TFDS could store."""

  def __init__(self, split: str):
    super().__init__(f"split {split!r}: every file was skipped")
    self.split = split


def check_split_name(split: str) -> None:
  """Raises ValueError unless `split` is a name TFDS stores and reads back."""
  if not _SPLIT_NAME.fullmatch(split):
    raise ValueError(
      f"split name {split!r}: use letters, digits, '_' and '-' only (TFDS reads split names "
      "inside expressions such as 'train[:10%]+dev')"
    )
  if split.lower() in RESERVED_SPLIT_NAMES:
    raise ValueError(
      f"split name {split!r} is reserved: TFDS reads '{split.lower()}' as every split of the "
      "dataset together; name the split otherwise (e.g. 'train')"
    )


FEATURES = tfds.features.FeaturesDict(
  {
    "id": tfds.features.Text(),
    "speech": tfds.features.Audio(
      shape=(None,), dtype=np.int16, sample_rate=manifest_entries.SAMPLE_RATE
    ),
    "text": tfds.features.Text(),
  }
)


def _examples(
  split: str,
  entries: list[manifest_entries.Entry],
  skipped: list[tuple[str, str]],
  notes: collections.Counter,
  on_error: str,
  resample: bool,
) -> Iterator[tuple[int, dict]]:
  """(index, example) of each decodable entry; raises EmptySplitError after the last entry
  when none was (TFDS would fail on the empty split without saying why)."""
  for index, entry in enumerate(entries):
    try:
      speech = manifest_entries.decode(entry.path, resample=resample, notes=notes)
    except Exception as error:  # soundfile raises several types for bad files
      if on_error == "raise":
        raise ValueError(manifest_entries.why_skipped(entry.path, error)) from error
      logging.warning("skipping %s", manifest_entries.why_skipped(entry.path, error))
      skipped.append((entry.path, manifest_entries.one_line(error)))
      continue
    # The entry's position is the key: with shuffling disabled the split keeps this order.
    yield index, {"id": entry.key, "speech": speech, "text": entry.text or ""}
  if len(skipped) == len(entries):
    raise EmptySplitError(split)


def dataset_dir(name: str, data_dir: str) -> str:
  """The folder of the dataset's version: what TFDS reads, beside the skipped-files lists."""
  return os.path.join(os.fspath(data_dir), name, VERSION)


def _write_skipped(directory: str, split: str, rows: list[tuple[str, str]]) -> str:
  """Writes `sslax_skipped_<split>.tsv` (path<TAB>reason lines) atomically; its path."""
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, f"sslax_skipped_{split}.tsv")
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    f.write("".join(f"{p}\t{reason}\n" for p, reason in rows))
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return path


def _empty_split_message(split: str, source: str, rows: list[tuple[str, str]], listed: str) -> str:
  reasons = collections.Counter(reason for _, reason in rows).most_common(2)
  common = "; ".join(f"{count} x {reason}" for reason, count in reasons)
  return (
    f"split {split!r} ({source}): all {len(rows)} files were skipped, so there is nothing to "
    f"write (most common: {common}); every file and its reason is listed in {listed}"
  )


def _prepare_dir(name: str, data_dir: str, overwrite: bool) -> None:
  """Raises FileExistsError, saying what to do, when the dataset exists and not
  `overwrite`; else removes what a previous build left (a dataset, or a failed build's
  skipped-files lists, which TFDS would take for a dataset to reuse)."""
  directory = dataset_dir(name, data_dir)
  if tf.io.gfile.exists(os.path.join(directory, "dataset_info.json")) and not overwrite:
    held = sorted(tfds.builder_from_directory(directory).info.splits)
    raise FileExistsError(
      f"dataset {name!r} already exists in {directory} (splits {', '.join(held)}). Pass "
      "--overwrite to delete it and build it from the --split flags given; to add a split, "
      "rebuild with --overwrite and every split it should hold (a TFDS dataset version is "
      "written once), or build the new split under another --name"
    )
  if tf.io.gfile.exists(directory):
    logging.info("deleting %s before building it anew", directory)
    tf.io.gfile.rmtree(directory)


def build(
  name: str,
  splits: Mapping[str, str],
  data_dir: str,
  *,
  on_error: str = "skip",
  resample: bool = True,
  beam_options: Sequence[str] | None = None,
  overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
  """Builds dataset `name` in `data_dir` from {split: manifest file or folder}.

  Returns the prepared builder. `on_error` is 'skip' (list unreadable files in
  `sslax_skipped_<split>.tsv`) or 'raise'; `resample` converts other sample rates to 16 kHz
  (else such files are skipped). `beam_options` (Beam pipeline flags, e.g.
  ['--runner=DirectRunner']) decodes and writes the files with Apache Beam; None: in this
  process. `overwrite` deletes an existing dataset `name` first (else it is an error).

  Raises:
    ValueError: a split name TFDS cannot read back, a malformed manifest, or a split whose
      every file was skipped (its list is written first).
    FileExistsError: the dataset exists and not `overwrite`.
  """
  if on_error not in ("skip", "raise"):
    raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
  for split in splits:
    check_split_name(split)
  entries = {split: manifest_entries.read_entries(source) for split, source in splits.items()}
  for split, split_entries in entries.items():
    keys = [e.key for e in split_entries]
    if len(set(keys)) != len(keys):
      raise ValueError(f"split {split!r} ({splits[split]}) lists the same file twice")
  _prepare_dir(name, data_dir, overwrite)
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
    try:
      builder = tfds.dataset_builders.store_as_tfds_dataset(
        split_datasets={
          split: _examples(split, split_entries, skipped[split], notes, on_error, resample)
          for split, split_entries in entries.items()
        },
        **common,
      )
    except EmptySplitError as error:
      rows = skipped[error.split]
      listed = _write_skipped(dataset_dir(name, data_dir), error.split, rows)
      raise ValueError(
        _empty_split_message(error.split, splits[error.split], rows, listed)
      ) from None
    if notes:
      logging.info("%s: files mixed down to mono / resampled to 16 kHz: %s", name, dict(notes))
  for split, rows in skipped.items():
    if rows:
      path = _write_skipped(os.fspath(builder.data_dir), split, rows)
      logging.warning("%s: %d unreadable files skipped, listed in %s", split, len(rows), path)
  return builder


def beam_flags(options: str) -> list[str]:
  """Beam pipeline flags from TFDS's CLI syntax: 'runner=DirectRunner,direct_num_workers=2'
  -> ['--runner=DirectRunner', '--direct_num_workers=2']."""
  return [f"--{option.strip().removeprefix('--')}" for option in options.split(",") if option]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  chatter.install()
  FLAGS = flags.FLAGS
  splits = {}
  for spec in FLAGS.split:
    split, sep, source = spec.partition("=")
    if not sep or not split or not source:
      raise app.UsageError(f"--split={spec!r}: expected SPLIT=SOURCE")
    splits[split] = source
  options = FLAGS.beam_pipeline_options
  try:
    builder = build(
      FLAGS.name,
      splits,
      FLAGS.data_dir,
      on_error=FLAGS.on_error,
      resample=FLAGS.resample,
      beam_options=None if options is None else beam_flags(options),
      overwrite=FLAGS.overwrite,
    )
  except (ValueError, FileExistsError, FileNotFoundError) as error:
    # Each names the file, split or flag to change: one line, not a traceback.
    raise SystemExit(f"sslax.data.manifest: {error}") from None
  for split, info in builder.info.splits.items():
    logging.info("%s: %d examples", split, info.num_examples)


def define_flags() -> None:
  """The command line's flags. Defined only when run as a program: a library must not take
  flag names such as --name from the programs that import it (Beam's workers among them)."""
  flags.DEFINE_string("name", None, "Dataset name (then config.data.name).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (then config.data.data_dir).")
  flags.DEFINE_multi_string(
    "split", None, "SPLIT=SOURCE, SOURCE a fairseq .tsv manifest or a folder; repeatable."
  )
  flags.DEFINE_enum(
    "on_error", "skip", ["skip", "raise"], "Unreadable files: skip and list them, or stop."
  )
  flags.DEFINE_bool(
    "resample", True, "Resample files at other rates to 16 kHz (--noresample: skip them)."
  )
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Delete an existing dataset --name and build it anew from the --split flags (to add a "
    "split, give every split it should hold).",
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
