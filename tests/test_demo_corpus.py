"""Tests of the embedded demo corpus (sslax/data/demo_corpus) and its TFDS builder."""

import json
import os
import re
import shutil
import socket

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from sslax.data.demo_corpus import builder

SAMPLE_RATE = builder.SAMPLE_RATE


def _read_records(corpus_dir: str, split: str) -> list[dict]:
  with open(os.path.join(corpus_dir, f"{split}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _audio_path(corpus_dir: str, split: str, utt_id: str) -> str:
  return os.path.join(corpus_dir, "audio", split, utt_id + ".ogg")


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
  return {split: _read_records(builder.CORPUS_DIR, split) for split in builder.SPLITS}


@pytest.fixture(scope="module")
def audio(records) -> dict[str, np.ndarray]:
  """id -> int16[num_samples], every utterance decoded by soundfile."""
  return {
    r["id"]: soundfile.read(_audio_path(builder.CORPUS_DIR, split, r["id"]), dtype="int16")[0]
    for split, recs in records.items()
    for r in recs
  }


@pytest.fixture
def small_corpus(tmp_path, monkeypatch, records) -> str:
  """A copy of the first 3 utterances of each split, made the builder's input."""
  corpus_dir = tmp_path / "corpus"
  for split, recs in records.items():
    os.makedirs(corpus_dir / "audio" / split)
    with open(corpus_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
      for r in recs[:3]:
        f.write(json.dumps(r) + "\n")
        shutil.copy(
          _audio_path(builder.CORPUS_DIR, split, r["id"]),
          _audio_path(str(corpus_dir), split, r["id"]),
        )
  monkeypatch.setattr(builder, "CORPUS_DIR", str(corpus_dir))
  return str(corpus_dir)


def test_size_duration_and_voices(records):
  seconds = {s: sum(r["num_samples"] for r in recs) / SAMPLE_RATE for s, recs in records.items()}
  voices = {s: {r["voice"] for r in recs} for s, recs in records.items()}
  assert sum(seconds.values()) >= 45 * 60
  assert seconds["dev"] >= 4 * 60 and seconds["test"] >= 4 * 60
  assert len(set.union(*voices.values())) >= 10
  assert not voices["test"] & voices["train"]
  assert not voices["dev"] & voices["train"]
  # One speaker id per voice.
  pairs = {(r["speaker_id"], r["voice"]) for recs in records.values() for r in recs}
  assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})
  durations = [r["num_samples"] / SAMPLE_RATE for recs in records.values() for r in recs]
  assert 2.0 <= min(durations) and max(durations) <= 10.0


def test_committed_files_fit_in_25_mb():
  total = 0
  for dirpath, dirnames, filenames in os.walk(builder.CORPUS_DIR):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames)
  assert total <= 25 * 1024 * 1024


def test_transcripts_are_normalised_and_unique(records):
  texts = [r["text"] for recs in records.values() for r in recs]
  for text in texts:
    assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text), text
  assert len(set(texts)) == len(texts)
  ids = [r["id"] for recs in records.values() for r in recs]
  assert len(set(ids)) == len(ids)


def test_alignments_follow_the_transcript_and_stay_in_the_audio(records, audio):
  tolerance = 16  # samples (1 ms)
  for recs in records.values():
    for r in recs:
      assert len(audio[r["id"]]) == r["num_samples"], r["id"]
      assert " ".join(w for w, _, _ in r["words"]) == r["text"], r["id"]
      for spans in (r["words"], r["phonemes"]):
        starts = np.array([s for _, s, _ in spans])
        ends = np.array([e for _, _, e in spans])
        assert np.all(starts < ends), r["id"]
        assert np.all(ends[:-1] <= starts[1:]), r["id"]  # monotone, no overlap
        assert starts[0] >= 0 and ends[-1] <= r["num_samples"], r["id"]
      # Every phoneme lies inside one word, and every word has a phoneme.
      words = np.array([[s, e] for _, s, e in r["words"]])
      covered = np.zeros(len(words), bool)
      for p, s, e in r["phonemes"]:
        inside = (words[:, 0] - tolerance <= s) & (e <= words[:, 1] + tolerance)
        assert inside.any(), (r["id"], p, s, e)
        covered |= inside
      assert covered.all(), r["id"]


