"""Hugging Face `transformers` wav2vec 2.0 and HuBERT checkpoints to and from sslax.

Supported (a directory with `config.json` and `model.safetensors` or `pytorch_model.bin`):
`Wav2Vec2ForPreTraining`, `Wav2Vec2Model` and `HubertModel` checkpoints, group-norm and
layer-norm feature extractors with or without conv bias, post-LN
(`do_stable_layer_norm=False`) and pre-LN (`do_stable_layer_norm=True`) encoders; for
HuBERT, HF's defaults `feat_proj_layer_norm=True` and `conv_pos_batch_norm=False`, which
are fairseq's HubertModel (conv features always layer-normed, positional conv always
weight-normed); the other values are errors. Both models share one tensor map (the
encoder's names are the same; only the prefix differs, 'wav2vec2.' in
Wav2Vec2ForPreTraining, none in the bare models).

What HF does not hold is initialised afresh on import and named: a `Wav2Vec2Model` has
no quantizer, `project_q` or `project_hid`; no HF HuBERT class holds HuBERT's
pretraining head (`final_proj`, `label_embs_concat`), whose fields import takes from
fairseq's Base iteration 2 (final_dim 256, 500 clusters, untied); `mask_emb` when the
checkpoint has no `masked_spec_embed`. Export writes a `Wav2Vec2ForPreTraining` or a
`HubertModel` checkpoint (`config.json` + `model.safetensors`); the HuBERT head has no
place there and is left out, with a logged warning.

Anything else (other heads, adapters, conformer configs, other activations or norms,
tensors that are missing, unexpected or of the wrong shape) is an error naming the
option or tensor. Reading safetensors needs neither torch nor transformers; reading
`pytorch_model.bin` needs torch.

Numerics: an imported model gives the same hidden states as transformers (tests/
test_interop_hf.py measures < 1e-4 in float32) with one deliberate difference: sslax's
group norm (first conv of a group-norm extractor) takes its statistics over the valid
frames only, while transformers' normalises over the zero padding too. For a padded batch,
sslax therefore gives what transformers gives for each utterance run alone, unpadded.

Command line:
  python -m sslax.interop.hf import --from HF_DIR --to SSLAX_DIR [--seed 0]
  python -m sslax.interop.hf export --from SSLAX_DIR --to HF_DIR
SSLAX_DIR is an sslax checkpoint directory (sslax/interop/checkpoint.py gives its layout)
or a training workdir (`sslax.main --workdir`), whose latest checkpoint is exported.
"""

import argparse
from collections.abc import Callable
import dataclasses
import json
import os
import sys

from absl import logging
import flax.traverse_util
import ml_collections
import numpy as np
import safetensors.numpy

from sslax.interop import checkpoint
from sslax.train import checkpoints

# The transformers defaults (the same in `Wav2Vec2Config` and `HubertConfig`) of every
# shared field read here; a config.json may leave out fields at their default.
_HF_DEFAULTS = dict(
  hidden_size=768,
  num_hidden_layers=12,
  num_attention_heads=12,
  intermediate_size=3072,
  hidden_act="gelu",
  hidden_dropout=0.1,
  activation_dropout=0.1,
  attention_dropout=0.1,
  feat_proj_dropout=0.0,
  layerdrop=0.1,
  layer_norm_eps=1e-5,
  feat_extract_norm="group",
  feat_extract_activation="gelu",
  conv_dim=(512,) * 7,
  conv_stride=(5, 2, 2, 2, 2, 2, 2),
  conv_kernel=(10, 3, 3, 3, 3, 2, 2),
  conv_bias=False,
  num_conv_pos_embeddings=128,
  num_conv_pos_embedding_groups=16,
  do_stable_layer_norm=False,
  mask_time_prob=0.05,
  mask_feature_prob=0.0,
  add_adapter=False,
  adapter_attn_dim=None,
)
# sslax's norms use PyTorch's default epsilon.
_LAYER_NORM_EPS = 1e-5
PRETRAINING = "Wav2Vec2ForPreTraining"
BASE_MODEL = "Wav2Vec2Model"
HUBERT = "HubertModel"
# PyTorch weight norm: the old `weight_norm` names and the newer parametrization names.
_WEIGHT_NORM_NAMES = {
  "conv.weight_g": "conv.parametrizations.weight.original0",
  "conv.weight_v": "conv.parametrizations.weight.original1",
}
# The HuBERT head import writes, which HF does not hold: fairseq hubert_base_librispeech.yaml
# with iteration 2's 500 k-means clusters of one label set.
_HUBERT_HEAD = dict(final_dim=256, num_classes=(500,), untie_final_proj=True)


