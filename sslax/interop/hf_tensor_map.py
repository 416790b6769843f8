"""The tensor-map machinery of sslax.interop.hf: one HF tensor <-> one sslax variable.

A tensor map is a list of `Tensor` entries, each one HF (PyTorch) tensor name, one sslax
variable path and the two transposes/reshapes between them, used in both directions. The
builders here cover the PyTorch layers the maps use (Linear, LayerNorm, Conv1d, attention
projections); hf_architecture_maps.py builds each architecture's map from them.
"""

from collections.abc import Callable
import dataclasses

import flax.traverse_util
import numpy as np


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One HF tensor and the sslax variable it is (the maps are transposes and reshapes).

  `sslax_path` is the '/'-joined path in `collection` ('params', or 'batch_stats' for the
  conformer's running statistics).
  """

  hf_name: str
  sslax_path: str
  to_sslax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  collection: str = "params"

  @property
  def key(self) -> str:
    """The path among all variables: as in the params tree, or 'collection/path'
    (`model_types.param_shapes` and `model_types.state_shapes` keys)."""
    return (
      self.sslax_path if self.collection == "params" else f"{self.collection}/{self.sslax_path}"
    )


def same(hf_name: str, path: str, collection: str = "params") -> Tensor:
  """A tensor of the same layout on both sides."""
  return Tensor(hf_name, path, lambda x: x, lambda x: x, collection)


def linear(hf_name: str, path: str) -> list[Tensor]:
  """torch Linear weight [out, in] and bias <-> flax Dense kernel [in, out] and bias."""
  return [
    Tensor(f"{hf_name}.weight", f"{path}/kernel", np.transpose, np.transpose),
    same(f"{hf_name}.bias", f"{path}/bias"),
  ]


def norm(hf_name: str, path: str) -> list[Tensor]:
  """torch LayerNorm/GroupNorm/BatchNorm weight and bias <-> flax scale and bias."""
  return [same(f"{hf_name}.weight", f"{path}/scale"), same(f"{hf_name}.bias", f"{path}/bias")]


def _flip(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (2, 1, 0))


def conv_weight(hf_name: str, path: str) -> Tensor:
  """torch Conv1d weight [out, in, k] <-> flax kernel [k, in, out] (its own inverse)."""
  return Tensor(hf_name, path, _flip, _flip)


def into_heads(hf_name: str, path: str, dim: int, heads: int, bias: bool = True) -> list[Tensor]:
  """A Linear into the heads <-> HeadProjection kernel [D, H, K] (and bias [H, K])."""
  head_dim = dim // heads
  tensors = [
    Tensor(
      f"{hf_name}.weight",
      f"{path}/kernel",
      lambda w: w.T.reshape(dim, heads, head_dim),
      lambda k: k.reshape(dim, dim).T,
    )
  ]
  if bias:
    tensors.append(
      Tensor(
        f"{hf_name}.bias",
        f"{path}/bias",
        lambda b: b.reshape(heads, head_dim),
        lambda b: b.reshape(dim),
      )
    )
  return tensors


def attention(
  hf_name: str, path: str, dim: int, heads: int, projections: tuple[str, str, str, str]
) -> list[Tensor]:
  """HF's (query, key, value, out) Linear layers named `projections` <-> sslax's
  query/key/value HeadProjection kernels [D, H, K] and out kernel [H, K, D]."""
  head_dim = dim // heads
  query, key, value, out = projections
  tensors = []
  for hf_proj, name in ((query, "query"), (key, "key"), (value, "value")):
    tensors += into_heads(f"{hf_name}.{hf_proj}", f"{path}/{name}", dim, heads)
  return tensors + [
    Tensor(
      f"{hf_name}.{out}.weight",
      f"{path}/out/kernel",
      lambda w: w.T.reshape(heads, head_dim, dim),
      lambda k: k.reshape(dim, dim).T,
    ),
    same(f"{hf_name}.{out}.bias", f"{path}/out/bias"),
  ]


def prefixed(tensors: list[Tensor], prefix: str) -> list[Tensor]:
  """`tensors` with `prefix` before each HF name (a base model inside a full class)."""
  return [dataclasses.replace(t, hf_name=prefix + t.hf_name) for t in tensors]


def variables_from_table(tensors: dict[str, np.ndarray], table: list[Tensor]) -> dict:
  """The sslax variables ({'params': tree, 'batch_stats': tree, ...}) the entries of
  `table` make of HF `tensors` (name -> array); no checks (`hf_state_dict.variables_from_hf`
  checks)."""
  flat = {(t.collection, *t.sslax_path.split("/")): t.to_sslax(tensors[t.hf_name]) for t in table}
  return flax.traverse_util.unflatten_dict(
    {path: np.array(value, order="C") for path, value in flat.items()}
  )
