"""A transformers state dict <-> sslax variables, for sslax.interop.hf.

`read_hf_checkpoint` reads a transformers checkpoint directory (config.json and
model.safetensors, or pytorch_model.bin with torch). `variables_from_hf` checks a state
dict against the family's tensor map (hf_architecture_maps.py) and converts it, filling
what HF does not hold with a fresh initialisation; `hf_tensors_from_params` writes the
state dict of the full class from sslax parameters and model state.
"""

import json
import os

import flax.traverse_util
import ml_collections
import numpy as np
import safetensors.numpy

from sslax.interop import hf_architecture_maps, hf_families, hf_tensor_map
from sslax.registry import model_types

# PyTorch weight norm: the old `weight_norm` names and the newer parametrization names.
_WEIGHT_NORM_NAMES = {
  "conv.weight_g": "conv.parametrizations.weight.original0",
  "conv.weight_v": "conv.parametrizations.weight.original1",
}
# transformers' projection from the conv width to the encoder width, which sslax (as
# fairseq) has only when the two differ (`hf_architecture_maps.has_projection`).
_PROJECTION = "feature_projection.projection"


def read_hf_checkpoint(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """Reads a transformers checkpoint directory: (config.json dict, float32 numpy tensors).

  `model.safetensors` is read without torch; `pytorch_model.bin` needs torch. Weight-norm
  tensors come back under the parametrization names (`...weight.original0/original1`)
  whichever of the two naming schemes the file uses.
  """
  with open(os.path.join(path, "config.json")) as f:
    hf_config = json.load(f)
  safetensors_file = os.path.join(path, "model.safetensors")
  bin_file = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(safetensors_file):
    tensors = safetensors.numpy.load_file(safetensors_file)
  elif os.path.exists(bin_file):
    try:
      import torch  # Optional: only pytorch_model.bin needs it.
    except ImportError as e:
      raise ImportError(
        f"{bin_file} is a torch pickle and reading it needs torch (pip install torch); "
        "model.safetensors needs no torch"
      ) from e
    state = torch.load(bin_file, map_location="cpu", weights_only=True)
    tensors = {name: value.float().numpy() for name, value in state.items()}
  else:
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")
  renamed = {}
  for name, value in tensors.items():
    for old, new in _WEIGHT_NORM_NAMES.items():
      if name.endswith("pos_conv_embed." + old):
        name = name.removesuffix(old) + new
    renamed[name] = np.asarray(value, np.float32)
  return hf_config, renamed


def variables_from_hf(
  tensors: dict[str, np.ndarray], model_config: ml_collections.ConfigDict, *, seed: int = 0
) -> tuple[dict, dict, list[str]]:
  """sslax variables from the state dict of a class of `model_config`'s family.

  Args:
    tensors: HF tensor name -> float32 array (as `read_hf_checkpoint` returns).
    model_config: the sslax model fields (`hf_config_fields.model_config_from_hf` of the
      same checkpoint).
    seed: seeds the parameters the checkpoint does not hold.

  Returns:
    (params, model_state, fresh): the numpy params tree of
    `model_types.build_model(model_config)`, its other collections ({'batch_stats': ...}
    for a conformer, else {}), and the sorted '/'-joined paths of parameters initialised
    afresh (the quantizer, project_q and final_proj of a bare model; HuBERT's final_proj
    and label_embs_concat; mask_emb when masked_spec_embed is absent).

  Raises:
    ValueError: naming missing, unexpected or misshapen tensors, or a non-identity
      projection where sslax has none.
  """
  m = model_config
  family = hf_families.family_of_model(m)
  full = (
    family.base_architecture is None
    or not family.base_prefix
    or any(name.startswith(family.base_prefix) for name in tensors)
  )
  prefix = family.base_prefix if full else ""
  table = hf_architecture_maps.full_tensors(family, m, prefix)
  optional = {prefix + "masked_spec_embed"}
  if not full:
    optional |= {t.hf_name for t in hf_architecture_maps.head_tensors(family, m)}

  known = {t.hf_name for t in table}
  known |= {prefix + name for name in hf_architecture_maps.hf_only(family, m)}
  if not hf_architecture_maps.has_projection(m):
    known |= {f"{prefix}{_PROJECTION}.{p}" for p in ("weight", "bias")}
  unexpected = sorted(set(tensors) - known)
  missing = sorted({t.hf_name for t in table} - set(tensors) - optional)
  if missing or unexpected:
    raise ValueError(f"HF tensors missing: {missing}; unexpected: {unexpected}")
  if not hf_architecture_maps.has_projection(m):
    _check_identity_projection(tensors, prefix, m.embed_dim)
  for name, value in hf_architecture_maps.constants(family, m).items():
    found = tensors.get(prefix + name)
    if found is not None and not np.allclose(found, value, rtol=1e-6, atol=0):
      raise ValueError(f"HF tensor {prefix + name} is not what sslax computes from the config")

  param_shapes, state_shapes = model_types.variable_shapes(m)
  shapes = {**param_shapes, **state_shapes}
  fresh = [t.sslax_path for t in table if t.hf_name not in tensors]
  present = [t for t in table if t.hf_name in tensors]
  for t in present:
    hf_shape = t.to_hf(np.zeros(shapes[t.key], np.float32)).shape
    if tensors[t.hf_name].shape != hf_shape:
      raise ValueError(
        f"HF tensor {t.hf_name} has shape {tensors[t.hf_name].shape}, the config needs "
        f"{hf_shape} (sslax {t.key})"
      )
  variables = hf_tensor_map.variables_from_table(tensors, present)
  flat = flax.traverse_util.flatten_dict(variables.pop("params"), sep="/")
  fresh += hf_architecture_maps.sslax_only(family, shapes)
  if fresh:
    initial = flax.traverse_util.flatten_dict(model_types.init_params(m, seed), sep="/")
    flat.update({path: initial[path] for path in fresh})
  mapped = set(flat) | set(flax.traverse_util.flatten_dict(variables, sep="/"))
  if mapped != set(shapes):
    raise ValueError(f"sslax variables not mapped: {sorted(set(shapes) - mapped)}")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), variables, sorted(fresh)


