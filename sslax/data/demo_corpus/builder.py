"""TFDS builder `sslax_demo_corpus`: the embedded espeak-ng read-speech corpus.

Builds offline from the files beside this module (`{split}.jsonl` and
`audio/{split}/{id}.ogg`, made by `tools/make_demo_corpus.py`; see README.md here). The
features mirror TFDS `librispeech` (`id`, `speech` int16 at 16 kHz, `text`, `speaker_id`),
plus the espeak `voice` and word and phoneme alignments in samples, so one input pipeline
reads both.

  from sslax.data.demo_corpus import builder
  builder.prepare(data_dir)  # ~50 min of audio, about ten seconds on two cores.
  source = tfds.data_source('sslax_demo_corpus', split='train', data_dir=data_dir)
  source[0]['speech']  # np.int16[num_samples]; text features come back as bytes.
"""

import json
import os

import numpy as np
import soundfile
import tensorflow_datasets as tfds

SAMPLE_RATE = 16_000  # Hz
SPLITS = ("train", "dev", "test")
# Where the jsonl and audio files live; tests point it at a copy.
CORPUS_DIR = os.path.dirname(os.path.abspath(__file__))

_DESCRIPTION = """\
Synthetic multi-speaker English read speech (espeak-ng, 16 voices, about 50 minutes at
16 kHz) with LibriSpeech-style transcripts and espeak's word and phoneme alignments
(samples at 16 kHz). `dev` and `test` voices do not occur in `train`. Made by
tools/make_demo_corpus.py for offline tests and demos of sslax.
"""


class SslaxDemoCorpus(tfds.core.GeneratorBasedBuilder):
  """The demo corpus as a TFDS dataset; one example per utterance, keyed by its id."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "speech": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE),
          "text": tfds.features.Text(),
          "speaker_id": np.int64,
          "voice": tfds.features.Text(),
          "words": tfds.features.Sequence(
            {"word": tfds.features.Text(), "start": np.int32, "end": np.int32}
          ),
          "phonemes": tfds.features.Sequence(
            {"phoneme": tfds.features.Text(), "start": np.int32, "end": np.int32}
          ),
        }
      ),
      supervised_keys=("speech", "text"),
      homepage=None,
      citation=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything ships with the package.
    return {split: self._generate_examples(CORPUS_DIR, split) for split in SPLITS}

  def _generate_examples(self, corpus_dir, split):
    """Yields (id, example) for each line of `{corpus_dir}/{split}.jsonl`."""
    with open(os.path.join(corpus_dir, f"{split}.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
    for record in records:
      path = os.path.join(corpus_dir, "audio", split, record["id"] + ".ogg")
      yield record["id"], _example(record, path)


def _example(record: dict, path: str) -> dict:
  """One example: the decoded audio (int16[num_samples]) and the record's fields."""
  try:
    speech, rate = soundfile.read(path, dtype="int16")
  except (OSError, RuntimeError, soundfile.LibsndfileError) as e:  # missing or corrupt
    raise RuntimeError(f"demo corpus: cannot decode audio file {path}: {e}") from e
  if rate != SAMPLE_RATE or speech.ndim != 1 or len(speech) != record["num_samples"]:
    raise ValueError(
      f"demo corpus: {path} decodes to {speech.shape} at {rate} Hz; expected "
      f"({record['num_samples']},) at {SAMPLE_RATE} Hz"
    )
  return {
    "id": record["id"],
    "speech": speech,
    "text": record["text"],
    "speaker_id": record["speaker_id"],
    "voice": record["voice"],
    "words": {
      "word": [w for w, _, _ in record["words"]],
      "start": [s for _, s, _ in record["words"]],
      "end": [e for _, _, e in record["words"]],
    },
    "phonemes": {
      "phoneme": [p for p, _, _ in record["phonemes"]],
      "start": [s for _, s, _ in record["phonemes"]],
      "end": [e for _, _, e in record["phonemes"]],
    },
  }


def prepare(
  data_dir: str | None = None, file_format: str = "array_record"
) -> tfds.core.DatasetBuilder:
  """Returns the builder, prepared under `data_dir` (the TFDS default if None).

  Idempotent: a prepared version is reused; the first call takes about ten seconds.

  Args:
    data_dir: TFDS data dir.
    file_format: "array_record" gives random access (`tfds.data_source`,
      `builder.as_data_source`), which sslax's pipeline uses; TFDS 4.9 cannot read it with
      `builder.as_dataset`, for which prepare "tfrecord" in another `data_dir`.
  """
  builder = SslaxDemoCorpus(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(file_format=file_format)
  return builder
