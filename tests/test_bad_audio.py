"""Bad audio at read time: each kind is counted, logged by name and skipped (or stops the
stream with 'error'), and skipping keeps batches a pure function of (seed, batch number)."""

import collections
import io
import logging

import jax
import librosa
import numpy as np
import pytest
import soundfile
from streams import take
import tensorflow_datasets as tfds

from configs import common, demo_ctc
from sslax import evaluate
from sslax.core import sharding, text
from sslax.data import labelled, pretraining_stream, splits
from sslax.models import frontends
from sslax.train import ctc_step

CONV = common.WAV2VEC2_CONV_LAYERS
NAME = "bad_audio_corpus"
GOOD = [f"good/{i:02d}" for i in range(10)]
# What the index finds (the rest of the bad files) ...
INDEXED = {
  "bad/corrupt": "unreadable",
  "bad/empty": "empty",
  "bad/truncated_wav": "truncated",
  "bad/too_short": "too_short",
  "bad/stereo": "not_mono",
  "bad/8khz": "wrong_sample_rate",
}
# ... and what only decoding finds: its FLAC header is whole, its frames are not.
TRUNCATED_FLAC = "bad/truncated_flac"


def tone(num_samples, seed, channels=1):
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples)
  mono = 0.3 * np.sin(2 * np.pi * (200 + 20 * seed) * t / 16_000) + 0.01 * rng.normal(size=t.size)
  return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def encode(samples, rate=16_000, fmt="FLAC"):
  buffer = io.BytesIO()
  soundfile.write(buffer, samples, rate, format=fmt, subtype="PCM_16")
  return buffer.getvalue()


