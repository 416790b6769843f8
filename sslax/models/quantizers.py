"""Gumbel-softmax product quantizer (fairseq GumbelVectorQuantizer, combine_groups=False).

Each frame picks one of V codevectors in each of G groups; the quantized vector is the
concatenation of the G picks. In training the pick is a hard Gumbel-softmax sample with a
straight-through gradient; in evaluation it is the argmax of the logits.

The codebook perplexities (fairseq `prob_perplexity` and `code_perplexity`) are taken over
the frames one GPU quantizes in one forward pass, so they depend on how the batch is split
over devices and microbatches. The quantizer therefore returns per-utterance sums of the
codeword distributions (`prob_sums`, `code_counts`, `counted_frames`) rather than a
perplexity: any data-parallel shard is a set of rows, so its mean distribution is the sum
of its rows' sums over the sum of their frames, and whoever knows the shards (the
objective, given the shard count of the mesh) turns them into perplexities with
`perplexity`. The module stays independent of the mesh, and the sums are [B, G, V] (a
few hundred floats per utterance), not the per-frame [B, T, G, V] probabilities.
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
    prob_sums: f32[B, G, V] per utterance, the softmax of the logits summed over its
      counted frames (the frames of weight 1).
    code_counts: f32[B, G, V] per utterance, its counted frames whose logits' argmax in
      group g is codeword v (fairseq's hard distribution, the argmax also in training).
    counted_frames: f32[B] per utterance, its counted frames.
    num_codevectors: G * V (python int).
  """

  quantized: jax.Array
  codes: jax.Array
  prob_sums: jax.Array
  code_counts: jax.Array
  counted_frames: jax.Array
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


def perplexity(sums_SxGxV: jax.Array, frames_S: jax.Array) -> jax.Array:
  """fairseq's codebook perplexity of each of S sets of frames.

  Args:
    sums_SxGxV: f32[S, G, V] codeword distributions summed over each set's frames
      (`prob_sums` or `code_counts` added over the set's utterances).
    frames_S: f32[S] frames in each set.

  Returns:
    f32[S]: per set, the sum over groups of exp(entropy) of the mean distribution
    sums / frames, with fairseq's 1e-7 inside the log. A set without frames gets G
    (its mean is all zeros).
  """
  mean_SxGxV = sums_SxGxV / jnp.maximum(frames_S, 1.0)[:, None, None]
  entropy_SxG = -jnp.sum(mean_SxGxV * jnp.log(mean_SxGxV + _LOG_EPSILON), axis=-1)
  return jnp.sum(jnp.exp(entropy_SxG), axis=-1)


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
      weights_BxT: [B, T], 1 for frames that count in the codeword sums (fairseq
        quantizes only masked, unpadded frames), 0 elsewhere.
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
    weights_BxT = weights_BxT.astype(jnp.float32)
    # Elementwise products and sums, not a matmul: a default-precision matmul may round
    # the probabilities to bf16 on accelerators.
    weights_BxTx1x1 = weights_BxT[:, :, None, None]
    probs_BxTxGxV = jax.nn.softmax(logits_BxTxGxV, axis=-1)
    prob_sums_BxGxV = jnp.sum(probs_BxTxGxV * weights_BxTx1x1, axis=1)
    code_counts_BxGxV = jnp.sum(hard_BxTxGxV * weights_BxTx1x1, axis=1)

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
      prob_sums=prob_sums_BxGxV,
      code_counts=code_counts_BxGxV,
      counted_frames=jnp.sum(weights_BxT, axis=1),
      num_codevectors=groups * num_vars,
    )