def _check_identity_projection(tensors: dict, prefix: str, dim: int) -> None:
  """sslax has no projection when conv and encoder widths agree: HF's must be identity."""
  weight = tensors.get(f"{prefix}{_PROJECTION}.weight")
  bias = tensors.get(f"{prefix}{_PROJECTION}.bias")
  if weight is None or bias is None:
    raise ValueError(f"HF tensors missing: {prefix}{_PROJECTION}.*")
  if not (np.array_equal(weight, np.eye(dim, dtype=np.float32)) and not np.any(bias)):
    raise ValueError(
      f"{prefix}{_PROJECTION} is not the identity, but conv_dim[-1] == "
      "hidden_size, where sslax (as fairseq) has no post_extract_proj"
    )


def hf_tensors_from_params(
  params, model_config: ml_collections.ConfigDict, model_state: dict | None = None
) -> dict[str, np.ndarray]:
  """The state dict (numpy) of the class export writes, from sslax params and model state.

  Where sslax has no post_extract_proj (conv width == embed_dim), the HF projection is
  written as the identity, which is exact. Parameters HF has no place for are left out;
  tensors HF holds but never uses get the values `hf_architecture_maps.hf_only` gives.

  Raises:
    ValueError: the model state lacks variables the model has (batch-norm statistics).
  """
  m = model_config
  family = hf_families.family_of_model(m)
  prefix = family.base_prefix
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  flat_state = flax.traverse_util.flatten_dict(model_state or {}, sep="/")
  missing = sorted(set(model_types.state_shapes(m)) - set(flat_state))
  if missing:
    raise ValueError(f"model_state lacks {missing}: a conformer exports with its statistics")
  flat.update(flat_state)
  table = hf_architecture_maps.full_tensors(family, m, prefix)
  tensors = {t.hf_name: t.to_hf(np.asarray(flat[t.key], np.float32)) for t in table}
  tensors.update(
    {prefix + name: value for name, value in hf_architecture_maps.hf_only(family, m).items()}
  )
  if not hf_architecture_maps.has_projection(m):
    dim = m.embed_dim
    tensors[f"{prefix}{_PROJECTION}.weight"] = np.eye(dim, dtype=np.float32)
    tensors[f"{prefix}{_PROJECTION}.bias"] = np.zeros(dim, np.float32)
  # np.array, not ascontiguousarray, which makes 0-d arrays (num_batches_tracked) 1-d.
  return {name: np.array(value, order="C") for name, value in tensors.items()}
