"""HuBERT pretraining through the one pretraining loop (`config.objective.name = 'hubert'`).

On configs/demo_hubert.py:iter1,tiny with the units of configs/kmeans_mfcc.py:tiny: the
loop's first steps on the 2x2x2 fake-device mesh equal single-device steps (losses,
gradient norms, parameters) and count the frames the batch's labels and masks imply
(recomputed here in numpy); its 40 steps lower the cross-entropy; a checkpoint restores
the sharded state and the stream's position; and the loop closes: k-means on a layer of
that training workdir (configs/kmeans_hubert.py:tiny) gives 50 Hz units, one per model
frame, that the iteration-2 config trains on.
"""

import json
import os

import jax
import numpy as np
import pytest
from streams import take
import tiny_steps

from configs import demo_hubert, kmeans_hubert
from sslax import extract, loop
from sslax.core import checkpoints, sharding
from sslax.core import state as state_lib
from sslax.data import hubert_stream
from sslax.data import unit_labels as labels
from sslax.data import unit_shards as shards
from sslax.data.demo_corpus import builder as demo_builder
from sslax.models import frontends
from sslax.train import wav2vec2_step
from sslax.units import job

# float32 sums in another order on 8 devices.
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4  # as tests/test_sharding.py: Adam's updates hide a gradient's scale
STATE_ATOL = 1e-6  # after four Adam updates of size ~lr = 1e-3


def tiny_config(units_dir, data_dir, iteration="iter1"):
  """The tiny HuBERT config with one block and 3 conv layers (tests/tiny_steps.py)."""
  config = tiny_steps.fewer_layers(demo_hubert.get_config(f"{iteration},tiny"))
  config.units.dir = units_dir
  config.data.data_dir = data_dir
  return config


def make_stream(config):
  return hubert_stream.HubertStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    labels.UnitLabels.from_config(config),
    seed=config.seed,
    process_index=0,
    process_count=1,
  )


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mfcc_units, demo_data_dir):
  """A 40-step iteration-1 run of the tiny config through the loop on the 2x2x2 mesh,
  checkpoints every 4 steps (all kept)."""
  config = tiny_config(tiny_mfcc_units, demo_data_dir)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  config.total_steps, config.checkpoint_every, config.keep_checkpoints = 40, 4, 10
  config.optim.warmup_steps = 0  # the first update moves the parameters
  workdir = str(tmp_path_factory.mktemp("hubert") / "it1")
  loop.train(config, workdir)
  return config, workdir


def test_sharded_steps_equal_single_device_ones(trained):
  config, workdir = trained
  stream = make_stream(config)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  trainer = wav2vec2_step.build_trainer(config, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))  # as the loop
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
  logged = read_metrics(workdir)
  with sharding.activate(mesh):
    for k in range(4):
      batch = stream.host_batch(k)
      state, metrics = trainer.step(state, sharding.global_batch(batch, mesh), step_rng)
      metrics = jax.device_get(metrics)
      loss = metrics["loss"] / metrics["masked_frames"]
      np.testing.assert_allclose(logged[k]["loss"], loss, rtol=LOSS_RTOL)
      np.testing.assert_allclose(logged[k]["grad_norm"], metrics["grad_norm"], rtol=GRAD_RTOL)
      if k == 0:
        first = metrics
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=STATE_ATOL),
    checkpoints.load_params(workdir, step=4),
    jax.device_get(state.params),
  )
  # Frames counted: masked, unpadded, with a unit at floor(f * 100 / 50) (fairseq's
  # forward_targets), recomputed from the batch alone.
  batch = stream.host_batch(0)
  num_frames = batch["mask"].shape[1]
  lengths = (1 - batch["audio_paddings"]).sum(1).astype(int)
  frames = frontends.num_frames(lengths, config.model.conv_layers)
  valid = np.arange(num_frames)[None] < frames[:, None]
  unit_index = 2 * np.arange(num_frames)
  labelled = batch["labels"][:, np.minimum(unit_index, batch["labels"].shape[1] - 1)] >= 0
  labelled &= (unit_index < batch["labels"].shape[1])[None]
  assert first["count_m_0"] == first["sample_size"] == (batch["mask"] & valid & labelled).sum()
  assert first["count_u_0"] == (~batch["mask"] & valid & labelled).sum() > 0


def test_short_run_learns(trained):
  _, workdir = trained
  # The loop's loss per counted frame is cross-entropy + 10 x the feature penalty.
  cross_entropy = [m["loss"] - 10 * m["feature_penalty"] for m in read_metrics(workdir)]
  assert np.mean(cross_entropy[-5:]) < np.mean(cross_entropy[:5]) - 0.2, cross_entropy


def test_checkpoints_restore_the_state_and_the_stream_position(trained):
  """What a resumed run starts from: the sharded state of a checkpoint and the stream at
  its position, giving the batch the uninterrupted run read next (the loop's resume itself
  is the wav2vec 2.0 one, tests/test_main.py)."""
  config, workdir = trained
  mesh = sharding.make_mesh(config.mesh)
  trainer = wav2vec2_step.build_trainer(config, mesh)
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  state, data_state = checkpointer.restore(36, trainer.abstract_state, trainer.state_shardings)
  checkpointer.close()
  assert int(state.step) == 36 and data_state["position"] == 36
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(state.params),
    checkpoints.load_params(workdir, step=36),
  )
  vocab = jax.sharding.PartitionSpec("tensor", None)  # label_embs_concat: ('vocab', None)
  assert state.params["label_embs_concat"].sharding.spec == vocab
  assert read_metrics(workdir)[35]["data_position"] == 36
  ((batch, after),) = take(make_stream(config).batches(data_state["position"]), 1)
  expected = make_stream(config).host_batch(36)
  assert after["position"] == 37
  for name in expected:
    np.testing.assert_array_equal(batch[name], expected[name], err_msg=name)


def test_iteration_two_units_from_the_training_workdir(trained, demo_data_dir, tmp_path):
  _, workdir = trained
  model_config, params = extract.load_model(workdir)
  assert model_config.num_classes == (8,)  # a HuBERT model
  jax.tree.map(np.testing.assert_array_equal, params, checkpoints.load_params(workdir))

  kmeans = kmeans_hubert.get_config("tiny")
  kmeans.data.data_dir = demo_data_dir
  kmeans.features.checkpoint = workdir
  units_workdir = str(tmp_path / "units2")
  job.run(kmeans, units_workdir)
  units_dir = os.path.join(units_workdir, "units")
  manifest = shards.read_manifest(units_dir)
  assert manifest["label_rate_hz"] == 50.0 and manifest["features"]["layer"] == 1
  with open(os.path.join(demo_builder.CORPUS_DIR, "dev.jsonl")) as f:
    lengths = {r["id"]: r["num_samples"] for r in map(json.loads, f)}
  shard = shards.read_shard(os.path.join(units_dir, manifest["shards"][0]["file"]))
  for key, count in zip(shard["keys"].tolist(), shard["lengths"], strict=True):
    assert count == frontends.num_frames(lengths[key], model_config.conv_layers)  # one per frame

  batch = make_stream(tiny_config(units_dir, demo_data_dir, "iter2")).host_batch(0)
  assert batch["labels"].shape == (8, 50) == batch["mask"].shape
  assert batch["labels"].min() >= 0 and batch["labels"].max() < 8
