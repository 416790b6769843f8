"""Starting a run from pretrained parameters: `config.init_from`.

`config.init_from` is '' (start from scratch), `hf:HF_DIR` (a transformers wav2vec 2.0
checkpoint, imported on the fly), an sslax checkpoint directory
(`sslax.registry.checkpoint` layout: config.json + params.safetensors) or a training
workdir (its latest checkpoint's parameters, e.g. a pretraining run's for fine-tuning).
Parameters that exist in the source with the same path and shape are loaded; the others
keep their fresh initialisation and are listed, as are the source's parameters the model
has no place for (a pretraining head, or the upper Transformer layers when the config
keeps fewer, `model.num_layers`). A parameter with the same path but another shape means
the configs disagree: an error that names it, as is a source of another architecture
(`model_types.architecture_differences`: another encoder or frontend, pre-LN against
post-LN...), whose parameters would otherwise load under other names or with another
meaning; fairseq's fine-tuning takes these fields from the checkpoint, sslax asks the
config to state them. The model's other variables (a batch-norm
conformer's running statistics, `TrainState.model_state`) load from the source's the same
way, so a conformer pretrained with batch norm fine-tunes with the statistics it learned.

A CTC source (a fine-tuning workdir, an sslax CTC checkpoint, or `hf:` a
`Wav2Vec2ForCTC`) brings its vocabulary. When a fine-tuning run's vocabulary differs from it
(other characters, or the same in another order), the head's columns follow the tokens: each
token the source knows gets the source's column, the others keep their fresh
initialisation, and the log names both kinds. Without this a same-sized vocabulary in
another order would load silently, every character's output wired to another's.
"""

import os
from typing import Any, NamedTuple

from absl import logging
import flax.traverse_util
import jax
import ml_collections
import numpy as np

from sslax.core import checkpoints, text
from sslax.core import state as state_lib
from sslax.interop import hf
from sslax.registry import checkpoint, model_types

HF_PREFIX = "hf:"
CTC_HEAD = ("lm_head/kernel", "lm_head/bias")  # f32[D, V], f32[V]: one column per token


class Source(NamedTuple):
  """What `config.init_from` names, read on the host."""

  params: dict[str, np.ndarray]  # flat '/'-joined paths
  fresh: list[str]  # paths the source itself lacks (initialised by the import, not loaded)
  vocab: text.Vocabulary | None  # a CTC source's vocabulary; None for other models
  # Its other variables, flat with the collection first ('batch_stats/encoder/...').
  model_state: dict[str, np.ndarray] = {}
  # Its `config.model` fields; None for a workdir without config.json.
  model_config: ml_collections.ConfigDict | None = None


def load_source(spec: str) -> Source:
  """Reads `spec` (module docstring); the paths the source lacks are left out of params."""
  if spec.startswith(HF_PREFIX):
    loaded, fresh = hf.read_hf(spec[len(HF_PREFIX) :])
  elif os.path.isdir(os.path.join(spec, "checkpoints")):
    try:
      model_config = checkpoint.workdir_model_config(spec)
    except FileNotFoundError:
      model_config = None
    loaded, fresh = (
      checkpoint.Checkpoint(
        model_config,
        checkpoints.load_params(spec),
        checkpoints.load_state_field(spec, "model_state"),
        checkpoint.workdir_vocab(spec),
      ),
      [],
    )
  else:
    loaded, fresh = checkpoint.read_sslax_checkpoint(spec), []
  flat = flax.traverse_util.flatten_dict(loaded.params, sep="/")
  for path in fresh:
    del flat[path]
  state = flax.traverse_util.flatten_dict(loaded.model_state, sep="/")
  return Source(flat, fresh, loaded.vocab, state, loaded.model_config)


