"""The sslax checkpoint directory: a wav2vec 2.0 model's fields and parameters, no train state.

Layout of a directory written by `save_sslax_checkpoint` (and by
`python -m sslax.interop.hf import`):

  config.json         the `config.model` fields (configs/common.py `wav2vec2_model()`),
                      one JSON object; `conv_layers` as a list of [channels, kernel, stride].
  params.safetensors  every parameter of `sslax.models.wav2vec2.Wav2Vec2` as float32, named
                      by its path in the Flax params tree joined with '/'
                      (e.g. 'encoder/layers_0/attention/query/kernel').

`load_sslax_checkpoint` returns `(model_config, params)` ready for
`Wav2Vec2(**model_config).apply({'params': params}, ...)`.
"""

import json
import os

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from sslax.models import frontends, wav2vec2

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


def _init_args(model_config: ml_collections.ConfigDict):
  """Dummy inputs for `Wav2Vec2.init`: one utterance just long enough for two frames."""
  num_samples = 2
  for _, kernel, stride in reversed(model_config.conv_layers):
    num_samples = (num_samples - 1) * stride + kernel
  frames = frontends.num_frames(num_samples, model_config.conv_layers)
  return (
    jnp.zeros((1, num_samples), jnp.float32),
    jnp.zeros((1, num_samples), jnp.float32),
    jnp.zeros((1, frames), bool),
  )


def _init(model_config: ml_collections.ConfigDict, rng: jax.Array):
  model = wav2vec2.Wav2Vec2(**model_config)
  variables = model.init(rng, *_init_args(model_config), train=False, gumbel_temperature=1.0)
  return nn.meta.unbox(variables["params"])


def param_shapes(model_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Shape of every parameter of `Wav2Vec2(**model_config)`, by '/'-joined path (no compute)."""
  shapes = jax.eval_shape(lambda: _init(model_config, jax.random.key(0)))
  flat = flax.traverse_util.flatten_dict(shapes, sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def init_params(model_config: ml_collections.ConfigDict, seed: int) -> dict:
  """Freshly initialised float32 parameters (numpy) of `Wav2Vec2(**model_config)`."""
  params = jax.jit(lambda rng: _init(model_config, rng))(jax.random.key(seed))
  return jax.tree.map(np.asarray, params)


def save_sslax_checkpoint(path: str, model_config: ml_collections.ConfigDict, params) -> None:
  """Writes `config.json` and `params.safetensors` into directory `path` (created if needed)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(model_config.to_dict(), f, indent=2)
    f.write("\n")
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  tensors = {name: np.ascontiguousarray(value, np.float32) for name, value in flat.items()}
  safetensors.numpy.save_file(tensors, os.path.join(path, PARAMS_FILE))


def model_config_from_json(fields: dict) -> ml_collections.ConfigDict:
  """`config.model` from its JSON form (JSON turns the conv layer tuples into lists)."""
  fields = dict(fields, conv_layers=tuple(tuple(layer) for layer in fields["conv_layers"]))
  return ml_collections.ConfigDict(fields)


def load_sslax_checkpoint(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """Reads a directory written by `save_sslax_checkpoint`: (model_config, numpy params tree).

  Raises:
    ValueError: the parameters do not have the names and shapes the model fields imply.
  """
  with open(os.path.join(path, CONFIG_FILE)) as f:
    model_config = model_config_from_json(json.load(f))
  tensors = safetensors.numpy.load_file(os.path.join(path, PARAMS_FILE))
  expected = param_shapes(model_config)
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  if missing or unexpected:
    raise ValueError(f"{path}: parameters missing {missing}, unexpected {unexpected}")
  for name, shape in expected.items():
    if tensors[name].shape != shape:
      raise ValueError(f"{path}: {name} has shape {tensors[name].shape}, the model needs {shape}")
  return model_config, flax.traverse_util.unflatten_dict(tensors, sep="/")
