"""Train state, built sharded from the start: eval_shape -> shardings -> jitted init.

Parameters are never materialised on one device first, so a model that only fits when
sharded (Large on small accelerators, anything FSDP) initialises as easily as a tiny one.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import optax

from sslax.train import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds about the model and optimizer.

  step: i32[], number of optimizer updates applied so far.
  params: float32 parameter tree (compute dtype is chosen per step, not stored).
  opt_state: the optimizer state for `params`.
  """

  step: jax.Array
  params: Any
  opt_state: Any


def abstract_state_and_shardings(
  init_params: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
) -> tuple[Callable[[jax.Array], TrainState], TrainState, Any]:
  """Returns (init_fn, abstract unboxed state, state shardings).

  `init_params(rng)` returns the model's boxed parameters (carrying logical axis names);
  optimizer moments inherit those names because optax maps over the boxes.
  """

  def init_boxed(rng: jax.Array) -> TrainState:
    params = init_params(rng)
    return TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params)
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
