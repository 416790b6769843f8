"""HuBERT's stream: k-means units joined to the audio by key, cut at the audio's crop.

Units come from configs/kmeans_mfcc.py:tiny on the dev split (K=8, 100 Hz). Each row's
labels are checked against an independent reading: the crop start recovered by finding the
row's audio in the raw utterance, the units read straight from the shard file, fairseq's
rounding written out here. Also: exact resume and per-process rows, the LRU's bound, that
bad units dirs are errors naming the manifest, shard or key, and the model frame rates the
label rate is checked against.
"""

import json
import os
import shutil

import numpy as np
import pytest
from streams import take

from configs import common, demo_hubert
from sslax.data import hubert_stream
from sslax.data import unit_labels as labels
from sslax.data import unit_shards as shards
from sslax.data.demo_corpus import builder as demo_builder
from sslax.models import backbone
from sslax.train import wav2vec2_step


def hubert_config(units_dir, data_dir, **data):
  config = demo_hubert.get_config("iter1,tiny")
  config.units.dir = units_dir
  config.data.data_dir = data_dir
  config.data.update(data)
  return config


def make_stream(config, process_index=0, process_count=1):
  return hubert_stream.HubertStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    labels.UnitLabels.from_config(config),
    seed=config.seed,
    process_index=process_index,
    process_count=process_count,
  )


def dev_records():
  with open(os.path.join(demo_builder.CORPUS_DIR, "dev.jsonl")) as f:
    return {r["id"]: r for r in map(json.loads, f)}


def shard_units(units_dir):
  """key -> int[L] units, read with numpy alone."""
  found = {}
  for entry in shards.read_manifest(units_dir)["shards"]:
    with np.load(os.path.join(units_dir, entry["file"])) as shard:
      ends = np.cumsum(shard["lengths"])
      for key, end, length in zip(shard["keys"], ends, shard["lengths"], strict=True):
        found[str(key)] = shard["units"][end - length : end]
  return found


def crop_start(row_audio, raw, num_valid):
  """Where the row's `num_valid` samples sit in the raw utterance (the unique match)."""
  first = int(np.flatnonzero(np.abs(row_audio) > 1e-3)[0])
  candidates = np.flatnonzero(raw[first : len(raw) - num_valid + 1 + first] == row_audio[first])
  starts = [s for s in candidates if np.array_equal(raw[s : s + num_valid], row_audio[:num_valid])]
  assert len(starts) == 1
  return int(starts[0])


def test_rows_carry_the_units_under_their_crop(tiny_mfcc_units, demo_data_dir):
  # 5 s crops: dev utterances are 2-10 s, so rows are cropped or padded.
  config = hubert_config(tiny_mfcc_units, demo_data_dir, max_samples=80_080)
  stream = make_stream(config)
  units = shard_units(tiny_mfcc_units)
  source = stream._splits[0].source
  cropped = padded = 0
  for k in range(4):
    batch = stream.host_batch(k)
    # round(5.005 s x 100 Hz), as fairseq's round(crop samples x label_rate / sample rate).
    assert batch["labels"].shape == (8, 500) and batch["labels"].dtype == np.int32
    for row, example in enumerate(stream.schedule.batch_indices(k)):
      record = source[int(example)]
      raw = np.asarray(record["speech"]).astype(np.float32) / 32768.0
      valid = int((batch["audio_paddings"][row] == 0).sum())
      start = crop_start(batch["audio"][row], raw, valid)
      unit_row = units[record["id"].decode()]
      first = int(round(start * 100 / 16_000))  # fairseq: round(start * label_rate / sr)
      expected = np.full(500, -1)
      piece = unit_row[first : first + 500]
      expected[: len(piece)] = piece
      np.testing.assert_array_equal(batch["labels"][row], expected)
      cropped += len(raw) > 80_080
      padded += len(raw) < 80_080
  assert cropped >= 4 and padded >= 4  # both kinds of rows were checked
  # Padded rows end in IGNORE_LABEL where their units end.
  assert (batch["labels"] == -1).any()


def test_resumes_exactly_and_processes_split_the_rows(tiny_mfcc_units, demo_data_dir):
  config = hubert_config(tiny_mfcc_units, demo_data_dir)
  whole = make_stream(config)
  batches = list(enumerate(take(whole.batches(0), 4)))
  (resumed,) = take(make_stream(config).batches(batches[2][1][1]["position"]), 1)
  assert resumed[1] == batches[3][1][1]
  for name, value in batches[3][1][0].items():
    np.testing.assert_array_equal(resumed[0][name], value, err_msg=name)
  parts = [make_stream(config, i, 2).host_batch(5) for i in range(2)]
  expected = whole.host_batch(5)
  for name in expected:
    np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), expected[name])


def test_shards_are_read_when_needed_and_cached_within_bounds(tiny_mfcc_units):
  expected = shard_units(tiny_mfcc_units)
  config = demo_hubert.get_config("iter1,tiny")
  config.units.dir = tiny_mfcc_units
  config.units.cache_shards = 2
  unit_labels = labels.UnitLabels.from_config(config)
  assert len(unit_labels) == 60 and not unit_labels._cache  # the index reads no shard
  keys, records = list(expected), dev_records()
  for key in keys[::7] + keys[::-5]:  # back and forth over the 4 shards
    n = records[key]["num_samples"]
    np.testing.assert_array_equal(unit_labels.units(key, n), expected[key])
    assert len(unit_labels._cache) <= 2


