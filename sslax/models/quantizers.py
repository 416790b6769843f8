"""Gumbel-softmax product quantizer (fairseq GumbelVectorQuantizer, combine_groups=False).

Each frame picks one of V codevectors in each of G groups; the quantized vector is the
concatenation of the G picks. In training the pick is a hard Gumbel-softmax sample with a
straight-through gradient; in evaluation it is the argmax of the logits.
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

# fairseq adds this inside the log of its perplexity entropies.
_LOG_EPSILON = 1e-7


@flax.struct.dataclass
class QuantizerOutput:
  """Quantizer results.

  Attributes:
    quantized: [B, T, codevector_dim] in the compute dtype.
    codes: i32[B, T, G] index of the codevector picked in each group.
    prob_perplexity: f32[] sum over groups of exp(entropy of the mean softmax).
    code_perplexity: f32[] sum over groups of exp(entropy of the mean hard one-hot).
    num_codevectors: G * V (python int).
  """

  quantized: jax.Array
  codes: jax.Array
  prob_perplexity: jax.Array
  code_perplexity: jax.Array
  num_codevectors: int = flax.struct.field(pytree_node=False)


def hard_gumbel_softmax(logits: jax.Array, rng: jax.Array, temperature) -> jax.Array:
  """One-hot sample of softmax((logits + Gumbel noise) / temperature), straight-through.

  The forward value is the hard one-hot of argmax(logits + noise); the gradient is that of
  the soft sample (PyTorch `F.gumbel_softmax(hard=True)`). Computed in float32.

  Args:
    logits: [..., V] unnormalised log-probabilities.
    rng: PRNG key for the Gumbel noise.
    temperature: softmax temperature (scalar, > 0).

  Returns:
    f32[..., V] one-hot values carrying the soft sample's gradient.
  """
  logits = logits.astype(jnp.float32)
  gumbels = jax.random.gumbel(rng, logits.shape, jnp.float32)
  soft = jax.nn.softmax((logits + gumbels) / temperature, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=jnp.float32)
  return soft + jax.lax.stop_gradient(hard - soft)


def _perplexity(probs_BxTxGxV: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Sum over groups of exp(entropy) of the `weights`-weighted mean distribution."""
  weights_BxTx1x1 = weights_BxT.astype(jnp.float32)[:, :, None, None]
  total = jnp.maximum(jnp.sum(weights_BxT.astype(jnp.float32)), 1.0)
  mean_GxV = jnp.sum(probs_BxTxGxV * weights_BxTx1x1, axis=(0, 1)) / total
  entropy_G = -jnp.sum(mean_GxV * jnp.log(mean_GxV + _LOG_EPSILON), axis=-1)
  return jnp.sum(jnp.exp(entropy_G))


class GumbelProductQuantizer(nn.Module):
  """Product quantizer with G groups of V codevectors, chosen by Gumbel softmax.

  Attributes:
    num_groups: G, codebook groups.
    num_vars: V, codevectors per group.
    codevector_dim: dimension of the quantized vector (all groups), divisible by G.
    dtype: compute dtype of the matmuls; softmax and Gumbel sampling run in float32.
    param_dtype: parameter dtype.
  """

  num_groups: int
  num_vars: int
  codevector_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxC: jax.Array, weights_BxT: jax.Array, *, deterministic: bool, temperature
  ) -> QuantizerOutput:
    """Quantizes frames.

    Args:
      x_BxTxC: [B, T, C] features to quantize.
      weights_BxT: [B, T], 1 for frames that count in the perplexities (fairseq quantizes
        only masked, unpadded frames), 0 elsewhere.
      deterministic: argmax codes when True; Gumbel samples ('gumbel' rng) when False.
      temperature: Gumbel-softmax temperature, a step-dependent argument.

    Returns:
      QuantizerOutput.
    """
    groups, num_vars = self.num_groups, self.num_vars
    batch, time = x_BxTxC.shape[:2]
    # fairseq initialises the logit projection N(0, 1): with a small init the Gumbel noise
    # would swamp the logits and the codes would not depend on the input.
    logits_BxTxN = nn.Dense(
      groups * num_vars,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(stddev=1.0), ("embed", "codebook")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("codebook",)),
      name="logits",
    )(x_BxTxC)
    logits_BxTxGxV = logits_BxTxN.astype(jnp.float32).reshape(batch, time, groups, num_vars)
    codevectors_NxK = self.param(
      "codevectors",
      nn.with_logical_partitioning(nn.initializers.uniform(scale=1.0), ("codebook", None)),
      (groups * num_vars, self.codevector_dim // groups),
      self.param_dtype,
    )

    codes_BxTxG = jnp.argmax(logits_BxTxGxV, axis=-1)
    hard_BxTxGxV = jax.nn.one_hot(codes_BxTxG, num_vars, dtype=jnp.float32)
    code_perplexity = _perplexity(hard_BxTxGxV, weights_BxT)
    prob_perplexity = _perplexity(jax.nn.softmax(logits_BxTxGxV, axis=-1), weights_BxT)

    if deterministic:
      onehot_BxTxGxV = hard_BxTxGxV
    else:
      onehot_BxTxGxV = hard_gumbel_softmax(logits_BxTxGxV, self.make_rng("gumbel"), temperature)
      codes_BxTxG = jnp.argmax(onehot_BxTxGxV, axis=-1)
    codevectors_GxVxK = codevectors_NxK.reshape(groups, num_vars, -1).astype(self.dtype)
    quantized_BxTxGxK = jnp.einsum(
      "btgv,gvk->btgk", onehot_BxTxGxV.astype(self.dtype), codevectors_GxVxK
    )
    return QuantizerOutput(
      quantized=quantized_BxTxGxK.reshape(batch, time, self.codevector_dim),
      codes=codes_BxTxG.astype(jnp.int32),
      prob_perplexity=prob_perplexity,
      code_perplexity=code_perplexity,
      num_codevectors=groups * num_vars,
    )
