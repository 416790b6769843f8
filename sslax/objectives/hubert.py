"""The HuBERT masked-prediction objective (Hsu et al. 2021), as fairseq computes it.

fairseq's `hubert` criterion (`fairseq/criterions/hubert_criterion.py`) over the model's
logits (`fairseq/models/hubert/hubert.py`): for label set i and frame t with cluster c,

  logits_t = cos(projected_i[t], label_embedding_i[k]) / logit_temp  for every cluster k,
  nll_t = -log softmax(logits_t)[c],
  loss = pred_masked_weight * sum_i sum over masked frames of nll
         + pred_nomask_weight * sum_i sum over unmasked frames of nll
         + feature_penalty_weight * feature_penalty * N,
  N = (masked frames if pred_masked_weight > 0) + (unmasked frames if pred_nomask_weight > 0),

N being fairseq's `sample_size`, counted on label set 0 as fairseq does. The step divides
the summed gradients by the summed N (over microbatches and devices), as fairseq divides by
`sample_size`. fairseq logs losses in bits (/ ln 2); these sums are in nats.

fairseq writes the logits as [positive, every cluster] with the positive's own duplicate
(and any embedding equal to it) at -inf; that is this softmax over all clusters, exactly
so unless two clusters have bit-identical embeddings. Its accuracy counts argmax == 0 but
not argmin == 0; the duplicate at -inf makes argmin never 0, so a frame is correct when
its cluster's logit is at least every other cluster's (a tie goes to the true cluster).

Frames counted: unpadded, and with a label >= 0 in that label set (IGNORE_LABEL, or any
negative label, marks frames without a unit, e.g. past the end of the unit sequence; see
`frame_labels`). Differences from fairseq, none on its own batches: the feature penalty
is the model's mean over unpadded frames (fairseq's includes padding, which its cropped
batches do not have); logits are float32 also under a bf16 compute dtype (fairseq keeps
fp16 logits); frames past the last label are ignored here, where fairseq crops them
before the Transformer.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sslax.objectives import wav2vec2

IGNORE_LABEL = -1


def frame_labels(
  units_BxL: jax.Array, num_frames: int, *, label_rate: float, frame_rate: float
) -> jax.Array:
  """Labels at the model's frames from units at `label_rate` (fairseq `forward_targets`).

  Frame f takes unit floor(f * label_rate / frame_rate) (computed in float32, as fairseq
  does), so 100 Hz units at 50 Hz frames take every other unit and 50 Hz units one each.

  Args:
    units_BxL: int[B, L] cluster indices, right-padded with negative values.
    num_frames: F, the model's frame count.
    label_rate: units per second (100 for MFCC units, 50 for model-feature units).
    frame_rate: frames per second (50 for fairseq's 320x conv stack at 16 kHz).

  Returns:
    int32[B, F]; IGNORE_LABEL where the unit index is past L (or the unit is padding).
  """
  length = units_BxL.shape[1]
  ratio = jnp.float32(label_rate / frame_rate)
  index_F = (jnp.arange(num_frames, dtype=jnp.float32) * ratio).astype(jnp.int32)
  labels_BxF = jnp.take(units_BxL.astype(jnp.int32), jnp.minimum(index_F, length - 1), axis=1)
  return jnp.where((index_F < length)[None, :], labels_BxF, IGNORE_LABEL)


def cosine_logits(
  projected_BxFxP: jax.Array, label_embeddings_KxP: jax.Array, *, logit_temp: float
) -> jax.Array:
  """f32[B, F, K] cos(projected[b, f], label_embeddings[k]) / logit_temp, in float32.

  torch.cosine_similarity's normalisation (each norm floored at 1e-8); HIGHEST matmul
  precision since / 0.1 amplifies rounding.
  """
  return (
    jnp.einsum(
      "bfp,kp->bfk",
      wav2vec2._unit_vectors(projected_BxFxP.astype(jnp.float32)),
      wav2vec2._unit_vectors(label_embeddings_KxP.astype(jnp.float32)),
      precision=jax.lax.Precision.HIGHEST,
    )
    / logit_temp
  )


def _prediction_sums(
  logits_BxFxK: jax.Array, labels_BxF: jax.Array, counted_BxF: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(summed nll, correct frames, counted frames) over `counted_BxF`, all f32[]."""
  labels_BxF = jnp.maximum(labels_BxF, 0)  # ignored frames: any index, masked out below
  true_BxF = jnp.take_along_axis(logits_BxFxK, labels_BxF[:, :, None], axis=-1)[:, :, 0]
  nll_BxF = jax.nn.logsumexp(logits_BxFxK, axis=-1) - true_BxF
  is_true_BxFxK = jnp.arange(logits_BxFxK.shape[-1]) == labels_BxF[:, :, None]
  best_other_BxF = jnp.max(jnp.where(is_true_BxFxK, -jnp.inf, logits_BxFxK), axis=-1)
  correct_BxF = true_BxF >= best_other_BxF
  return (
    jnp.sum(jnp.where(counted_BxF, nll_BxF, 0.0)),
    jnp.sum(counted_BxF & correct_BxF, dtype=jnp.float32),
    jnp.sum(counted_BxF, dtype=jnp.float32),
  )


def hubert_loss(
  outputs,
  mask_BxF: jax.Array,
  labels: Sequence[jax.Array],
  *,
  logit_temp: float,
  pred_masked_weight: float,
  pred_nomask_weight: float,
  feature_penalty_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """fairseq's HuBERT criterion, returned as sums (module docstring for the formula).

  Args:
    outputs: the model's output, read by attribute: `projected` (per label set f32[B, F,
      P]), `label_embeddings` (per label set f32[K_i, P]), `frame_paddings` f32[B, F]
      (1.0 at padding), `feature_penalty` f32[] (mean squared conv features).
    mask_BxF: bool[B, F] masked frames (the same mask the model used).
    labels: per label set, int[B, F] cluster index of every frame (`frame_labels`);
      negative = no label. Labels must be < K_i.
    logit_temp: cosine temperature (0.1).
    pred_masked_weight: weight of the masked frames' loss (1.0).
    pred_nomask_weight: weight of the unmasked frames' loss (0.0).
    feature_penalty_weight: weight of the feature penalty (10).

  Returns:
    loss_sum: f32[], to be divided by the batch's total `sample_size` (N).
    metric_sums: f32[] sums that add across microbatches and devices:
      `sample_size` N; `loss` loss_sum; `feature_penalty` feature_penalty · N, unweighted;
      per label set i, `loss_m_i` / `loss_u_i` the summed nll (nats) of masked /
      unmasked frames (fairseq reports them / N), `correct_m_i` / `correct_u_i` frames
      whose true cluster wins and `count_m_i` / `count_u_i` frames counted (accuracy =
      correct / count). Unmasked sums are computed whatever pred_nomask_weight is.
  """
  if len(labels) != len(outputs.projected):
    raise ValueError(f"{len(labels)} label sets for a model with {len(outputs.projected)}")
  valid_BxF = outputs.frame_paddings == 0
  mask_BxF = mask_BxF.astype(bool)
  loss_sum = jnp.zeros((), jnp.float32)
  metric_sums = {}
  for i, (projected_BxFxP, embeddings_KxP, labels_BxF) in enumerate(
    zip(outputs.projected, outputs.label_embeddings, labels, strict=True)
  ):
    logits_BxFxK = cosine_logits(projected_BxFxP, embeddings_KxP, logit_temp=logit_temp)
    labelled_BxF = valid_BxF & (labels_BxF >= 0)
    for kind, frames_BxF, weight in (
      ("m", labelled_BxF & mask_BxF, pred_masked_weight),
      ("u", labelled_BxF & ~mask_BxF, pred_nomask_weight),
    ):
      nll, correct, count = _prediction_sums(logits_BxFxK, labels_BxF, frames_BxF)
      metric_sums.update({f"loss_{kind}_{i}": nll, f"correct_{kind}_{i}": correct})
      metric_sums[f"count_{kind}_{i}"] = count
      loss_sum = loss_sum + weight * nll

  # fairseq adds a term's frames to sample_size only when its weight is positive.
  sample_size = jnp.zeros((), jnp.float32)
  if pred_masked_weight > 0:
    sample_size = sample_size + metric_sums["count_m_0"]
  if pred_nomask_weight > 0:
    sample_size = sample_size + metric_sums["count_u_0"]
  penalty_sum = jnp.asarray(outputs.feature_penalty, jnp.float32) * sample_size
  loss_sum = loss_sum + feature_penalty_weight * penalty_sum
  metric_sums.update(sample_size=sample_size, loss=loss_sum, feature_penalty=penalty_sum)
  return loss_sum, metric_sums
