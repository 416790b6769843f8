"""Tests for sslax.models.quantizers: straight-through Gumbel softmax and perplexities."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import torch

from sslax.models import quantizers

GROUPS, VARS, DIM = 2, 16, 8


def _quantizer():
  return quantizers.GumbelProductQuantizer(num_groups=GROUPS, num_vars=VARS, codevector_dim=DIM)


def _init(x_BxTxC):
  weights = jnp.ones(x_BxTxC.shape[:2])
  return _quantizer().init(jax.random.key(0), x_BxTxC, weights, deterministic=True, temperature=2.0)


# Gumbel sampling is checked against what it must produce, never by regenerating the
# noise the code draws: the Gumbel-max trick (argmax of logits + Gumbel noise is a draw
# from softmax(logits), whatever the temperature), and PyTorch's
# F.gumbel_softmax(hard=True), which fairseq's GumbelVectorQuantizer calls, for the
# straight-through gradient. Monte Carlo over N = 20,000 draws: frequencies by a
# chi-square test (p > 1e-4), mean gradients within 5 standard errors of the difference.
DRAWS = 20_000


def _chi_square_p(counts_V, probs_V):
  expected = counts_V.sum() * probs_V
  statistic = np.sum((counts_V - expected) ** 2 / expected)
  return stats.chi2.sf(statistic, len(probs_V) - 1)


def _softmax64(logits):
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_hard_gumbel_softmax_samples_the_softmax(temperature):
  logits_V = np.random.default_rng(0).normal(size=7) * 1.5
  keys = jax.random.split(jax.random.key(1), DRAWS)
  samples_NxV = np.asarray(
    jax.jit(
      jax.vmap(lambda k: quantizers.hard_gumbel_softmax(jnp.float32(logits_V), k, temperature))
    )(keys)
  )
  assert samples_NxV.dtype == np.float32
  np.testing.assert_array_equal(samples_NxV.sum(-1), 1.0)
  assert set(np.unique(samples_NxV)) == {0.0, 1.0}
  assert _chi_square_p(samples_NxV.sum(0), _softmax64(logits_V)) > 1e-4


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_straight_through_gradient_matches_torch_gumbel_softmax(temperature):
  rng = np.random.default_rng(2)
  logits_V, upstream_V = rng.normal(size=7) * 1.5, rng.normal(size=7)

  def objective(z, key):
    return jnp.sum(jnp.float32(upstream_V) * quantizers.hard_gumbel_softmax(z, key, temperature))

  keys = jax.random.split(jax.random.key(3), DRAWS)
  ours_NxV = np.asarray(
    jax.jit(jax.vmap(jax.grad(objective), in_axes=(None, 0)))(jnp.float32(logits_V), keys),
    np.float64,
  )
  torch.manual_seed(4)
  z = torch.tensor(np.tile(logits_V, (DRAWS, 1)), dtype=torch.float64, requires_grad=True)
  sample = torch.nn.functional.gumbel_softmax(z, tau=temperature, hard=True)
  (sample * torch.tensor(upstream_V)).sum().backward()
  theirs_NxV = z.grad.numpy()
  standard_error_V = np.sqrt((ours_NxV.var(0) + theirs_NxV.var(0)) / DRAWS)
  difference_V = ours_NxV.mean(0) - theirs_NxV.mean(0)
  assert np.all(np.abs(difference_V) < 5 * standard_error_V), difference_V / standard_error_V
  # The comparison has power: the mean gradient is many standard errors from zero.
  assert np.abs(theirs_NxV.mean(0)).max() > 20 * standard_error_V.max()


def test_training_codes_are_draws_from_the_softmax_of_the_logits():
  x_1x1xC = np.random.default_rng(8).normal(size=(1, 1, 4)).astype(np.float32)
  params = nn.unbox(_init(x_1x1xC))["params"]
  weights = jnp.ones((1, 1))

  def codes(key):
    return (
      _quantizer()
      .apply(
        {"params": params},
        x_1x1xC,
        weights,
        deterministic=False,
        temperature=0.7,
        rngs={"gumbel": key},
      )
      .codes[0, 0]
    )

  codes_NxG = np.asarray(jax.jit(jax.vmap(codes))(jax.random.split(jax.random.key(9), DRAWS)))
  w = {k: np.asarray(v, np.float64) for k, v in params["logits"].items()}
  logits_GxV = (x_1x1xC[0, 0].astype(np.float64) @ w["kernel"] + w["bias"]).reshape(GROUPS, VARS)
  probs_GxV = _softmax64(logits_GxV)
  for g in range(GROUPS):
    counts_V = np.bincount(codes_NxG[:, g], minlength=VARS)
    # Pool codewords expected fewer than 5 times, as the chi-square test needs.
    rare = probs_GxV[g] * DRAWS < 5
    counts, probs = counts_V[~rare], probs_GxV[g][~rare]
    if rare.any():
      counts = np.append(counts, counts_V[rare].sum())
      probs = np.append(probs, probs_GxV[g][rare].sum())
    assert _chi_square_p(counts, probs) > 1e-4


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
