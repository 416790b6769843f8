"""The sslax checkpoint directory: a model's type, fields and variables, no train state.

Layout of a directory written by `save_sslax_checkpoint` (and by
`python -m sslax.interop.hf import`):

  config.json              the `config.model` fields (configs/common.py `wav2vec2_model()`,
                           `hubert_model()` or, for a CTC model, `ctc_model()` plus
                           `vocab_size`) and `model_type` ('wav2vec2', 'hubert' or 'ctc'),
                           one JSON object; lists for tuples (`conv_layers` as [channels,
                           kernel, stride] lists). A config.json without `model_type`
                           (written before HuBERT) is a wav2vec 2.0 model.
  params.safetensors       every parameter of the model as float32, named by its path in
                           the Flax params tree joined with '/'
                           (e.g. 'encoder/layers_0/attention/query/kernel').
  model_state.safetensors  only for models with other variable collections (a batch-norm
                           conformer's running statistics): float32, named by collection
                           and path ('batch_stats/encoder/layers_0/conv/batch_norm/mean').
  vocab.json               CTC models only: the vocabulary, token -> index
                           (`sslax.core.text.Vocabulary`, transformers' vocab.json layout).

`read_sslax_checkpoint` returns a `Checkpoint` (fields, params, model state, vocabulary),
whose `variables()` go straight into `model_types.build_model(model_config).apply`;
`load_sslax_checkpoint` returns just `(model_config, params)` (what `config.init_from`
loads). The model fields alone name the model type (each type has its own field set,
`model_types.model_type`), so `config.model` of a training workdir, which has no
`model_type`, is read the same way (a fine-tuning workdir's has no `vocab_size`: its
vocab.json gives it). `read_workdir` reads a training workdir's latest checkpoint as a
`Checkpoint`.
"""

import dataclasses
import json
import os

import flax.traverse_util
import ml_collections
import numpy as np
import safetensors.numpy

from sslax.core import checkpoints, text, workdirs
from sslax.registry import model_types

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
STATE_FILE = "model_state.safetensors"
# The same name as a fine-tuning workdir's vocabulary (sslax/train/ctc_step.py VOCAB_FILE).
VOCAB_FILE = "vocab.json"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A model and everything a forward pass or an export needs.

  Attributes:
    model_config: the `config.model` fields (`model_type` names the model).
    params: the params tree (numpy or jax arrays).
    model_state: the other variable collections ({'batch_stats': tree} for a batch-norm
      conformer), {} for models without them.
    vocab: the CTC model's vocabulary (index 0 the blank); None for other models.
  """

  model_config: ml_collections.ConfigDict
  params: dict
  model_state: dict = dataclasses.field(default_factory=dict)
  vocab: text.Vocabulary | None = None

  def variables(self) -> dict:
    """`{'params': ..., **model_state}` for `model_types.build_model(model_config).apply`."""
    return {"params": self.params, **self.model_state}


def _check_tensors(where: str, tensors: dict, expected: dict[str, tuple[int, ...]]) -> None:
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  if missing or unexpected:
    raise ValueError(f"{where}: missing {missing}, unexpected {unexpected}")
  for name, shape in expected.items():
    if tuple(tensors[name].shape) != shape:
      raise ValueError(f"{where}: {name} has shape {tensors[name].shape}, the model needs {shape}")


def _check_vocab(model_config: ml_collections.ConfigDict, vocab: text.Vocabulary | None) -> None:
  """A CTC model needs its vocabulary, of vocab_size tokens; other models have none."""
  if model_types.model_type(model_config) != "ctc":
    if vocab is not None:
      raise ValueError(f"a {model_types.model_type(model_config)} model has no vocabulary")
    return
  if vocab is None:
    raise ValueError("a CTC model needs its vocabulary (vocab.json) to mean anything")
  if len(vocab) != model_config.vocab_size:
    raise ValueError(
      f"the vocabulary has {len(vocab)} tokens, the model's lm_head {model_config.vocab_size}"
    )


def save_sslax_checkpoint(
  path: str,
  model_config: ml_collections.ConfigDict,
  params,
  model_state: dict | None = None,
  vocab: text.Vocabulary | None = None,
) -> None:
  """Writes the checkpoint directory `path` (created if needed; layout in the module doc).

  Args:
    path: the directory.
    model_config: the `config.model` fields.
    params: the params tree.
    model_state: the other variable collections; required when the model has them.
    vocab: required for (and only for) a CTC model.

  Raises:
    ValueError: model_state does not have the variables the model has, or the vocabulary
      is missing, superfluous or of the wrong size.
  """
  model_state = model_state or {}
  flat_state = flax.traverse_util.flatten_dict(model_state, sep="/")
  _check_tensors("model_state", flat_state, model_types.state_shapes(model_config))
  _check_vocab(model_config, vocab)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(
      dict(model_type=model_types.model_type(model_config), **model_config.to_dict()), f, indent=2
    )
    f.write("\n")
  for file, flat in (
    (PARAMS_FILE, flax.traverse_util.flatten_dict(params, sep="/")),
    (STATE_FILE, flat_state),
  ):
    if flat:
      tensors = {name: np.ascontiguousarray(value, np.float32) for name, value in flat.items()}
      safetensors.numpy.save_file(tensors, os.path.join(path, file))
  if vocab is not None:
    vocab.save(os.path.join(path, VOCAB_FILE))


def read_sslax_checkpoint(path: str) -> Checkpoint:
  """Reads a directory written by `save_sslax_checkpoint` (numpy arrays).

  Raises:
    ValueError: the parameters or model state do not have the names and shapes the model
      fields imply, or a CTC model's vocabulary is missing or of the wrong size.
  """
  with open(os.path.join(path, CONFIG_FILE)) as f:
    model_config = model_types.model_config_from_json(json.load(f))
  expected_params, expected_state = model_types.variable_shapes(model_config)
  params = safetensors.numpy.load_file(os.path.join(path, PARAMS_FILE))
  _check_tensors(f"{path} parameters", params, expected_params)
  state_file = os.path.join(path, STATE_FILE)
  state = safetensors.numpy.load_file(state_file) if os.path.exists(state_file) else {}
  _check_tensors(f"{path} model state", state, expected_state)
  vocab_file = os.path.join(path, VOCAB_FILE)
  vocab = text.Vocabulary.load(vocab_file) if os.path.exists(vocab_file) else None
  _check_vocab(model_config, vocab)
  return Checkpoint(
    model_config,
    flax.traverse_util.unflatten_dict(params, sep="/"),
    flax.traverse_util.unflatten_dict(state, sep="/"),
    vocab,
  )


def load_sslax_checkpoint(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(model_config, numpy params tree) of `read_sslax_checkpoint(path)`, checked the same way."""
  loaded = read_sslax_checkpoint(path)
  return loaded.model_config, loaded.params


