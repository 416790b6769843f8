"""Sharded train steps equal single-device ones, and parameters land where the rules say.

Runs on the 8 fake CPU devices set up in conftest.py. The diversity term has one
codebook perplexity per data-parallel shard (as per GPU in fairseq), so a single-device
run reproduces a sharded one when told the sharded run's shard count (`num_shards`).
The model is configs/demo.py:tiny with fewer layers and conv channels (tests/tiny_steps.py):
compiling and running the steps is what these tests spend their time on.
"""

import functools

import fairseq_reference
import flax.linen as nn
import jax
import numpy as np
import pytest
import tiny_steps

from configs import demo
from sslax.core import sharding
from sslax.core import state as state_lib
from sslax.data import masking
from sslax.models import quantizers
from sslax.train import wav2vec2_step

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


def run_steps(mesh_sizes, devices, num_steps=2, num_shards=None, **overrides):
  """(losses, final state, grad norms, initial parameters on the host)."""
  config = tiny_steps.fewer_layers(demo.get_config("tiny"))
  config.update(overrides)
  mesh = sharding.make_mesh(mesh_sizes, devices)
  trainer = wav2vec2_step.build_trainer(config, mesh, num_shards=num_shards)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
  initial_params = jax.device_get(state.params)
  losses, grad_norms = [], []
  with sharding.activate(mesh):
    for i in range(num_steps):
      batch = sharding.global_batch(synthetic_batch(config, seed=i), mesh)
      state, metrics = trainer.step(state, batch, step_rng)
      losses.append(float(metrics["loss"] / metrics["masked_frames"]))
      grad_norms.append(float(metrics["grad_norm"]))
  return losses, state, grad_norms, initial_params


@pytest.fixture(scope="module")
def single_device_run():
  """num_shards -> run_steps on one device with that many diversity shards (cached)."""
  return functools.cache(
    lambda num_shards: run_steps(
      dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], num_shards=num_shards
    )
  )


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (4, 1, 2), (2, 2, 2)])
def test_sharded_step_equals_single_device(shape, single_device_run):
  assert jax.device_count() == 8
  ref_losses, ref_state, ref_grad_norms, init_params = single_device_run(shape[0] * shape[1])
  losses, state, grad_norms, _ = run_steps(
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
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_params, init_params)
  assert max(jax.tree.leaves(moved)) > 100 * PARAM_ATOL


def test_gradient_accumulation_is_sharding_invariant():
  """Microbatches are taken as strided rows, so each device keeps its own rows."""
  ref_losses, ref_state, _, _ = run_steps(
    dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], num_shards=4, grad_accum_steps=2
  )
  losses, state, _, _ = run_steps(dict(data=2, fsdp=2, tensor=2), jax.devices(), grad_accum_steps=2)
  np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL),
    jax.device_get(state.params),
    jax.device_get(ref_state.params),
  )


def test_bf16_compute_keeps_float32_state(single_device_run):
  losses, state, _, _ = run_steps(
    dict(data=2, fsdp=2, tensor=2), jax.devices(), compute_dtype="bfloat16"
  )
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype in (np.float32, np.int32) for x in jax.tree.leaves(state.opt_state))
  # bf16 matmuls (8-bit mantissa) move the loss, but only slightly.
  assert losses != single_device_run(4)[0]
  np.testing.assert_allclose(losses, single_device_run(4)[0], rtol=0.05)


def test_parameters_are_sharded_as_the_rules_say():
  config = tiny_steps.fewer_layers(demo.get_config("tiny"))
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


# The diversity term on a mesh: fairseq's per-GPU definition, where a GPU is one device's
# rows of one microbatch. Reference sums in float64 to rtol 1e-5 (float32 logits, summed
# in another order on 8 devices than in the reference).


_DIVERSITY_SUMS = ("diversity_loss", "prob_perplexity", "code_perplexity", "masked_frames")


def _diversity_config(batch_size, grad_accum_steps=1):
  config = tiny_steps.fewer_layers(demo.get_config("tiny"))
  config.data.batch_size = batch_size
  config.grad_accum_steps = grad_accum_steps
  # The quantizer's input is then the same in training as in the reference's forward.
  config.model.dropout_features = 0.0
  return config


