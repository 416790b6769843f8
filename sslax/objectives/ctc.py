"""The CTC objective of fine-tuning, normalised as fairseq's `ctc` criterion.

fairseq fine-tunes with `criterion: ctc, zero_infinity: true` and `sentence_avg: true`:
the loss is -log p(labels | audio) summed over utterances (blank = index 0), an utterance
whose labels cannot be aligned to its frames contributes zero (instead of infinity), and
the summed gradient is divided by the number of utterances in the update. `ctc_loss`
returns the sums; the step divides once by the summed `utterances`, so gradient
accumulation and data parallelism give the mean over the whole batch.
"""

import jax
import jax.numpy as jnp
import optax

from sslax.core import text


def min_frames(labels_BxL: jax.Array, label_paddings_BxL: jax.Array) -> jax.Array:
  """i32[B]: frames a CTC alignment needs: the labels plus one blank between each repeat."""
  valid_BxL = label_paddings_BxL == 0
  repeats_BxL = (labels_BxL[:, 1:] == labels_BxL[:, :-1]) & valid_BxL[:, 1:]
  return jnp.sum(valid_BxL, axis=1) + jnp.sum(repeats_BxL, axis=1)


def ctc_loss(
  logits_BxFxV: jax.Array,
  frame_paddings_BxF: jax.Array,
  labels_BxL: jax.Array,
  label_paddings_BxL: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed CTC negative log-likelihood (nats) with fairseq's zero_infinity.

  Args:
    logits_BxFxV: f32[B, F, V] unnormalised frame scores (log-softmax is taken here).
    frame_paddings_BxF: f32[B, F], 1.0 at padding frames.
    labels_BxL: i32[B, L] label ids in 1..V-1 (0 is the blank).
    label_paddings_BxL: f32[B, L], 1.0 at padding.

  Returns:
    loss_sum: f32[], to be divided by the batch's total `utterances`.
    metric_sums: `loss` (= loss_sum), `utterances` B, `infeasible` utterances whose labels
      need more frames than they have (their loss and gradient are zero).
  """
  # optax floors log(0) at log_epsilon (-1e5), so an infeasible alignment gives a huge
  # finite loss rather than infinity: decide feasibility from the lengths instead.
  per_utterance_B = optax.ctc_loss(
    logits_BxFxV.astype(jnp.float32),
    frame_paddings_BxF,
    labels_BxL,
    label_paddings_BxL,
    blank_id=text.BLANK_ID,
  )
  frames_B = jnp.sum(1.0 - frame_paddings_BxF, axis=1)
  feasible_B = min_frames(labels_BxL, label_paddings_BxL) <= frames_B
  loss_sum = jnp.sum(jnp.where(feasible_B, per_utterance_B, 0.0))
  metric_sums = {
    "loss": loss_sum,
    "utterances": jnp.asarray(labels_BxL.shape[0], jnp.float32),
    "infeasible": jnp.sum(~feasible_B).astype(jnp.float32),
  }
  return loss_sum, metric_sums
