"""The k-means job on the demo corpus's dev split (60 utterances) with tiny settings.

Checks the unit shards against an independent computation (the utterance's MFCC from its
.ogg file, nearest centroid in float64 numpy), the manifest against the corpus's own
records, resuming (the in-process job finishing a command-line run: complete shards kept
untouched, the missing one and the manifest rewritten bitwise), the reservoir sample's
uniformity, features from a checkpoint layer, and that bad input names the shard/field.
"""

import json
import os
import shutil
import subprocess
import sys

import flax.linen
import jax
import numpy as np
import pytest
import soundfile
import tiny_kmeans

from configs import demo, demo_conformer, kmeans_hubert, kmeans_mfcc
from sslax import extract
from sslax.data import unit_shards as shards
from sslax.data.demo_corpus import builder as demo_builder
from sslax.features import mfcc
from sslax.models import frontends
from sslax.registry import checkpoint, model_types
from sslax.units import job, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **overrides):
  config = kmeans_mfcc.get_config("tiny")
  config.data.data_dir = data_dir
  for field, value in overrides.items():
    group, name = field.split(".")
    config[group][name] = value
  return config


def dev_records():
  with open(os.path.join(demo_builder.CORPUS_DIR, "dev.jsonl")) as f:
    return {r["id"]: r for r in map(json.loads, f)}


def nearest64(x_TxD, centroids_KxD):
  """float64 nearest centroid, and the gap to the second nearest (to spot float32 ties)."""
  d2 = ((x_TxD.astype(np.float64)[:, None] - centroids_KxD.astype(np.float64)[None]) ** 2).sum(-1)
  two = np.sort(d2, axis=-1)[:, :2]
  return d2.argmin(-1), two[:, 1] - two[:, 0]


@pytest.fixture(scope="module")
def mfcc_run(tmp_path_factory, demo_data_dir):
  """The job as a user runs it (the command line), on the dev split."""
  workdir = str(tmp_path_factory.mktemp("kmeans") / "run")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.main",
      "--config=configs/kmeans_mfcc.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={demo_data_dir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  assert "job kmeans" in result.stderr and "manifest.json: 4 shards" in result.stderr
  assert json.load(open(os.path.join(workdir, "config.json")))["kmeans"]["num_clusters"] == 8
  return workdir


def test_units_match_an_independent_assignment(mfcc_run):
  units_dir = os.path.join(mfcc_run, "units")
  manifest = shards.read_manifest(units_dir)
  records = dev_records()
  assert manifest["num_clusters"] == 8 and manifest["label_rate_hz"] == 100.0
  assert manifest["features"]["type"] == "mfcc" and manifest["features"]["dim"] == 39
  assert manifest["dataset"] == dict(
    name="sslax_demo_corpus", split="dev", key_feature="id", num_examples=60
  )
  assert [s["num_examples"] for s in manifest["shards"]] == [16, 16, 16, 12]
  assert [s["first_example"] for s in manifest["shards"]] == [0, 16, 32, 48]
  centroids = np.load(os.path.join(units_dir, "centroids.npy"))
  assert centroids.shape == (8, 39)
  assert (
    shards.file_sha256(os.path.join(units_dir, "centroids.npy"))
    == (manifest["centroids"]["sha256"])
  )

  seen, checked = [], 0
  for entry in manifest["shards"]:
    shard = shards.read_shard(os.path.join(units_dir, entry["file"]), entry["sha256"])
    assert shard["keys"].tolist() == entry["keys"]
    assert shard["units"].dtype == np.int16 and entry["num_frames"] == len(shard["units"])
    assert str(shard["centroids_sha256"]) == manifest["centroids"]["sha256"]
    offsets = np.concatenate([[0], np.cumsum(shard["lengths"])])
    for i, key in enumerate(entry["keys"]):
      seen.append(key)
      # fairseq's frame count: Kaldi snip_edges frames of the utterance.
      assert shard["lengths"][i] == mfcc.num_frames(records[key]["num_samples"]), key
      if i % 5 == 0:  # recompute every fifth utterance from its audio file
        samples, _ = soundfile.read(
          os.path.join(demo_builder.CORPUS_DIR, "audio", "dev", key + ".ogg"), dtype="int16"
        )
        expected, gap = nearest64(mfcc.features(samples / 32768.0), centroids)
        units = shard["units"][offsets[i] : offsets[i + 1]]
        differ = units != expected
        assert np.all(gap[differ] < 1e-2), key  # float32 near-ties only
        assert differ.mean() <= 1e-3, key
        checked += 1
  assert sorted(seen) == sorted(records)  # every example exactly once
  assert checked == 15
  fit = manifest["kmeans"]
  assert fit["fit_frames"] == 8_000 and fit["inertia"] > 0  # the reservoir was full


