"""The pretrain and finetune jobs: mesh -> data -> state and step -> restore -> loop.

One loop for every host: each process reads its own part of the data and feeds it to
the same jitted, sharded step. Metrics of step N are read after step N+1 is dispatched,
so the host never waits on the device except when saving.
"""

from collections.abc import Callable
import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslax import init_from
from sslax.core import checkpoints, sharding, workdirs
from sslax.core import state as state_lib
from sslax.data import hubert_stream, pretraining_stream, schedule, unit_labels
from sslax.train import best, diagnosis, metrics, nonfinite, wav2vec2_step
from sslax.train import preemption as preemption_lib


def pretraining_setup(
  config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[pretraining_stream.PretrainingStream, wav2vec2_step.Trainer]:
  """The pretraining job's input stream and trainer (HuBERT's stream adds its units)."""
  del workdir  # pretraining keeps nothing there besides what the loop writes
  args = (config.data, config.masking, wav2vec2_step.frames_fn(config))
  kwargs = dict(
    seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count()
  )
  if config.objective.name == "hubert":
    units = unit_labels.UnitLabels.from_config(config)
    stream = hubert_stream.HubertStream(*args, units, **kwargs)
  else:
    stream = pretraining_stream.PretrainingStream(*args, **kwargs)
  return stream, wav2vec2_step.build_trainer(config, mesh)


# `setup(config, workdir, mesh) -> (stream, trainer)`: what a training job trains on and
# how; the stream has `batches(position)`, the trainer is a `wav2vec2_step.Trainer`.
Setup = Callable[[ml_collections.ConfigDict, str, jax.sharding.Mesh], tuple[Any, Any]]


def train(
  config: ml_collections.ConfigDict, workdir: str, setup: Setup = pretraining_setup
) -> None:
  """Trains as `config` says, resuming from workdir's latest checkpoint.

  `setup` gives the job's stream and trainer: wav2vec 2.0 pretraining by default,
  `sslax.train.ctc_step.finetuning_setup` for CTC fine-tuning. Settings that cannot work
  (mesh, batch, non-finite handling, a checkpoint of another model) stop the run before
  it writes anything, with a message naming what to change.
  """
  nonfinite.check_config(config)
  is_primary = jax.process_index() == 0

  # ---- Mesh ------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  shards = sharding.data_parallel_size(mesh)
  schedule.check_batch_shards(config.data, shards * config.grad_accum_steps)
  check_processes_hold_own_batch_shards(mesh)
  logging.info("mesh %s over %d processes", dict(mesh.shape), jax.process_count())

  # ---- Data, state and step --------------------------------------------------------
  stream, trainer = setup(config, workdir, mesh)
  logging.info("%d parameters", state_lib.count_parameters(trainer.abstract_state.params))
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  validation = Validation.from_config(config, stream, trainer, mesh)
  watch = diagnosis.Diagnosis.for_config(config)

  # ---- Restore, then loop ------------------------------------------------------------
  # Everything that owns threads or handlers is closed on every exit path, errors included:
  # the input stream's readers, orbax's savers (closing lets the last good save finish),
  # the SIGTERM handler and the TensorBoard writer.
  with (
    checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints, clean_up=True) as checkpointer,
    best.BestCheckpoint(workdir, validation.split, config.valid.best_metric)
    if validation is not None and validation.by_wer
    else contextlib.nullcontext() as best_checkpoint,
  ):
    latest = checkpointer.latest_step()
    if latest is None:
      state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
      data_state, consecutive_skips = {"position": 0}, 0
      if config.init_from:
        state, newly_initialised = init_from.initial_state(
          state, trainer.state_shardings, config.init_from, trainer.vocab, config.model
        )
        logging.info(
          "initialised from %s; newly initialised: %s", config.init_from, newly_initialised
        )
    else:
      try:
        state, data_state = checkpointer.restore(
          latest, trainer.abstract_state, trainer.state_shardings
        )
      except checkpoints.IncompatibleCheckpointError as error:
        raise checkpoints.IncompatibleCheckpointError(
          f"{error}\n{_what_to_change(workdir, config)}"
        ) from None
      # Absent from checkpoints written before updates could be skipped.
      consecutive_skips = data_state.pop(_CONSECUTIVE_SKIPS, 0)
      logging.info("resumed from checkpoint %d at input position %s", latest, data_state)
    step = int(jax.device_get(state.step))
    workdirs.write_config(config, workdir)

    monitor = nonfinite.Monitor(config.nonfinite, config.max_consecutive_skips, consecutive_skips)
    pending = None  # (step, device metrics, data position) of a step, read one step late
    with (
      metrics.MetricsLogger(
        workdir, total_steps=config.total_steps, log_every=config.log_every, is_primary=is_primary
      ) as logger,
      preemption_lib.PreemptionWatch() as preemption,
      stream.batches(data_state["position"]) as batches,
      sharding.activate(mesh),
    ):
      logger.truncate_after(step)
      while step < config.total_steps:
        host_batch, data_state = next(batches)
        batch = sharding.global_batch(host_batch, mesh)
        state, step_metrics = trainer.step(state, batch, step_rng)
        step += 1
        if pending is not None:
          _log(logger, monitor, checkpointer, watch, *pending)
        pending = (step, step_metrics, data_state["position"])
        preempted = preemption.reached(step)
        if preempted or step % config.checkpoint_every == 0 or step == config.total_steps:
          # Never checkpoint a non-finite step.
          _log(logger, monitor, checkpointer, watch, *pending)
          pending = None
          if step == config.total_steps:
            logging.info("writing final checkpoint at step %d", step)  # saving takes a while
          checkpointer.save(step, state, {**data_state, _CONSECUTIVE_SKIPS: monitor.consecutive})
        if validation is not None and validation.due(step, config.total_steps):
          summary = validation.run(state, step, logger)
          if best_checkpoint is not None:
            best_checkpoint.offer(step, state, summary)
        if preempted:
          logging.warning(
            "preempted: checkpoint %d written; run the same command again to resume", step
          )
          break
      if pending is not None:
        _log(logger, monitor, checkpointer, watch, *pending)


