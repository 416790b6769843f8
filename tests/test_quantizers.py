"""Tests for sslax.models.quantizers: straight-through Gumbel softmax and perplexities."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslax.models import quantizers

GROUPS, VARS, DIM = 2, 16, 8


def _quantizer():
  return quantizers.GumbelProductQuantizer(num_groups=GROUPS, num_vars=VARS, codevector_dim=DIM)


def _init(x_BxTxC):
  weights = jnp.ones(x_BxTxC.shape[:2])
  return _quantizer().init(jax.random.key(0), x_BxTxC, weights, deterministic=True, temperature=2.0)


def test_hard_gumbel_softmax_is_one_hot_with_soft_gradient():
  logits = jax.random.normal(jax.random.key(0), (5, 7)) * 2.0
  key = jax.random.key(1)
  upstream = jax.random.normal(jax.random.key(2), (5, 7))
  temperature = 0.7

  y = quantizers.hard_gumbel_softmax(logits, key, temperature)
  gumbels = jax.random.gumbel(key, logits.shape, jnp.float32)
  np.testing.assert_array_equal(y, jax.nn.one_hot(jnp.argmax(logits + gumbels, -1), 7))

  grad = jax.grad(lambda z: jnp.sum(upstream * quantizers.hard_gumbel_softmax(z, key, temperature)))
  soft_grad = jax.grad(
    lambda z: jnp.sum(upstream * jax.nn.softmax((z + gumbels) / temperature, axis=-1))
  )
  np.testing.assert_allclose(grad(logits), soft_grad(logits), atol=1e-6)
  assert np.abs(np.asarray(grad(logits))).sum() > 0


def test_training_picks_one_codevector_per_group_and_passes_gradients():
  x_BxTxC = jax.random.normal(jax.random.key(3), (2, 5, 4))
  params = nn.unbox(_init(x_BxTxC))["params"]
  weights = jnp.ones((2, 5))

  @jax.jit
  def run(params):
    return _quantizer().apply(
      {"params": params},
      x_BxTxC,
      weights,
      deterministic=False,
      temperature=2.0,
      rngs={"gumbel": jax.random.key(4)},
    )

  out = run(params)
  codebook_GxVxK = np.asarray(params["codevectors"]).reshape(GROUPS, VARS, DIM // GROUPS)
  codes = np.asarray(out.codes)
  expected = np.concatenate([codebook_GxVxK[g][codes[..., g]] for g in range(GROUPS)], axis=-1)
  np.testing.assert_array_equal(out.quantized, expected)
  assert out.num_codevectors == GROUPS * VARS

  grads = jax.jit(jax.grad(lambda p: jnp.sum(run(p).quantized ** 2)))(params)
  # Straight-through: the logit projection learns although the forward pass is hard.
  assert np.abs(np.asarray(grads["logits"]["kernel"])).sum() > 0
  # Codevectors get gradient only where picked.
  picked = np.zeros(GROUPS * VARS, bool)
  for g in range(GROUPS):
    picked[g * VARS + codes[..., g].ravel()] = True
  row_grads = np.abs(np.asarray(grads["codevectors"])).sum(-1)
  assert np.all(row_grads[~picked] == 0) and np.all(row_grads[picked] > 0)


def _perplexity_reference(probs_NxGxV):
  """fairseq GumbelVectorQuantizer: sum over groups of exp(entropy of the frames' mean)."""
  mean = probs_NxGxV.mean(0)
  return np.exp(-(mean * np.log(mean + 1e-7)).sum(-1)).sum()


def test_codeword_sums_and_perplexities_match_numpy_over_weighted_frames():
  x_BxTxC = np.random.default_rng(5).normal(size=(4, 6, 4)).astype(np.float32)
  params = nn.unbox(_init(x_BxTxC))["params"]
  # Smaller logits so the softmax is not one-hot and the two perplexities differ.
  params["logits"] = {"kernel": params["logits"]["kernel"] * 0.2, "bias": params["logits"]["bias"]}
  weights_BxT = (np.random.default_rng(6).uniform(size=(4, 6)) < 0.5).astype(np.float32)
  out = _quantizer().apply(
    {"params": params}, x_BxTxC, weights_BxT, deterministic=True, temperature=2.0
  )

  w = {k: np.asarray(v, np.float64) for k, v in params["logits"].items()}
  logits = (x_BxTxC.astype(np.float64) @ w["kernel"] + w["bias"]).reshape(4, 6, GROUPS, VARS)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  hard = np.eye(VARS)[logits.argmax(-1)]
  counted = weights_BxT > 0
  np.testing.assert_array_equal(out.counted_frames, counted.sum(1))
  for b in range(4):
    np.testing.assert_allclose(out.prob_sums[b], probs[b][counted[b]].sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.code_counts[b], hard[b][counted[b]].sum(0))

  # Perplexities of sets of rows (data-parallel shards): rows {0, 1} and {2, 3}, each
  # over its own counted frames, gathered as fairseq gathers the masked frames.
  shard_sums = lambda x: np.asarray(x).reshape(2, 2, *np.shape(x)[1:]).sum(1)  # noqa: E731
  frames = shard_sums(out.counted_frames)
  prob_ppl = quantizers.perplexity(shard_sums(out.prob_sums), frames)
  code_ppl = quantizers.perplexity(shard_sums(out.code_counts), frames)
  for s, rows in enumerate((slice(0, 2), slice(2, 4))):
    gathered = counted[rows]
    expected_prob = _perplexity_reference(probs[rows][gathered])
    expected_code = _perplexity_reference(hard[rows][gathered])
    np.testing.assert_allclose(prob_ppl[s], expected_prob, rtol=1e-5)
    np.testing.assert_allclose(code_ppl[s], expected_code, rtol=1e-5)
    assert abs(expected_prob - expected_code) > 0.1
  # A set without frames has the perplexity of an all-zero mean: exp(0) per group.
  np.testing.assert_allclose(quantizers.perplexity(jnp.zeros((1, GROUPS, VARS)), jnp.zeros(1)), 2)

  # Frames of weight 0 do not count.
  changed = np.where(weights_BxT[..., None] > 0, x_BxTxC, 50.0)
  again = _quantizer().apply(
    {"params": params}, changed, weights_BxT, deterministic=True, temperature=2.0
  )
  np.testing.assert_allclose(again.prob_sums, out.prob_sums, rtol=1e-6)
  np.testing.assert_array_equal(again.code_counts, out.code_counts)


def test_codes_depend_on_input_with_unit_normal_logit_init():
  # wav2vec 2.0 Base sizes: 512 layer-normed channels in, G=2 groups of V=320.
  quantizer = quantizers.GumbelProductQuantizer(num_groups=2, num_vars=320, codevector_dim=256)
  x_BxTxC = jax.random.normal(jax.random.key(7), (4, 50, 512))
  weights = jnp.ones((4, 50))
  variables = quantizer.init(
    jax.random.key(0), x_BxTxC, weights, deterministic=True, temperature=2.0
  )
  params = nn.unbox(variables)["params"]

  @jax.jit
  def agreement(params):
    def codes(deterministic, seed):
      return quantizer.apply(
        {"params": params},
        x_BxTxC,
        weights,
        deterministic=deterministic,
        temperature=2.0,
        rngs={"gumbel": jax.random.key(seed)},
      ).codes

    argmax = codes(True, 0)
    return jnp.mean(jnp.stack([codes(False, seed) == argmax for seed in (1, 2, 3)]))

  # N(0, 1) logits (std ~ sqrt(512)) dominate the Gumbel noise: samples follow the input
  # (random codes would agree 1 time in 320).
  assert agreement(params) > 0.8
  # The contrast that makes this test meaningful: a BERT-style N(0, 0.02) init lets the
  # noise pick the code.
  small_kernel = params["logits"]["kernel"] * 0.02
  small = dict(params, logits={"kernel": small_kernel, "bias": params["logits"]["bias"]})
  assert agreement(small) < 0.1


def test_logical_names_and_dtypes():
  x = jnp.zeros((1, 2, 4))
  variables = jax.eval_shape(lambda: _init(x))
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["logits"]["kernel"]) == ("embed", "codebook")
  assert tuple(specs["codevectors"]) == ("codebook", None)
  assert variables["params"]["codevectors"].value.shape == (GROUPS * VARS, DIM // GROUPS)
  bf16 = quantizers.GumbelProductQuantizer(GROUPS, VARS, DIM, dtype=jnp.bfloat16)
  out = bf16.apply(
    nn.unbox(_init(x)),
    x,
    jnp.ones((1, 2)),
    deterministic=False,
    temperature=2.0,
    rngs={"gumbel": jax.random.key(0)},
  )
  assert out.quantized.dtype == jnp.bfloat16
  assert out.prob_sums.dtype == jnp.float32 and out.code_counts.dtype == jnp.float32
