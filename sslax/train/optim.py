"""Learning-rate schedules and the optimizer (fairseq's Adam with decoupled weight decay)."""

import ml_collections
import optax


def polynomial_decay_schedule(
  learning_rate: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
  """fairseq `polynomial_decay` with power 1 and end lr 0: linear warmup, then linear decay."""
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f"config.optim.warmup_steps={warmup_steps} must lie in [0, config.total_steps={total_steps}]"
    )
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, learning_rate, warmup_steps),
      optax.linear_schedule(learning_rate, 0.0, total_steps - warmup_steps),
    ],
    boundaries=[warmup_steps],
  )


def make_optimizer(
  optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(b1, b2, eps) with decoupled weight decay on all parameters, as fairseq's `adam`.

  Gradients reach it already divided by the batch's sample size (masked frames), so
  `clip_norm` (0 disables it) acts on the same quantity as fairseq's `clip_norm`.
  """
  schedule = polynomial_decay_schedule(optim.learning_rate, optim.warmup_steps, total_steps)
  adam = optax.adamw(
    schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay
  )
  if optim.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adam), schedule
  return adam, schedule
