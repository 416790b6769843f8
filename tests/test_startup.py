"""Settings that cannot work stop a run at start-up, before it writes anything, with a
message that says what to change.

Checked elsewhere, and only listed here: an unreachable coordinator or a busy coordinator
port (tests/test_distributed.py, through sslax.main), a mesh that cannot tile the devices
(tests/test_sharding.py), a batch that does not divide over the batch shards or the
processes (tests/test_buckets.py, tests/test_pipeline.py). This file checks that the
training loop applies them before touching the workdir, the ones the loop itself makes,
and the restore of a checkpoint written by another model or optimizer.
"""

import os
import types

import numpy as np
import pytest
import toy_job

from configs import demo
from sslax import loop
from sslax.core import checkpoints
from sslax.data import pretraining_stream
from sslax.train import wav2vec2_step


def test_checkpoint_of_another_model_size_names_arrays_and_config_fields(tmp_path):
  workdir = str(tmp_path)
  loop.train(toy_job.config(total_steps=2), workdir, toy_job.setup())
  with open(os.path.join(workdir, "config.json")) as f:
    written = f.read()

  wider = toy_job.config(total_steps=4, **{"model.embed_dim": 64})
  with pytest.raises(checkpoints.IncompatibleCheckpointError) as error:
    loop.train(wider, workdir, toy_job.setup())
  message = str(error.value)
  assert message.startswith(f"checkpoint 2 in {workdir}/checkpoints does not fit this config's")
  # Parameters first: the reader sees the model's arrays before the optimizer's copies.
  assert message.splitlines()[1] == (
    "  params/BatchNorm_0/bias: float32[32] in the checkpoint, float32[64] here"
  )
  assert "params/Dense_0/kernel: float32[16, 32] in the checkpoint, float32[16, 64] here" in message
  assert "(17 arrays differ)" in message and "  ... and 9 more" in message
  assert "config.model.embed_dim: 32 there, 64 here" in message
  assert "config.total_steps: 2 there, 4 here" in message
  assert (
    "Resume with the config that wrote the checkpoint, or train this config in a new" in message
  )
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == written  # the run's record is not overwritten by the failed start
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]

  # Another optimizer (clipping adds a state) is as incompatible as another model.
  clipped = toy_job.config(total_steps=4, **{"optim.clip_norm": 1.0})
  with pytest.raises(checkpoints.IncompatibleCheckpointError) as error:
    loop.train(clipped, workdir, toy_job.setup())
  assert "opt_state/0/count: int32[] in the checkpoint, not here" in str(error.value)
  assert "opt_state/0/mu/Dense_0/kernel: float32[16, 32] in the checkpoint, not" in str(error.value)
  assert "config.optim.clip_norm: 0.0 there, 1.0 here" in str(error.value)

  # What does not change the state's arrays resumes.
  loop.train(
    toy_job.config(total_steps=4, **{"optim.learning_rate": 0.02}), workdir, toy_job.setup()
  )
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_mesh_and_batch_errors_come_before_anything_is_written(tmp_path):
  # 8 devices here (tests/conftest.py).
  with pytest.raises(ValueError, match=r"config.mesh=.* do not divide the 8 devices; change"):
    loop.train(toy_job.config(**{"mesh.fsdp": 3}), str(tmp_path), toy_job.setup())
  with pytest.raises(ValueError, match=r"config.data.batch_size=6 must be a multiple of the 8"):
    loop.train(toy_job.config(**{"data.batch_size": 6}), str(tmp_path), toy_job.setup())
  assert os.listdir(tmp_path) == []


def test_a_batch_that_does_not_divide_over_the_processes_is_named(demo_data_dir):
  # With tensor parallelism over hosts the batch shards may divide while processes do not.
  config = demo.get_config("tiny")
  data = config.data.copy_and_resolve_references()
  data.update(dict(data_dir=demo_data_dir, batch_size=6))
  with pytest.raises(
    ValueError,
    match=r"config.data.batch_size=6 gives a global batch of 6, which does not divide across "
    r"4 processes",
  ):
    pretraining_stream.PretrainingStream(
      data,
      config.masking,
      wav2vec2_step.frames_fn(config),
      seed=0,
      process_index=0,
      process_count=4,
    )


def fake_mesh(shape, devices_per_process):
  """A Mesh-like grid of devices numbered in order, `devices_per_process` to a process."""
  count = int(np.prod(shape))
  grid = np.empty(count, dtype=object)
  for i in range(count):
    grid[i] = types.SimpleNamespace(id=i, process_index=i // devices_per_process)
  names = ("data", "fsdp", "tensor")
  return types.SimpleNamespace(
    devices=grid.reshape(shape), axis_names=names, shape=dict(zip(names, shape, strict=True))
  )


def test_batch_shards_must_not_span_processes():
  # 2 processes of 4 devices: data and fsdp may span them, tensor only within one.
  for shape in ((8, 1, 1), (2, 4, 1), (1, 8, 1), (4, 1, 2), (2, 1, 4)):
    loop.check_processes_hold_own_batch_shards(fake_mesh(shape, 4))
  with pytest.raises(ValueError, match=r"do not split evenly over the 2 processes.*tensor"):
    loop.check_processes_hold_own_batch_shards(fake_mesh((1, 1, 8), 4))
  # 4 processes of 2 devices: a tensor group of 4 spans two of them.
  loop.check_processes_hold_own_batch_shards(fake_mesh((4, 1, 2), 2))
  with pytest.raises(ValueError, match=r"do not split evenly over the 4 processes.*tensor"):
    loop.check_processes_hold_own_batch_shards(fake_mesh((2, 1, 4), 2))


def test_without_config_json_the_message_still_says_what_to_do(tmp_path):
  workdir = str(tmp_path)
  loop.train(toy_job.config(total_steps=2), workdir, toy_job.setup())
  os.remove(os.path.join(workdir, "config.json"))  # e.g. deleted, or copied without it
  with pytest.raises(
    checkpoints.IncompatibleCheckpointError, match=r"(?s)float32\[16, 8\] here.*new --workdir"
  ):
    loop.train(toy_job.config(**{"model.embed_dim": 8}), workdir, toy_job.setup())
