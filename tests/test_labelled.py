"""The labelled streams: whole utterances, labels, masks, subsets, per-process rows, resume."""

import numpy as np
import pytest
import streams

from configs import demo_ctc
from sslax.core import text
from sslax.data import labelled, splits
from sslax.models import frontends
from sslax.train import wav2vec2_step


def tiny_config(data_dir, **data):
  config = demo_ctc.get_config("tiny")
  config.unlock()
  config.data.data_dir = data_dir
  config.data.update(data)
  return config


def vocabulary(config):
  data = config.data
  _, transcripts = labelled.split_transcripts(
    data.name, data.split, data.data_dir, data.text_key, data.id_key
  )
  return text.Vocabulary.build(transcripts)


def make_stream(config, *, process_index=0, process_count=1, seed=0):
  return labelled.FinetuningStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    vocabulary(config),
    channels=config.model.embed_dim,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
  )


def take(stream, n, start=0):
  return streams.take(stream.batches(start), n)


def test_batches_hold_whole_utterances_with_their_labels(demo_data_dir):
  config = tiny_config(demo_data_dir)
  stream = make_stream(config)
  vocab = vocabulary(config)
  ids, transcripts = labelled.split_transcripts(
    config.data.name, config.data.split, demo_data_dir, "text", "id"
  )
  source, audio_key = splits.open_split(config.data.name, "train", demo_data_dir)
  S, L, D = config.data.max_samples, config.data.max_label_length, config.model.embed_dim
  F = frontends.num_frames(S, config.model.conv_layers)
  for k, (batch, state) in enumerate(take(stream, 3)):
    assert state == {"position": k + 1}
    assert batch["audio"].shape == (4, S) and batch["mask"].shape == (4, F)
    assert batch["channel_mask"].shape == (4, D) and batch["labels"].shape == (4, L)
    assert batch["labels"].dtype == np.int32 and batch["label_paddings"].dtype == np.float32
    for row, index in enumerate(stream.schedule.batch_indices(k)):
      # The whole utterance, uncropped, and the labels of its own transcript.
      samples = splits.read_audio(source, int(index), audio_key, "demo")
      n = samples.size
      assert n <= S
      np.testing.assert_array_equal(batch["audio"][row, :n], samples)
      assert not batch["audio_paddings"][row, :n].any() and batch["audio_paddings"][row, n:].all()
      valid = batch["label_paddings"][row] == 0
      assert vocab.decode(batch["labels"][row][valid]) == text.normalize(transcripts[index])
      assert valid.sum() == len(text.normalize(transcripts[index]))
      frames = frontends.num_frames(n, config.model.conv_layers)
      assert not batch["mask"][row, frames:].any() and batch["mask"][row, :frames].any()
    assert batch["channel_mask"].any()
  assert len(set(ids)) == len(ids)


def test_subset_has_the_minutes_asked_for_and_nests(demo_data_dir):
  config = tiny_config(demo_data_dir, labelled_minutes=1.0)
  small = make_stream(config)
  config.data.labelled_minutes = 3.0
  large = make_stream(config)
  lengths_min = large._lengths / 16_000 / 60
  for stream, minutes in ((small, 1.0), (large, 3.0)):
    chosen = stream.schedule.epoch_indices(0)
    total = lengths_min[chosen].sum()
    # The shortest prefix with at least `minutes`: dropping any one utterance falls short.
    assert minutes <= total < minutes + lengths_min[chosen].max()
    assert stream.labelled_minutes == pytest.approx(total)
    assert (large._lengths[chosen] <= config.data.max_samples).all()
  assert set(small.schedule.epoch_indices(0)) < set(large.schedule.epoch_indices(0))
  # Everything dropped is counted; 'tiny' caps utterances at 4 s.
  assert small.dropped["longer_than_max_samples"] == int((large._lengths > 64_080).sum())
  config.data.labelled_minutes = 100.0
  with pytest.raises(ValueError, match="labelled_minutes=100.0"):
    make_stream(config)


def test_stream_is_deterministic_resumes_exactly_and_splits_over_processes(demo_data_dir):
  config = tiny_config(demo_data_dir)
  first = take(make_stream(config), 4)
  resumed = take(make_stream(config), 2, start=first[1][1]["position"])
  for (a, sa), (b, sb) in zip(first[2:], resumed, strict=True):
    assert sa == sb
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  halves = [take(make_stream(config, process_index=i, process_count=2), 2) for i in range(2)]
  for k in range(2):
    for key in first[k][0]:
      joined = np.concatenate([halves[0][k][0][key], halves[1][k][0][key]])
      np.testing.assert_array_equal(joined, first[k][0][key], err_msg=key)
  other_seed = take(make_stream(config, seed=1), 1)[0][0]
  assert not np.array_equal(other_seed["labels"], first[0][0]["labels"])


def test_eval_set_reads_the_whole_split_in_order(demo_data_dir):
  config = tiny_config(demo_data_dir)
  eval_set = labelled.EvalSet(config.data, "test", 8, process_index=0, process_count=1)
  ids, transcripts = labelled.split_transcripts(
    config.data.name, "test", demo_data_dir, "text", "id"
  )
  assert eval_set.ids == ids and len(ids) == 67
  assert eval_set.references == tuple(text.normalize(t) for t in transcripts)
  assert eval_set.max_samples % 16_000 == 0
  seen = []
  for host, examples in streams.take(eval_set.batches(), eval_set.num_batches):
    assert host["audio"].shape == (8, eval_set.max_samples)
    for row, index in enumerate(examples):
      if index < 0:
        assert host["audio_paddings"][row].all()
      else:
        seen.append(index)
  assert seen == list(range(67))  # 9 batches, the last with 5 filler rows
