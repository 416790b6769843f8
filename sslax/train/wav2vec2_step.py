"""What one pretraining update computes: model, loss, gradient, optimizer.

The step is one jitted function over the global batch. With `grad_accum_steps = A` the
batch is split into A microbatches scanned in sequence; their gradient and metric sums
are added and divided once by the total number of masked frames, which is fairseq's
normalisation by `sample_size` over accumulated updates.

`config.objective.name` picks what is learned: 'wav2vec2' (contrastive, this module),
'bestrq' (random-projection targets, `sslax.train.bestrq_step`) or 'hubert' (k-means
units, `sslax.train.hubert_step`). Everything else is shared by `make_update_step`:
accumulation, the model's non-parameter state, the optimizer. A conformer with batch
norm trains with `mutable=['batch_stats']`; its running statistics are updated once per
step with the mean of the microbatches' updates, and the frozen BEST-RQ quantizer
(`frozen`) is passed through unchanged.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslax.core import sharding, text
from sslax.core import state as state_lib
from sslax.models import backbone, wav2vec2
from sslax.objectives import wav2vec2 as objective
from sslax.train import accumulation, bestrq_step, hubert_step, nonfinite, optim

_INIT_FRAMES = 50  # parameter shapes do not depend on the input length
OBJECTIVES = ("wav2vec2", "bestrq", "hubert")

# loss_fn(params, model_state, microbatch, rng, scalars, train) -> (loss sum, (metric sums,
# updated model_state collections)); `scalars` are the step's per-step values; `train`
# False evaluates (no dropout, argmax codes, running batch statistics).
LossFn = Callable[[Any, dict, dict, jax.Array, dict, bool], tuple[jax.Array, tuple[dict, dict]]]


def _objective_name(config: ml_collections.ConfigDict) -> str:
  name = config.objective.name
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective.name={name!r}; expected one of {OBJECTIVES}")
  return name


def build_model(config: ml_collections.ConfigDict) -> backbone.Backbone:
  """The pretraining model with the config's compute dtype (parameters stay float32)."""
  if _objective_name(config) == "bestrq":
    return bestrq_step.build_model(config)
  if _objective_name(config) == "hubert":
    return hubert_step.build_model(config)
  return wav2vec2.Wav2Vec2(**config.model.to_dict(), dtype=jnp.dtype(config.compute_dtype))


def frames_fn(config: ml_collections.ConfigDict) -> Callable[[int], int]:
  """Frames the model produces for a number of samples; the pipeline masks with it.

  `backbone.num_frames`, the function the model's frontend follows, for either frontend.
  """
  return lambda num_samples: int(backbone.num_frames(num_samples, config.model))


def init_variables_fn(model: backbone.Backbone) -> Callable[[jax.Array], Any]:
  """rng -> every boxed variable collection (with logical axis names) of the model, from a
  short dummy utterance."""
  num_samples = 320 * _INIT_FRAMES + 80
  num_frames = int(backbone.num_frames(num_samples, model))
  extra = {"gumbel_temperature": 1.0} if isinstance(model, wav2vec2.Wav2Vec2) else {}

  def init(rng: jax.Array) -> Any:
    params_rng, dropout_rng, gumbel_rng = jax.random.split(rng, 3)
    return model.init(
      {"params": params_rng, "dropout": dropout_rng, "gumbel": gumbel_rng},
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_frames), bool),
      train=False,
      **extra,
    )

  return init


def init_params_fn(model: backbone.Backbone) -> Callable[[jax.Array], Any]:
  """rng -> boxed parameters (with logical axis names)."""
  init = init_variables_fn(model)
  return lambda rng: init(rng)["params"]


