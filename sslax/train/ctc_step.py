"""What one CTC fine-tuning update computes, and the fine-tuning job's stream and trainer.

As fairseq's `wav2vec_ctc` fine-tuning: with `model.feature_grad_mult` 0 (fairseq's
setting) the feature encoder never trains (its parameters get no gradient, no update and
no weight decay); a positive value trains it with the Transformer, its gradient scaled by
that value, as a model trained from scratch needs. For the first
`optim.freeze_finetune_updates` updates only `lm_head` trains (the rest runs forward
with dropout, layerdrop and masks but gets no gradient, so its backward pass is skipped);
time masks, channel masks and layerdrop apply in training; the summed CTC loss's gradient
is divided by the number of utterances (`sentence_avg`), over all microbatches when
`grad_accum_steps` > 1.

A conformer with batch norm in its convolution modules keeps its running statistics in
`TrainState.model_state['batch_stats']` (loaded from the pretrained run by
`config.init_from`). Training normalises with the batch's statistics and updates the
running ones in both phases, as fairseq's model, in training mode under `no_grad` during
the freeze, does; the microbatches' updates are averaged. The update itself (accumulation,
model state, optimizer) is pretraining's, `sslax.train.wav2vec2_step.make_update_step`,
with the CTC loss and its denominator. Validation and evaluation decode with the running
statistics.
"""

from collections.abc import Callable
import dataclasses
import functools
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslax.core import sharding, text
from sslax.core import state as state_lib
from sslax.data import labelled
from sslax.models import backbone, ctc
from sslax.objectives import ctc as objective
from sslax.train import ctc_decode, nonfinite, optim, wav2vec2_step

VOCAB_FILE = "vocab.json"
# Top-level parameter names: the feature encoder and the head trained from step 0.
FRONTEND, HEAD = "frontend", "lm_head"
_INIT_FRAMES = 50  # parameter shapes do not depend on the input length


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> ctc.Wav2Vec2ForCTC:
  """The CTC model with the config's compute dtype (parameters stay float32), `vocab_size`
  tokens (it overrides a `config.model.vocab_size`)."""
  if config.model.feature_grad_mult < 0:
    raise ValueError(
      f"config.model.feature_grad_mult={config.model.feature_grad_mult}: must be 0 (a frozen "
      "feature encoder, as fairseq fine-tunes) or positive (it trains, gradient scaled by it)"
    )
  fields = dict(config.model.to_dict(), vocab_size=vocab_size)
  return ctc.Wav2Vec2ForCTC(**fields, dtype=jnp.dtype(config.compute_dtype))


def init_variables_fn(model: ctc.Wav2Vec2ForCTC) -> Callable[[jax.Array], Any]:
  """rng -> every boxed variable collection (with logical axis names): 'params', mask
  embedding included, and a batch-norm conformer's 'batch_stats'."""
  num_samples = 320 * _INIT_FRAMES + 80
  num_frames = int(backbone.num_frames(num_samples, model))

  def init(rng: jax.Array) -> Any:
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init(
      {"params": params_rng, "dropout": dropout_rng},
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_frames), bool),
      train=False,
    )

  return init


def frontend_trains(config: ml_collections.ConfigDict) -> bool:
  """Whether the feature encoder trains (after the freeze, with the Transformer)."""
  return config.model.feature_grad_mult > 0


def param_group(name: str, train_frontend: bool) -> str:
  """The optimizer group of a top-level parameter: lm_head TRAINED, the Transformer side
  DELAYED, the frontend DELAYED if `train_frontend` else FROZEN."""
  if name == FRONTEND and not train_frontend:
    return optim.FROZEN
  return optim.TRAINED if name == HEAD else optim.DELAYED


