"""A job's workdir: the files every job writes there besides its checkpoints.

`config.json` is the job's whole config (`config.to_json_best_effort`, keys sorted), written
at the start by the primary process. `sslax.registry.checkpoint.read_workdir` takes
`config.model` from it; a training run that cannot resume compares its config with it.
"""

import os

import jax
import ml_collections

CONFIG_FILE = "config.json"


def write_atomically(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` through a temporary file: a reader never sees half."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `workdir/config.json` atomically (primary process only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  write_atomically(
    os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True)
  )
