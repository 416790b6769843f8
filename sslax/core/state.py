"""Train state, built sharded from the start: eval_shape -> shardings -> jitted init.

Parameters are never materialised on one device first, so a model that only fits when
sharded (Large on small accelerators, anything FSDP) initialises as easily as a tiny one.

Variables that are not trained by the optimizer (a conformer's batch-norm running
statistics in `batch_stats`, BEST-RQ's frozen projections and codebooks in `frozen`)
travel in `TrainState.model_state`, keyed by collection; it is empty for models without
them, so a state built as before, and its checkpoints, are unchanged.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import optax

from sslax.core import sharding

# model_state collections a training forward pass updates (batch-norm running statistics);
# the others (BEST-RQ's `frozen`) are read only.
MUTABLE_COLLECTIONS = ("batch_stats",)


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds about the model and optimizer.

  step: i32[], number of optimizer updates applied so far.
  params: float32 parameter tree (compute dtype is chosen per step, not stored).
  opt_state: the optimizer state for `params`.
  model_state: the model's other variable collections ({'batch_stats': ..., 'frozen':
    ...}), sharded by their logical axis names like `params`; {} when it has none.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: dict = flax.struct.field(default_factory=dict)


def variables(state: TrainState) -> dict:
  """`{'params': state.params, **state.model_state}`: what `model.apply` takes in evaluation.

  Also maps a TrainState of shardings to the shardings of those variables.
  """
  return {"params": state.params, **state.model_state}


def apply_train(
  model: nn.Module, params: Any, model_state: dict, *args, **kwargs
) -> tuple[Any, dict]:
  """`model.apply({'params': params, **model_state}, *args, **kwargs)` for a training pass.

  Returns (outputs, updated MUTABLE_COLLECTIONS): {} for a model without them, else the
  new values to put in `model_state`.
  """
  mutable = [name for name in MUTABLE_COLLECTIONS if name in model_state]
  outputs, updates = model.apply(
    {"params": params, **model_state}, *args, mutable=mutable, **kwargs
  )
  return outputs, dict(updates)


def abstract_state_and_shardings(
  init_params: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  *,
  all_collections: bool = False,
) -> tuple[Callable[[jax.Array], TrainState], TrainState, Any]:
  """Returns (init_fn, abstract unboxed state, state shardings).

  `init_params(rng)` returns the model's boxed parameters (carrying logical axis names);
  optimizer moments inherit those names because optax maps over the boxes. With
  `all_collections`, it returns every variable collection of the model (`model.init`'s
  result): 'params' are the parameters, the others become `model_state`, from one trace.
  """

  def init_boxed(rng: jax.Array) -> TrainState:
    params, model_state = init_params(rng), {}
    if all_collections:
      model_state = {name: tree for name, tree in params.items() if name != "params"}
      params = params["params"]
    return TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=params,
      opt_state=tx.init(params),
      model_state=model_state,
    )

  boxed = jax.eval_shape(init_boxed, jax.random.key(0))
  shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh)

  def init_fn(rng: jax.Array) -> TrainState:
    return nn.meta.unbox(init_boxed(rng))

  return init_fn, nn.meta.unbox(boxed), shardings


def init_state(init_fn: Callable[[jax.Array], TrainState], shardings: Any, rng: jax.Array):
  """Runs `init_fn` jitted straight into `shardings`.

  Traced outside `sharding.activate`: `out_shardings` alone places the state, and flax's
  `DenseGeneral` would otherwise apply its multi-axis logical names to the flat kernel it
  initialises before reshaping, which fails under an active mesh.
  """
  return jax.jit(init_fn, out_shardings=shardings)(rng)


def count_parameters(params: Any) -> int:
  """Total number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return sum(x.size for x in jax.tree.leaves(params))