def model_config_from_hf(hf_config: dict) -> ml_collections.ConfigDict:
  """The sslax `config.model` fields for a transformers wav2vec 2.0 or HuBERT config.json.

  Args:
    hf_config: the parsed config.json; absent fields take transformers' defaults.

  Returns:
    ConfigDict with the fields of configs/common.py `wav2vec2_model()` or
    `hubert_model()` (by the config's model_type): the waveform frontend and Transformer
    encoder. HF has no feature_grad_mult (it trains the extractor at full gradient unless
    frozen): 1.0.

  Raises:
    ValueError: naming the first option sslax cannot represent exactly.
  """
  hf_type = hf_config.get("model_type", "wav2vec2")
  if hf_type not in _FAMILIES:
    raise ValueError(f"model_type {hf_type!r} is not supported ({', '.join(_FAMILIES)})")
  family = _FAMILIES[hf_type]
  c = dict(_HF_DEFAULTS, **family.hf_defaults)
  c.update(hf_config)
  if "position_embeddings_type" in c:
    raise ValueError(
      f"position_embeddings_type={c['position_embeddings_type']!r} (conformer) is not supported"
    )
  readable = sorted({family.full_architecture, family.base_architecture})
  for architecture in c.get("architectures") or ():
    if architecture not in readable:
      raise ValueError(
        f"architecture {architecture} is not supported for model_type {hf_type!r} "
        f"({', '.join(readable)})"
      )
  _require(c, "feat_extract_norm", c["feat_extract_norm"] in ("group", "layer"), "group or layer")
  _require(c, "feat_extract_activation", c["feat_extract_activation"] == "gelu", "gelu")
  _require(c, "hidden_act", c["hidden_act"] == "gelu", "gelu")
  _require(c, "layer_norm_eps", c["layer_norm_eps"] == _LAYER_NORM_EPS, str(_LAYER_NORM_EPS))
  _require(c, "add_adapter", not c["add_adapter"], "False")
  _require(c, "adapter_attn_dim", c["adapter_attn_dim"] is None, "None")
  num_layers = len(c["conv_dim"])
  for key in ("conv_kernel", "conv_stride"):
    _require(c, key, len(c[key]) == num_layers, f"{num_layers} entries, as conv_dim")
  _require(
    c,
    "num_attention_heads",
    c["hidden_size"] % c["num_attention_heads"] == 0,
    "to divide hidden_size",
  )
  _require(
    c,
    "num_conv_pos_embedding_groups",
    c["hidden_size"] % c["num_conv_pos_embedding_groups"] == 0,
    "to divide hidden_size",
  )
  return ml_collections.ConfigDict(
    dict(
      **checkpoint.field_defaults(hf_type),
      conv_layers=tuple(
        (int(d), int(k), int(s))
        for d, k, s in zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"], strict=True)
      ),
      extractor_mode=f"{c['feat_extract_norm']}_norm",
      conv_bias=bool(c["conv_bias"]),
      embed_dim=c["hidden_size"],
      num_layers=c["num_hidden_layers"],
      num_heads=c["num_attention_heads"],
      mlp_dim=c["intermediate_size"],
      layer_norm_first=bool(c["do_stable_layer_norm"]),
      pos_conv_kernel=c["num_conv_pos_embeddings"],
      pos_conv_groups=c["num_conv_pos_embedding_groups"],
      dropout=float(c["hidden_dropout"]),
      attention_dropout=float(c["attention_dropout"]),
      activation_dropout=float(c["activation_dropout"]),
      dropout_input=float(c["feat_proj_dropout"]),
      layerdrop=float(c["layerdrop"]),
      feature_grad_mult=1.0,
      **family.head_from_hf(c),
    )
  )