def workdir_vocab(workdir: str) -> text.Vocabulary | None:
  """A fine-tuning workdir's vocabulary (`workdir/vocab.json`); None for other workdirs."""
  path = os.path.join(workdir, VOCAB_FILE)
  return text.Vocabulary.load(path) if os.path.exists(path) else None


def workdir_model_config(workdir: str) -> ml_collections.ConfigDict:
  """A training workdir's `config.model` (from `workdir/config.json`), with `vocab_size`
  from a fine-tuning run's vocabulary."""
  with open(os.path.join(workdir, workdirs.CONFIG_FILE)) as f:
    fields = json.load(f)["model"]
  vocab = workdir_vocab(workdir)
  if vocab is not None:
    fields = dict(fields, vocab_size=len(vocab))
  return model_types.model_config_from_json(fields)


def read_workdir(workdir: str, step: int | None = None) -> Checkpoint:
  """A training workdir's checkpoint `step` (default the latest) as numpy arrays.

  The model fields come from `workdir/config.json`; a fine-tuning run's vocabulary (and so
  `vocab_size`) from `workdir/vocab.json`; the model state (batch-norm statistics) from
  the train state's `model_state`.

  Raises:
    FileNotFoundError: the workdir holds no complete checkpoint.
    ValueError: the checkpoint's variables do not have the shapes config.model implies.
  """
  model_config = workdir_model_config(workdir)
  vocab = workdir_vocab(workdir)
  step = checkpoints.latest_complete_step(workdir) if step is None else step
  expected_params, expected_state = model_types.variable_shapes(model_config)
  params = checkpoints.load_params(workdir, step)
  model_state = checkpoints.load_state_field(workdir, "model_state", step) if expected_state else {}
  for name, tree, shapes in (
    ("parameters", params, expected_params),
    ("model state", model_state, expected_state),
  ):
    _check_tensors(
      f"{workdir}: checkpoint {step}'s {name} do not fit config.model",
      flax.traverse_util.flatten_dict(tree, sep="/"),
      shapes,
    )
  return Checkpoint(model_config, params, model_state, vocab)
