"""Tests for sslax.models.conformer against transformers' Wav2Vec2ConformerEncoder.

Parity: a small transformers encoder with every parameter and batch-norm buffer perturbed
is copied into ConformerEncoder by sslax.interop.hf_architecture_maps' conformer tensor
map (whole-model import/export of `Wav2Vec2Conformer*`: tests/test_conformer_interop.py).
sslax runs a padded batch; transformers runs each utterance alone, unpadded, since on a
padded batch its depthwise convolution reads the padded frames (the answer both should
give is the utterance alone). Every hidden state of every utterance's frames must agree
within ATOL = 1e-4 absolute in float32, for relative and rotary positions, in eval mode
(running batch-norm statistics) and in training mode with dropout off on an unpadded
batch (batch statistics, and the running statistics transformers leaves behind).
"""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from sslax.core import sharding  # noqa: E402
from sslax.interop import hf_architecture_maps, hf_tensor_map  # noqa: E402
from sslax.models import conformer  # noqa: E402

ATOL = 1e-4
DIM, HEADS, MLP, LAYERS, KERNEL = 32, 4, 48, 2, 7
LENGTHS = (40, 29, 13)
# name: (transformers position_embeddings_type and hidden_act)
VARIANTS = {"relative-swish": ("relative", "swish"), "rotary-gelu": ("rotary", "gelu")}


def _hf_encoder(position_embeddings, activation, seed=0):
  config = transformers.Wav2Vec2ConformerConfig(
    hidden_size=DIM,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=MLP,
    conv_depthwise_kernel_size=KERNEL,
    position_embeddings_type=position_embeddings,
    hidden_act=activation,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    conformer_conv_dropout=0.0,
    layerdrop=0.0,
    attn_implementation="eager",
  )
  torch.manual_seed(seed)
  encoder = transformers.Wav2Vec2ConformerModel(config).encoder.eval()
  with torch.no_grad():
    for p in encoder.parameters():
      p.add_(0.1 * torch.randn_like(p))
    for layer in encoder.layers:
      norm = layer.conv_module.batch_norm
      norm.running_mean.copy_(0.3 * torch.randn_like(norm.running_mean))
      norm.running_var.copy_(torch.rand_like(norm.running_var) + 0.5)
  return encoder


def _sslax_encoder(position_embeddings, activation, num_layers=LAYERS, **kwargs):
  return conformer.ConformerEncoder(
    num_layers,
    HEADS,
    MLP,
    position_embeddings=position_embeddings,
    conv_kernel=KERNEL,
    activation=activation,
    **kwargs,
  )


def _params_from_hf(encoder, position_embeddings) -> dict:
  """{'params', 'batch_stats'} of ConformerEncoder from a transformers encoder, through the
  library's tensor map (sslax.interop.hf_architecture_maps, which also serves whole-model
  import/export)."""
  fields = dict(
    num_layers=LAYERS,
    embed_dim=DIM,
    num_heads=HEADS,
    conformer_position_embeddings=position_embeddings,
  )
  table = hf_architecture_maps.conformer_encoder_tensors(ml_collections.ConfigDict(fields))
  state = {f"encoder.{name}": t.detach().numpy() for name, t in encoder.state_dict().items()}
  variables = hf_tensor_map.variables_from_table(state, table)
  return {collection: tree["encoder"] for collection, tree in variables.items()}


def _hf_hidden_states(encoder, x_BxTxD):
  """num_layers + 1 hidden states: the first block's input, each block's output, the last
  after the final LayerNorm (transformers' `last_hidden_state`)."""
  outputs = []
  hooks = [
    layer.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in encoder.layers
  ]
  with torch.no_grad():
    last = encoder(torch.from_numpy(x_BxTxD)).last_hidden_state
  for hook in hooks:
    hook.remove()
  return [x_BxTxD] + [o.numpy() for o in outputs[:-1]] + [last.numpy()]


def _batch(seed=0, lengths=LENGTHS, total=40):
  rng = np.random.default_rng(seed)
  x_BxTxD = rng.normal(size=(len(lengths), total, DIM)).astype(np.float32)
  paddings_BxT = (np.arange(total)[None, :] >= np.asarray(lengths)[:, None]).astype(np.float32)
  return x_BxTxD, paddings_BxT


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
  """(name, transformers encoder, sslax encoder, variables copied from transformers)."""
  name = request.param
  hf_encoder = _hf_encoder(*VARIANTS[name])
  ours = _sslax_encoder(*VARIANTS[name])
  variables = _params_from_hf(hf_encoder, VARIANTS[name][0])
  x_BxTxD, paddings_BxT = _batch()
  shapes = jax.eval_shape(
    lambda: nn.unbox(ours.init(jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True))
  )
  expected = jax.tree.map(lambda s: s.shape, shapes)
  assert jax.tree.map(np.shape, variables) == expected
  return name, hf_encoder, ours, variables


