"""The HuBERT objective in the pretraining step (`config.objective.name = 'hubert'`).

Only the model and the loss differ from wav2vec 2.0: `wav2vec2_step.make_update_step`
runs the update (accumulation, model state, optimizer) and its `build_trainer` assembles
it. The batch's `labels` i32[B, L] (units at `config.units.label_rate`, from
`sslax.data.hubert_stream`) become per-frame targets with `objectives.hubert.frame_labels`.

The update divides the summed gradient by `masked_frames`, which here is fairseq's
`sample_size` (masked frames, plus unmasked ones when pred_nomask_weight > 0), and
`correct` counts the frames of `sample_size` whose cluster wins, so the progress line's
loss and accuracy are per counted frame; the objective's per-set sums (`loss_m_0`,
`correct_m_0`, `count_m_0` and their `_u_` unmasked twins) travel with the metrics, and
`sslax.train.metrics` reports `accuracy_masked` and `accuracy_unmasked` from them.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from sslax.core import state as state_lib
from sslax.models import backbone, hubert
from sslax.objectives import hubert as objective


def build_model(config: ml_collections.ConfigDict) -> hubert.HuBERT:
  """The HuBERT model with the config's compute dtype (parameters stay float32)."""
  return hubert.HuBERT(**config.model.to_dict(), dtype=jnp.dtype(config.compute_dtype))


def loss_fn(model: hubert.HuBERT, config: ml_collections.ConfigDict) -> Callable:
  """The masked-prediction loss as a `wav2vec2_step.LossFn` (no per-step scalars).

  The microbatch holds audio f32[B, S], audio_paddings f32[B, S], mask bool[B, F] and
  labels i32[B, L] (negative: no unit).
  """
  obj = config.objective
  label_rate = config.units.label_rate
  frame_rate = backbone.frame_rate_hz(config.model)

  def fn(params, model_state: dict, microbatch: dict, rng: jax.Array, scalars: dict, train=True):
    del scalars  # HuBERT has no step-dependent values
    outputs, updates = state_lib.apply_train(
      model,
      params,
      model_state,
      microbatch["audio"],
      microbatch["audio_paddings"],
      microbatch["mask"],
      train=train,
      rngs={"dropout": rng},
    )
    labels_BxF = objective.frame_labels(
      microbatch["labels"],
      outputs.frame_paddings.shape[1],
      label_rate=label_rate,
      frame_rate=frame_rate,
    )
    loss_sum, sums = objective.hubert_loss(
      outputs,
      microbatch["mask"],
      [labels_BxF],
      logit_temp=obj.logit_temp,
      pred_masked_weight=obj.pred_masked_weight,
      pred_nomask_weight=obj.pred_nomask_weight,
      feature_penalty_weight=obj.feature_penalty_weight,
    )
    # The frames of sample_size, as hubert_loss counts them.
    correct = jnp.zeros((), jnp.float32)
    if obj.pred_masked_weight > 0:
      correct = correct + sums["correct_m_0"]
    if obj.pred_nomask_weight > 0:
      correct = correct + sums["correct_u_0"]
    sums = dict(sums, masked_frames=sums["sample_size"], correct=correct)
    return loss_sum, (sums, updates)

  return fn
