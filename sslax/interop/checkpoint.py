"""The sslax checkpoint directory: a model's type, fields and parameters, no train state.

Layout of a directory written by `save_sslax_checkpoint` (and by
`python -m sslax.interop.hf import`):

  config.json         the `config.model` fields (configs/common.py `wav2vec2_model()` or
                      `hubert_model()`) plus `model_type` ('wav2vec2' or 'hubert'), one
                      JSON object; lists for tuples (`conv_layers` as [channels, kernel,
                      stride] lists). A config.json without `model_type` (written before
                      HuBERT) is a wav2vec 2.0 model.
  params.safetensors  every parameter of the model as float32, named by its path in the
                      Flax params tree joined with '/'
                      (e.g. 'encoder/layers_0/attention/query/kernel').

`load_sslax_checkpoint` returns `(model_config, params)` ready for
`build_model(model_config).apply({'params': params}, ...)`. The model fields alone name
the model type (each type has its own field set, `model_type`), so `config.model` of a
training workdir, which has no `model_type`, is read the same way.
"""

import dataclasses
import json
import os

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from sslax.models import backbone, hubert, wav2vec2

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
# Every model a checkpoint can hold, by model_type.
MODELS = {"wav2vec2": wav2vec2.Wav2Vec2, "hubert": hubert.HuBERT}
# Arguments beyond `train=False` that a forward pass of each model type needs (wav2vec 2.0
# takes a Gumbel temperature, which does not matter without training).
_EVAL_KWARGS = {"wav2vec2": {"gumbel_temperature": 1.0}, "hubert": {}}
# Module attributes that are not `config.model` fields.
_NOT_FIELDS = {"parent", "name", "dtype", "param_dtype"}


def _fields(model_class) -> tuple[set[str], set[str]]:
  """(every `config.model` field of the model, those without a default)."""
  fields = [f for f in dataclasses.fields(model_class) if f.name not in _NOT_FIELDS]
  required = {f.name for f in fields if f.default is dataclasses.MISSING}
  return {f.name for f in fields}, required


def field_defaults(name: str) -> dict:
  """The `config.model` fields of model type `name` that have defaults, with them.

  These are the backbone's frontend and encoder choices, whose defaults are wav2vec 2.0's
  waveform conv stack and Transformer.
  """
  return {
    f.name: f.default
    for f in dataclasses.fields(MODELS[name])
    if f.name not in _NOT_FIELDS and f.default is not dataclasses.MISSING
  }


def model_type(model_config: ml_collections.ConfigDict) -> str:
  """The model type whose fields `model_config` has: every required one, no unknown one.

  Raises:
    ValueError: no model has these fields; names the differences from the closest one.
  """
  keys = set(model_config.keys())
  misfit = {}
  for name, model_class in MODELS.items():
    fields, required = _fields(model_class)
    misfit[name] = (sorted(required - keys), sorted(keys - fields))
    if not any(misfit[name]):
      return name
  closest = min(misfit, key=lambda name: sum(map(len, misfit[name])))
  lacking, unknown = misfit[closest]
  raise ValueError(
    f"config.model fits no sslax model; closest {closest!r} lacks {lacking}, does not have "
    f"{unknown}"
  )


def build_model(model_config: ml_collections.ConfigDict, **attributes) -> nn.Module:
  """The model `model_config` describes; `attributes` adds e.g. dtype."""
  return MODELS[model_type(model_config)](**model_config, **attributes)


def eval_kwargs(model_config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments, besides `train=False`, of a forward pass without training."""
  return dict(_EVAL_KWARGS[model_type(model_config)])


def _init_args(model_config: ml_collections.ConfigDict):
  """Dummy inputs for `init`: one utterance just long enough for two frames."""
  num_samples = 2
  for _, kernel, stride in reversed(model_config.conv_layers):
    num_samples = (num_samples - 1) * stride + kernel
  frames = backbone.num_frames(num_samples, model_config)
  return (
    jnp.zeros((1, num_samples), jnp.float32),
    jnp.zeros((1, num_samples), jnp.float32),
    jnp.zeros((1, frames), bool),
  )


def _init(model_config: ml_collections.ConfigDict, rng: jax.Array):
  variables = build_model(model_config).init(
    rng, *_init_args(model_config), train=False, **eval_kwargs(model_config)
  )
  return nn.meta.unbox(variables["params"])


def abstract_params(model_config: ml_collections.ConfigDict) -> dict:
  """The params tree of `build_model(model_config)` as jax.ShapeDtypeStruct leaves (no memory)."""
  return jax.eval_shape(lambda: _init(model_config, jax.random.key(0)))


def param_shapes(model_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Shape of every parameter of `build_model(model_config)`, by '/'-joined path."""
  flat = flax.traverse_util.flatten_dict(abstract_params(model_config), sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def init_params(model_config: ml_collections.ConfigDict, seed: int) -> dict:
  """Freshly initialised float32 parameters (numpy) of `build_model(model_config)`."""
  params = jax.jit(lambda rng: _init(model_config, rng))(jax.random.key(seed))
  return jax.tree.map(np.asarray, params)


def save_sslax_checkpoint(path: str, model_config: ml_collections.ConfigDict, params) -> None:
  """Writes `config.json` and `params.safetensors` into directory `path` (created if needed)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(dict(model_type=model_type(model_config), **model_config.to_dict()), f, indent=2)
    f.write("\n")
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  tensors = {name: np.ascontiguousarray(value, np.float32) for name, value in flat.items()}
  safetensors.numpy.save_file(tensors, os.path.join(path, PARAMS_FILE))


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def model_config_from_json(fields: dict) -> ml_collections.ConfigDict:
  """`config.model` from its JSON form: a checkpoint's config.json or a workdir's `model`.

  JSON lists become tuples again. A `model_type` entry is checked against the type the
  fields name and dropped; without one, the fields name it (wav2vec2 for checkpoints
  written before HuBERT). Fields added since a checkpoint was written (the frontend and
  encoder choices) get the defaults that reproduce the model it was written from.

  Raises:
    ValueError: the recorded model_type is not the one the fields describe.
  """
  fields = {key: _tuples(value) for key, value in fields.items()}
  recorded = fields.pop("model_type", None)
  model_config = ml_collections.ConfigDict(fields)
  if recorded is not None and recorded != model_type(model_config):
    raise ValueError(
      f"config.json says model_type {recorded!r}, but its fields are those of "
      f"{model_type(model_config)!r}"
    )
  return ml_collections.ConfigDict({**field_defaults(model_type(model_config)), **fields})


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