def corpus_files() -> dict[str, bytes]:
  files = {key: encode(tone(16_000 + 1_600 * i, i)) for i, key in enumerate(GOOD)}
  files["bad/corrupt"] = b"RIFF not really a wave file"
  files["bad/empty"] = b""
  wav = encode(tone(24_000, 20), fmt="WAV")
  files["bad/truncated_wav"] = wav[: len(wav) // 2]
  files["bad/too_short"] = encode(tone(100, 21), fmt="WAV")  # no frame of the model
  files["bad/stereo"] = encode(tone(16_000, 22, channels=2), fmt="WAV")
  files["bad/8khz"] = encode(tone(9_600, 23), rate=8_000, fmt="WAV")
  flac = encode(tone(28_800, 24))
  files[TRUNCATED_FLAC] = flac[: int(len(flac) * 0.6)]
  return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(data_dir, files): a TFDS dataset storing encoded files as they are (lazy_decode), like
  `librispeech/lazy_decode`. Split 'train' holds every file; 'readtime' six good files and
  the truncated FLAC, whose fault only decoding finds."""
  files = corpus_files()
  features = tfds.features.FeaturesDict(
    {
      "id": tfds.features.Text(),
      "speech": tfds.features.Audio(
        shape=(None,), dtype=np.int16, sample_rate=16_000, lazy_decode=True
      ),
      "text": tfds.features.Text(),
    }
  )

  def examples(keys):
    for i, key in enumerate(keys):
      words = "GOOD MORNING" if i % 2 else "HELLO WORLD"
      yield i, {"id": key, "speech": io.BytesIO(files[key]), "text": f"{words} {i}"}

  data_dir = str(tmp_path_factory.mktemp("bad_audio_tfds"))
  tfds.dataset_builders.store_as_tfds_dataset(
    name=NAME,
    version="1.0.0",
    features=features,
    split_datasets={
      "train": examples(sorted(files)),
      "readtime": examples([*GOOD[:6], TRUNCATED_FLAC]),
    },
    data_dir=data_dir,
    file_format="array_record",
    disable_shuffling=True,
  )
  return data_dir, files


def make_stream(data_dir, *, process_index=0, process_count=1, **data_fields):
  data = common.pretrain_config().data
  data.update(
    dict(name=NAME, data_dir=data_dir, batch_size=4, max_samples=24_000, min_samples=8_000)
  )
  data.update(data_fields)
  return pretraining_stream.PretrainingStream(
    data,
    common.pretrain_config().masking,
    lambda n: int(frontends.num_frames(n, CONV)),
    seed=0,
    process_index=process_index,
    process_count=process_count,
  )


def ids(split):
  return [split.source[i]["id"].decode() for i in range(len(split.lengths))]


def test_the_index_finds_each_kind_logs_its_name_and_the_stream_skips_it(corpus, caplog):
  data_dir, _ = corpus
  with caplog.at_level(logging.WARNING):
    stream = make_stream(data_dir)
  expected = dict.fromkeys(splits.BAD_AUDIO_KINDS, 0)
  for kind in INDEXED.values():
    expected[kind] += 1
  assert stream.bad_audio == expected
  for key, kind in INDEXED.items():
    assert f"(id '{key}'): {kind}" in caplog.text
  keys = ids(stream._splits[0])
  # Every good file is scheduled, once an epoch; no file the index found bad ever is.
  assert sorted(keys[i] for i in stream.schedule.epoch_indices(0)) == sorted(
    [*GOOD, TRUNCATED_FLAC]
  )
  assert stream.replaced_rows == 0

  with pytest.raises(splits.BadAudioError, match=r"6 examples have bad audio: .*id 'bad/8khz'"):
    make_stream(data_dir, bad_audio="error")
  with pytest.raises(ValueError, match="config.data.bad_audio='ignore'"):
    make_stream(data_dir, bad_audio="ignore")


def rows_of(stream, example, num_batches):
  """(batch, row) of every row of the first `num_batches` batches scheduled to `example`."""
  return [
    (k, row)
    for k in range(num_batches)
    for row, index in enumerate(stream.schedule.batch_indices(k).tolist())
    if index == example
  ]


def test_a_file_found_bad_when_read_is_replaced_deterministically(corpus, caplog):
  data_dir, _ = corpus
  stream = make_stream(data_dir)
  split = stream._splits[0]
  bad = ids(split).index(TRUNCATED_FLAC)
  hits = rows_of(stream, bad, 8)  # 8 batches of 4: almost three epochs of 11 examples
  assert len(hits) >= 2
  with caplog.at_level(logging.WARNING):
    first = [stream.host_batch(k) for k in range(8)]
  assert stream.bad_audio["unreadable"] == 2  # 'bad/corrupt' from the index, this one read
  assert stream.replaced_rows == len(hits)
  assert caplog.text.count(f"id '{TRUNCATED_FLAC}'") == 1  # logged once, not per epoch

  fresh = make_stream(data_dir)
  for k, row in hits:
    audio, paddings, held, starts = fresh.host_audio(k)
    substitute = int(held[row])
    assert substitute != bad and substitute in fresh.schedule.usable
    # The row keeps its indexed length (the masks drawn from it fit) and holds the
    # substitute's seeded crop of that length.
    n = int(fresh.schedule.row_lengths(k)[row])
    assert (1 - paddings[row]).sum() == n
    np.testing.assert_array_equal(
      audio[row, :n], split.read(substitute, int(starts[row]), int(starts[row]) + n)
    )
    assert not first[k]["mask"][row, frontends.num_frames(n, CONV) :].any()
    # Every other row is what batch_indices says.
    others = [r for r in range(4) if fresh.schedule.batch_indices(k)[r] != bad]
    np.testing.assert_array_equal(held[others], fresh.schedule.batch_indices(k)[others])

  # A pure function of (seed, batch): through the executor, resumed, split over two processes.
  again = take(make_stream(data_dir).batches(), 8)
  last = hits[-1][0]
  resumed = take(make_stream(data_dir).batches(last), 1)
  halves = [make_stream(data_dir, process_index=i, process_count=2) for i in range(2)]
  for key in first[0]:
    for k in range(8):
      np.testing.assert_array_equal(first[k][key], again[k][0][key], err_msg=key)
    np.testing.assert_array_equal(first[last][key], resumed[0][0][key], err_msg=key)
    for k, _ in hits:
      joined = np.concatenate([half.host_batch(k)[key] for half in halves])
      np.testing.assert_array_equal(joined, first[k][key], err_msg=key)


def test_error_setting_stops_at_the_file_found_bad_when_read(corpus):
  data_dir, _ = corpus
  stream = make_stream(data_dir, split="readtime", bad_audio="error")
  assert not any(stream.bad_audio.values())  # the index sees nothing wrong
  bad = ids(stream._splits[0]).index(TRUNCATED_FLAC)
  k = rows_of(stream, bad, 4)[0][0]
  with pytest.raises(splits.BadAudioError, match=f"id '{TRUNCATED_FLAC}'"):
    stream.host_batch(k)
  # Through the executor too, which raises the reader's error.
  with pytest.raises(splits.BadAudioError, match=TRUNCATED_FLAC):
    take(stream.batches(k), 1)


def test_other_sample_rates_are_resampled_only_when_configured(corpus):
  data_dir, files = corpus
  stream = make_stream(data_dir, resample=True)
  assert stream.bad_audio["wrong_sample_rate"] == 0
  split = stream._splits[0]
  index = ids(split).index("bad/8khz")
  assert split.lengths[index] == 19_200 and index in stream.schedule.usable
  samples, rate = soundfile.read(io.BytesIO(files["bad/8khz"]), dtype="float32")
  expected = librosa.resample(samples, orig_sr=rate, target_sr=16_000, res_type="soxr_hq")
  np.testing.assert_array_equal(split.read(index), expected)


def test_fine_tuning_and_evaluation_skip_bad_audio_too(corpus):
  data_dir, _ = corpus
  config = demo_ctc.get_config("tiny")
  config.unlock()
  config.data.update(
    dict(name=NAME, data_dir=data_dir, batch_size=4, max_samples=32_000, labelled_minutes=0.0)
  )
  _, transcripts = labelled.split_transcripts(NAME, "train", data_dir, "text", "id")
  vocab = text.Vocabulary.build(transcripts)
  stream = labelled.FinetuningStream(
    config.data,
    config.masking,
    lambda n: int(frontends.num_frames(n, config.model.conv_layers)),
    vocab,
    channels=config.model.embed_dim,
    seed=0,
    process_index=0,
    process_count=1,
  )
  split = stream._splits[0]
  keys = ids(split)
  assert sorted(keys[i] for i in stream.schedule.epoch_indices(0)) == sorted(
    [*GOOD, TRUNCATED_FLAC]
  )
  bad = keys.index(TRUNCATED_FLAC)
  k, row = rows_of(stream, bad, 6)[0]
  batch = stream.host_batch(k)
  _, _, held, _ = stream.host_audio(k)
  substitute = int(held[row])
  # The whole substitute utterance, at least as long as the row it fills, with its labels.
  whole = split.read(substitute)
  assert whole.size >= split.lengths[bad]
  np.testing.assert_array_equal(batch["audio"][row, : whole.size], whole)
  assert batch["audio_paddings"][row, whole.size :].all()
  valid = batch["label_paddings"][row] == 0
  assert vocab.decode(batch["labels"][row][valid]) == text.normalize(transcripts[substitute])

  # Evaluation keeps every utterance: those it cannot read are empty rows (all deletions).
  # (It runs no model frontend, so 100 samples are read like any other utterance.)
  unreadable = {key: kind for key, kind in INDEXED.items() if kind != "too_short"}
  unreadable[TRUNCATED_FLAC] = "unreadable"
  eval_set = labelled.EvalSet(config.data, "train", 8, process_index=0, process_count=1)
  for host, examples in take(eval_set.batches(), eval_set.num_batches):
    for row, index in enumerate(examples):
      if index >= 0 and keys[index] in unreadable:
        assert host["audio_paddings"][row].all()
      elif index >= 0:
        assert not host["audio_paddings"][row, : split.lengths[index]].any()
  assert {keys[i]: kind for i, kind in eval_set.unread.items()} == unreadable
  assert eval_set.bad_audio["unreadable"] == 2 and eval_set.bad_audio["not_mono"] == 1
  config.data.bad_audio = "error"
  with pytest.raises(splits.BadAudioError, match="id 'bad/corrupt'"):
    labelled.EvalSet(config.data, "train", 8, process_index=0, process_count=1)


def test_evaluation_scores_unread_utterances_as_deletions_and_names_them(corpus):
  data_dir, _ = corpus
  config = demo_ctc.get_config("tiny")
  config.unlock()
  config.data.update(dict(name=NAME, data_dir=data_dir))
  config.eval.batch_size = 4
  _, transcripts = labelled.split_transcripts(NAME, "train", data_dir, "text", "id")
  vocab = text.Vocabulary.build(transcripts)
  model = ctc_step.build_model(config, len(vocab))
  variables = ctc_step.init_variables_fn(model)(jax.random.key(0))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  results = evaluate.evaluate_params(config, variables, vocab, "train", mesh)
  unreadable = {key: kind for key, kind in INDEXED.items() if kind != "too_short"}
  unreadable[TRUNCATED_FLAC] = "unreadable"
  assert results["unread_audio"] == dict(collections.Counter(unreadable.values()))
  entries = {u["id"]: u for u in results["utterances"]}
  assert len(entries) == len(GOOD) + len(INDEXED) + 1  # nothing dropped
  assert {key: u["unread"] for key, u in entries.items() if "unread" in u} == unreadable
  for key in unreadable:
    assert entries[key]["hypothesis"] == ""
  assert results["characters"]["deletions"] >= sum(
    len(entries[key]["reference"]) for key in unreadable
  )


class Stored:
  """Audio values by example index, read as `records.PreparedSplit.get` reads them."""

  def __init__(self, *values):
    self._values = values

  def get(self, index: int, key: str):
    assert key == "speech"
    return self._values[index]


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_reading_a_crop_decodes_the_same_samples_as_the_whole_file(fmt):
  samples = tone(40_000, 3)
  subtype = "VORBIS" if fmt == "OGG" else "PCM_16"
  buffer = io.BytesIO()
  soundfile.write(buffer, samples, 16_000, format=fmt, subtype=subtype)
  source = Stored(buffer.getvalue())
  whole = splits.read_audio(source, 0, "speech", "test")
  assert whole.shape == (40_000,)
  for start, stop in ((0, 100), (12_345, 36_000), (39_000, None)):
    part = splits.read_audio(source, 0, "speech", "test", start=start, stop=stop)
    np.testing.assert_array_equal(part, whole[start:stop])


def test_stored_samples_that_are_empty_or_not_mono_are_named():
  source = Stored(np.zeros(0, np.int16), np.zeros((50, 2), np.int16))
  with pytest.raises(splits.BadAudioError, match=r"example 0 of stored: empty"):
    splits.read_audio(source, 0, "speech", "stored")
  with pytest.raises(splits.BadAudioError, match=r"example 1 of stored: not_mono"):
    splits.read_audio(source, 1, "speech", "stored")