def _require(c: dict, key: str, ok: bool, wanted: str) -> None:
  if not ok:
    raise ValueError(f"{key}={c[key]!r} is not supported (sslax needs {wanted})")


def _wav2vec2_head_from_hf(c: dict) -> dict:
  _require(
    c,
    "num_codevector_groups",
    c["codevector_dim"] % c["num_codevector_groups"] == 0,
    "to divide codevector_dim",
  )
  return dict(
    dropout_features=float(c["feat_quantizer_dropout"]),
    final_dim=c["proj_codevector_dim"],
    latent_vars=c["num_codevectors_per_group"],
    latent_groups=c["num_codevector_groups"],
    # sslax (as fairseq) writes 0 for "the codevector dim is final_dim".
    latent_dim=0 if c["codevector_dim"] == c["proj_codevector_dim"] else c["codevector_dim"],
  )


def _hubert_head_from_hf(c: dict) -> dict:
  # fairseq's HuBERT always normalises the conv features and weight-normalises the
  # positional conv; HF's alternatives (DistilHuBERT-style) are not sslax's model.
  _require(c, "feat_proj_layer_norm", c["feat_proj_layer_norm"], "True")
  _require(c, "conv_pos_batch_norm", not c["conv_pos_batch_norm"], "False")
  return dict(_HUBERT_HEAD)


def hf_config_from_model(model_config: ml_collections.ConfigDict) -> dict:
  """The transformers config.json (of the class export writes) for sslax model fields.

  Raises:
    ValueError: the model has a frontend or encoder other than HF's (waveform conv stack
      and Transformer).
  """
  m = model_config
  family = _FAMILIES[checkpoint.model_type(m)]
  model = checkpoint.build_model(m)
  for field, hf_value in (("frontend", "waveform"), ("encoder", "transformer")):
    if getattr(model, field) != hf_value:
      raise ValueError(
        f"config.model.{field}={getattr(model, field)!r} has no transformers "
        f"{family.full_architecture} counterpart (only {hf_value!r})"
      )
  return dict(
    architectures=[family.full_architecture],
    model_type=checkpoint.model_type(m),
    dtype="float32",
    conv_dim=[d for d, _, _ in m.conv_layers],
    conv_kernel=[k for _, k, _ in m.conv_layers],
    conv_stride=[s for _, _, s in m.conv_layers],
    num_feat_extract_layers=len(m.conv_layers),
    feat_extract_norm=m.extractor_mode.removesuffix("_norm"),
    feat_extract_activation="gelu",
    conv_bias=m.conv_bias,
    hidden_size=m.embed_dim,
    num_hidden_layers=m.num_layers,
    num_attention_heads=m.num_heads,
    intermediate_size=m.mlp_dim,
    hidden_act="gelu",
    layer_norm_eps=_LAYER_NORM_EPS,
    do_stable_layer_norm=m.layer_norm_first,
    num_conv_pos_embeddings=m.pos_conv_kernel,
    num_conv_pos_embedding_groups=m.pos_conv_groups,
    hidden_dropout=m.dropout,
    attention_dropout=m.attention_dropout,
    activation_dropout=m.activation_dropout,
    feat_proj_dropout=m.dropout_input,
    layerdrop=m.layerdrop,
    # masked_spec_embed exists only when a mask probability is positive.
    mask_time_prob=_HF_DEFAULTS["mask_time_prob"],
    **family.head_to_hf(m),
  )