def trained_params(params: dict, config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The top-level parameters that get a gradient after the freeze phase: all but a
  frozen feature encoder."""
  frozen = set() if frontend_trains(config) else {FRONTEND}
  return tuple(sorted(set(params) - frozen))


def make_loss_fn(model: ctc.Wav2Vec2ForCTC) -> Callable[..., tuple[jax.Array, tuple]]:
  """Returns `loss_fn(params, model_state, microbatch, rng, trained) -> (loss, (sums,
  updates))`: the summed CTC loss (`sslax.objectives.ctc.ctc_loss`) of a training forward
  pass (dropout, layerdrop, the microbatch's time and channel masks) of the `microbatch`
  (keys as `make_train_step`'s batch) and the updated running statistics (`model_state`'s
  mutable collections; {} without batch norm); the top-level parameters outside `trained`
  are constants."""

  def loss_fn(params, model_state, microbatch, rng, trained):
    # Parameters outside `trained` are constants: no gradient, and no backward pass
    # through parts that only they feed (the whole feature encoder).
    params = {
      name: value if name in trained else jax.lax.stop_gradient(value)
      for name, value in params.items()
    }
    (logits_BxFxV, frame_paddings_BxF), updates = state_lib.apply_train(
      model,
      params,
      model_state,
      microbatch["audio"],
      microbatch["audio_paddings"],
      microbatch["mask"],
      microbatch["channel_mask"],
      train=True,
      rngs={"dropout": rng},
    )
    loss, sums = objective.ctc_loss(
      logits_BxFxV, frame_paddings_BxF, microbatch["labels"], microbatch["label_paddings"]
    )
    return loss, (sums, updates)

  return loss_fn


def make_train_step(
  model: ctc.Wav2Vec2ForCTC,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
  *,
  head_only: bool = False,
) -> Callable[[state_lib.TrainState, dict, jax.Array], tuple[state_lib.TrainState, dict]]:
  """Returns `step(state, batch, rng) -> (new_state, metrics)` (not yet jitted): the update
  of the freeze phase (only lm_head gets a gradient) if `head_only`, else the update after it.

  `batch` holds audio f32[B,S], audio_paddings f32[B,S], mask bool[B,F], channel_mask
  bool[B,D], labels i32[B,L] and label_paddings f32[B,L]; metrics are the sums of
  `sslax.objectives.ctc.ctc_loss` plus per-step scalars.
  """
  ctc_loss = make_loss_fn(model)

  def loss_fn(params, model_state, microbatch, rng, scalars, train=True):
    del scalars, train  # none per step; always a training pass
    trained = (HEAD,) if head_only else trained_params(params, config)
    return ctc_loss(params, model_state, microbatch, rng, trained)

  return wav2vec2_step.make_update_step(
    loss_fn,
    lambda step: {},
    tx,
    schedule,
    config.grad_accum_steps,
    denominator="utterances",
  )


def build_trainer(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, vocab_size: int
) -> wav2vec2_step.Trainer:
  """Model, optimizer, state shardings and the jitted step (the pretraining Trainer's shape)."""
  model = build_model(config, vocab_size)
  group_of = functools.partial(param_group, train_frontend=frontend_trains(config))
  tx, schedule = optim.make_finetuning_optimizer(config.optim, config.total_steps, group_of)
  init_fn, abstract_state, state_shardings = state_lib.abstract_state_and_shardings(
    init_variables_fn(model), tx, mesh, all_collections=True
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def jitted_step(head_only: bool):
    return jax.jit(
      nonfinite.guard(
        make_train_step(model, tx, schedule, config, head_only=head_only), config.nonfinite
      ),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0,
    )

  step = jitted_step(head_only=False)
  if config.optim.freeze_finetune_updates > 0:
    step = PhasedStep(jitted_step(head_only=True), step, config.optim.freeze_finetune_updates)
  return wav2vec2_step.Trainer(model, schedule, init_fn, abstract_state, state_shardings, step)


class PhasedStep:
  """`step(state, batch, rng)` that runs `head_only` for the updates before `freeze` and
  `full` from then on: two programs, chosen on the host.

  Not one program with a `lax.cond` between the phases: such a step (configs/demo_ctc.py:tiny,
  with dropout and layerdrop), whose branches both hold the sharded gradient's collectives,
  deadlocked XLA:CPU's 8 devices on its first execution when loaded from a persistent
  compilation cache (jax 0.10.2: "Termination timeout for all reduce", half the devices
  waiting at another all-reduce), while the same program freshly compiled ran. Two
  programs also compile only the phases a run reaches (a run resumed after the freeze
  never compiles the head-only one). The update index is read from the state once (one
  device-to-host copy of a scalar), then counted on the host for the states this step
  returns, so dispatch stays asynchronous.
  """

  def __init__(self, head_only: Callable, full: Callable, freeze: int):
    self.head_only, self.full, self.freeze = head_only, full, freeze
    self._returned: state_lib.TrainState | None = None  # the last state returned
    self._returned_step = 0  # its update index

  def __call__(self, state: state_lib.TrainState, batch: dict, rng: jax.Array):
    step = self._returned_step if state is self._returned else int(jax.device_get(state.step))
    new_state, metrics = (self.head_only if step < self.freeze else self.full)(state, batch, rng)
    self._returned, self._returned_step = new_state, step + 1
    return new_state, metrics


def vocabulary(data: ml_collections.ConfigDict, workdir: str) -> text.Vocabulary:
  """The run's vocabulary: `workdir/vocab.json` if present, else built from the transcripts
  of the whole `data.split` (not only the labelled subset) and saved there."""
  path = os.path.join(workdir, VOCAB_FILE)
  if os.path.exists(path):
    vocab = text.Vocabulary.load(path)
    logging.info("vocabulary of %d tokens from %s", len(vocab), path)
    return vocab
  _, transcripts = labelled.split_transcripts(
    data.name, data.split, data.data_dir, data.text_key, data.id_key
  )
  vocab = text.Vocabulary.build(transcripts)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    vocab.save(path)
  logging.info("vocabulary of %d tokens built from %s:%s", len(vocab), data.name, data.split)
  return vocab


def finetuning_setup(
  config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[labelled.FinetuningStream, wav2vec2_step.Trainer]:
  """The fine-tuning job's input stream and trainer (`sslax.loop.train`'s `setup`).

  The trainer validates (`config.valid`) by greedy decoding of a whole split of
  `config.data.name`, `config.eval.batch_size` utterances at a time: WER and CER.
  """
  vocab = vocabulary(config.data, workdir)
  stream = labelled.FinetuningStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    vocab,
    channels=config.model.embed_dim,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  trainer = build_trainer(config, mesh, len(vocab))

  def score_split(split: str) -> Callable[[state_lib.TrainState], dict[str, float]]:
    decoder = ctc_decode.SplitDecoder(
      config.data,
      split,
      config.eval.batch_size,
      trainer.model,
      state_lib.variables(trainer.state_shardings),
      vocab,
      mesh,
    )
    return lambda state: ctc_decode.edit_sums(decoder.results(state_lib.variables(state)))

  return stream, dataclasses.replace(trainer, vocab=vocab, score_split=score_split)