def gumbel_temperature(gumbel: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """fairseq's schedule: max(start * decay**step, end), per optimizer update."""
  return jnp.maximum(gumbel.start * gumbel.decay ** step.astype(jnp.float32), gumbel.end)


def wav2vec2_loss_fn(
  model: wav2vec2.Wav2Vec2, config: ml_collections.ConfigDict, num_shards: int
) -> LossFn:
  """The contrastive objective as a `LossFn`; scalars hold `gumbel_temperature`.

  `num_shards` is the data-parallel size: each microbatch's rows split into that many
  blocks, one per device, and each block gets its own codebook perplexity, as each GPU
  does in fairseq (`objective.diversity_sums`).
  """
  obj = config.objective

  def loss_fn(params, model_state, microbatch, rng, scalars, train=True):
    dropout_rng, gumbel_rng, negatives_rng = jax.random.split(rng, 3)
    outputs, updates = state_lib.apply_train(
      model,
      params,
      model_state,
      microbatch["audio"],
      microbatch["audio_paddings"],
      microbatch["mask"],
      train=train,
      gumbel_temperature=scalars["gumbel_temperature"],
      rngs={"dropout": dropout_rng, "gumbel": gumbel_rng},
    )
    negatives = objective.sample_negatives(negatives_rng, microbatch["mask"], obj.num_negatives)
    loss_sum, sums = objective.wav2vec2_loss(
      outputs,
      microbatch["mask"],
      negatives,
      logit_temp=obj.logit_temp,
      diversity_weight=obj.diversity_weight,
      feature_penalty_weight=obj.feature_penalty_weight,
      num_shards=num_shards,
    )
    return loss_sum, (sums, updates)

  return loss_fn


def objective_fns(
  model: backbone.Backbone, config: ml_collections.ConfigDict, num_shards: int
) -> tuple[LossFn, Callable[[jax.Array], dict]]:
  """(the `LossFn` of `config.objective`, step -> its per-step scalars)."""
  if _objective_name(config) == "bestrq":
    return bestrq_step.loss_fn(model), lambda step: {}
  if _objective_name(config) == "hubert":
    return hubert_step.loss_fn(model, config), lambda step: {}

  def scalars(step):
    return {"gumbel_temperature": gumbel_temperature(config.gumbel, step)}

  return wav2vec2_loss_fn(model, config, num_shards), scalars


def make_update_step(
  loss_fn: LossFn,
  step_scalars: Callable[[jax.Array], dict],
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  grad_accum_steps: int,
  *,
  denominator: str = "masked_frames",
) -> Callable[[state_lib.TrainState, dict, jax.Array], tuple[state_lib.TrainState, dict]]:
  """The update every objective shares, CTC fine-tuning's too: `step(state, batch, rng)`.

  Gradients and metric sums of `loss_fn` over `grad_accum_steps` microbatches
  (`accumulation.summed_grads`), divided by the summed metric `denominator` (pretraining:
  `masked_frames`, fairseq's sample_size; CTC: `utterances`); updated model state
  collections are averaged over the microbatches; metrics are the sums plus
  `step_scalars(step)` and per-step learning rate, grad norm and audio samples.
  """
  accum = grad_accum_steps
  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state: state_lib.TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    scalars = step_scalars(state.step)

    def microbatch_grads(params, microbatch, microbatch_rng):
      return grad_fn(params, state.model_state, microbatch, microbatch_rng, scalars)

    grads, (sums, updates) = accumulation.summed_grads(
      microbatch_grads, state.params, batch, rng, accum
    )
    updates = jax.tree.map(lambda total: total / accum, updates)
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums[denominator], 1.0), grads)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    metrics = dict(
      sums,
      **scalars,
      audio_samples=jnp.sum(1.0 - batch["audio_paddings"]),
      learning_rate=schedule(state.step),
      grad_norm=optax.tree.norm(grads),
    )
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      model_state=dict(state.model_state, **updates),
    )
    return new_state, metrics

  return step