def _wav2vec2_head_to_hf(m: ml_collections.ConfigDict) -> dict:
  return dict(
    feat_quantizer_dropout=m.dropout_features,
    num_codevectors_per_group=m.latent_vars,
    num_codevector_groups=m.latent_groups,
    codevector_dim=m.latent_dim if m.latent_dim > 0 else m.final_dim,
    proj_codevector_dim=m.final_dim,
  )


def _hubert_head_to_hf(m: ml_collections.ConfigDict) -> dict:
  del m  # HubertModel has no pretraining head.
  return dict(feat_proj_layer_norm=True, conv_pos_batch_norm=False)


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One HF tensor and the sslax parameter it is (the maps are transposes and reshapes)."""

  hf_name: str
  sslax_path: str
  to_sslax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _same(hf_name: str, path: str) -> _Tensor:
  return _Tensor(hf_name, path, lambda x: x, lambda x: x)


def _linear(hf_name: str, path: str) -> list[_Tensor]:
  """torch Linear weight [out, in] and bias <-> flax Dense kernel [in, out] and bias."""
  return [
    _Tensor(f"{hf_name}.weight", f"{path}/kernel", np.transpose, np.transpose),
    _same(f"{hf_name}.bias", f"{path}/bias"),
  ]


def _norm(hf_name: str, path: str) -> list[_Tensor]:
  return [_same(f"{hf_name}.weight", f"{path}/scale"), _same(f"{hf_name}.bias", f"{path}/bias")]


def _flip(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (2, 1, 0))


def _conv_weight(hf_name: str, path: str) -> _Tensor:
  """torch Conv1d weight [out, in, k] <-> flax kernel [k, in, out] (its own inverse)."""
  return _Tensor(hf_name, path, _flip, _flip)


def _attention(hf_name: str, path: str, dim: int, heads: int) -> list[_Tensor]:
  """q/k/v/out Linear layers <-> HeadProjection kernels [D, H, K] and [H, K, D]."""
  head_dim = dim // heads
  tensors = []
  for hf_proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
    tensors += [
      _Tensor(
        f"{hf_name}.{hf_proj}.weight",
        f"{path}/{name}/kernel",
        lambda w: w.T.reshape(dim, heads, head_dim),
        lambda k: k.reshape(dim, dim).T,
      ),
      _Tensor(
        f"{hf_name}.{hf_proj}.bias",
        f"{path}/{name}/bias",
        lambda b: b.reshape(heads, head_dim),
        lambda b: b.reshape(dim),
      ),
    ]
  return tensors + [
    _Tensor(
      f"{hf_name}.out_proj.weight",
      f"{path}/out/kernel",
      lambda w: w.T.reshape(heads, head_dim, dim),
      lambda k: k.reshape(dim, dim).T,
    ),
    _same(f"{hf_name}.out_proj.bias", f"{path}/out/bias"),
  ]


def _base_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """The base model's tensors, projection excluded: Wav2Vec2Model's and HubertModel's alike.

  Names are unprefixed (as in the bare models; Wav2Vec2ForPreTraining adds 'wav2vec2.').
  """
  tensors = []
  for i in range(len(m.conv_layers)):
    hf_layer = f"feature_extractor.conv_layers.{i}"
    tensors.append(_conv_weight(f"{hf_layer}.conv.weight", f"frontend/conv_{i}/kernel"))
    if m.conv_bias:
      tensors.append(_same(f"{hf_layer}.conv.bias", f"frontend/conv_{i}/bias"))
    if m.extractor_mode == "layer_norm" or i == 0:
      tensors += _norm(f"{hf_layer}.layer_norm", f"frontend/norm_{i}")
  tensors += _norm("feature_projection.layer_norm", "feature_norm")
  tensors.append(_same("masked_spec_embed", "mask_emb"))

  pos_conv = "encoder.pos_conv_embed.conv"
  tensors += [
    _Tensor(
      f"{pos_conv}.parametrizations.weight.original0",
      "encoder/pos_conv/weight_g",
      lambda g: g.reshape(-1),
      lambda g: g.reshape(1, 1, -1),
    ),
    _conv_weight(f"{pos_conv}.parametrizations.weight.original1", "encoder/pos_conv/weight_v"),
    _same(f"{pos_conv}.bias", "encoder/pos_conv/bias"),
  ]
  tensors += _norm("encoder.layer_norm", "encoder/layer_norm")
  for i in range(m.num_layers):
    hf_layer, layer = f"encoder.layers.{i}", f"encoder/layers_{i}"
    tensors += _attention(f"{hf_layer}.attention", f"{layer}/attention", m.embed_dim, m.num_heads)
    tensors += _norm(f"{hf_layer}.layer_norm", f"{layer}/attention_norm")
    tensors += _norm(f"{hf_layer}.final_layer_norm", f"{layer}/mlp_norm")
    tensors += _linear(f"{hf_layer}.feed_forward.intermediate_dense", f"{layer}/fc1")
    tensors += _linear(f"{hf_layer}.feed_forward.output_dense", f"{layer}/fc2")
  return tensors


def _wav2vec2_head_tensors() -> list[_Tensor]:
  """Wav2Vec2ForPreTraining's tensors outside the base model."""
  return [
    _Tensor(
      "quantizer.codevectors",
      "quantizer/codevectors",
      lambda x: x.reshape(x.shape[1:]),
      lambda x: x[None],
    ),
    *_linear("quantizer.weight_proj", "quantizer/logits"),
    *_linear("project_q", "project_q"),
    *_linear("project_hid", "final_proj"),
  ]


