"""Apache Beam generation for `sslax.data.manifest`: a split's files decoded by Beam workers.

`build` writes each split's entries (index, key, path, transcript) as JSON lines to a
scratch folder inside `data_dir` (so workers of any runner can read them; on Dataflow
`data_dir` is a gs:// path), and hands TFDS one `BuildSplit` transform per split:

  ReadFromText(entries) -> ParDo(decode: mono 16 kHz int16) -> (index, example)
                                   \\-> unreadable files -> WriteToText(skipped shards)

TFDS's Beam writer sorts the examples by index (shuffling is disabled), so the split holds
the files in the manifest's order, as the in-process build does. The skipped files are
gathered, in the same order, into `sslax_skipped_<split>.tsv` by the caller, and the
scratch folder is removed. Beam counters (namespace 'sslax': skipped, mixed_down,
resampled) show in the runner's monitoring.
"""

import collections
from collections.abc import Mapping, Sequence
import json
import os

import apache_beam as beam
from apache_beam.options import pipeline_options
import tensorflow as tf
import tensorflow_datasets as tfds

from sslax.data import manifest_entries


class _Decode(beam.DoFn):
  """One entry (a JSON line) -> (index, example), or its index, path and reason tagged
  'skipped' when its audio cannot be decoded (on_error='skip')."""

  def __init__(self, on_error: str, resample: bool):
    self._on_error = on_error
    self._resample = resample

  def process(self, line: str):
    entry = json.loads(line)
    notes = collections.Counter()
    try:
      speech = manifest_entries.decode(entry["path"], resample=self._resample, notes=notes)
    except Exception as error:  # soundfile raises several types for bad files
      if self._on_error == "raise":
        raise ValueError(manifest_entries.why_skipped(entry["path"], error)) from error
      beam.metrics.Metrics.counter("sslax", "skipped").inc()
      record = [entry["index"], entry["path"], manifest_entries.one_line(error)]
      yield beam.pvalue.TaggedOutput("skipped", json.dumps(record))
      return
    for name, count in notes.items():
      beam.metrics.Metrics.counter("sslax", name).inc(count)
    example = {"id": entry["key"], "speech": speech, "text": entry["text"] or ""}
    yield entry["index"], example


class BuildSplit(beam.PTransform):
  """The examples of one split, keyed by their position in the manifest (module docstring)."""

  def __init__(self, entries_path: str, skipped_prefix: str, on_error: str, resample: bool):
    super().__init__()
    self._entries_path = entries_path
    self._skipped_prefix = skipped_prefix
    self._on_error = on_error
    self._resample = resample

  def expand(self, pbegin):
    lines = pbegin | "ReadEntries" >> beam.io.ReadFromText(self._entries_path)
    decoded = lines | "Decode" >> beam.ParDo(_Decode(self._on_error, self._resample)).with_outputs(
      "skipped", main="examples"
    )
    _ = decoded.skipped | "WriteSkipped" >> beam.io.WriteToText(self._skipped_prefix)
    return decoded.examples


def _read_skipped(prefix: str) -> list[tuple[str, str]]:
  """(path, reason) of the skipped files, in manifest order, from WriteToText's shards."""
  records = []
  for shard in tf.io.gfile.glob(prefix + "*"):
    with tf.io.gfile.GFile(shard) as f:
      records += [json.loads(line) for line in f if line.strip()]
  return [(path, reason) for _, path, reason in sorted(records)]


def build(
  entries: Mapping[str, list[manifest_entries.Entry]],
  on_error: str,
  resample: bool,
  beam_options: Sequence[str],
  **store_kwargs,
) -> tuple[tfds.core.DatasetBuilder, dict[str, list[tuple[str, str]]]]:
  """Builds the dataset with Beam: (its builder, {split: [(path, reason) skipped]}).

  `beam_options` are Beam pipeline flags ('--runner=DirectRunner', ...); `store_kwargs`
  go to `tfds.dataset_builders.store_as_tfds_dataset`.
  """
  scratch = os.path.join(os.fspath(store_kwargs["data_dir"]), f".sslax_beam_{store_kwargs['name']}")
  tf.io.gfile.makedirs(scratch)
  transforms, prefixes = {}, {}
  for split, split_entries in entries.items():
    entries_path = os.path.join(scratch, f"entries_{split}.jsonl")
    with tf.io.gfile.GFile(entries_path, "w") as f:
      for index, entry in enumerate(split_entries):
        record = dict(index=index, key=entry.key, path=entry.path, text=entry.text)
        f.write(json.dumps(record) + "\n")
    prefixes[split] = os.path.join(scratch, f"skipped_{split}")
    transforms[split] = BuildSplit(entries_path, prefixes[split], on_error, resample)
  options = pipeline_options.PipelineOptions(flags=list(beam_options))
  try:
    builder = tfds.dataset_builders.store_as_tfds_dataset(
      split_datasets=transforms,
      download_config=tfds.download.DownloadConfig(beam_options=options),
      **store_kwargs,
    )
    skipped = {split: _read_skipped(prefix) for split, prefix in prefixes.items()}
  finally:
    tf.io.gfile.rmtree(scratch)
  return builder, skipped