def copy_units(units_dir, tmp_path):
  target = str(tmp_path / "units")
  shutil.copytree(units_dir, target)
  return target


def rewrite_manifest(units_dir, edit):
  path = os.path.join(units_dir, shards.MANIFEST_FILE)
  manifest = json.load(open(path))
  edit(manifest)
  shards.write_json(path, manifest)


def test_bad_units_are_errors_that_name_them(tiny_mfcc_units, demo_data_dir, tmp_path):
  units_dir = copy_units(tiny_mfcc_units, tmp_path)
  manifest_path = os.path.join(units_dir, shards.MANIFEST_FILE)
  config = hubert_config(units_dir, demo_data_dir)

  config.model.num_classes = (9,)
  with pytest.raises(ValueError, match=f"{manifest_path} has num_clusters=8, but .*=\\(9,\\)"):
    labels.UnitLabels.from_config(config)
  config.model.num_classes = (8, 8)
  with pytest.raises(ValueError, match="one label set"):
    labels.UnitLabels.from_config(config)
  config.model.num_classes = (8,)
  config.units.label_rate = 50
  with pytest.raises(ValueError, match=f"{manifest_path} has label_rate_hz=100.0, but .*=50"):
    labels.UnitLabels.from_config(config)
  rewrite_manifest(units_dir, lambda m: m.update(label_rate_hz=75.0))
  config.units.label_rate = 75
  with pytest.raises(ValueError, match="75 Hz is neither a whole multiple nor .* 50.0 Hz"):
    labels.UnitLabels.from_config(config)
  rewrite_manifest(units_dir, lambda m: m.update(label_rate_hz=100.0))
  config.units.label_rate = 100

  speedy = hubert_config(units_dir, demo_data_dir)
  speedy.data.augment.speed_prob = 0.5
  with pytest.raises(ValueError, match="speed_prob=0.5"):
    make_stream(speedy)

  # A shard whose bytes changed: named when first read.
  damaged = os.path.join(units_dir, shards.shard_name(1, 4))
  original = open(damaged, "rb").read()
  shard = shards.read_shard(damaged)
  keys = shard["keys"].tolist()
  units = np.split(shard["units"].astype(np.int64), np.cumsum(shard["lengths"])[:-1])
  centroids = str(shard["centroids_sha256"])
  shards.write_shard(
    damaged, keys, [u * 0 for u in units], num_clusters=8, centroids_sha256=centroids
  )
  with pytest.raises(ValueError, match=f"units shard {damaged}: sha256 differs"):
    labels.UnitLabels.from_config(config).units(keys[0], 40_000)

  def replace_shard(new_units):  # with the manifest's checksum updated: only `new_units` is wrong
    shards.write_shard(damaged, keys, new_units, num_clusters=8, centroids_sha256=centroids)
    sha256 = shards.file_sha256(damaged)
    rewrite_manifest(units_dir, lambda m: m["shards"][1].update(sha256=sha256))

  n = dev_records()[keys[0]]["num_samples"]
  frames = (n - 400) // 320 + 1  # the tiny conv stack: 400-sample receptive field, stride 320
  replace_shard([u[: len(u) // 2] for u in units])
  with pytest.raises(
    ValueError,
    match=f"{damaged}: example '{keys[0]}' has {len(units[0]) // 2} units, but its {n} samples "
    f"make {frames} model frames, {2 * frames} units",
  ):
    labels.UnitLabels.from_config(config).units(keys[0], n)
  replace_shard([u + 1 for u in units])  # one of them is now unit 8, for K = 8
  with pytest.raises(ValueError, match=f"{damaged} holds units in \\[1, 8\\], outside \\[0, 8\\)"):
    labels.UnitLabels.from_config(config).units(keys[0], n)
  with open(damaged, "wb") as f:
    f.write(original)
  rewrite_manifest(units_dir, lambda m: m["shards"][1].update(sha256=shards.file_sha256(damaged)))

  # A key the units dir lacks, and a missing shard file.
  rewrite_manifest(units_dir, lambda m: m.update(shards=m["shards"][:3]))
  stream = make_stream(config)
  kept = {k for entry in json.load(open(manifest_path))["shards"] for k in entry["keys"]}
  batch = next(
    k
    for k in range(20)
    if {stream.example_key(int(e)) for e in stream.schedule.batch_indices(k)} - kept
  )
  with pytest.raises(ValueError, match=f"example '.*' has no units in {manifest_path}"):
    stream.host_batch(batch)
  os.remove(os.path.join(units_dir, shards.shard_name(2, 4)))
  with pytest.raises(
    FileNotFoundError, match=f"{shards.shard_name(2, 4)}, listed in .* is missing"
  ):
    labels.UnitLabels.from_config(config)


@pytest.mark.parametrize("frontend,expected", [("waveform", 50.0), ("logmel", 25.0)])
def test_frame_rate_is_the_growth_of_the_frame_count(frontend, expected):
  model = common.hubert_model(frontend=frontend)
  assert backbone.frame_rate_hz(model) == expected
  for n in (100_000, 123_457):  # one more second of audio adds `expected` frames
    assert backbone.num_frames(n + 16_000, model) - backbone.num_frames(n, model) == expected
