"""Gradient accumulation over microbatches of one global batch (sums, divided once later)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def summed_grads(
  grad_fn: Callable[[Any, dict, jax.Array], tuple[Any, dict]],
  params: Any,
  batch: dict,
  rng: jax.Array,
  accum: int,
) -> tuple[Any, dict]:
  """(gradient, metric sums) of `grad_fn` added over `accum` microbatches of `batch`.

  `grad_fn(params, microbatch, rng)` returns the gradient of a loss *sum* and metric sums,
  so the totals equal one pass over the whole batch; the caller divides by the summed
  denominator. Rows j·A + a form microbatch a, so each device keeps its own rows (no
  resharding); microbatch a uses `fold_in(rng, a)`.
  """
  if accum == 1:
    return grad_fn(params, batch, rng)
  micro = jax.tree.map(
    lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch
  )

  def accumulate(carry, xs):
    microbatch, index = xs
    grads, sums = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first, rng))
  totals, _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum)))
  return totals