def test_resume_keeps_complete_shards_and_rewrites_the_missing_one(tmp_path, mfcc_run):
  """The in-process job finishing the command line's run writes the same bytes."""
  workdir = str(tmp_path / "resumed")
  shutil.copytree(mfcc_run, workdir)
  units_dir = os.path.join(workdir, "units")
  missing = shards.shard_name(2, 4)
  reference = open(os.path.join(units_dir, missing), "rb").read()
  manifest = open(os.path.join(units_dir, "manifest.json"), "rb").read()
  # As a job killed while writing shard 2 leaves it: no shard 2 (a temporary file at
  # most), no manifest.
  os.remove(os.path.join(units_dir, missing))
  os.remove(os.path.join(units_dir, "manifest.json"))
  with open(os.path.join(units_dir, missing + ".tmp123"), "wb") as f:
    f.write(b"partial")
  kept = {
    name: os.stat(os.path.join(units_dir, name)).st_mtime_ns
    for name in os.listdir(units_dir)
    if name.startswith("shard-") and name.endswith(".npz")
  }
  config = json.load(open(os.path.join(workdir, "config.json")))
  job.run(tiny_config(config["data"]["data_dir"]), workdir)
  for name, mtime in kept.items():
    assert os.stat(os.path.join(units_dir, name)).st_mtime_ns == mtime, name
  assert open(os.path.join(units_dir, missing), "rb").read() == reference
  assert open(os.path.join(units_dir, "manifest.json"), "rb").read() == manifest


