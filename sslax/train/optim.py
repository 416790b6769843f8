"""Learning-rate schedules and the optimizers (fairseq's Adam with decoupled weight decay)."""

from collections.abc import Callable
import math

from absl import logging
import jax.numpy as jnp
import ml_collections
import optax


def polynomial_decay_schedule(
  learning_rate: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
  """fairseq `polynomial_decay` with power 1 and end lr 0: linear warmup, then linear decay.

  A warmup longer than the run (a short smoke run of a long config) is cut to the run, with
  a logged note.
  """
  if warmup_steps < 0:
    raise ValueError(f"config.optim.warmup_steps={warmup_steps} must not be negative")
  if warmup_steps > total_steps:
    logging.warning(
      "config.optim.warmup_steps=%d is longer than config.total_steps=%d: the warmup takes "
      "the whole run",
      warmup_steps,
      total_steps,
    )
    warmup_steps = total_steps
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


def tri_stage_schedule(
  learning_rate: float,
  total_steps: int,
  phase_ratios: tuple[float, float, float],
  init_lr_scale: float,
  final_lr_scale: float,
) -> optax.Schedule:
  """fairseq `tri_stage` with `phase_ratio`: linear warmup, hold, exponential decay.

  With w, h, d = int(total_steps * ratio) for the three phases, the rate of update n is
  lr·init_lr_scale + n·(lr − lr·init_lr_scale)/w for n < w; lr for n < w + h;
  lr·exp(log(final_lr_scale)·(n − w − h)/d) for n <= w + h + d; lr·final_lr_scale after.
  """
  if len(phase_ratios) != 3 or abs(sum(phase_ratios) - 1.0) > 1e-6:
    raise ValueError(f"config.optim.phase_ratios={phase_ratios} must be three ratios adding to 1")
  warmup, hold, decay = (int(total_steps * ratio) for ratio in phase_ratios)
  if decay < 1:
    raise ValueError(
      f"config.optim.phase_ratios={phase_ratios} leave no decay step of "
      f"config.total_steps={total_steps}"
    )
  init_lr = learning_rate * init_lr_scale
  warmup_rate = (learning_rate - init_lr) / warmup if warmup else 0.0
  decay_rate = -math.log(final_lr_scale) / decay

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    after_hold = step - warmup - hold
    return jnp.where(
      step < warmup,
      init_lr + warmup_rate * step,
      jnp.where(
        step < warmup + hold,
        learning_rate,
        jnp.where(
          after_hold <= decay,
          learning_rate * jnp.exp(-decay_rate * after_hold),
          learning_rate * final_lr_scale,
        ),
      ),
    )

  return schedule


# The parameter groups of `make_finetuning_optimizer`.
TRAINED, DELAYED, FROZEN = "trained", "delayed", "frozen"


def _top_level_groups(
  transforms: dict[str, optax.GradientTransformation], group_of: Callable[[str], str]
) -> optax.GradientTransformation:
  """Applies `transforms[group_of(name)]` to each top-level entry `name` of the parameters.

  Unlike `optax.multi_transform`, no leaf is masked: each group's state covers only its
  own entries, so it carries the parameters' logical-axis boxes and no `MaskedNode`s.
  """

  def split(tree: dict) -> dict[str, dict]:
    groups = {group: {} for group in transforms}
    for name, subtree in tree.items():
      groups[group_of(name)][name] = subtree
    return groups

  def init(params):
    return {group: transforms[group].init(part) for group, part in split(params).items()}

  def update(updates, state, params=None):
    parts = split(updates)
    params_parts = split(params) if params is not None else dict.fromkeys(transforms)
    new_updates, new_state = {}, {}
    for group, transform in transforms.items():
      part, new_state[group] = transform.update(parts[group], state[group], params_parts[group])
      new_updates.update(part)
    return new_updates, new_state

  return optax.GradientTransformation(init, update)


def make_finetuning_optimizer(
  optim: ml_collections.ConfigDict, total_steps: int, group_of: Callable[[str], str]
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """fairseq's fine-tuning Adam on the tri-stage schedule, with frozen and delayed groups.

  `group_of` maps each top-level parameter name to TRAINED (updated from the first step),
  DELAYED (updated from step `optim.freeze_finetune_updates` on) or FROZEN (never). A
  parameter that is not updated gets no weight decay and its Adam moments stay unset, as
  in fairseq, where a frozen parameter has no gradient: a delayed group's Adam starts at
  its first update (bias correction included) on the global schedule. Gradients of the
  groups not updated must be zero (the step stops them), since clipping sees all.
  """
  schedule = tri_stage_schedule(
    optim.learning_rate,
    total_steps,
    tuple(optim.phase_ratios),
    optim.init_lr_scale,
    optim.final_lr_scale,
  )

  def adam():
    return optax.chain(
      optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
      optax.add_decayed_weights(optim.weight_decay),
    )

  freeze = optim.freeze_finetune_updates
  groups = _top_level_groups(
    {
      TRAINED: adam(),
      DELAYED: optax.transforms.conditionally_transform(adam(), lambda step: step >= freeze),
      FROZEN: optax.set_to_zero(),
    },
    group_of,
  )
  parts = [groups, optax.scale_by_learning_rate(schedule)]
  if optim.clip_norm > 0:
    parts.insert(0, optax.clip_by_global_norm(optim.clip_norm))
  return optax.chain(*parts), schedule
