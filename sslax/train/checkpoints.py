"""Orbax checkpoints of the train state and the input pipeline's position.

Each checkpoint is one step directory holding two items: `state` (the sharded
`TrainState`, written by every process for its own shards) and `data` (the input
pipeline's position, the same on every process, as JSON). Orbax writes into a temporary
directory and renames it when complete, so a job killed at any moment, even during an
asynchronous save, leaves the latest complete checkpoint intact.

A `TrainState` holds `model_state` (batch statistics, frozen variables; see
sslax/train/state.py); checkpoints written before it existed restore with it empty.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sslax.train import state as state_lib


class Checkpointer:
  """Saves and restores `(TrainState, input position)` under `workdir`."""

  def __init__(self, workdir: str, *, keep: int):
    self._manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True),
      item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts an asynchronous save of the state and the pipeline position `data_state`."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
    )

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
    """Restores step `step` into `shardings` (any mesh); returns (state, data state)."""
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )
    legacy = isinstance(target, state_lib.TrainState) and "model_state" not in _saved_fields(
      os.path.join(self._manager.directory, str(step), "state")
    )
    if legacy:
      # Written before TrainState had `model_state`: restore the other fields.
      if jax.tree.leaves(target.model_state):
        raise ValueError(
          f"checkpoint {step} holds no model_state, but the model has "
          f"{sorted(target.model_state)} (batch statistics or frozen variables)"
        )
      target = {name: getattr(target, name) for name in ("step", "params", "opt_state")}
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
    )
    state = state_lib.TrainState(**restored["state"]) if legacy else restored["state"]
    return state, restored["data"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _saved_fields(path: str) -> set[str]:
  """Top-level names of the state tree saved at `path` (a step's 'state' item)."""
  return set(ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree)


def load_params(workdir: str, step: int | None = None) -> Any:
  """The float32 parameters of a training checkpoint, as numpy on the host (no mesh needed).

  `step` defaults to the latest complete checkpoint in `workdir/checkpoints`.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if step is None:
    step = ocp.CheckpointManager(directory, item_names=("state", "data")).latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory} holds no complete checkpoint")
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  params_metadata = checkpointer.metadata(path).item_metadata.tree["params"]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_metadata)
  restored = checkpointer.restore(
    path,
    args=ocp.args.PyTreeRestore(
      item={"params": params_metadata},
      restore_args={"params": restore_args},
      partial_restore=True,
    ),
  )
  return restored["params"]
