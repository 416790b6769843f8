"""LibriSpeech, by TFDS's own builder and from an extracted folder, on data made here.

The test writes a miniature LibriSpeech tree (speaker/chapter folders of FLAC files with
`*.trans.txt` transcripts, SPEAKERS.TXT, CHAPTERS.TXT). TFDS's `librispeech/lazy_decode`
builder (the FLAC bytes stored as they are, so preparing needs neither pydub nor ffmpeg)
runs unchanged on it: only its download step is pointed at the local tree (what TFDS's
own builder test does), so `config.data.name='librispeech/lazy_decode'` with a `+`-joined
split is checked end to end through sslax's pipeline, which decodes the bytes with
soundfile. The same tree also builds through `sslax.data.manifest`, the route for
archives downloaded and extracted beforehand.
"""

import numpy as np
import pytest
import soundfile
from streams import take
import tensorflow_datasets as tfds

from configs import common
from sslax.data import manifest, pretraining_stream, splits
from sslax.models import frontends

SPLIT_DIRS = {
  "train_clean100": "train-clean-100",
  "train_clean360": "train-clean-360",
  "train_other500": "train-other-500",
  "dev_clean": "dev-clean",
  "dev_other": "dev-other",
  "test_clean": "test-clean",
  "test_other": "test-other",
}


def write_librispeech(root, split_dir, speaker, utterances, seed):
  """root/LibriSpeech/split_dir/speaker/chapter/*.flac + trans.txt; returns {id: samples}."""
  rng = np.random.default_rng(seed)
  base = root / "LibriSpeech"
  chapter = 100 + speaker
  folder = base / split_dir / str(speaker) / str(chapter)
  folder.mkdir(parents=True)
  (base / "SPEAKERS.TXT").write_text(f";ID|SEX|SUBSET|MINUTES|NAME\n{speaker}|F|x|1.0|A\n")
  (base / "CHAPTERS.TXT").write_text(
    f";ID|READER|MINUTES|SUBSET|PROJ.|BOOK ID|CH. TITLE|PROJECT TITLE\n"
    f"{chapter}|{speaker}|1.0|x|1|2|T|P\n"
  )
  written, lines = {}, []
  for i in range(utterances):
    key = f"{speaker}-{chapter}-{i:04d}"
    samples = (rng.normal(size=int(rng.integers(20_000, 40_000))) * 3000).astype(np.int16)
    soundfile.write(folder / f"{key}.flac", samples, 16_000)
    written[key] = samples
    lines.append(f"{key} WORDS OF UTTERANCE {i}")
  (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
  return written


@pytest.fixture(scope="module")
def librispeech_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("downloads")
  extracted, written = {}, {}
  for n, (split, split_dir) in enumerate(SPLIT_DIRS.items()):
    extracted[split] = root / split_dir
    written.update(write_librispeech(extracted[split], split_dir, 10 + n, 3, seed=n))
  return extracted, written


def test_tfds_librispeech_lazy_decode_by_name(tmp_path, librispeech_tree, monkeypatch):
  extracted, written = librispeech_tree
  # No network here: TFDS's download step returns the local tree instead.
  monkeypatch.setattr(
    tfds.download.DownloadManager, "download_and_extract", lambda self, urls: extracted
  )
  data = common.pretrain_config().data
  data.update(
    dict(
      name="librispeech/lazy_decode",
      split="train_clean100+train_clean360",
      data_dir=str(tmp_path / "tfds"),
      batch_size=4,
      max_samples=48_080,
      min_samples=16_000,
    )
  )
  source, audio_key = splits.open_split(data.name, data.split, data.data_dir)
  assert audio_key == "speech" and len(source) == 6
  assert isinstance(source[0][audio_key], bytes)  # FLAC, undecoded
  ids = [example["id"].decode() for example in source]
  for index, key in enumerate(ids):
    samples = splits.read_audio(source, index, audio_key, "librispeech")
    np.testing.assert_array_equal(samples, written[key].astype(np.float32) / 32768.0)

  # The length index reads FLAC headers only: a full decode would fail here (the decoder
  # reads through SoundFile.read; soundfile.read too, should anything call it).
  def no_decoding(*args, **kwargs):
    raise AssertionError("the length index decoded audio")

  with monkeypatch.context() as patch:
    patch.setattr(soundfile.SoundFile, "read", no_decoding)
    patch.setattr(soundfile, "read", no_decoding)
    index = splits.split_index(source, audio_key)
  lengths = index.frames
  assert not index.kinds.any(), index.reasons
  assert lengths.tolist() == [written[key].size for key in ids]

  stream = pretraining_stream.PretrainingStream(
    data,
    common.pretrain_config().masking,
    lambda n: int(frontends.num_frames(n, common.WAV2VEC2_CONV_LAYERS)),
    seed=0,
    process_index=0,
    process_count=1,
  )
  ((batch, state),) = take(stream.batches(), 1)
  assert batch["audio"].shape == (4, 48_080) and state == {"position": 1}
  for row, index in enumerate(stream.schedule.batch_indices(0)):
    expected = written[ids[index]].astype(np.float32) / 32768.0  # 20k-40k samples: uncropped
    np.testing.assert_array_equal(batch["audio"][row, : expected.size], expected)
    assert batch["audio_paddings"][row, : expected.size].sum() == 0
    assert batch["audio_paddings"][row, expected.size :].all()


def test_extracted_librispeech_builds_with_transcripts(tmp_path, librispeech_tree):
  extracted, written = librispeech_tree
  folder = extracted["dev_clean"] / "LibriSpeech" / "dev-clean"
  manifest.build("librispeech_local", {"dev_clean": str(folder)}, str(tmp_path / "tfds"))
  source = tfds.builder("librispeech_local", data_dir=str(tmp_path / "tfds")).as_data_source(
    split="dev_clean"
  )
  examples = {ex["id"].decode(): ex for ex in source}
  speaker = 10 + list(SPLIT_DIRS).index("dev_clean")
  assert sorted(examples) == [
    f"{speaker}/{speaker + 100}/{speaker}-{speaker + 100}-{i:04d}" for i in range(3)
  ]
  for key, example in examples.items():
    utterance = key.split("/")[-1]
    np.testing.assert_array_equal(example["speech"], written[utterance])
    assert example["text"].decode() == f"WORDS OF UTTERANCE {int(utterance[-4:])}"
