"""The BEST-RQ objective in the pretraining step (`config.objective.name = 'bestrq'`).

Only the model and the loss differ from wav2vec 2.0: `wav2vec2_step.make_update_step`
runs the update (accumulation, model state, optimizer) for both, and its `build_trainer`
assembles either. The frozen quantizer travels in `TrainState.model_state['frozen']`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from sslax.core import state as state_lib
from sslax.models import bestrq
from sslax.objectives import bestrq as objective


def build_model(config: ml_collections.ConfigDict) -> bestrq.BestRQ:
  """The BEST-RQ model with the config's compute dtype (parameters stay float32)."""
  return bestrq.BestRQ(**config.model.to_dict(), dtype=jnp.dtype(config.compute_dtype))


def loss_fn(model: bestrq.BestRQ) -> Callable:
  """The masked-prediction loss as a `wav2vec2_step.LossFn` (no per-step scalars)."""

  def fn(params, model_state: dict, microbatch: dict, rng: jax.Array, scalars: dict, train=True):
    del scalars  # BEST-RQ has no step-dependent values
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
    valid_BxF = outputs.frame_paddings < 0.5
    loss_sum, sums = objective.bestrq_loss(
      outputs.logits, outputs.targets, jnp.logical_and(microbatch["mask"], valid_BxF)
    )
    return loss_sum, (sums, updates)

  return fn