def align_ctc_head(
  source: Source, vocab: text.Vocabulary | None, fresh_flat: dict[str, np.ndarray], spec: str
) -> dict[str, np.ndarray]:
  """`source.params` with the CTC head's columns moved to the run's `vocab` (module doc).

  Args:
    source: the loaded source; nothing changes unless both it and the run have a
      vocabulary and the two differ.
    vocab: the run's vocabulary (a fine-tuning run), else None.
    fresh_flat: the run's freshly initialised parameters, flat: the columns of tokens the
      source does not know.
    spec: `config.init_from`, for the log.
  """
  if vocab is None or source.vocab is None or vocab == source.vocab:
    return source.params
  # Never empty: every vocabulary starts with the same special tokens.
  run_index = [i for i, token in enumerate(vocab.tokens) if token in source.vocab.index]
  source_index = [source.vocab.index[vocab.tokens[i]] for i in run_index]
  params = dict(source.params)
  for path in CTC_HEAD:
    loaded, fresh = source.params.get(path), fresh_flat.get(path)
    if loaded is None or fresh is None or loaded.shape[:-1] != fresh.shape[:-1]:
      continue  # absent, or a shape `merge` reports
    aligned = np.array(fresh, dtype=loaded.dtype)
    aligned[..., run_index] = loaded[..., source_index]
    params[path] = aligned
  logging.info(
    "config.init_from=%s: its vocabulary differs from this run's; lm_head columns follow "
    "the tokens: %d of %d from the source, fresh for %s, the source's %s dropped",
    spec,
    len(run_index),
    len(vocab),
    [t for t in vocab.tokens if t not in source.vocab.index],
    [t for t in source.vocab.tokens if t not in vocab.index],
  )
  return params


def merge(
  fresh_params: Any, loaded: dict[str, np.ndarray], source: str, *, require_shared: bool = True
) -> tuple[Any, list[str]]:
  """Overlays `loaded` on `fresh_params` (a tree); returns (params, newly initialised paths).

  Raises:
    ValueError: a loaded parameter has another shape than the model's, or (with
      `require_shared`) the source shares no parameter with the model at all.
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
  if require_shared and not used:
    raise ValueError(f"config.init_from={source} shares no parameter with this model")
  unused = sorted(set(loaded) - set(flat))
  if unused:  # e.g. a pretraining head, or the upper layers a shallower model drops
    logging.info("config.init_from=%s: not in this model, left out: %s", source, unused)
  return flax.traverse_util.unflatten_dict(flat, sep="/"), newly_initialised


def initial_state(
  fresh_state: state_lib.TrainState,
  state_shardings: Any,
  spec: str,
  vocab: text.Vocabulary | None = None,
  model_config: ml_collections.ConfigDict | None = None,
) -> tuple[state_lib.TrainState, list[str]]:
  """`fresh_state` (sharded as `state_shardings`) with the parameters and model state
  `spec` provides loaded; see the module doc. Returns it and the newly initialised paths
  (model state ones with their collection first, 'batch_stats/...').

  `vocab`: a fine-tuning run's vocabulary, which a CTC source's head is aligned to.
  `model_config`: the run's `config.model`, checked against the source's architecture.

  Raises:
    ValueError: the source's architecture differs from `model_config` (naming each
      field), or a parameter's shape does (`merge`).
  """
  source = load_source(spec)
  if model_config is not None and source.model_config is not None:
    differences = model_types.architecture_differences(source.model_config, model_config)
    if differences:
      raise ValueError(
        f"config.init_from={spec} holds a model of another architecture:\n  "
        + "\n  ".join(differences)
        + "\nset these config.model fields as the source has them"
      )
  fresh_params = jax.device_get(fresh_state.params)
  flat = flax.traverse_util.flatten_dict(fresh_params, sep="/")
  params, newly_initialised = merge(fresh_params, align_ctc_head(source, vocab, flat, spec), spec)
  model_state, newly_initialised_state = merge(
    jax.device_get(fresh_state.model_state), source.model_state, spec, require_shared=False
  )
  state = fresh_state.replace(
    params=jax.device_put(params, state_shardings.params),
    model_state=jax.device_put(model_state, state_shardings.model_state),
  )
  return state, newly_initialised + newly_initialised_state