def check_processes_hold_own_batch_shards(mesh: jax.sharding.Mesh) -> None:
  """Raises ValueError, naming config.mesh, unless every process holds its own equal share
  of the mesh's batch shards: each process reads its own rows of every global batch
  (`sharding.global_batch`), so a batch shard whose devices span processes (a `tensor`
  axis wider than one process's devices) would be assembled from different rows."""
  batch_axes = dict(sharding.LOGICAL_AXIS_RULES)["batch"]
  positions = [mesh.axis_names.index(name) for name in batch_axes]
  held: dict[int, set] = {}
  for index, device in np.ndenumerate(mesh.devices):
    held.setdefault(device.process_index, set()).add(tuple(index[i] for i in positions))
  total = math.prod(mesh.shape[name] for name in batch_axes)
  # Equal shares that add up to all shards are disjoint.
  even = all(len(shards) * len(held) == total for shards in held.values())
  if not even or len(set().union(*held.values())) != total:
    raise ValueError(
      f"config.mesh resolves to {dict(mesh.shape)}, whose {total} batch shards (data x fsdp) "
      f"do not split evenly over the {len(held)} processes: each process reads its own rows, "
      "so each must hold its own batch shards. Change config.mesh so that tensor spans no "
      "more devices than one process has"
    )


# The data item's count of updates skipped in a row (`config.nonfinite = 'skip'`), so a
# resumed run stops after as many further skips as an uninterrupted one.
_CONSECUTIVE_SKIPS = "consecutive_skips"


def _log(logger, monitor, checkpointer, watch, step, device_metrics, data_position) -> None:
  """Reads a finished step's metrics and logs them; stops the run on a non-finite step
  (`config.nonfinite`), naming the step and where to resume; has a reported summary
  checked for a plateau or a collapse (`watch`, when the objective has one)."""
  host = jax.device_get(device_metrics)
  monitor.check(step, host, checkpointer.latest_step)
  summary = logger.add(step, host, data_position)
  if summary is not None and watch is not None:
    watch.check(step, summary)


