"""BEST-RQ random-projection quantizer (Chiu et al. 2022): frozen targets from input features.

Log mel frames at 10 ms are normalised per utterance and bin over the unpadded frames,
stacked `stack` at a time (4: 40 ms, the encoder's frame rate after 4x subsampling), and
each of `num_codebooks` independent quantizers projects a stacked frame with its own
Xavier-uniform matrix, L2-normalises it, and picks the nearest of its L2-normalised
random codewords (standard normal before normalising). Between unit vectors the nearest
by Euclidean distance is the largest dot product, which is how it is computed.

Frozen: the projections and codebooks are in the `frozen` variable collection, not in
`params`, so no optimizer or weight decay ever sees them and no gradient flows to them.
They are drawn from the fixed `seed` (not the model's `params` rng), so every run with the
same settings has the same quantizer, and, being variables, they are written with every
checkpoint: a restored run keeps its targets even if JAX's PRNG implementation changes.
Apply with `{'params': ..., 'frozen': variables['frozen']}`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

FROZEN = "frozen"
# Floor on the per-utterance variance, and on squared norms before normalising.
NORM_EPSILON = 1e-5
_UNIT_EPSILON = 1e-12


def stack_frames(
  x_BxTxC: jax.Array, paddings_BxT: jax.Array, stack: int
) -> tuple[jax.Array, jax.Array]:
  """Concatenates each `stack` consecutive frames: [B, T, C] -> [B, ceil(T / stack), stack C].

  The last group is completed with zero frames. A stacked frame is padding when its first
  frame is, so n valid frames give ceil(n / stack) valid stacked frames, the count the
  log-mel front end's subsampling gives.

  Returns:
    stacked_BxNxSC: frames t*stack .. t*stack + stack - 1, in time order along the channels.
    stacked_paddings_BxN: f32[B, N], 1.0 at padding.
  """
  batch, frames, channels = x_BxTxC.shape
  groups = -(-frames // stack)
  extra = groups * stack - frames
  x_BxTxC = jnp.pad(x_BxTxC, ((0, 0), (0, extra), (0, 0)))
  stacked_BxNxSC = x_BxTxC.reshape(batch, groups, stack * channels)
  return stacked_BxNxSC, paddings_BxT[:, ::stack]


def _unit(x: jax.Array) -> jax.Array:
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, _UNIT_EPSILON))


class RandomProjectionQuantizer(nn.Module):
  """Frozen random-projection quantizer; targets for masked prediction (BEST-RQ).

  Attributes:
    num_codebooks: independent quantizers N (16 in the paper).
    codebook_size: codewords per codebook V (8192).
    codebook_dim: projection / codeword dimension (16).
    stack: input frames stacked per target frame (4: 10 ms -> 40 ms).
    seed: seed of the projections and codebooks.
  """

  num_codebooks: int = 16
  codebook_size: int = 8192
  codebook_dim: int = 16
  stack: int = 4
  seed: int = 0

  @nn.compact
  def __call__(self, features_BxTxC: jax.Array, paddings_BxT: jax.Array):
    """Quantizes stacked, normalised input frames.

    Args:
      features_BxTxC: [B, T, C] input features (log mel at 10 ms), right-padded.
      paddings_BxT: f32[B, T], 1.0 at padding.

    Returns:
      targets_BxNxG: int32[B, ceil(T / stack), num_codebooks] codeword indices (padded
        frames get indices too; the loss skips them).
      paddings_BxN: f32[B, ceil(T / stack)], 1.0 at padding.
    """
    input_dim = self.stack * features_BxTxC.shape[-1]
    xavier = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))

    def frozen(name, stream, init, names, shape):
      # Drawn only when the variable is created (init): stream `stream` of the fixed seed.
      def draw():
        return init(jax.random.fold_in(jax.random.key(self.seed), stream), shape, jnp.float32)

      return self.variable(FROZEN, name, nn.with_logical_partitioning(draw, names)).value

    projection_GxIxK = frozen(
      "projection",
      0,
      xavier,
      ("codebook", None, None),
      (self.num_codebooks, input_dim, self.codebook_dim),
    )
    codebooks_GxVxK = frozen(
      "codebooks",
      1,
      lambda key, shape, dtype: _unit(jax.random.normal(key, shape, dtype)),
      ("codebook", "vocab", None),
      (self.num_codebooks, self.codebook_size, self.codebook_dim),
    )

    x_BxTxC = features_BxTxC.astype(jnp.float32)
    valid_BxTx1 = (1.0 - paddings_BxT.astype(jnp.float32))[:, :, None]
    count_Bx1x1 = jnp.maximum(jnp.sum(valid_BxTx1, axis=1, keepdims=True), 1.0)
    mean_Bx1xC = jnp.sum(x_BxTxC * valid_BxTx1, axis=1, keepdims=True) / count_Bx1x1
    centred_BxTxC = (x_BxTxC - mean_Bx1xC) * valid_BxTx1
    var_Bx1xC = jnp.sum(jnp.square(centred_BxTxC), axis=1, keepdims=True) / count_Bx1x1
    normed_BxTxC = centred_BxTxC * jax.lax.rsqrt(var_Bx1xC + NORM_EPSILON)
    stacked_BxNxI, stacked_paddings_BxN = stack_frames(normed_BxTxC, paddings_BxT, self.stack)

    # HIGHEST keeps float32 matmuls (the default may use bf16 passes on accelerators),
    # so a target does not depend on the device.
    projected_BxNxGxK = _unit(
      jnp.einsum(
        "bni,gik->bngk",
        stacked_BxNxI,
        jax.lax.stop_gradient(projection_GxIxK),
        precision=jax.lax.Precision.HIGHEST,
      )
    )

    def nearest(operands):
      # One codebook at a time: holds [B, N, V] scores, not [B, N, G, V].
      projected_BxNxK, codebook_VxK = operands
      scores_BxNxV = jnp.einsum(
        "bnk,vk->bnv", projected_BxNxK, codebook_VxK, precision=jax.lax.Precision.HIGHEST
      )
      return jnp.argmax(scores_BxNxV, axis=-1).astype(jnp.int32)

    targets_GxBxN = jax.lax.map(
      nearest,
      (jnp.moveaxis(projected_BxNxGxK, 2, 0), jax.lax.stop_gradient(codebooks_GxVxK)),
    )
    return jnp.moveaxis(targets_GxBxN, 0, -1), stacked_paddings_BxN