def make_train_step(
  model: backbone.Backbone,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
  num_shards: int,
) -> Callable[[state_lib.TrainState, dict, jax.Array], tuple[state_lib.TrainState, dict]]:
  """Returns `step(state, batch, rng) -> (new_state, metrics)` (not yet jitted).

  `batch` holds audio f32[B,S], audio_paddings f32[B,S] and mask bool[B,F] (HuBERT: and
  labels i32[B,L]); metrics are sums over the batch (see `sslax.objectives.wav2vec2`,
  `.bestrq` or `.hubert`) plus per-step scalars. `num_shards`: the data-parallel shards
  of each microbatch, over which wav2vec 2.0's diversity term is computed per shard
  (`wav2vec2_loss_fn`; BEST-RQ and HuBERT ignore it).
  """
  loss_fn, scalars = objective_fns(model, config, num_shards)
  return make_update_step(loss_fn, scalars, tx, schedule, config.grad_accum_steps)


def make_eval_step(
  model: backbone.Backbone, config: ml_collections.ConfigDict, num_shards: int
) -> Callable[[state_lib.TrainState, dict, jax.Array], dict]:
  """Returns `evaluate(state, batch, rng) -> metric sums` (not yet jitted): the objective
  on a held-out batch with the model in evaluation mode (fairseq's valid subset: no
  dropout, argmax codes, the same masks and distractors), the state unchanged."""
  loss_fn, scalars = objective_fns(model, config, num_shards)

  def evaluate(state: state_lib.TrainState, batch: dict, rng: jax.Array) -> dict:
    _, (sums, _) = loss_fn(
      state.params, state.model_state, batch, rng, scalars(state.step), train=False
    )
    return dict(sums, audio_samples=jnp.sum(1.0 - batch["audio_paddings"]))

  return evaluate


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything needed to run sharded updates of `config` on `mesh`.

  init_fn: rng -> TrainState (jit it with `out_shardings=state_shardings`, or call
    `state.init_state`).
  abstract_state: the TrainState's shapes and dtypes, unallocated.
  state_shardings: NamedShardings of the TrainState, from the logical rules.
  step: jitted `(state, global batch, rng) -> (state, metrics)`, state donated (CTC
    fine-tuning with a freeze phase: `ctc_step.PhasedStep`, two such programs); call it
    inside `sharding.activate(mesh)`. With `config.nonfinite = 'skip'` it keeps the state
    of a step with a non-finite loss or gradient (`sslax.train.nonfinite.guard`).
  vocab: a CTC model's vocabulary (fine-tuning; `config.init_from` aligns a CTC source's
    head to it), else None.
  evaluate: jitted `(state, global batch, rng) -> metric sums` of the objective on a
    held-out batch (`make_eval_step`), or None where the job has none.
  score_split: for a job that validates by decoding a whole split instead (CTC
    fine-tuning: WER and CER), `split -> (state -> host metric sums)`; else None.
  """

  model: backbone.Backbone
  schedule: optax.Schedule
  init_fn: Callable[[jax.Array], state_lib.TrainState]
  abstract_state: state_lib.TrainState
  state_shardings: Any
  step: Any
  vocab: text.Vocabulary | None = None
  evaluate: Any = None
  score_split: Callable[[str], Callable[[state_lib.TrainState], dict[str, float]]] | None = None


def build_trainer(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, num_shards: int | None = None
) -> Trainer:
  """Model, optimizer, state shardings and the jitted step: one assembly for every user.

  `num_shards`: the data-parallel shards wav2vec 2.0's diversity term is computed over
  (one perplexity per shard and microbatch, as per GPU in fairseq); by default the mesh's
  `sharding.data_parallel_size`. Another value reproduces the loss of a run on that many
  devices on this mesh (e.g. a single-device check of a sharded run).
  """
  if num_shards is None:
    num_shards = sharding.data_parallel_size(mesh)
  model = build_model(config)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  init_fn, abstract_state, state_shardings = state_lib.abstract_state_and_shardings(
    init_variables_fn(model), tx, mesh, all_collections=True
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(
    nonfinite.guard(make_train_step(model, tx, schedule, config, num_shards), config.nonfinite),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )
  evaluate = jax.jit(
    make_eval_step(model, config, num_shards),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
    out_shardings=replicated,
  )
  return Trainer(model, schedule, init_fn, abstract_state, state_shardings, step, None, evaluate)
