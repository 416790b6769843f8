"""Tests for sslax.models.transformer against float64 numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from sslax.models import transformer


def _gelu(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + transformer.NORM_EPSILON) * p["scale"] + p["bias"]


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(tree))


def _pos_conv_reference(x_BxTxD, p, kernel_size, groups):
  """Grouped "same" conv with weight norm per kernel position, by explicit loops."""
  batch, time, dim = x_BxTxD.shape
  v = p["weight_v"]  # [K, D/G, D]
  norms = np.sqrt((v**2).sum(axis=(1, 2)))
  kernel = v * (p["weight_g"] / norms)[:, None, None]
  pad = kernel_size // 2
  x_pad = np.zeros((batch, time + 2 * pad, dim))
  x_pad[:, pad : pad + time] = x_BxTxD
  per_group = dim // groups
  y = np.zeros((batch, time, dim))
  for o in range(dim):
    g = o // per_group
    inputs = x_pad[:, :, g * per_group : (g + 1) * per_group]  # [B, T+2p, I]
    for t in range(time):
      y[:, t, o] = np.einsum("bki,ki->b", inputs[:, t : t + kernel_size], kernel[:, :, o])
  return _gelu(y + p["bias"])


@pytest.mark.parametrize("kernel_size", [8, 5])
def test_positional_conv_matches_numpy(kernel_size):
  rng = np.random.default_rng(0)
  x_BxTxD = rng.normal(size=(2, 11, 8)).astype(np.float32)
  module = transformer.PositionalConv(kernel_size, groups=2)
  params = nn.unbox(module.init(jax.random.key(0), x_BxTxD))["params"]
  # Random gains and bias, so the test sees more than the initial g = ||v||.
  params = dict(params)
  params["weight_g"] = jnp.asarray(rng.uniform(0.5, 2.0, size=(kernel_size,)), jnp.float32)
  params["bias"] = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
  y = module.apply({"params": params}, x_BxTxD)
  expected = _pos_conv_reference(x_BxTxD.astype(np.float64), _f64(params), kernel_size, 2)
  assert y.shape == x_BxTxD.shape
  np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_weight_norm_initial_gain_is_the_norm():
  module = transformer.PositionalConv(6, groups=2)
  params = nn.unbox(module.init(jax.random.key(3), jnp.zeros((1, 4, 8))))["params"]
  norms = np.sqrt((np.asarray(params["weight_v"]) ** 2).sum(axis=(1, 2)))
  np.testing.assert_allclose(params["weight_g"], norms, rtol=1e-6)
  assert params["weight_g"].shape == (6,)


def _attention_reference(x, paddings, p, num_heads):
  batch, time, dim = x.shape
  head_dim = dim // num_heads

  def project(q):
    return np.einsum("btd,dhk->bthk", x, q["kernel"]) + q["bias"]

  q = project(p["query"]) * head_dim**-0.5
  k, v = project(p["key"]), project(p["value"])
  logits = np.einsum("bqhk,bthk->bhqt", q, k)
  logits = np.where(paddings[:, None, None, :] > 0, -np.inf, logits)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqt,bthk->bqhk", probs, v)
  return np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _layer_reference(x, paddings, p, num_heads, layer_norm_first):
  """fairseq TransformerSentenceEncoderLayer in float64 (no dropout)."""

  def ffn(h):
    h = _gelu(h @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]

  if layer_norm_first:
    x = x + _attention_reference(
      _layer_norm(x, p["attention_norm"]), paddings, p["attention"], num_heads
    )
    return x + ffn(_layer_norm(x, p["mlp_norm"]))
  x = _layer_norm(
    x + _attention_reference(x, paddings, p["attention"], num_heads), p["attention_norm"]
  )
  return _layer_norm(x + ffn(x), p["mlp_norm"])


def _randomize(params, seed):
  """Random values everywhere (norm scales and biases included), so every path counts."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [
    0.3 * jax.random.normal(k, leaf.shape) + (leaf == 1.0)
    for k, leaf in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, new)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_transformer_layer_matches_numpy(layer_norm_first):
  rng = np.random.default_rng(1)
  x_BxTxD = rng.normal(size=(2, 7, 16)).astype(np.float32)
  paddings_BxT = np.zeros((2, 7), np.float32)
  paddings_BxT[1, 4:] = 1.0
  layer = transformer.TransformerLayer(num_heads=4, mlp_dim=24, layer_norm_first=layer_norm_first)
  params = nn.unbox(layer.init(jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True))
  params = _randomize(params["params"], 7)
  y = jax.jit(lambda p: layer.apply({"params": p}, x_BxTxD, paddings_BxT, deterministic=True))(
    params
  )
  expected = _layer_reference(
    x_BxTxD.astype(np.float64), paddings_BxT, _f64(params), 4, layer_norm_first
  )
  np.testing.assert_allclose(y, expected, atol=2e-5, rtol=2e-5)


