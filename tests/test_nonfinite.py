"""A NaN or Inf loss or gradient stops the run or skips the update (`config.nonfinite`).

Skipping happens inside the jitted step: the state of a skipped step is bitwise the state
before it but for the step counter; the skip is counted in the metrics and logged, and
too many in a row stop the run. The toy job (tests/toy_job.py) runs the real loop, update
step and guard in milliseconds; the real pretraining and fine-tuning steps are checked
too, since each job builds its own jitted step.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sharding import synthetic_batch
import toy_job

from configs import demo, demo_ctc
from sslax import loop
from sslax.core import checkpoints, sharding
from sslax.core import state as state_lib
from sslax.train import ctc_step, wav2vec2_step


def inf_gradient(loss_fn):
  """`loss_fn` with an Inf gradient for every parameter but the same (finite) loss."""

  @jax.custom_vjp
  def poison(x):
    return x

  poison.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.inf),))

  def wrapped(params, model_state, microbatch, rng, scalars):
    return loss_fn(jax.tree.map(poison, params), model_state, microbatch, rng, scalars)

  return wrapped


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_same_but_step(before, after):
  """`after` (host copies) is bitwise `before` with the step counter advanced by one."""
  assert int(after.step) == int(before.step) + 1
  for field in ("params", "opt_state", "model_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(after, field), getattr(before, field))


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_skipped_update_leaves_the_state_bitwise_unchanged(fault):
  config = toy_job.config(nonfinite="skip")
  mesh = sharding.make_mesh(config.mesh)  # 8 devices: the guard works on sharded state
  good = toy_job.build_trainer(config, mesh)
  bad = good if fault == "nan_loss" else toy_job.build_trainer(config, mesh, inf_gradient)
  stream = toy_job.ToyStream(config.data.batch_size, seed=0, poisoned={1})
  state = state_lib.init_state(good.init_fn, good.state_shardings, jax.random.key(0))
  with sharding.activate(mesh):
    # A good step first, so Adam's moments and the batch statistics are not at their start.
    state, metrics = good.step(
      state, sharding.global_batch(stream.host_batch(0), mesh), jax.random.key(1)
    )
    assert float(metrics["skipped_updates"]) == 0.0
    before = jax.device_get(state)
    batch = stream.host_batch(1 if fault == "nan_loss" else 2)
    state, metrics = bad.step(state, sharding.global_batch(batch, mesh), jax.random.key(1))
    assert_same_but_step(before, jax.device_get(state))
    metrics = jax.device_get(metrics)
    assert metrics.pop("skipped_updates") == 1.0
    assert all(value == 0 for value in metrics.values()), metrics  # no NaN reaches the logs
    # The next good batch updates from where the state was.
    state, metrics = good.step(
      state, sharding.global_batch(stream.host_batch(2), mesh), jax.random.key(1)
    )
    assert float(metrics["skipped_updates"]) == 0.0
    moved = jax.device_get(state.params)
    assert not np.array_equal(moved["Dense_0"]["kernel"], before.params["Dense_0"]["kernel"])


def test_stop_mode_leaves_the_step_as_it_was():
  config = toy_job.config(nonfinite="stop")
  mesh = sharding.make_mesh(config.mesh)
  trainer = toy_job.build_trainer(config, mesh)
  stream = toy_job.ToyStream(config.data.batch_size, seed=0, poisoned={0})
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  with sharding.activate(mesh):
    _, metrics = trainer.step(
      state, sharding.global_batch(stream.host_batch(0), mesh), jax.random.key(1)
    )
  assert "skipped_updates" not in metrics and np.isnan(float(metrics["loss"]))


@pytest.mark.parametrize("job", ["pretrain", "finetune"])
def test_each_jobs_step_skips_nan_audio(job):
  """wav2vec2_step.build_trainer (wav2vec 2.0, BEST-RQ and HuBERT pretraining) and
  ctc_step.build_trainer each jit their own step: both must keep the state."""
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  if job == "pretrain":
    config = demo.get_config("tiny")
    config.unlock()
    config.nonfinite = "skip"
    trainer = wav2vec2_step.build_trainer(config, mesh)
    batch = synthetic_batch(config)
  else:
    config = demo_ctc.get_config("tiny")
    config.unlock()
    config.nonfinite = "skip"
    config.data.max_samples = 16_080  # 50 frames
    trainer = ctc_step.build_trainer(config, mesh, vocab_size=8)
    rng = np.random.default_rng(0)
    b, s, d = config.data.batch_size, config.data.max_samples, config.model.embed_dim
    frames = wav2vec2_step.frames_fn(config)(s)
    batch = {
      "audio": rng.normal(size=(b, s)).astype(np.float32) * 0.1,
      "audio_paddings": np.zeros((b, s), np.float32),
      "mask": np.zeros((b, frames), bool),
      "channel_mask": np.zeros((b, d), bool),
      "labels": rng.integers(1, 8, size=(b, 10)).astype(np.int32),
      "label_paddings": np.zeros((b, 10), np.float32),
    }
  init = jax.jit(trainer.init_fn, out_shardings=trainer.state_shardings)
  state = init(jax.random.key(0))
  rng = jax.random.key(1)
  poisoned = dict(batch, audio=batch["audio"].copy())
  poisoned["audio"][0, 100] = np.nan
  with sharding.activate(mesh):
    good, bad = (sharding.global_batch(b, mesh) for b in (batch, poisoned))
    step = trainer.step
    state, metrics = step(state, good, rng)
    assert float(metrics["skipped_updates"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    before = jax.device_get(state)
    state, metrics = step(state, bad, rng)
  assert float(metrics["skipped_updates"]) == 1.0
  assert_same_but_step(before, jax.device_get(state))


def test_skips_are_logged_counted_and_consecutive_ones_stop_the_run(tmp_path, caplog):
  workdir = str(tmp_path)
  # Global batches 2, 5, 6 and 7 are bad: steps 3, 6, 7 and 8.
  setup = toy_job.setup(poisoned={2, 5, 6, 7})
  run = dict(nonfinite="skip", max_consecutive_skips=3, checkpoint_every=1, keep_checkpoints=20)
  with caplog.at_level(logging.WARNING):
    loop.train(toy_job.config(total_steps=7, **run), workdir, setup)
  assert "step 3: non-finite loss or gradient; update skipped (1 in a row" in caplog.text
  assert "step 7: non-finite loss or gradient; update skipped (2 in a row" in caplog.text
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == list(range(1, 8))
  assert [m["skipped_updates"] for m in metrics] == [0, 0, 1, 0, 0, 1, 1]
  assert "loss" not in metrics[2] and np.isfinite(metrics[3]["loss"])
  # The skipped step's checkpoint holds the state before it; the next one has moved on.
  params = {step: checkpoints.load_params(workdir, step) for step in (2, 3, 4)}
  jax.tree.map(np.testing.assert_array_equal, params[3], params[2])
  assert not np.array_equal(params[4]["Dense_0"]["kernel"], params[3]["Dense_0"]["kernel"])

  # The count of skips in a row is checkpointed: resumed, one more skip (step 8) makes 3.
  with pytest.raises(FloatingPointError) as error:
    loop.train(toy_job.config(total_steps=10, **run), workdir, setup)
  assert str(error.value).startswith(
    "3 updates in a row skipped for a non-finite loss or gradient, steps 6-8 "
    "(config.max_consecutive_skips=3); the last good checkpoint: step 7 in the workdir."
  )
  assert "lower config.optim.learning_rate" in str(error.value)


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_stop_mode_names_the_step_and_the_last_good_checkpoint(tmp_path, fault):
  workdir = str(tmp_path)
  if fault == "nan_loss":  # global batch 4: step 5, after checkpoint 4
    setup, message = toy_job.setup(poisoned={4}), r"loss is nan at step 5; .* step 4 in the"
  else:  # every gradient: step 1, before any checkpoint
    setup = toy_job.setup(wrap_loss=inf_gradient)
    message = r"loss is [\d.]+ at step 1; .* none was written yet \(gradient norm inf\)"
  with pytest.raises(FloatingPointError, match=message) as error:
    loop.train(toy_job.config(total_steps=8, checkpoint_every=2), workdir, setup)
  assert "config.nonfinite='skip'" in str(error.value)
  saved = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")))
  assert saved == ([2, 4] if fault == "nan_loss" else [])  # the bad step is never saved


def test_an_unknown_nonfinite_mode_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"config.nonfinite='ignore'; expected one of"):
    loop.train(toy_job.config(nonfinite="ignore"), str(tmp_path), toy_job.setup())
  with pytest.raises(ValueError, match="config.max_consecutive_skips=0 must be at least 1"):
    loop.train(toy_job.config(max_consecutive_skips=0), str(tmp_path), toy_job.setup())
  assert os.listdir(tmp_path) == []  # stopped before writing anything