def test_word_alignments_match_the_speech_energy(records, audio):
  """Independent of espeak: aligned words are loud, the gaps between them are silent."""
  for recs in records.values():
    for r in recs:
      x = np.abs(audio[r["id"]].astype(np.float64))
      in_word = np.zeros(len(x), bool)
      for _, s, e in r["words"]:
        in_word[s:e] = True
      gap_level = x[~in_word].mean()
      word_level = x[in_word].mean()
      assert word_level > 10 * gap_level, r["id"]
      for w, s, e in r["words"]:
        assert x[s:e].mean() > 5 * gap_level, (r["id"], w)
      # Every pause of 100 ms or more between or around words is at least 14 dB below the
      # words (most are silent; the echo of voice variants m2 and f4 rings into some).
      bounds = [0] + [b for _, s, e in r["words"] for b in (s, e)] + [len(x)]
      for s, e in zip(bounds[::2], bounds[1::2], strict=True):
        if e - s >= SAMPLE_RATE // 10:
          assert x[s:e].mean() < 0.2 * word_level, (r["id"], s, e)


def test_data_source_matches_soundfile(demo_data_dir, records):
  for split, recs in records.items():
    source = tfds.data_source("sslax_demo_corpus", split=split, data_dir=demo_data_dir)
    assert len(source) == len(recs)
    by_id = {r["id"]: r for r in recs}
    for index in (0, len(source) // 2, len(source) - 1):
      example = source[index]
      r = by_id[example["id"].decode()]
      expected = soundfile.read(_audio_path(builder.CORPUS_DIR, split, r["id"]), dtype="int16")[0]
      assert example["speech"].dtype == np.int16
      np.testing.assert_array_equal(example["speech"], expected)
      assert example["text"].decode() == r["text"]
      assert example["speaker_id"] == r["speaker_id"]
      assert [w.decode() for w in example["words"]["word"]] == [w for w, _, _ in r["words"]]
      assert list(example["phonemes"]["end"]) == [e for _, _, e in r["phonemes"]]


def test_prepares_offline_and_as_dataset_reads_tfrecord(small_corpus, tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise OSError("network access during prepare")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  records = _read_records(small_corpus, "dev")
  prepared = builder.prepare(str(tmp_path / "array_record"))
  assert builder.prepare(str(tmp_path / "array_record")).data_dir == prepared.data_dir
  source = prepared.as_data_source(split="dev")
  assert sorted(source[i]["id"].decode() for i in range(len(source))) == [r["id"] for r in records]

  tfrecord = builder.prepare(str(tmp_path / "tfrecord"), file_format="tfrecord")
  examples = list(tfds.as_numpy(tfrecord.as_dataset(split="dev")))
  assert len(examples) == len(records)
  for example in examples:
    utt_id = example["id"].decode()
    expected = soundfile.read(_audio_path(small_corpus, "dev", utt_id), dtype="int16")[0]
    np.testing.assert_array_equal(example["speech"], expected)


def test_corrupt_audio_file_is_named(small_corpus, tmp_path):
  utt_id = _read_records(small_corpus, "test")[1]["id"]
  path = _audio_path(small_corpus, "test", utt_id)
  with open(path, "wb") as f:
    f.write(b"OggS not really an ogg file")
  with pytest.raises(RuntimeError, match=re.escape(path)):
    builder.prepare(str(tmp_path / "data"))


def test_missing_audio_file_is_named(small_corpus, tmp_path):
  utt_id = _read_records(small_corpus, "train")[0]["id"]
  path = _audio_path(small_corpus, "train", utt_id)
  os.remove(path)
  with pytest.raises(RuntimeError, match=re.escape(path)):
    builder.prepare(str(tmp_path / "data"))