@dataclasses.dataclass(frozen=True)
class _Family:
  """One sslax model type (= HF model_type) and the transformers classes that hold it.

  Attributes:
    full_architecture: the class export writes: every tensor HF has, base model's
      tensors under `base_prefix`.
    base_prefix: where the base model's tensors live in the full architecture.
    base_architecture: the bare encoder class (tensors unprefixed); import initialises
      the head tensors afresh when absent.
    hf_defaults: transformers' defaults of the family's own config fields read here.
    head_from_hf: sslax head fields from a defaulted HF config; raises on options sslax
      cannot represent.
    head_to_hf: the HF config fields for sslax model fields, beyond the shared ones.
    head_tensors: the full architecture's tensors outside the base model.
    sslax_only: top-level sslax parameters HF has no place for.
  """

  full_architecture: str
  base_prefix: str
  base_architecture: str
  hf_defaults: dict
  head_from_hf: Callable[[dict], dict]
  head_to_hf: Callable[[ml_collections.ConfigDict], dict]
  head_tensors: Callable[[], list[_Tensor]]
  sslax_only: tuple[str, ...]


_FAMILIES = {
  "wav2vec2": _Family(
    full_architecture=PRETRAINING,
    base_prefix="wav2vec2.",
    base_architecture=BASE_MODEL,
    hf_defaults=dict(
      feat_quantizer_dropout=0.0,
      num_codevectors_per_group=320,
      num_codevector_groups=2,
      codevector_dim=256,
      proj_codevector_dim=256,
    ),
    head_from_hf=_wav2vec2_head_from_hf,
    head_to_hf=_wav2vec2_head_to_hf,
    head_tensors=_wav2vec2_head_tensors,
    sslax_only=(),
  ),
  "hubert": _Family(
    full_architecture=HUBERT,
    base_prefix="",
    base_architecture=HUBERT,
    hf_defaults=dict(feat_proj_layer_norm=True, conv_pos_batch_norm=False),
    head_from_hf=_hubert_head_from_hf,
    head_to_hf=_hubert_head_to_hf,
    head_tensors=list,
    sslax_only=("final_proj", "label_embs_concat"),
  ),
}


def _prefixed(tensors: list[_Tensor], prefix: str) -> list[_Tensor]:
  return [dataclasses.replace(t, hf_name=prefix + t.hf_name) for t in tensors]


