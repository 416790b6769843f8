"""The BEST-RQ masked-prediction objective (Chiu et al. 2022).

At every masked frame the encoder predicts, with one softmax per codebook, the codeword
indices the random-projection quantizer (`sslax/models/random_projection.py`) gave the
unmasked input there:

  loss = sum over masked frames of (1 / G) sum over codebooks g of
         -log softmax(logits[t, g])[target[t, g]],

the mean over the G codebooks, so a frame weighs the same whatever G is (ln V per frame
for a uniform prediction). The step divides the summed gradients by the summed number of
masked frames, as for wav2vec 2.0 (`sslax/objectives/wav2vec2.py`).
"""

import jax
import jax.numpy as jnp


def bestrq_loss(
  logits_BxTxGxV: jax.Array, targets_BxTxG: jax.Array, mask_BxT: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Multi-softmax cross-entropy at masked frames, as sums.

  Args:
    logits_BxTxGxV: [B, T, G, V] prediction logits (any float dtype; computed in float32).
    targets_BxTxG: int[B, T, G] codeword indices from the quantizer.
    mask_BxT: bool[B, T] masked frames. Must exclude padding (the pipeline's masks do).

  Returns:
    loss_sum: f32[], to be divided by the batch's total `masked_frames`.
    metric_sums: f32[] sums, each a mean once divided by `masked_frames`, so they add
      across microbatches and devices: `masked_frames`; `loss` loss_sum (nats);
      `correct` summed over masked frames of the fraction of codebooks whose argmax is
      the target (reported as `accuracy`, as wav2vec 2.0's `correct`).
  """
  logits_BxTxGxV = logits_BxTxGxV.astype(jnp.float32)
  mask_BxT = mask_BxT.astype(bool)
  log_probs_BxTxGxV = jax.nn.log_softmax(logits_BxTxGxV, axis=-1)
  targets_BxTxGx1 = targets_BxTxG.astype(jnp.int32)[..., None]
  nll_BxTxG = -jnp.take_along_axis(log_probs_BxTxGxV, targets_BxTxGx1, axis=-1)[..., 0]
  correct_BxTxG = jnp.argmax(logits_BxTxGxV, axis=-1) == targets_BxTxG
  loss_sum = jnp.sum(jnp.where(mask_BxT, jnp.mean(nll_BxTxG, axis=-1), 0.0))
  correct_sum = jnp.sum(jnp.where(mask_BxT, jnp.mean(correct_BxTxG, axis=-1), 0.0))
  masked_frames = jnp.sum(mask_BxT, dtype=jnp.float32)
  return loss_sum, {"masked_frames": masked_frames, "loss": loss_sum, "correct": correct_sum}
