"""Sharded train steps equal single-device ones, and parameters land where the rules say.

Runs on the 8 fake CPU devices set up in conftest.py.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import demo
from sslax.data import masking
from sslax.train import sharding, wav2vec2_step
from sslax.train import state as state_lib

# float32 on CPU: sharded reductions add in a different order than one device does.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-6  # after two Adam updates of size ~lr = 5e-4


def synthetic_batch(config, seed=0):
  """Random audio with varied lengths, padding and span masks, as the pipeline makes."""
  rng = np.random.default_rng(seed)
  b, S = config.data.batch_size, config.data.max_samples
  frames = wav2vec2_step.frames_fn(config)
  lengths = rng.integers(S // 2, S + 1, size=b)
  lengths[0] = S
  paddings = (np.arange(S)[None] >= lengths[:, None]).astype(np.float32)
  audio = (rng.normal(size=(b, S)) * 0.1).astype(np.float32) * (1 - paddings)
  mask = masking.batch_span_masks(
    rng,
    frames(S),
    np.array([frames(int(n)) for n in lengths]),
    mask_prob=config.masking.mask_prob,
    mask_length=config.masking.mask_length,
    min_masks=config.masking.min_masks,
  )
  return {"audio": audio, "audio_paddings": paddings, "mask": mask}


def run_steps(mesh_sizes, devices, num_steps=2, **overrides):
  config = demo.get_config("tiny")
  config.update(overrides)
  mesh = sharding.make_mesh(mesh_sizes, devices)
  trainer = wav2vec2_step.build_trainer(config, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
  losses, grad_norms = [], []
  with sharding.activate(mesh):
    for i in range(num_steps):
      batch = sharding.global_batch(synthetic_batch(config, seed=i), mesh)
      state, metrics = trainer.step(state, batch, step_rng)
      losses.append(float(metrics["loss"] / metrics["masked_frames"]))
      grad_norms.append(float(metrics["grad_norm"]))
  return losses, state, grad_norms


@pytest.fixture(scope="module")
def single_device_run():
  return run_steps(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (4, 1, 2), (2, 2, 2)])
def test_sharded_step_equals_single_device(shape, single_device_run):
  assert jax.device_count() == 8
  ref_losses, ref_state, ref_grad_norms = single_device_run
  losses, state, grad_norms = run_steps(
    dict(zip(sharding.MESH_AXES, shape, strict=True)), jax.devices()
  )
  np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL)
  # Adam's first updates barely depend on the gradient's scale, so compare gradients too
  # (a grouped convolution's kernel gradient once came out doubled on data x tensor meshes).
  np.testing.assert_allclose(grad_norms, ref_grad_norms, rtol=1e-4)
  ref_params = jax.device_get(ref_state.params)
  params = jax.device_get(state.params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL), params, ref_params
  )
  # The parameters moved: the comparison is not between two untouched initialisations.
  init = run_steps(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], num_steps=0)[1]
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_params, jax.device_get(init.params))
  assert max(jax.tree.leaves(moved)) > 100 * PARAM_ATOL


def test_gradient_accumulation_is_sharding_invariant():
  """Microbatches are taken as strided rows, so each device keeps its own rows."""
  ref_losses, ref_state, _ = run_steps(
    dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], grad_accum_steps=2
  )
  losses, state, _ = run_steps(dict(data=2, fsdp=2, tensor=2), jax.devices(), grad_accum_steps=2)
  np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL),
    jax.device_get(state.params),
    jax.device_get(ref_state.params),
  )


def test_bf16_compute_keeps_float32_state(single_device_run):
  losses, state, _ = run_steps(
    dict(data=2, fsdp=2, tensor=2), jax.devices(), compute_dtype="bfloat16"
  )
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype in (np.float32, np.int32) for x in jax.tree.leaves(state.opt_state))
  # bf16 matmuls (8-bit mantissa) move the loss, but only slightly.
  assert losses != single_device_run[0]
  np.testing.assert_allclose(losses, single_device_run[0], rtol=0.05)


def test_parameters_are_sharded_as_the_rules_say():
  config = demo.get_config("tiny")
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  trainer = wav2vec2_step.build_trainer(config, mesh)
  boxed = jax.eval_shape(wav2vec2_step.init_params_fn(trainer.model), jax.random.key(0))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  rules = dict(sharding.LOGICAL_AXIS_RULES)
  sharded_leaves = 0
  for path, box in jax.tree_util.tree_flatten_with_path(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )[0]:
    assert isinstance(box, nn.LogicallyPartitioned), f"{path} has no logical axis names"
    array = _get(state.params, path)
    expected = tuple(rules[name] if name else None for name in box.names)
    spec = tuple(array.sharding.spec) + (None,) * (array.ndim - len(array.sharding.spec))
    assert spec == expected, (path, spec, expected)
    # Each device really holds only its slice.
    factors = [
      np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]) if axes else 1 for axes in expected
    ]
    shard_shape = array.addressable_shards[0].data.shape
    assert shard_shape == tuple(d // f for d, f in zip(array.shape, factors, strict=True))
    sharded_leaves += any(f > 1 for f in factors)
  assert sharded_leaves > 5


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_mesh_shape_errors_name_the_config_field():
  assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.mesh_shape(dict(data=3, fsdp=1, tensor=1), 8)
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.mesh_shape(dict(data=-1, fsdp=1, model=1), 8)