@dataclasses.dataclass(frozen=True)
class Validation:
  """The held-out check of `config.valid`, every `every` updates and after the last: the
  objective in evaluation mode on the first `config.valid.batches` global batches of the
  training stream's `held_out(split)` (the same batches every time), or, for a trainer
  with `score_split` (CTC fine-tuning), greedy decoding of the whole split: WER and CER
  (`by_wer`, which keeps the best checkpoint, sslax/train/best.py).

  `sums`: state -> host metric sums, which `metrics.summarize` reports.
  """

  split: str
  every: int
  sums: Callable[[Any], dict[str, float]]
  by_wer: bool

  @classmethod
  def from_config(cls, config, stream, trainer, mesh) -> "Validation | None":
    """None when `config.valid` validates never; raises ValueError naming the field when
    the job has no way to validate or the split cannot be read (too few examples for a
    global batch, among others)."""
    valid = config.valid
    if not valid.split or not valid.every:
      return None
    if trainer.score_split is None and trainer.evaluate is None:
      raise ValueError(
        f"config.valid.split={valid.split!r}: this job has no held-out objective to "
        "validate with; set config.valid.split=''"
      )
    if trainer.score_split is not None and valid.batches:
      raise ValueError(
        f"config.valid.batches={valid.batches}: this job validates on the whole split; "
        f"set it to 0 and take part of the split with a split expression instead (e.g. "
        f"config.valid.split='{valid.split}[:64]')"
      )
    try:
      if trainer.score_split is not None:
        sums = trainer.score_split(valid.split)
        batches = "greedy decoding of every utterance (WER, CER)"
      else:
        held_out = stream.held_out(valid.split)
        num_batches = valid.batches or len(held_out.schedule.usable) // config.data.batch_size
        rng = jax.random.key(config.seed + 1)  # the same distractors every time
        sums = functools.partial(
          _objective_sums, held_out, num_batches, trainer.evaluate, mesh, rng
        )
        batches = f"{num_batches} global batches"
    except ValueError as error:
      raise ValueError(f"config.valid.split={valid.split!r}: {error}") from None
    logging.info(
      "validating on %s:%s every %d updates: %s",
      config.data.name,
      valid.split,
      valid.every,
      batches,
    )
    return cls(valid.split, valid.every, sums, trainer.score_split is not None)

  def due(self, step: int, total_steps: int) -> bool:
    return step % self.every == 0 or step == total_steps

  def run(self, state, step: int, logger: metrics.MetricsLogger) -> dict[str, float]:
    """Evaluates `state` (after update `step`), logs the result and returns its summary."""
    start = time.perf_counter()
    sums = self.sums(state)
    return logger.add_validation(step, self.split, sums, time.perf_counter() - start)


def _objective_sums(stream, num_batches, evaluate, mesh, rng, state) -> dict[str, float]:
  """Host sums of the objective (`evaluate`) over the first `num_batches` of `stream`."""
  total = None
  with stream.batches(0, num_batches) as batches:
    for host_batch, _ in batches:
      sums = evaluate(state, sharding.global_batch(host_batch, mesh), rng)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  return {name: float(value) for name, value in jax.device_get(total).items()}


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _what_to_change(workdir: str, config: ml_collections.ConfigDict) -> str:
  """How a config differs from the workdir's config.json (the run that wrote the
  checkpoints) and what to do about it."""
  path = os.path.join(workdir, workdirs.CONFIG_FILE)
  advice = (
    "Resume with the config that wrote the checkpoint, or train this config in a new --workdir."
  )
  if not os.path.exists(path):
    return advice
  with open(path) as f:
    written = _flat(json.load(f))
  current = _flat(json.loads(config.to_json_best_effort()))
  missing = "(absent)"
  changes = [
    f"config.{key}: {written.get(key, missing)} there, {current.get(key, missing)} here"
    for key in sorted(written.keys() | current.keys())
    if written.get(key, missing) != current.get(key, missing)
  ]
  if not changes:
    return advice
  return f"This config differs from {path} in:\n  " + "\n  ".join(changes) + "\n" + advice
