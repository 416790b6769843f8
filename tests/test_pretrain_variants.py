"""Every frontend/encoder/objective pairing is a config change (issue 6).

The demo variants of configs/demo_conformer.py (waveform + conformer, log mel + conformer
with wav2vec 2.0, log mel + conformer with BEST-RQ) train through the one pretraining
step: a sharded step on the 8 fake CPU devices equals the single-device step, batch
statistics included, and the pipeline's frame counts are the model's.
"""

import jax
import ml_collections
import numpy as np
import pytest
from test_sharding import synthetic_batch
import tiny_steps

from configs import common, demo, demo_conformer
from sslax.core import sharding
from sslax.core import state as state_lib
from sslax.models import backbone, spectrogram
from sslax.train import wav2vec2_step

VARIANTS = ("w2v,tiny", "logmel,tiny", "bestrq,tiny")
# float32 on CPU: sharded reductions (batch statistics too) add in another order.
LOSS_RTOL = 1e-5
STATE_ATOL = 1e-6  # after one Adam update of size ~lr = 5e-4


def one_step(config: ml_collections.ConfigDict, mesh_sizes: dict, devices, num_shards=None):
  """(metrics, initial state, state after one step) of `config` on the given mesh;
  `num_shards` as `build_trainer`'s (wav2vec 2.0's diversity shards)."""
  mesh = sharding.make_mesh(mesh_sizes, devices)
  trainer = wav2vec2_step.build_trainer(config, mesh, num_shards=num_shards)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
  initial = jax.device_get(state)
  with sharding.activate(mesh):
    batch = sharding.global_batch(synthetic_batch(config), mesh)
    state, metrics = trainer.step(state, batch, step_rng)
  return jax.device_get(metrics), initial, jax.device_get(state)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_step_of_each_demo_variant_equals_single_device(variant):
  # The waveform variant with 3 conv layers of 16 channels (tests/tiny_steps.py).
  config = tiny_steps.fewer_layers(demo_conformer.get_config(variant))
  # One device with the sharded run's 4 data-parallel shards (one perplexity each).
  ref_metrics, initial, ref_state = one_step(
    config, dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], num_shards=4
  )
  metrics, _, state = one_step(config, dict(data=2, fsdp=2, tensor=2), jax.devices())
  assert ref_metrics["masked_frames"] > 0
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=LOSS_RTOL)
  for field in ("params", "model_state"):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=STATE_ATOL),
      getattr(state, field),
      getattr(ref_state, field),
    )
  # The conformer's running batch statistics are carried and moved by the step.
  stats = ref_state.model_state["batch_stats"]["encoder"]["layers_0"]["conv"]["batch_norm"]
  start = initial.model_state["batch_stats"]["encoder"]["layers_0"]["conv"]["batch_norm"]
  assert np.abs(stats["mean"] - start["mean"]).max() > 1e-4
  if variant.startswith("bestrq"):
    # The quantizer is frozen: no optimizer state, unchanged by the step.
    assert "quantizer" not in ref_state.params
    jax.tree.map(
      np.testing.assert_array_equal,
      ref_state.model_state["frozen"],
      initial.model_state["frozen"],
    )
    # Chance level at the start: ln V per masked frame.
    per_frame = ref_metrics["loss"] / ref_metrics["masked_frames"]
    assert per_frame == pytest.approx(np.log(config.model.codebook_size), rel=0.1)


@pytest.mark.parametrize("variant", (None, *VARIANTS))
def test_pipeline_frames_are_the_models(variant):
  """frames_fn (what the pipeline masks with) gives the frame count the model outputs."""
  config = demo.get_config("tiny") if variant is None else demo_conformer.get_config(variant)
  model = wav2vec2_step.build_model(config)
  frames_fn = wav2vec2_step.frames_fn(config)
  variables = jax.eval_shape(wav2vec2_step.init_variables_fn(model), jax.random.key(0))
  extra = {} if config.objective.name == "bestrq" else {"gumbel_temperature": 1.0}
  for num_samples in (8_000, 8_001, 12_345, 16_080):
    audio = jax.ShapeDtypeStruct((2, num_samples), np.float32)
    mask = jax.ShapeDtypeStruct((2, frames_fn(num_samples)), bool)
    out = jax.eval_shape(
      lambda v, a, m: model.apply(v, a, a, m, train=False, **extra), variables, audio, mask
    )
    assert out.frame_paddings.shape == (2, frames_fn(num_samples)), num_samples
  if variant is not None and variant != "w2v,tiny":
    assert frames_fn(16_080) == spectrogram.num_frames(16_080, subsampling=4) == 26


def test_unknown_choices_name_the_config_field():
  config = demo.get_config("tiny")
  with pytest.raises(ValueError, match="config.model.frontend"):
    backbone.num_frames(16_000, common.wav2vec2_model(frontend="mfcc"))
  model = wav2vec2_step.build_model(config).clone(encoder="lstm")
  with pytest.raises(ValueError, match="config.model.encoder"):
    jax.eval_shape(wav2vec2_step.init_variables_fn(model), jax.random.key(0))
  config.unlock()
  config.objective.name = "data2vec"
  with pytest.raises(ValueError, match="config.objective.name"):
    wav2vec2_step.build_model(config)


def test_defaults_keep_the_wav2vec2_model():
  """The new fields' defaults are today's model: the same parameter tree, no model state."""
  config = demo.get_config("tiny")
  model = wav2vec2_step.build_model(config)
  assert (model.frontend, model.encoder) == ("waveform", "transformer")
  variables = jax.eval_shape(wav2vec2_step.init_variables_fn(model), jax.random.key(0))
  assert set(variables) == {"params"}
  assert sorted(variables["params"]) == [
    "encoder",
    "feature_norm",
    "final_proj",
    "frontend",
    "mask_emb",
    "project_q",
    "quantizer",
  ]


def test_accumulated_step_updates_batch_statistics_once_with_the_microbatch_mean():
  """With grad_accum_steps = A, each microbatch normalises with its own statistics and the
  running statistics move once, by the mean of the A microbatches' updates."""
  config = demo_conformer.get_config("logmel,tiny")
  config.unlock()
  config.grad_accum_steps = 2
  # Without dropout a microbatch's statistics depend on the parameters and inputs only.
  config.model.update(dropout=0.0, attention_dropout=0.0, dropout_input=0.0)
  _, initial, state = one_step(config, dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  model = wav2vec2_step.build_model(config)
  batch = synthetic_batch(config)

  @jax.jit  # one program per batch shape, not one per operation
  def batch_stats(rows):
    return state_lib.apply_train(
      model,
      initial.params,
      initial.model_state,
      rows["audio"],
      rows["audio_paddings"],
      rows["mask"],
      train=True,
      gumbel_temperature=2.0,
      rngs={"dropout": jax.random.key(0), "gumbel": jax.random.key(1)},
    )[1]["batch_stats"]

  expected = []
  for a in range(2):  # rows j * A + a form microbatch a
    expected.append(batch_stats({name: value[a::2] for name, value in batch.items()}))
  mean = jax.tree.map(lambda x, y: (x + y) / 2, *expected)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    state.model_state["batch_stats"],
    mean,
  )
  # Not the update of the whole batch at once (the statistics really are per microbatch).
  whole = batch_stats(batch)
  differences = jax.tree.map(lambda a, b: np.abs(a - b).max(), whole, mean)
  assert max(jax.tree.leaves(differences)) > 1e-6
