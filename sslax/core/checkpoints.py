"""Orbax checkpoints of the train state and the input pipeline's position.

Each checkpoint is one step directory holding two items: `state` (the sharded
`TrainState`, written by every process for its own shards) and `data` (the input
pipeline's position and the loop's count of updates skipped in a row, the same on every
process, as JSON). Orbax writes into a temporary directory and renames it when complete,
so a job killed at any moment, even during an asynchronous save, leaves the latest
complete checkpoint intact (tests/test_sigkill.py kills runs mid-save); the training
loop's Checkpointer deletes such partial directories when it starts.

A checkpoint restores onto any mesh and process count, but only into a state of the same
structure, shapes and dtypes: `restore` compares them first and names what differs.

A `TrainState` holds `model_state` (batch statistics, frozen variables; see
sslax/core/state.py); checkpoints written before it existed restore with it empty.

A run keeps its latest checkpoints in `workdir/checkpoints` (`LATEST`) and, when it
validates by WER (fine-tuning), the best one so far in `workdir/checkpoints_best`
(`BEST`, sslax/train/best.py), in the same layout.
"""

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from sslax.core import state as state_lib

# Orbax saves an array replicated over R devices "replica-parallel": each replica writes
# 1/R of it, cut out by a dispatched XLA program per slice, traced and compiled on a
# process's first save. For small arrays that costs more than it saves: the tiny demo
# model on 8 devices cut 1,347 slices, 2.0 of a 4-step run's 9.9 CPU-seconds. Only slices
# of at least 1 MiB are written in parallel; one replica writes a smaller array whole.
# Either way the checkpoint restores the same, on any mesh.
_MIN_REPLICA_SLICE_BYTES = 1 << 20


def _register_array_handler() -> None:
  logger = logging.get_absl_logger()
  was_disabled, logger.disabled = logger.disabled, True  # orbax warns of any override
  try:
    ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES),
      override=True,
    )
  finally:
    logger.disabled = was_disabled


_register_array_handler()

# Folders of a workdir holding checkpoints: the latest ones, and the best by validation.
LATEST, BEST = "checkpoints", "checkpoints_best"


class IncompatibleCheckpointError(ValueError):
  """A checkpoint's arrays differ from the state they should restore into."""


class Checkpointer:
  """Saves and restores `(TrainState, input position)` under `workdir/folder`.

  `clean_up=True` (the training loop, the one writer) deletes the partial directories of
  saves interrupted by a crash when it starts; readers beside a running job leave them.
  """

  def __init__(self, workdir: str, *, keep: int, clean_up: bool = False, folder: str = LATEST):
    self._manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, folder)),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=clean_up
      ),
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

  def data(self, step: int) -> dict:
    """The JSON item (`data_state` of `save`) of checkpoint `step`, without its state."""
    restored = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    return restored["data"]

  def delete(self, step: int) -> None:
    """Deletes checkpoint `step`."""
    self._manager.delete(step)

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
    """Restores step `step` into `shardings` (any mesh); returns (state, data state).

    Raises IncompatibleCheckpointError, naming the arrays, when the checkpoint's arrays
    differ from `abstract_state`'s (another model size or optimizer).
    """
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )
    saved = _saved_tree(os.path.join(self._manager.directory, str(step), "state"))
    legacy = isinstance(target, state_lib.TrainState) and "model_state" not in saved
    if legacy:
      # Written before TrainState had `model_state`: restore the other fields.
      if jax.tree.leaves(target.model_state):
        raise ValueError(
          f"checkpoint {step} holds no model_state, but the model has "
          f"{sorted(target.model_state)} (batch statistics or frozen variables)"
        )
      target = {name: getattr(target, name) for name in ("step", "params", "opt_state")}
    differences = array_differences(saved, target)
    if differences:
      shown = "\n  ".join(differences[:_SHOWN])
      more = f"\n  ... and {len(differences) - _SHOWN} more" if len(differences) > _SHOWN else ""
      raise IncompatibleCheckpointError(
        f"checkpoint {step} in {self._manager.directory} does not fit this config's train "
        f"state ({len(differences)} arrays differ):\n  {shown}{more}"
      )
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
    """Waits for pending saves, then releases orbax's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


_SHOWN = 8  # differing arrays listed in an IncompatibleCheckpointError
_FIELD_ORDER = ("params", "model_state", "step", "opt_state")


def _saved_tree(path: str) -> dict:
  """The metadata tree (shapes, dtypes) of the state saved at `path` (a step's 'state')."""
  return ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree


def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'a/b/0/c' -> (shape, dtype name) of every array leaf of `tree`.

  Orbax saves dataclasses and named tuples as dicts and tuples as lists, so paths are
  compared by their key names alone.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    "/".join(_key_name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
    for path, leaf in leaves
  }


def array_differences(saved_tree: Any, target: Any) -> list[str]:
  """One line per array that differs between a saved metadata tree and `target` (arrays or
  ShapeDtypeStructs): another shape or dtype, missing from the checkpoint, or extra in it."""
  saved, wanted = _specs(saved_tree), _specs(target)

  def describe(spec):
    return f"{spec[1]}{list(spec[0])}"

  def order(path):  # what a reader compares first: the parameters
    field = path.split("/")[0]
    return (_FIELD_ORDER.index(field) if field in _FIELD_ORDER else len(_FIELD_ORDER), path)

  lines = []
  for path in sorted(saved.keys() | wanted.keys(), key=order):
    if path not in saved:
      lines.append(f"{path}: {describe(wanted[path])} here, not in the checkpoint")
    elif path not in wanted:
      lines.append(f"{path}: {describe(saved[path])} in the checkpoint, not here")
    elif saved[path] != wanted[path]:
      lines.append(
        f"{path}: {describe(saved[path])} in the checkpoint, {describe(wanted[path])} here"
      )
  return lines


def latest_complete_step(workdir: str, folder: str = LATEST) -> int:
  """The newest complete checkpoint's step in `workdir/folder`.

  Raises:
    FileNotFoundError: there is none.
  """
  directory = os.path.abspath(os.path.join(workdir, folder))
  step = ocp.CheckpointManager(directory, item_names=("state", "data")).latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory} holds no complete checkpoint")
  return step


def load_params(workdir: str, step: int | None = None, folder: str = LATEST) -> Any:
  """The float32 parameters of a training checkpoint, as numpy on the host (no mesh needed).

  `step` defaults to the latest complete checkpoint in `workdir/folder`.
  """
  return load_state_field(workdir, "params", step, folder)


def load_state_field(
  workdir: str, field: str, step: int | None = None, folder: str = LATEST
) -> Any:
  """One TrainState field (`params`, `model_state`, ...) of a training checkpoint in
  `workdir/folder`, as numpy on the host; {} when the checkpoint has no such field (older
  checkpoints lack `model_state`). `step` defaults to the latest complete checkpoint.
  """
  step = latest_complete_step(workdir, folder) if step is None else step
  path = os.path.join(os.path.abspath(workdir), folder, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  if field not in tree:
    return {}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree[field])
  restored = checkpointer.restore(
    path,
    args=ocp.args.PyTreeRestore(
      item={field: tree[field]},
      restore_args={field: restore_args},
      partial_restore=True,
    ),
  )
  return restored[field]
