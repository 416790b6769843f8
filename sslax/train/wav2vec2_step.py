"""What one wav2vec 2.0 pretraining update computes: model, loss, gradient, optimizer.

The step is one jitted function over the global batch. With `grad_accum_steps = A` the
batch is split into A microbatches scanned in sequence; their gradient and metric sums
are added and divided once by the total number of masked frames, which is fairseq's
normalisation by `sample_size` over accumulated updates.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslax.models import frontends, wav2vec2
from sslax.objectives import wav2vec2 as objective
from sslax.train import optim, sharding
from sslax.train import state as state_lib

_INIT_FRAMES = 50  # parameter shapes do not depend on the input length


def build_model(config: ml_collections.ConfigDict) -> wav2vec2.Wav2Vec2:
  """The pretraining model with the config's compute dtype (parameters stay float32)."""
  return wav2vec2.Wav2Vec2(**config.model.to_dict(), dtype=jnp.dtype(config.compute_dtype))


def frames_fn(config: ml_collections.ConfigDict) -> Callable[[int], int]:
  """Frames the model produces for a number of samples; the pipeline masks with it."""
  conv_layers = tuple(tuple(layer) for layer in config.model.conv_layers)
  return lambda num_samples: int(frontends.num_frames(num_samples, conv_layers))


def init_params_fn(model: wav2vec2.Wav2Vec2) -> Callable[[jax.Array], Any]:
  """rng -> boxed parameters (with logical axis names), from a short dummy utterance."""
  num_samples = 320 * _INIT_FRAMES + 80
  num_frames = int(frontends.num_frames(num_samples, model.conv_layers))

  def init(rng: jax.Array) -> Any:
    params_rng, dropout_rng, gumbel_rng = jax.random.split(rng, 3)
    variables = model.init(
      {"params": params_rng, "dropout": dropout_rng, "gumbel": gumbel_rng},
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_frames), bool),
      train=False,
      gumbel_temperature=1.0,
    )
    return variables["params"]

  return init


def gumbel_temperature(gumbel: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """fairseq's schedule: max(start * decay**step, end), per optimizer update."""
  return jnp.maximum(gumbel.start * gumbel.decay ** step.astype(jnp.float32), gumbel.end)


def make_train_step(
  model: wav2vec2.Wav2Vec2,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
) -> Callable[[state_lib.TrainState, dict, jax.Array], tuple[state_lib.TrainState, dict]]:
  """Returns `step(state, batch, rng) -> (new_state, metrics)` (not yet jitted).

  `batch` holds audio f32[B,S], audio_paddings f32[B,S] and mask bool[B,F]; metrics are
  sums over the batch (see `sslax.objectives.wav2vec2`) plus per-step scalars.
  """
  accum = config.grad_accum_steps
  obj = config.objective

  def loss_fn(params, microbatch, rng, temperature):
    dropout_rng, gumbel_rng, negatives_rng = jax.random.split(rng, 3)
    outputs = model.apply(
      {"params": params},
      microbatch["audio"],
      microbatch["audio_paddings"],
      microbatch["mask"],
      train=True,
      gumbel_temperature=temperature,
      rngs={"dropout": dropout_rng, "gumbel": gumbel_rng},
    )
    negatives = objective.sample_negatives(negatives_rng, microbatch["mask"], obj.num_negatives)
    return objective.wav2vec2_loss(
      outputs,
      microbatch["mask"],
      negatives,
      logit_temp=obj.logit_temp,
      diversity_weight=obj.diversity_weight,
      feature_penalty_weight=obj.feature_penalty_weight,
    )

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state: state_lib.TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    temperature = gumbel_temperature(config.gumbel, state.step)
    if accum == 1:
      grads, sums = grad_fn(state.params, batch, rng, temperature)
    else:
      # Rows j*A + a form microbatch a, so each device keeps its own rows (no resharding).
      micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch
      )

      def accumulate(carry, xs):
        microbatch, index = xs
        grads, sums = grad_fn(state.params, microbatch, jax.random.fold_in(rng, index), temperature)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(
        jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, rng, temperature)
      )
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum)))
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["masked_frames"], 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(
      sums,
      audio_samples=jnp.sum(1.0 - batch["audio_paddings"]),
      learning_rate=schedule(state.step),
      gumbel_temperature=temperature,
      grad_norm=optax.tree.norm(grads),
    )
    new_state = state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything needed to run sharded updates of `config` on `mesh`.

  init_fn: rng -> TrainState (jit it with `out_shardings=state_shardings`, or call
    `state.init_state`).
  abstract_state: the TrainState's shapes and dtypes, unallocated.
  state_shardings: NamedShardings of the TrainState, from the logical rules.
  step: jitted `(state, global batch, rng) -> (state, metrics)`, state donated; call it
    inside `sharding.activate(mesh)`.
  """

  model: wav2vec2.Wav2Vec2
  schedule: optax.Schedule
  init_fn: Callable[[jax.Array], state_lib.TrainState]
  abstract_state: state_lib.TrainState
  state_shardings: Any
  step: Any


def build_trainer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Trainer:
  """Model, optimizer, state shardings and the jitted step: one assembly for every user."""
  model = build_model(config)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  init_fn, abstract_state, state_shardings = state_lib.abstract_state_and_shardings(
    init_params_fn(model), tx, mesh
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(
    make_train_step(model, tx, schedule, config),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )
  return Trainer(model, schedule, init_fn, abstract_state, state_shardings, step)
