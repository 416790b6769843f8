"""Starting a run from pretrained parameters: `config.init_from`.

`config.init_from` is '' (start from scratch), `hf:HF_DIR` (a transformers wav2vec 2.0
checkpoint, imported on the fly), an sslax checkpoint directory (`sslax.interop`
layout: config.json + params.safetensors) or a training workdir (its latest checkpoint's
parameters, e.g. a pretraining run's for fine-tuning). Parameters that exist in the source with the
same path and shape are loaded; the others keep their fresh initialisation and are listed,
as are the source's parameters the model has no place for (a pretraining head, or the
upper Transformer layers when the config keeps fewer, `model.num_layers`).
A parameter with the same path but another shape means the configs disagree: an error that
names it.
"""

import os
from typing import Any

from absl import logging
import flax.traverse_util
import jax
import numpy as np

from sslax.interop import checkpoint, hf
from sslax.train import checkpoints

HF_PREFIX = "hf:"


def load_source(spec: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """Reads `spec`: (flat '/'-joined parameter dict, paths the source itself lacks)."""
  if spec.startswith(HF_PREFIX):
    _, params, fresh = hf.import_hf(spec[len(HF_PREFIX) :])
  elif os.path.isdir(os.path.join(spec, "checkpoints")):
    params, fresh = checkpoints.load_params(spec), []
  else:
    _, params = checkpoint.load_sslax_checkpoint(spec)
    fresh = []
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  for path in fresh:
    del flat[path]
  return flat, fresh


def merge(fresh_params: Any, loaded: dict[str, np.ndarray], source: str) -> tuple[Any, list[str]]:
  """Overlays `loaded` on `fresh_params` (a tree); returns (params, newly initialised paths).

  Raises:
    ValueError: a loaded parameter has another shape than the model's, or the source shares
      no parameter with the model at all.
  """
  flat = flax.traverse_util.flatten_dict(fresh_params, sep="/")
  newly_initialised, used = [], 0
  for path, value in flat.items():
    if path not in loaded:
      newly_initialised.append(path)
      continue
    if loaded[path].shape != value.shape:
      raise ValueError(
        f"config.init_from={source}: parameter {path} has shape {loaded[path].shape} there "
        f"but {value.shape} in this config's model; make config.model match the checkpoint"
      )
    flat[path] = np.asarray(loaded[path], dtype=value.dtype)
    used += 1
  if not used:
    raise ValueError(f"config.init_from={source} shares no parameter with this model")
  unused = sorted(set(loaded) - set(flat))
  if unused:  # e.g. a pretraining head, or the upper layers a shallower model drops
    logging.info("config.init_from=%s: not in this model, left out: %s", source, unused)
  return flax.traverse_util.unflatten_dict(flat, sep="/"), newly_initialised


def initial_params(fresh_params: Any, params_shardings: Any, spec: str) -> tuple[Any, list[str]]:
  """`fresh_params` (sharded) with everything `spec` provides loaded; see the module doc."""
  loaded, _ = load_source(spec)
  merged, newly_initialised = merge(jax.device_get(fresh_params), loaded, spec)
  return jax.device_put(merged, params_shardings), newly_initialised
