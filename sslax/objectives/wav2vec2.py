"""The wav2vec 2.0 pretraining objective (Baevski et al. 2020), as fairseq computes it.

fairseq's `wav2vec` criterion with `infonce` and `loss_weights [diversity, feature_penalty]`
(`fairseq/criterions/wav2vec_criterion.py`) runs on each GPU over that GPU's batch:

  loss_g = sum over masked frames of -log softmax(cos(c_t, [q_t, q_neg...]) / temp)[0]
           + diversity_weight * (GV - prob_perplexity_g) / GV * N_g
           + feature_penalty_weight * feature_penalty * N_g,

with N_g the GPU's number of masked frames (its `sample_size`) and prob_perplexity_g the
perplexity of the mean codeword distribution over the GPU's masked frames. The losses
and sample sizes of all GPUs (and of the microbatches of `update_freq`) are summed and
the gradient divided by the summed N. Here a GPU is one data-parallel shard of one
microbatch: the step passes the mesh's data-parallel size as `num_shards`, each
microbatch's rows split into that many equal consecutive blocks (the rows one device
holds), and each block gets its own perplexity. The diversity term thus depends on the
rows per device, as in fairseq, and not on the global batch size.

Unlike fairseq, masked frames are never gathered into a dense [B, M, D] tensor: every
array keeps the padded [B, F, ...] layout and a bool mask, so shapes are static and rows
may hold different numbers of masked frames.
"""

import jax
import jax.numpy as jnp

from sslax.models import quantizers

# torch.cosine_similarity's floor on each vector norm.
_COSINE_EPS = 1e-8


def sample_negatives(rng: jax.Array, mask_BxF: jax.Array, num_negatives: int) -> jax.Array:
  """Draws K distractor frames per frame from the other masked frames of its utterance.

  fairseq's `sample_negatives` with cross_sample_negatives 0: an index is drawn uniformly
  from the high - 1 other masked frames (high = the row's masked count) and indices at or
  past the positive's rank shift up by one, so the positive itself is never drawn. Draws
  are with replacement. Each row uses its own high, so rows need not have equal counts.

  Args:
    rng: PRNG key (the `negatives` stream).
    mask_BxF: bool[B, F], True for masked frames. Must exclude padding (the pipeline's
      masks do), since negatives are taken from every masked frame.
    num_negatives: K.

  Returns:
    int32[B, F, K] frame indices into the same row. For a masked frame in a row with at
    least 2 masked frames, each index is another masked frame of that row. Every other
    frame (unmasked, or in a row with fewer than 2 masked frames, which has no possible
    distractor) gets its own index K times; `contrastive_loss` leaves such frames out.
  """
  batch, frames = mask_BxF.shape
  mask_BxF = mask_BxF.astype(bool)
  count_B = mask_BxF.sum(axis=1, dtype=jnp.int32)
  # Stable sort puts the masked frames first, in time order: positions_BxF[b, r] is the
  # frame of the r-th masked frame of row b, for r < count_B[b].
  positions_BxF = jnp.argsort(~mask_BxF, axis=1, stable=True).astype(jnp.int32)
  rank_BxF = jnp.cumsum(mask_BxF, axis=1, dtype=jnp.int32) - 1
  # In rows without two masked frames the draws are meaningless (maxval floored at 1,
  # indices clipped) and are replaced below.
  high_Bx1x1 = jnp.maximum(count_B - 1, 1)[:, None, None]
  draw_BxFxK = jax.random.randint(
    rng, (batch, frames, num_negatives), 0, high_Bx1x1, dtype=jnp.int32
  )
  draw_BxFxK = draw_BxFxK + (draw_BxFxK >= rank_BxF[:, :, None]).astype(jnp.int32)
  negatives_BxFxK = jnp.take_along_axis(
    positions_BxF, draw_BxFxK.reshape(batch, frames * num_negatives), axis=1, mode="clip"
  ).reshape(batch, frames, num_negatives)
  has_negatives_BxF = mask_BxF & (count_B >= 2)[:, None]
  own_1xFx1 = jnp.arange(frames, dtype=jnp.int32)[None, :, None]
  return jnp.where(has_negatives_BxF[:, :, None], negatives_BxFxK, own_1xFx1)


def _unit_vectors(x_BxFxD: jax.Array) -> jax.Array:
  """x / max(|x|, eps) along the last axis, as torch.cosine_similarity normalises.

  The floor is applied to the squared norm so the gradient stays finite at x = 0.
  """
  squared_BxFx1 = jnp.sum(jnp.square(x_BxFxD), axis=-1, keepdims=True)
  return x_BxFxD * jax.lax.rsqrt(jnp.maximum(squared_BxFx1, _COSINE_EPS**2))