def _projection(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """feature_projection.projection, which sslax (as fairseq) has only when widths differ."""
  if m.conv_layers[-1][0] != m.embed_dim:
    return _linear("feature_projection.projection", "post_extract_proj")
  return []


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


def params_from_hf(
  tensors: dict[str, np.ndarray], model_config: ml_collections.ConfigDict, *, seed: int = 0
) -> tuple[dict, list[str]]:
  """sslax params from a Wav2Vec2ForPreTraining, Wav2Vec2Model or HubertModel state dict.

  Args:
    tensors: HF tensor name -> float32 array (as `read_hf_checkpoint` returns).
    model_config: the sslax model fields (`model_config_from_hf` of the same checkpoint).
    seed: seeds the parameters the checkpoint does not hold.

  Returns:
    (params, fresh): the numpy params tree of `checkpoint.build_model(model_config)` and
    the sorted '/'-joined paths of parameters initialised afresh (the quantizer,
    project_q and final_proj of a Wav2Vec2Model checkpoint; HuBERT's final_proj and
    label_embs_concat; mask_emb when masked_spec_embed is absent).

  Raises:
    ValueError: naming missing, unexpected or misshapen tensors, or a non-identity
      projection where sslax has none.
  """
  family = _FAMILIES[checkpoint.model_type(model_config)]
  full = not family.base_prefix or any(name.startswith(family.base_prefix) for name in tensors)
  prefix = family.base_prefix if full else ""
  projection = _prefixed(_projection(model_config), prefix)
  table = _prefixed(_base_tensors(model_config), prefix) + projection + family.head_tensors()
  optional = {prefix + "masked_spec_embed"}
  if not full:
    optional |= {t.hf_name for t in family.head_tensors()}

  known = {t.hf_name for t in table}
  if not projection:
    known |= {f"{prefix}feature_projection.projection.{p}" for p in ("weight", "bias")}
  unexpected = sorted(set(tensors) - known)
  missing = sorted({t.hf_name for t in table} - set(tensors) - optional)
  if missing or unexpected:
    raise ValueError(f"HF tensors missing: {missing}; unexpected: {unexpected}")
  if not projection:
    _check_identity_projection(tensors, prefix, model_config.embed_dim)

  shapes = checkpoint.param_shapes(model_config)
  flat = {}
  fresh = _sslax_only(family, shapes)
  for t in table:
    if t.hf_name not in tensors:
      fresh.append(t.sslax_path)
      continue
    hf_shape = t.to_hf(np.zeros(shapes[t.sslax_path], np.float32)).shape
    if tensors[t.hf_name].shape != hf_shape:
      raise ValueError(
        f"HF tensor {t.hf_name} has shape {tensors[t.hf_name].shape}, the config needs "
        f"{hf_shape} (sslax {t.sslax_path})"
      )
    flat[t.sslax_path] = np.ascontiguousarray(t.to_sslax(tensors[t.hf_name]))
  if fresh:
    initial = flax.traverse_util.flatten_dict(checkpoint.init_params(model_config, seed), sep="/")
    flat.update({path: initial[path] for path in fresh})
  if set(flat) != set(shapes):
    raise ValueError(f"sslax parameters not mapped: {sorted(set(shapes) - set(flat))}")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), sorted(fresh)


def _sslax_only(family: _Family, paths) -> list[str]:
  """The '/'-joined `paths` of parameters HF has no place for."""
  return sorted(path for path in paths if path.split("/")[0] in family.sslax_only)


def _check_identity_projection(tensors: dict, prefix: str, dim: int) -> None:
  """sslax has no projection when conv and Transformer widths agree: HF's must be identity."""
  weight = tensors.get(f"{prefix}feature_projection.projection.weight")
  bias = tensors.get(f"{prefix}feature_projection.projection.bias")
  if weight is None or bias is None:
    raise ValueError(f"HF tensors missing: {prefix}feature_projection.projection.*")
  if not (np.array_equal(weight, np.eye(dim, dtype=np.float32)) and not np.any(bias)):
    raise ValueError(
      f"{prefix}feature_projection.projection is not the identity, but conv_dim[-1] == "
      "hidden_size, where sslax (as fairseq) has no post_extract_proj"
    )