def test_eval_hidden_states_match_transformers(pair):
  name, hf_encoder, ours, variables = pair
  x_BxTxD, paddings_BxT = _batch()
  # Garbage in the padding must not matter.
  x_BxTxD = np.where(paddings_BxT[:, :, None] > 0, 50.0, x_BxTxD).astype(np.float32)
  _, hidden = jax.jit(
    lambda v: ours.apply(v, x_BxTxD, paddings_BxT, deterministic=True, return_all_layers=True)
  )(variables)
  assert len(hidden) == LAYERS + 1
  for b, n in enumerate(LENGTHS):
    theirs = _hf_hidden_states(hf_encoder, x_BxTxD[b : b + 1, :n])
    diffs = [
      float(np.max(np.abs(np.asarray(o[b, :n]) - t[0])))
      for o, t in zip(hidden, theirs, strict=True)
    ]
    print(name, f"utterance {b} max |diff| per hidden state:", [f"{d:.1e}" for d in diffs])
    assert max(diffs) <= ATOL, (name, b, diffs)


def test_training_mode_batch_norm_matches_transformers(pair):
  """Batch statistics and running-statistic updates on an unpadded batch (transformers'
  statistics would include padding)."""
  name, hf_encoder, ours, variables = pair
  x_BxTxD, paddings_BxT = _batch(seed=1, lengths=(21, 21), total=21)
  y, updates = jax.jit(
    lambda v: ours.apply(v, x_BxTxD, paddings_BxT, deterministic=False, mutable=["batch_stats"])
  )(variables)
  training = copy.deepcopy(hf_encoder).train()
  with torch.no_grad():
    theirs = training(torch.from_numpy(x_BxTxD)).last_hidden_state.numpy()
  expected_stats = _params_from_hf(training, VARIANTS[name][0])["batch_stats"]
  diff = float(np.max(np.abs(np.asarray(y) - theirs)))
  stats_diffs = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), updates["batch_stats"], expected_stats
  )
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
    updates["batch_stats"],
    variables["batch_stats"],
  )
  print(name, f"training mode: output {diff:.1e}, running statistics {stats_diffs}")
  assert diff <= ATOL
  assert max(jax.tree.leaves(stats_diffs)) <= 1e-5
  assert min(jax.tree.leaves(moved)) > 1e-3  # the statistics did move


def _boxed_shapes(encoder, x_BxTxD, paddings_BxT):
  return jax.eval_shape(
    lambda: encoder.init(jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True)
  )


