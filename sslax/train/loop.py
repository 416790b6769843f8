"""The training loop: mesh -> data -> state and step -> restore -> loop.

One loop for every host: each process reads its own part of the data and feeds it to
the same jitted, sharded step. Metrics of step N are read after step N+1 is dispatched,
so the host never waits on the device except when saving.
"""

from collections.abc import Callable
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from sslax.data import pipeline
from sslax.train import checkpoints, init_from, metrics, sharding, wav2vec2_step
from sslax.train import preemption as preemption_lib
from sslax.train import state as state_lib


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `workdir/config.json` atomically (primary process only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def pretraining_setup(
  config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[pipeline.PretrainingStream, wav2vec2_step.Trainer]:
  """The wav2vec 2.0 pretraining job's input stream and trainer."""
  del workdir  # pretraining keeps nothing there besides what the loop writes
  stream = pipeline.PretrainingStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  return stream, wav2vec2_step.build_trainer(config, mesh)


# `setup(config, workdir, mesh) -> (stream, trainer)`: what a training job trains on and
# how; the stream has `batches(position)`, the trainer is a `wav2vec2_step.Trainer`.
Setup = Callable[[ml_collections.ConfigDict, str, jax.sharding.Mesh], tuple[Any, Any]]


def train(
  config: ml_collections.ConfigDict, workdir: str, setup: Setup = pretraining_setup
) -> None:
  """Trains as `config` says, resuming from workdir's latest checkpoint.

  `setup` gives the job's stream and trainer: wav2vec 2.0 pretraining by default,
  `sslax.train.ctc_step.finetuning_setup` for CTC fine-tuning.
  """
  write_config(config, workdir)
  is_primary = jax.process_index() == 0

  # ---- Mesh ------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  shards = sharding.data_parallel_size(mesh)
  pipeline.check_batch_shards(config.data, shards * config.grad_accum_steps)
  logging.info("mesh %s over %d processes", dict(mesh.shape), jax.process_count())

  # ---- Data, state and step --------------------------------------------------------
  stream, trainer = setup(config, workdir, mesh)
  logging.info("%d parameters", state_lib.count_parameters(trainer.abstract_state.params))
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))

  # ---- Restore ---------------------------------------------------------------------
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is None:
    state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
    data_state = {"position": 0}
    if config.init_from:
      params, newly_initialised = init_from.initial_params(
        state.params, trainer.state_shardings.params, config.init_from
      )
      state = state.replace(params=params)
      logging.info(
        "initialised from %s; newly initialised: %s", config.init_from, newly_initialised
      )
  else:
    state, data_state = checkpointer.restore(
      latest, trainer.abstract_state, trainer.state_shardings
    )
    logging.info("resumed from checkpoint %d at input position %s", latest, data_state)
  step = int(jax.device_get(state.step))

  # ---- Loop ------------------------------------------------------------------------
  logger = metrics.MetricsLogger(
    workdir, total_steps=config.total_steps, log_every=config.log_every, is_primary=is_primary
  )
  logger.truncate_after(step)
  batches = stream.batches(data_state["position"])
  pending = None  # (step, device metrics, data position) of a step, read one step late
  preemption = preemption_lib.PreemptionWatch()
  with sharding.activate(mesh):
    while step < config.total_steps:
      host_batch, data_state = next(batches)
      batch = sharding.global_batch(host_batch, mesh)
      state, step_metrics = trainer.step(state, batch, step_rng)
      step += 1
      if pending is not None:
        _log(logger, *pending, checkpointer)
      pending = (step, step_metrics, data_state["position"])
      preempted = preemption.reached(step)
      if preempted or step % config.checkpoint_every == 0 or step == config.total_steps:
        _log(logger, *pending, checkpointer)  # never checkpoint a non-finite step
        pending = None
        checkpointer.save(step, state, data_state)
      if preempted:
        logging.warning(
          "preempted: checkpoint %d written; run the same command again to resume", step
        )
        break
    if pending is not None:
      _log(logger, *pending, checkpointer)
  preemption.close()
  checkpointer.wait()
  checkpointer.close()
  logger.close()


def _log(logger, step, device_metrics, data_position, checkpointer) -> None:
  """Reads a finished step's metrics; stops on a non-finite loss, naming where to resume."""
  host = jax.device_get(device_metrics)
  if not np.isfinite(host["loss"]):
    latest = checkpointer.latest_step()
    where = "none was written yet" if latest is None else f"step {latest} in the workdir"
    raise FloatingPointError(
      f"loss is {host['loss']} at step {step}; the last good checkpoint: {where}"
    )
  logger.add(step, host, data_position)