def hf_tensors_from_params(
  params, model_config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
  """The state dict (float32 numpy) of the class export writes, from sslax params.

  Where sslax has no post_extract_proj (conv width == embed_dim), the HF projection is
  written as the identity, which is exact. Parameters HF has no place for are left out.
  """
  family = _FAMILIES[checkpoint.model_type(model_config)]
  prefix = family.base_prefix
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  base = _base_tensors(model_config) + _projection(model_config)
  table = _prefixed(base, prefix) + family.head_tensors()
  tensors = {t.hf_name: t.to_hf(np.asarray(flat[t.sslax_path], np.float32)) for t in table}
  if not _projection(model_config):
    dim = model_config.embed_dim
    tensors[f"{prefix}feature_projection.projection.weight"] = np.eye(dim, dtype=np.float32)
    tensors[f"{prefix}feature_projection.projection.bias"] = np.zeros(dim, np.float32)
  return {name: np.ascontiguousarray(value) for name, value in tensors.items()}


def import_hf(path: str, *, seed: int = 0) -> tuple[ml_collections.ConfigDict, dict, list[str]]:
  """Reads a transformers checkpoint directory: (model_config, params, fresh parameter paths)."""
  hf_config, tensors = read_hf_checkpoint(path)
  model_config = model_config_from_hf(hf_config)
  params, fresh = params_from_hf(tensors, model_config, seed=seed)
  return model_config, params, fresh


def export_hf(path: str, model_config: ml_collections.ConfigDict, params) -> list[str]:
  """Writes config.json and model.safetensors that transformers loads.

  Returns:
    The sorted '/'-joined paths of parameters left out (HuBERT's pretraining head), each
    also logged.
  """
  family = _FAMILIES[checkpoint.model_type(model_config)]
  hf_config = hf_config_from_model(model_config)
  tensors = hf_tensors_from_params(params, model_config)
  dropped = _sslax_only(family, flax.traverse_util.flatten_dict(params, sep="/"))
  if dropped:
    logging.warning(
      "exporting to %s: %s has no place for %s; left out", path, family.full_architecture, dropped
    )
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
    f.write("\n")
  # transformers refuses safetensors files without the 'pt' format tag.
  safetensors.numpy.save_file(
    tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"}
  )
  return dropped


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m sslax.interop.hf", description=__doc__.split("\n")[0]
  )
  parser.add_argument("direction", choices=("import", "export"))
  parser.add_argument("--from", dest="source", required=True, help="checkpoint directory to read")
  parser.add_argument("--to", dest="target", required=True, help="checkpoint directory to write")
  parser.add_argument("--seed", type=int, default=0, help="seeds parameters HF does not hold")
  args = parser.parse_args(argv)
  if args.direction == "import":
    model_config, params, fresh = import_hf(args.source, seed=args.seed)
    checkpoint.save_sslax_checkpoint(args.target, model_config, params)
    print(f"wrote {args.target}; initialised afresh: {', '.join(fresh) or 'nothing'}")
  elif os.path.isdir(os.path.join(args.source, "checkpoints")):  # a training workdir
    with open(os.path.join(args.source, "config.json")) as f:
      model_config = checkpoint.model_config_from_json(json.load(f)["model"])
    dropped = export_hf(args.target, model_config, checkpoints.load_params(args.source))
    print(f"wrote {args.target}; left out: {', '.join(dropped) or 'nothing'}")
  else:
    model_config, params = checkpoint.load_sslax_checkpoint(args.source)
    dropped = export_hf(args.target, model_config, params)
    print(f"wrote {args.target}; left out: {', '.join(dropped) or 'nothing'}")


if __name__ == "__main__":
  main(sys.argv[1:])
