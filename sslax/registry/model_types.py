"""The model registry: every model an sslax checkpoint or workdir can hold, by `model_type`.

A model type is a model class of `sslax.models` ('wav2vec2', 'hubert', 'ctc'); its
`config.model` fields are the class's dataclass fields, so the fields alone name the type
(`model_type`), and `build_model` builds it. `variable_shapes` (and `param_shapes`,
`state_shapes`, `abstract_params`) trace its initialisation without allocating memory;
`init_params` runs it once. `model_config_from_json` reads `config.model` back from a
checkpoint's or workdir's config.json.
"""

import dataclasses

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslax.models import backbone, ctc, hubert, wav2vec2

# Every model a checkpoint can hold, by model_type.
MODELS = {"wav2vec2": wav2vec2.Wav2Vec2, "hubert": hubert.HuBERT, "ctc": ctc.Wav2Vec2ForCTC}
# Arguments beyond `train=False` that a forward pass of each model type needs (wav2vec 2.0
# takes a Gumbel temperature, which does not matter without training).
_EVAL_KWARGS = {"wav2vec2": {"gumbel_temperature": 1.0}, "hubert": {}, "ctc": {}}
# Module attributes that are not `config.model` fields.
_NOT_FIELDS = {"parent", "name", "dtype", "param_dtype"}


# The backbone fields that fix what its parameters compute: shared, then per frontend and
# per encoder (`backbone.Backbone`'s docstrings). Dropouts, masks, layerdrop, the number of
# layers and the output heads (quantizer, lm_head) are not among them: fine-tuning may
# change those.
_ARCHITECTURE = ("frontend", "encoder", "embed_dim", "num_heads", "mlp_dim")
_FRONTEND_ARCHITECTURE = {
  "waveform": ("conv_layers", "extractor_mode", "conv_bias"),
  "logmel": ("mel_bins", "mel_normalization", "mel_subsampling", "mel_conv_channels"),
}
_ENCODER_ARCHITECTURE = {
  "transformer": ("layer_norm_first", "pos_conv_kernel", "pos_conv_groups"),
  "conformer": ("conformer_position_embeddings", "conformer_conv_kernel", "conformer_conv_norm"),
}


def architecture_differences(
  source: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict
) -> list[str]:
  """The backbone architecture fields on which a pretrained model (`source`) and a model
  that starts from it (`model_config`) differ, each as 'field: SOURCE there, MODEL here'.

  Compared: frontend, encoder and widths, then the fields of the frontend and of the
  encoder when both use the same. Two models that differ in one of these give the same
  parameter names and shapes another meaning (`layer_norm_first`), or other names, so
  loading one into the other would run silently with fresh or misused parameters. A
  field either lacks takes its default.
  """
  defaults = field_defaults("wav2vec2")

  def value(fields, key):
    return np.asarray(fields.get(key, defaults.get(key))).tolist()

  keys = list(_ARCHITECTURE)
  for field, extra in (("frontend", _FRONTEND_ARCHITECTURE), ("encoder", _ENCODER_ARCHITECTURE)):
    if value(source, field) == value(model_config, field):
      keys += extra.get(value(model_config, field), ())
  return [
    f"{key}: {value(source, key)!r} there, {value(model_config, key)!r} here"
    for key in keys
    if value(source, key) != value(model_config, key)
  ]


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


def _init(model_config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Every variable collection of the model ('params', and e.g. 'batch_stats')."""
  variables = build_model(model_config).init(
    rng, *_init_args(model_config), train=False, **eval_kwargs(model_config)
  )
  return nn.meta.unbox(dict(variables))


def abstract_params(model_config: ml_collections.ConfigDict) -> dict:
  """The params tree of `build_model(model_config)` as jax.ShapeDtypeStruct leaves (no memory)."""
  return jax.eval_shape(lambda: _init(model_config, jax.random.key(0)))["params"]


def variable_shapes(
  model_config: ml_collections.ConfigDict,
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
  """(`param_shapes`, `state_shapes`) of the model from one trace."""
  variables = jax.eval_shape(lambda: _init(model_config, jax.random.key(0)))
  params = flax.traverse_util.flatten_dict(variables.pop("params"), sep="/")
  state = flax.traverse_util.flatten_dict(variables, sep="/")
  return (
    {path: tuple(leaf.shape) for path, leaf in params.items()},
    {path: tuple(leaf.shape) for path, leaf in state.items()},
  )


def param_shapes(model_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Shape of every parameter of `build_model(model_config)`, by '/'-joined path."""
  return variable_shapes(model_config)[0]


def state_shapes(model_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Shape of every variable outside 'params' (a batch-norm conformer's running statistics),
  by collection and path joined with '/' ('batch_stats/encoder/...'); {} for most models."""
  return variable_shapes(model_config)[1]


# The init program runs once, so its compile time is what counts: XLA's expensive
# optimisations triple it on CPU (values differ from an optimised build by float rounding).
_RUN_ONCE_COMPILER_OPTIONS = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
}


def init_params(model_config: ml_collections.ConfigDict, seed: int) -> dict:
  """Freshly initialised float32 parameters (numpy) of `build_model(model_config)`."""
  rng = jax.random.key(seed)
  init = jax.jit(lambda rng: _init(model_config, rng)["params"]).lower(rng)
  params = init.compile(compiler_options=_RUN_ONCE_COMPILER_OPTIONS)(rng)
  return jax.tree.map(np.asarray, params)


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