def _first_step(config, mesh, host_batches):
  """The first step's metrics for each host batch (from the same initial state), the
  parameters, and the rows each device holds (contiguous slices of the global batch)."""
  trainer = wav2vec2_step.build_trainer(config, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  results, device_rows = [], None
  for host_batch in host_batches:
    state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
    params = jax.device_get(state.params)
    with sharding.activate(mesh):
      batch = sharding.global_batch(host_batch, mesh)
      _, metrics = trainer.step(state, batch, step_rng)
    results.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    device_rows = sorted(
      {(s.index[0].start or 0, s.index[0].stop) for s in batch["mask"].addressable_shards}
    )
  return results, params, [np.arange(start, stop) for start, stop in device_rows]


def _codeword_logits(config, params, host_batch):
  """float64 [B, F, G, V] logits of the quantizer, from its input in an evaluation forward
  (no dropout before the quantizer) and its parameters."""
  model = wav2vec2_step.build_model(config)

  @jax.jit
  def quantizer_input(params, audio, paddings, mask):
    inputs = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, quantizers.GumbelProductQuantizer):
        inputs["x"] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      model.apply({"params": params}, audio, paddings, mask, train=False, gumbel_temperature=1.0)
    return inputs["x"]

  x = quantizer_input(params, host_batch["audio"], host_batch["audio_paddings"], host_batch["mask"])
  kernel = np.asarray(params["quantizer"]["logits"]["kernel"], np.float64)
  bias = np.asarray(params["quantizer"]["logits"]["bias"], np.float64)
  logits = np.asarray(x, np.float64) @ kernel + bias
  groups = config.model.latent_groups
  return logits.reshape(*logits.shape[:2], groups, -1)


def _frame_paddings(config, host_batch):
  frames = wav2vec2_step.frames_fn(config)
  valid = (1 - host_batch["audio_paddings"]).sum(1).round().astype(int)
  num_frames = host_batch["mask"].shape[1]
  return np.arange(num_frames)[None, :] >= np.array([frames(n) for n in valid])[:, None]


@pytest.mark.slow
def test_diversity_is_fairseqs_per_device_and_microbatch():
  """8 data-parallel devices, 2 accumulated microbatches of 16 rows: 16 fairseq GPU
  batches of 2 rows. Then the same 2 rows per GPU batch on 4 devices, for each half of
  the 32 rows: the global batch halves, each GPU batch's term stays the same."""
  accum = 2
  config = _diversity_config(batch_size=32, grad_accum_steps=accum)
  host_batch = synthetic_batch(config, seed=3)
  assert np.any(host_batch["audio_paddings"][:, -1] == 1)  # rows with padded frames
  mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
  (metrics,), params, device_rows = _first_step(config, mesh, [host_batch])
  assert [len(rows) for rows in device_rows] == [4] * 8
  # Microbatch a holds rows j·A + a (sslax.train.accumulation): on each device, the rows
  # it holds with that remainder.
  gpu_batches = [rows[rows % accum == a] for rows in device_rows for a in range(accum)]
  logits = _codeword_logits(config, params, host_batch)
  paddings = _frame_paddings(config, host_batch)
  expected = fairseq_reference.diversity(logits, host_batch["mask"], paddings, gpu_batches)
  for name, value in zip(_DIVERSITY_SUMS, expected, strict=True):
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
  # One perplexity over the whole batch (the definition this replaced) is far off.
  whole_batch = fairseq_reference.diversity(logits, host_batch["mask"], paddings, [np.arange(32)])
  assert abs(whole_batch[0] - expected[0]) > 0.05 * expected[0]

  config.data.batch_size = 16
  halves = [{k: v[rows] for k, v in host_batch.items()} for rows in (slice(0, 16), slice(16, 32))]
  mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=1), jax.devices()[:4])
  half_metrics, _, half_rows = _first_step(config, mesh, halves)
  assert [len(rows) for rows in half_rows] == [4] * 4
  for name in _DIVERSITY_SUMS:
    np.testing.assert_allclose(
      metrics[name], half_metrics[0][name] + half_metrics[1][name], rtol=1e-5, err_msg=name
    )