def contrastive_loss(
  projected_BxFxD: jax.Array,
  targets_BxFxD: jax.Array,
  mask_BxF: jax.Array,
  negatives_BxFxK: jax.Array,
  *,
  logit_temp: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """InfoNCE over masked frames: pick the true quantized target among K distractors.

  logits = cos(projected_t, [targets_t, targets_neg_1..K]) / logit_temp in float32;
  a distractor whose target vector equals the positive's exactly is set to -inf
  (fairseq `neg_is_pos`: two frames quantized to the same codewords).

  Args:
    projected_BxFxD: context vectors after final_proj (any float dtype).
    targets_BxFxD: quantized targets after project_q (any float dtype).
    mask_BxF: bool[B, F], True for masked frames.
    negatives_BxFxK: int[B, F, K] frame indices of the distractors in the same row
      (`sample_negatives`).
    logit_temp: temperature dividing the cosine similarity (0.1 in fairseq).

  Returns:
    loss_sum: f32[], cross-entropy (nats) summed over the counted frames.
    correct: int32[], counted frames whose positive has the largest logit, first-index
      argmax as fairseq; frames whose logits are all equal are not correct.
    count: int32[], counted frames: masked frames in rows with at least 2 masked frames
      (a lone masked frame has no distractor and no defined loss). With the pipeline's
      masks (min_masks spans of mask_length frames) this is every masked frame.
  """
  frames = mask_BxF.shape[1]
  projected_BxFxD = projected_BxFxD.astype(jnp.float32)
  targets_BxFxD = targets_BxFxD.astype(jnp.float32)
  mask_BxF = mask_BxF.astype(bool)

  # Cosines of all frame pairs of an utterance, then the K + 1 wanted ones picked out:
  # B·F² floats and two matmuls in the backward pass, where gathering the distractor
  # vectors would hold B·F·K·D floats and scatter-add them back. HIGHEST keeps the
  # matmul in float32 (the default would use bf16 passes / TF32), since / 0.1 amplifies.
  cosine_BxFxF = jnp.einsum(
    "bfd,bgd->bfg",
    _unit_vectors(projected_BxFxD),
    _unit_vectors(targets_BxFxD),
    precision=jax.lax.Precision.HIGHEST,
  )
  own_BxFx1 = jnp.broadcast_to(
    jnp.arange(frames, dtype=jnp.int32)[None, :, None], (*mask_BxF.shape, 1)
  )
  candidates_BxFxC = jnp.concatenate([own_BxFx1, negatives_BxFxK.astype(jnp.int32)], axis=-1)
  logits_BxFxC = jnp.take_along_axis(cosine_BxFxF, candidates_BxFxC, axis=2) / logit_temp

  # Exact equality on the target vectors, as fairseq; a bool, so no gradient flows here.
  negative_targets_BxFxKxD = jax.vmap(lambda t_FxD, n_FxK: t_FxD[n_FxK])(
    targets_BxFxD, negatives_BxFxK
  )
  neg_is_pos_BxFxK = jnp.all(negative_targets_BxFxKxD == targets_BxFxD[:, :, None, :], axis=-1)
  neg_is_pos_BxFxC = jnp.pad(neg_is_pos_BxFxK, ((0, 0), (0, 0), (1, 0)))
  logits_BxFxC = jnp.where(neg_is_pos_BxFxC, -jnp.inf, logits_BxFxC)

  counted_BxF = _counted_frames(mask_BxF)
  # The positive's logit is always finite, so log_softmax is finite even when every
  # distractor is -inf (loss 0 for that frame, as in fairseq).
  nll_BxF = -jax.nn.log_softmax(logits_BxFxC, axis=-1)[:, :, 0]
  loss_sum = jnp.sum(jnp.where(counted_BxF, nll_BxF, 0.0))
  is_max_BxF = jnp.argmax(logits_BxFxC, axis=-1) == 0
  is_min_BxF = jnp.argmin(logits_BxFxC, axis=-1) == 0
  correct = jnp.sum(counted_BxF & is_max_BxF & ~is_min_BxF, dtype=jnp.int32)
  count = jnp.sum(counted_BxF, dtype=jnp.int32)
  return loss_sum, correct, count


def _counted_frames(mask_BxF: jax.Array) -> jax.Array:
  """bool[B, F]: masked frames of rows with at least 2 masked frames (see contrastive_loss)."""
  mask_BxF = mask_BxF.astype(bool)
  return mask_BxF & (mask_BxF.sum(axis=1) >= 2)[:, None]


def _shard_sums(x_BxN: jax.Array, num_shards: int) -> jax.Array:
  """[S, ...] sums of x over each of S equal consecutive blocks of rows."""
  batch = x_BxN.shape[0]
  if batch % num_shards:
    raise ValueError(f"{batch} rows do not split into num_shards={num_shards} equal shards")
  return jnp.sum(x_BxN.reshape(num_shards, batch // num_shards, *x_BxN.shape[1:]), axis=1)


def diversity_sums(
  outputs, frames_B: jax.Array, *, num_shards: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """fairseq's diversity loss and perplexities, per data-parallel shard, summed.

  Shard s (rows s·B/S to (s+1)·B/S - 1) plays one fairseq GPU: its perplexity is that of
  the mean codeword distribution over its own quantized frames, and its diversity loss
  (GV - perplexity_s) / GV is weighted by its sample size N_s, as fairseq's criterion
  weights each GPU's loss before the sums are all-reduced.

  Args:
    outputs: read by attribute: `prob_sums` and `code_counts` f32[B, G, V], per-row
      codeword distributions summed over the row's quantized frames, `quantized_frames`
      f32[B] those frames, `num_codevectors` (python int G·V).
    frames_B: [B] each row's sample size (its counted masked frames).
    num_shards: S, static; must divide B. 1 gives one perplexity for the whole batch.

  Returns:
    f32[] sums over shards of (GV - prob_perplexity_s) / GV · N_s, prob_perplexity_s · N_s
    and code_perplexity_s · N_s. Divided by the summed N they are the loss term and the
    frame-weighted means of the shards' perplexities.
  """
  num_codevectors = outputs.num_codevectors
  quantized_S = _shard_sums(jnp.asarray(outputs.quantized_frames, jnp.float32), num_shards)
  prob_perplexity_S = quantizers.perplexity(
    _shard_sums(jnp.asarray(outputs.prob_sums, jnp.float32), num_shards), quantized_S
  )
  code_perplexity_S = quantizers.perplexity(
    _shard_sums(jnp.asarray(outputs.code_counts, jnp.float32), num_shards), quantized_S
  )
  frames_S = _shard_sums(frames_B.astype(jnp.float32), num_shards)
  diversity_S = (num_codevectors - prob_perplexity_S) / num_codevectors
  return (
    jnp.sum(diversity_S * frames_S),
    jnp.sum(prob_perplexity_S * frames_S),
    jnp.sum(code_perplexity_S * frames_S),
  )


def wav2vec2_loss(
  outputs,
  mask_BxF: jax.Array,
  negatives_BxFxK: jax.Array,
  *,
  logit_temp: float,
  diversity_weight: float,
  feature_penalty_weight: float,
  num_shards: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """fairseq's wav2vec 2.0 criterion, returned as sums over the counted masked frames.

  Args:
    outputs: the model's output, read by attribute: `projected` f32[B, F, D] (after
      final_proj), `targets` f32[B, F, D] (after project_q), `feature_penalty` f32[]
      (mean squared conv features), `prob_sums`, `code_counts` f32[B, G, V] and
      `quantized_frames` f32[B] (per-row codeword distributions, `diversity_sums`),
      `num_codevectors` (python int G·V).
    mask_BxF: bool[B, F] masked frames (the same mask the model used).
    negatives_BxFxK: int[B, F, K] from `sample_negatives`.
    logit_temp: cosine temperature (0.1).
    diversity_weight: weight of (GV - prob_perplexity) / GV (0.1).
    feature_penalty_weight: weight of the feature penalty (10 Base, 0 Large).
    num_shards: data-parallel shards of this (micro)batch, each with its own perplexity
      (`diversity_sums`); the step passes `sharding.data_parallel_size(mesh)`.

  Returns:
    loss_sum: f32[], to be divided by the batch's total `masked_frames` (N).
    metric_sums: f32[] sums, each a mean once divided by `masked_frames`, so they add
      across microbatches and devices:
      `masked_frames` N; `loss` loss_sum; `contrastive_loss` summed InfoNCE (nats);
      `correct` frames where the positive wins; `diversity_loss` sum over shards of
      (GV - ppl_s) / GV · N_s, unweighted; `feature_penalty` feature_penalty · N,
      unweighted; `prob_perplexity` and `code_perplexity` sums over shards of ppl_s ·
      N_s (a frame-weighted mean of the shards' perplexities once divided; fairseq logs
      the unweighted mean over GPUs and microbatches, equal when they hold as many
      masked frames).
  """
  contrastive_sum, correct, count = contrastive_loss(
    outputs.projected,
    outputs.targets,
    mask_BxF,
    negatives_BxFxK,
    logit_temp=logit_temp,
  )
  num_frames = count.astype(jnp.float32)
  frames_B = jnp.sum(_counted_frames(mask_BxF), axis=1, dtype=jnp.float32)
  diversity_sum, prob_perplexity_sum, code_perplexity_sum = diversity_sums(
    outputs, frames_B, num_shards=num_shards
  )
  penalty_sum = jnp.asarray(outputs.feature_penalty, jnp.float32) * num_frames
  loss_sum = (
    contrastive_sum + diversity_weight * diversity_sum + feature_penalty_weight * penalty_sum
  )
  metric_sums = {
    "masked_frames": num_frames,
    "loss": loss_sum,
    "contrastive_loss": contrastive_sum,
    "correct": correct.astype(jnp.float32),
    "diversity_loss": diversity_sum,
    "feature_penalty": penalty_sum,
    "prob_perplexity": prob_perplexity_sum,
    "code_perplexity": code_perplexity_sum,
  }
  return loss_sum, metric_sums