def _random_variables(encoder, x_BxTxD, paddings_BxT, seed=0):
  """Random values for every variable (norm scales near 1, running variances positive),
  so every path counts; cheaper than compiling the initialisers."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(nn.unbox(_boxed_shapes(encoder, x_BxTxD, paddings_BxT)))
  values = {}
  for path, shape in flat.items():
    if path[-1] == "var":
      values[path] = rng.uniform(0.5, 1.5, size=shape.shape)
    else:
      values[path] = 0.3 * rng.normal(size=shape.shape) + (path[-1] == "scale")
  return flax.traverse_util.unflatten_dict(
    {path: value.astype(np.float32) for path, value in values.items()}
  )


@pytest.mark.parametrize(
  "position_embeddings,conv_norm", [("relative", "batch_norm"), ("rotary", "layer_norm")]
)
def test_padding_changes_nothing_in_training(position_embeddings, conv_norm):
  """Two batches holding the same utterances with different padding (garbage in it) give
  the same unpadded outputs and the same batch-norm statistics updates."""
  lengths = (13, 29)
  x_BxTxD, paddings_BxT = _batch(seed=2, lengths=lengths, total=40)
  x_BxTxD = np.where(paddings_BxT[:, :, None] > 0, -30.0, x_BxTxD).astype(np.float32)
  tight_BxTxD, tight_paddings_BxT = x_BxTxD[:, :29], paddings_BxT[:, :29]
  # One block suffices: a leak through its convolution or statistics shows at its output.
  encoder = _sslax_encoder(position_embeddings, "swish", num_layers=1, conv_norm=conv_norm)
  variables = _random_variables(encoder, x_BxTxD, paddings_BxT)

  @jax.jit
  def train(x, paddings):
    return encoder.apply(
      variables, x, paddings, deterministic=False, return_all_layers=True, mutable=True
    )

  (_, hidden), updates = train(x_BxTxD, paddings_BxT)
  (_, tight_hidden), tight_updates = train(tight_BxTxD, tight_paddings_BxT)
  for ours, tight in zip(hidden, tight_hidden, strict=True):
    for b, n in enumerate(lengths):
      np.testing.assert_allclose(ours[b, :n], tight[b, :n], atol=1e-5, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), updates, tight_updates
  )
  assert ("batch_stats" in updates) == (conv_norm == "batch_norm")


def test_batch_norm_training_statistics_are_over_unpadded_frames():
  x_BxTxC = np.random.default_rng(3).normal(size=(2, 9, 5)).astype(np.float32)
  paddings_BxT = np.zeros((2, 9), np.float32)
  paddings_BxT[0, 4:] = 1.0
  x_BxTxC[0, 4:] = 1e3
  norm = conformer.MaskedBatchNorm()
  variables = nn.unbox(
    norm.init(jax.random.key(0), x_BxTxC, paddings_BxT, use_running_average=True)
  )
  y, updates = norm.apply(
    variables, x_BxTxC, paddings_BxT, use_running_average=False, mutable=["batch_stats"]
  )
  valid_NxC = np.concatenate([x_BxTxC[0, :4], x_BxTxC[1]]).astype(np.float64)
  mean, var = valid_NxC.mean(0), valid_NxC.var(0)
  np.testing.assert_allclose(
    y[1], (x_BxTxC[1] - mean) / np.sqrt(var + conformer.BATCH_NORM_EPSILON), atol=1e-5
  )
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, atol=1e-6)
  np.testing.assert_allclose(
    updates["batch_stats"]["var"], 0.9 + 0.1 * valid_NxC.var(0, ddof=1), atol=1e-6
  )


def test_layerdrop_drops_whole_blocks_and_their_statistics_updates():
  x_BxTxD, paddings_BxT = _batch(seed=4, lengths=(16, 10), total=16)
  variables = _random_variables(_sslax_encoder("relative", "swish"), x_BxTxD, paddings_BxT)

  def run(layerdrop, seed):
    encoder = _sslax_encoder("relative", "swish", layerdrop=layerdrop)
    return encoder.apply(
      variables,
      x_BxTxD,
      paddings_BxT,
      deterministic=False,
      return_all_layers=True,
      rngs={"dropout": jax.random.key(seed)},
      mutable=["batch_stats"],
    )

  run = jax.jit(run, static_argnums=0)
  (_, hidden), updates = run(1.0, 0)
  for before, after in zip(hidden[:-2], hidden[1:-1], strict=True):
    np.testing.assert_array_equal(before, after)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
  outcomes = set()
  for seed in range(10):
    (_, hidden), updates = run(0.5, seed)
    for i in range(LAYERS):
      stats = updates["batch_stats"][f"layers_{i}"]["conv"]["batch_norm"]["mean"]
      old = variables["batch_stats"][f"layers_{i}"]["conv"]["batch_norm"]["mean"]
      kept = not np.array_equal(stats, old)
      # The last hidden state is after the final LayerNorm, so only earlier blocks show
      # in the hidden states.
      if i < LAYERS - 1:
        assert kept == (not np.array_equal(hidden[i], hidden[i + 1]))
      outcomes.add(kept)
  assert outcomes == {True, False}


def test_logical_names_and_sharded_training_forward_equals_single_device():
  """Batch statistics under a sharded batch are those of the global batch."""
  x_BxTxD, paddings_BxT = _batch(seed=5, lengths=(16, 11, 7, 16), total=16)
  encoder = _sslax_encoder("relative", "swish", num_layers=1)
  specs = nn.get_partition_spec(_boxed_shapes(encoder, x_BxTxD, paddings_BxT))
  layer = specs["params"]["layers_0"]
  assert tuple(layer["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(layer["attention"]["pos"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(layer["attention"]["pos_bias_u"]) == ("heads", "kv")
  assert tuple(layer["conv"]["pointwise_in"]) == ("embed", None, "mlp")
  assert tuple(layer["conv"]["depthwise"]) == ("conv", None, "mlp")
  assert tuple(layer["conv"]["pointwise_out"]) == ("mlp", "embed")
  assert tuple(layer["ffn1"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["batch_stats"]["layers_0"]["conv"]["batch_norm"]["var"]) == ("mlp",)
  assert "bias" not in layer["attention"]["pos"]
  variables = _random_variables(encoder, x_BxTxD, paddings_BxT)

  def step(variables, x, paddings):
    return encoder.apply(variables, x, paddings, deterministic=False, mutable=["batch_stats"])

  expected = jax.jit(step)(variables, x_BxTxD, paddings_BxT)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with sharding.activate(mesh):
    shardings = sharding.logical_to_sharding(specs, mesh)
    batch = sharding.batch_sharding(mesh)
    sharded = jax.jit(step, in_shardings=(shardings, batch, batch))(
      variables, x_BxTxD, paddings_BxT
    )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), sharded, expected
  )