def test_resume_refuses_other_settings_or_damaged_shards(tmp_path, mfcc_run, demo_data_dir):
  workdir = str(tmp_path / "changed")
  shutil.copytree(mfcc_run, workdir)
  units_dir = os.path.join(workdir, "units")
  with pytest.raises(ValueError, match=r"kmeans.num_clusters=8 but the config says 9"):
    job.run(tiny_config(demo_data_dir, **{"kmeans.num_clusters": 9}), workdir)
  with pytest.raises(ValueError, match=r"fit.utterance_fraction=0.5 but the config says 0.25"):
    job.run(tiny_config(demo_data_dir, **{"fit.utterance_fraction": 0.25}), workdir)

  damaged = os.path.join(units_dir, shards.shard_name(1, 4))
  with open(damaged, "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match=f"units shard {damaged} cannot be read"):
    job.run(tiny_config(demo_data_dir), workdir)

  other = os.path.join(units_dir, shards.shard_name(0, 4))
  shards.write_shard(other, ["a"], [np.zeros(3, np.int32)], num_clusters=8, centroids_sha256="0")
  with pytest.raises(ValueError, match=f"units shard {other} was assigned with other centroids"):
    job.run(tiny_config(demo_data_dir), workdir)

  centroids = os.path.join(units_dir, "centroids.npy")
  sha256 = shards.file_sha256(centroids)
  shards.write_shard(other, ["a"], [np.zeros(3)], num_clusters=8, centroids_sha256=sha256)
  with pytest.raises(ValueError, match=f"{other} holds 1 examples; shard 0 of .*:dev has 16"):
    job.run(tiny_config(demo_data_dir), workdir)

  shards.write_npy(centroids, np.load(centroids) + 1.0)
  with pytest.raises(ValueError, match=f"{centroids} is not the file .*kmeans.json records"):
    job.run(tiny_config(demo_data_dir), workdir)


def test_bad_fields_are_named(tmp_path, demo_data_dir):
  with pytest.raises(ValueError, match=r"config.data.key_feature='path' is not a feature"):
    job.run(tiny_config(demo_data_dir, **{"data.key_feature": "path"}), str(tmp_path / "a"))
  with pytest.raises(ValueError, match=r"config.features.source='fbank'"):
    job.run(tiny_config(demo_data_dir, **{"features.source": "fbank"}), str(tmp_path / "b"))
  with pytest.raises(ValueError, match=r"fit sample has \d+ frames for config.kmeans.num_clusters"):
    job.run(tiny_config(demo_data_dir, **{"fit.max_frames": 4}), str(tmp_path / "c"))
  config = kmeans_hubert.get_config()
  config.data.data_dir = demo_data_dir
  with pytest.raises(ValueError, match=r"config.features.checkpoint is empty"):
    job.run(config, str(tmp_path / "d"))
  with pytest.raises(ValueError, match=r"examples_per_shard=0"):
    job.shard_ranges(10, 0)


def test_checkpoint_layer_units(tmp_path, demo_data_dir):
  model_config = demo.get_config("tiny").model
  path = str(tmp_path / "ckpt")
  checkpoint.save_sslax_checkpoint(path, model_config, model_types.init_params(model_config, 0))
  config = tiny_kmeans.checkpoint_config(path, demo_data_dir)
  config.features.layer = 1
  with pytest.raises(ValueError, match=r"config.features.layer=3 is outside 0..2"):
    config.features.layer = 3
    job.run(config, str(tmp_path / "bad"))
  config.features.layer = 1
  workdir = str(tmp_path / "it2")
  job.run(config, workdir)

  manifest = shards.read_manifest(os.path.join(workdir, "units"))
  assert manifest["label_rate_hz"] == 50.0  # 320x conv stride
  assert manifest["features"]["checkpoint"] == path and manifest["features"]["layer"] == 1
  assert manifest["centroids"]["dim"] == 32
  entry = manifest["shards"][0]
  shard = shards.read_shard(os.path.join(workdir, "units", entry["file"]))
  centroids = np.load(os.path.join(workdir, "units", "centroids.npy"))
  key = entry["keys"][0]
  samples, _ = soundfile.read(
    os.path.join(demo_builder.CORPUS_DIR, "audio", "dev", key + ".ogg"), dtype="int16"
  )
  (hidden,) = extract.extract(
    model_config,
    checkpoint.load_sslax_checkpoint(path)[1],
    [samples / 32768.0],
    [1],
    batch_size=4,
    pad_multiple=160_000,
  )
  expected, gap = nearest64(hidden[1], centroids)
  units = shard["units"][: shard["lengths"][0]]
  assert len(units) == len(expected) == frontends.num_frames(len(samples), model_config.conv_layers)
  differ = units != expected
  assert differ.mean() <= 1e-2 and np.all(gap[differ] < 1e-3), key


def test_reservoir_is_a_uniform_bounded_sample():
  rows = np.arange(100, dtype=np.float32)[:, None]
  counts = np.zeros(100)
  for trial in range(2_000):
    reservoir = job.Reservoir(10, np.random.default_rng(trial))
    for start in range(0, 100, 7):  # batches of 7
      reservoir.add(rows[start : start + 7])
      assert sum(len(r) for r in reservoir._rows) < 2 * 10 + 7  # bounded
    sample = reservoir.sample(1)[:, 0]
    assert len(sample) == 10 == len(set(sample.tolist()))
    counts[sample.astype(int)] += 1
  # Each row is kept with probability 0.1: 200 expected of 2,000; sd 13.4; 5 sd either way.
  assert np.all(np.abs(counts - 200) < 67), counts
  small = job.Reservoir(10, np.random.default_rng(0))
  small.add(rows[:4])
  np.testing.assert_array_equal(np.sort(small.sample(1)[:, 0]), [0, 1, 2, 3])


def test_checkpoint_layer_uses_a_conformers_running_statistics(tmp_path):
  """A batch-norm conformer's features come from its saved running statistics."""
  model_config = demo_conformer.get_config("w2v,tiny").model
  init = flax.linen.meta.unbox(
    model_types.build_model(model_config).init(
      jax.random.key(0),
      np.zeros((1, 16_080), np.float32),
      np.zeros((1, 16_080), np.float32),
      np.zeros((1, 50), bool),
      train=False,
      **model_types.eval_kwargs(model_config),
    )
  )
  params = jax.tree.map(np.asarray, init["params"])
  stats = jax.tree.map(lambda x: np.asarray(x) + 0.5, init["batch_stats"])  # moved off (0, 1)
  assert stats, "the demo conformer should have batch-norm statistics"
  path = str(tmp_path / "ckpt")
  checkpoint.save_sslax_checkpoint(path, model_config, params, {"batch_stats": stats})
  features = kmeans_hubert.get_config().features
  features.checkpoint, features.layer, features.batch_size = path, 1, 2
  features.pad_multiple = 16_000
  waveforms = [
    np.random.default_rng(i).normal(size=n).astype(np.float32)
    for i, n in enumerate((9_000, 16_000))
  ]

  got = sources.CheckpointLayer(features)(waveforms)

  def layer(model_state):
    hidden = extract.extract(
      model_config,
      params,
      waveforms,
      [1],
      batch_size=2,
      pad_multiple=16_000,
      model_state=model_state,
    )
    return [h[1] for h in hidden]

  for g, want, default in zip(
    got, layer({"batch_stats": stats}), layer({"batch_stats": init["batch_stats"]}), strict=True
  ):
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(g, default, atol=1e-3)