def _encoder(layer_norm_first, layerdrop=0.0, dropout=0.0):
  return transformer.TransformerEncoder(
    num_layers=2,
    num_heads=2,
    mlp_dim=32,
    layer_norm_first=layer_norm_first,
    pos_conv_kernel=8,
    pos_conv_groups=4,
    dropout=dropout,
    layerdrop=layerdrop,
  )


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_encoder_padding_invariance(layer_norm_first):
  rng = np.random.default_rng(2)
  short = rng.normal(size=(9, 16)).astype(np.float32)
  x_BxTxD = rng.normal(size=(2, 20, 16)).astype(np.float32) * 5.0
  x_BxTxD[0, :9] = short
  paddings_BxT = np.zeros((2, 20), np.float32)
  paddings_BxT[0, 9:] = 1.0
  encoder = _encoder(layer_norm_first)
  variables = jax.jit(encoder.init, static_argnames="deterministic")(
    jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True
  )
  apply = jax.jit(encoder.apply, static_argnames="deterministic")
  batched = apply(variables, x_BxTxD, paddings_BxT, deterministic=True)
  alone = apply(variables, short[None], np.zeros((1, 9), np.float32), deterministic=True)
  np.testing.assert_allclose(batched[0, :9], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_hidden_states_follow_hugging_face(layer_norm_first):
  x_BxTxD = np.random.default_rng(3).normal(size=(1, 6, 16)).astype(np.float32)
  paddings_BxT = np.zeros((1, 6), np.float32)
  encoder = _encoder(layer_norm_first)
  variables = encoder.init(jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True)
  y, hidden = jax.jit(
    lambda v: encoder.apply(v, x_BxTxD, paddings_BxT, deterministic=True, return_all_layers=True)
  )(variables)
  assert len(hidden) == 3
  np.testing.assert_array_equal(hidden[-1], y)
  params = nn.unbox(variables)["params"]
  pos = transformer.PositionalConv(8, 4).apply({"params": params["pos_conv"]}, x_BxTxD)
  first_input = x_BxTxD + pos
  if not layer_norm_first:
    first_input = _layer_norm(np.asarray(first_input, np.float64), _f64(params["layer_norm"]))
  np.testing.assert_allclose(hidden[0], first_input, atol=1e-5)
  layer_0 = transformer.TransformerLayer(2, 32, layer_norm_first)
  out_0 = layer_0.apply({"params": params["layers_0"]}, hidden[0], paddings_BxT, deterministic=True)
  np.testing.assert_allclose(hidden[1], out_0, atol=1e-6)


def test_layerdrop_skips_whole_layers():
  x_BxTxD = np.random.default_rng(4).normal(size=(2, 6, 16)).astype(np.float32)
  paddings_BxT = np.zeros((2, 6), np.float32)
  variables = _encoder(False).init(jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True)

  compiled = {}

  def run(layerdrop, seed):
    # One compiled function per rate: the encoder branches on layerdrop in python.
    if layerdrop not in compiled:
      encoder = _encoder(False, layerdrop=layerdrop)
      compiled[layerdrop] = jax.jit(
        lambda key: encoder.apply(
          variables,
          x_BxTxD,
          paddings_BxT,
          deterministic=False,
          return_all_layers=True,
          rngs={"dropout": key},
        )
      )
    return compiled[layerdrop](jax.random.key(seed))

  # Every layer dropped: the output is the first layer's input.
  y, hidden = run(1.0, 0)
  np.testing.assert_array_equal(y, hidden[0])
  # None dropped: the deterministic result.
  y_keep, _ = run(0.0, 0)
  np.testing.assert_allclose(
    y_keep, _encoder(False).apply(variables, x_BxTxD, paddings_BxT, deterministic=True), atol=1e-6
  )
  # Half dropped: both outcomes occur across steps, and each layer is all or nothing.
  outcomes = set()
  for seed in range(12):
    _, hidden = run(0.5, seed)
    for before, after in zip(hidden[:-1], hidden[1:], strict=True):
      outcomes.add(bool(np.array_equal(before, after)))
  assert outcomes == {True, False}


def test_layerdrop_gradients_are_finite_and_zero_for_dropped_layers():
  x_BxTxD = np.random.default_rng(5).normal(size=(1, 6, 16)).astype(np.float32)
  paddings_BxT = np.zeros((1, 6), np.float32)
  variables = _encoder(True).init(jax.random.key(0), x_BxTxD, paddings_BxT, deterministic=True)

  def loss(params):
    y = _encoder(True, layerdrop=1.0).apply(
      {"params": params},
      x_BxTxD,
      paddings_BxT,
      deterministic=False,
      rngs={"dropout": jax.random.key(0)},
    )
    return jnp.sum(y**2)

  grads = nn.unbox(jax.jit(jax.grad(loss))(variables["params"]))
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["layers_0"]))
  assert np.any(np.asarray(grads["pos_conv"]["weight_v"]) != 0)


def test_logical_names():
  layer = transformer.TransformerLayer(num_heads=2, mlp_dim=8)
  x = jnp.zeros((1, 3, 4))
  variables = jax.eval_shape(
    lambda: layer.init(jax.random.key(0), x, x[..., 0], deterministic=True)
  )
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(specs["attention"]["out"]["kernel"]) == ("heads", "kv", "embed")
  assert tuple(specs["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["fc2"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["mlp_norm"]["scale"]) == ("embed",)
  pos = transformer.PositionalConv(4, 2)
  specs = nn.get_partition_spec(jax.eval_shape(lambda: pos.init(jax.random.key(0), x)))["params"]
  assert tuple(specs["weight_v"]) == ("conv", None, "embed")
  assert tuple(specs["weight_g"]) == ("conv",)
