"""Hugging Face `transformers` checkpoints to and from sslax: wav2vec 2.0, conformer, HuBERT, CTC.

Supported (a directory with `config.json` and `model.safetensors` or `pytorch_model.bin`),
by transformers class, with the sslax model (`config.model`) each becomes:

  Wav2Vec2ForPreTraining, Wav2Vec2Model    wav2vec2 (sslax/models/wav2vec2.py), Transformer
  Wav2Vec2ConformerForPreTraining,         wav2vec2 with `encoder='conformer'`
    Wav2Vec2ConformerModel                   (sslax/models/conformer.py)
  HubertModel                              hubert (sslax/models/hubert.py)
  Wav2Vec2ForCTC                           ctc (sslax/models/ctc.py), with its vocabulary

Feature extractors: group norm or layer norm, with or without conv bias. Transformer
encoders: post-LN (`do_stable_layer_norm=False`) and pre-LN (`True`), gelu. Conformer
encoders: `position_embeddings_type` 'relative' or 'rotary' (base 10000), any odd
`conv_depthwise_kernel_size`, batch norm (its running statistics become the model state,
`batch_stats`), `hidden_act` 'swish' (= 'silu'; sslax's conformer has no other). HuBERT:
HF's defaults `feat_proj_layer_norm=True` and `conv_pos_batch_norm=False`, which are
fairseq's HubertModel. CTC: `pad_token_id` 0 is the blank, as sslax's (sslax/data/text.py),
and the directory's `vocab.json` must have sslax's layout (`<pad>`, `<s>`, `</s>`, `<unk>`,
`|`, then the characters: the layout of fairseq-converted checkpoints such as
facebook/wav2vec2-base-960h), with `|` the word delimiter.

All families share one tensor map: the feature extractor and projection (`_frontend_tensors`),
the encoder (`_transformer_tensors` or `conformer_encoder_tensors`) and each family's head
(quantizer; none; lm_head), under the family's prefix ('wav2vec2.', 'wav2vec2_conformer.'
or none in the bare models). Each entry is one HF tensor, one sslax variable and the two
transposes/reshapes between them, used in both directions.

What HF does not hold is initialised afresh on import and named: a bare `...Model` has no
quantizer, `project_q` or `project_hid`; no HF HuBERT class holds HuBERT's pretraining
head (`final_proj`, `label_embs_concat`), whose fields import takes from fairseq's Base
iteration 2 (final_dim 256, 500 clusters, untied); `mask_emb` when the checkpoint has no
`masked_spec_embed`. What sslax does not hold and HF never uses in a forward pass is
ignored on import and written with fixed values on export: the conformer's
`encoder.pos_conv_embed` (transformers builds it but never calls it; written as a zero
convolution: weight_g 0, weight_v 1, bias 0) and batch norm's `num_batches_tracked`
(unused with a momentum; written as 0). Export writes the full class of the family
(`...ForPreTraining`, `HubertModel`, `Wav2Vec2ForCTC`); the HuBERT head has no place there
and is left out, with a logged warning. A CTC export also writes the tokenizer
(`vocab.json`, `tokenizer_config.json`, `special_tokens_map.json`) and the feature
extractor (`preprocessor_config.json`: 16 kHz, `do_normalize` as the run's
`config.data.normalize`, `return_attention_mask` for layer-norm extractors as
transformers' convention), so `Wav2Vec2Processor.from_pretrained` reads it. Its
normalisation divides by sqrt(variance + 1e-7), sslax's pipeline by sqrt(variance + 1e-5)
(fairseq's layer norm of the waveform): for a model trained with `config.data.normalize`
the two inputs differ by that factor, under 1e-3 relative for utterances of variance
above 0.005.

Anything else (other heads, adapters, other activations, norms or position embeddings,
tensors that are missing, unexpected or of the wrong shape, a vocabulary of another
layout) is an error naming the option or tensor. Reading safetensors needs neither torch
nor transformers; reading `pytorch_model.bin` needs torch.

Numerics (tests/test_interop_hf.py, test_hubert_interop.py, test_conformer_interop.py and
test_ctc_interop.py measure < 1e-4 in float32): an imported model gives transformers'
hidden states with two deliberate differences, both about padding. sslax's group norm
(first conv of a group-norm extractor) takes its statistics over the valid frames only,
while transformers' normalises over the zero padding too; and transformers' conformer
convolution module reads the padded frames (which are not zero after its first
feed-forward) and its batch norm averages over them in training, while sslax's zeroes and
skips them. For a padded batch, sslax therefore gives what transformers gives for each
utterance run alone, unpadded (for layer-norm Transformer models, also what transformers
gives for the padded batch with its attention mask).

Greedy CTC transcripts: transformers' `batch_decode` of the argmax ids gives sslax's
greedy transcript (sslax/evaluate.py) whenever the best path holds none of `<s>`, `</s>`,
`<unk>` and no two word delimiters with only blanks between them; otherwise transformers
keeps those tokens as literal text and the double space, which sslax drops and collapses
(a trained model rarely emits either: the three tokens are never targets).

Dropout rates do not change a forward pass: import maps hidden_dropout to sslax's
`dropout`, which sslax's conformer also applies after its attention and convolution
branches (transformers uses attention_dropout and conformer_conv_dropout there; import
logs a warning when they differ), and export writes sslax's values.

Command line:
  python -m sslax.interop.hf import --from HF_DIR --to SSLAX_DIR [--seed 0]
  python -m sslax.interop.hf export --from SSLAX_DIR --to HF_DIR [--normalize true|false]
SSLAX_DIR is an sslax checkpoint directory (sslax/interop/checkpoint.py gives its layout)
or a training workdir (`sslax.main --workdir`), whose latest checkpoint is exported: a
fine-tuning workdir (it holds vocab.json) exports as `Wav2Vec2ForCTC` with its tokenizer.
`--normalize` says whether the model was trained on normalised waveforms (the
feature extractor's `do_normalize`); a workdir's config.json says it already, a CTC
checkpoint directory needs it.
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

from sslax.data import text
from sslax.interop import checkpoint

# The transformers defaults (the same in `Wav2Vec2Config`, `Wav2Vec2ConformerConfig` and
# `HubertConfig`) of every shared field read here; a config.json may leave out fields at
# their default.
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
CONFORMER_PRETRAINING = "Wav2Vec2ConformerForPreTraining"
CONFORMER_MODEL = "Wav2Vec2ConformerModel"
HUBERT = "HubertModel"
CTC = "Wav2Vec2ForCTC"
# PyTorch weight norm: the old `weight_norm` names and the newer parametrization names.
_WEIGHT_NORM_NAMES = {
  "conv.weight_g": "conv.parametrizations.weight.original0",
  "conv.weight_v": "conv.parametrizations.weight.original1",
}
# The HuBERT head import writes, which HF does not hold: fairseq hubert_base_librispeech.yaml
# with iteration 2's 500 k-means clusters of one label set.
_HUBERT_HEAD = dict(final_dim=256, num_classes=(500,), untie_final_proj=True)
# sslax's conformer: swish activations (transformers calls it 'swish' or 'silu'), rotary
# frequencies of base 10000 (sslax/models/conformer.py).
_CONFORMER_ACTIVATIONS = ("swish", "silu")
_ROTARY_BASE = 10000
# The tokenizer and feature extractor files of a CTC export.
TOKENIZER_FILES = (
  "vocab.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "preprocessor_config.json",
)
_SAMPLE_RATE_HZ = 16_000


def _require(c: dict, key: str, ok: bool, wanted: str) -> None:
  if not ok:
    raise ValueError(f"{key}={c[key]!r} is not supported (sslax needs {wanted})")


# ---- The tensor map -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tensor:
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
    (`checkpoint.param_shapes` and `checkpoint.state_shapes` keys)."""
    return (
      self.sslax_path if self.collection == "params" else f"{self.collection}/{self.sslax_path}"
    )


def _same(hf_name: str, path: str, collection: str = "params") -> _Tensor:
  return _Tensor(hf_name, path, lambda x: x, lambda x: x, collection)


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


def _into_heads(hf_name: str, path: str, dim: int, heads: int, bias: bool = True) -> list[_Tensor]:
  """A Linear into the heads <-> HeadProjection kernel [D, H, K] (and bias [H, K])."""
  head_dim = dim // heads
  tensors = [
    _Tensor(
      f"{hf_name}.weight",
      f"{path}/kernel",
      lambda w: w.T.reshape(dim, heads, head_dim),
      lambda k: k.reshape(dim, dim).T,
    )
  ]
  if bias:
    tensors.append(
      _Tensor(
        f"{hf_name}.bias",
        f"{path}/bias",
        lambda b: b.reshape(heads, head_dim),
        lambda b: b.reshape(dim),
      )
    )
  return tensors


def _attention(
  hf_name: str, path: str, dim: int, heads: int, projections: tuple[str, str, str, str]
) -> list[_Tensor]:
  """HF's (query, key, value, out) Linear layers named `projections` <-> sslax's
  query/key/value HeadProjection kernels [D, H, K] and out kernel [H, K, D]."""
  head_dim = dim // heads
  query, key, value, out = projections
  tensors = []
  for hf_proj, name in ((query, "query"), (key, "key"), (value, "value")):
    tensors += _into_heads(f"{hf_name}.{hf_proj}", f"{path}/{name}", dim, heads)
  return tensors + [
    _Tensor(
      f"{hf_name}.{out}.weight",
      f"{path}/out/kernel",
      lambda w: w.T.reshape(heads, head_dim, dim),
      lambda k: k.reshape(dim, dim).T,
    ),
    _same(f"{hf_name}.{out}.bias", f"{path}/out/bias"),
  ]


def _frontend_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """The feature extractor, its LayerNorm and masked_spec_embed (projection excluded)."""
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
  return tensors


def _transformer_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """The wav2vec 2.0 Transformer encoder: positional conv, LayerNorm, layers."""
  pos_conv = "encoder.pos_conv_embed.conv"
  tensors = [
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
  projections = ("q_proj", "k_proj", "v_proj", "out_proj")
  for i in range(m.num_layers):
    hf_layer, layer = f"encoder.layers.{i}", f"encoder/layers_{i}"
    tensors += _attention(
      f"{hf_layer}.attention", f"{layer}/attention", m.embed_dim, m.num_heads, projections
    )
    tensors += _norm(f"{hf_layer}.layer_norm", f"{layer}/attention_norm")
    tensors += _norm(f"{hf_layer}.final_layer_norm", f"{layer}/mlp_norm")
    tensors += _linear(f"{hf_layer}.feed_forward.intermediate_dense", f"{layer}/fc1")
    tensors += _linear(f"{hf_layer}.feed_forward.output_dense", f"{layer}/fc2")
  return tensors


def conformer_encoder_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """`Wav2Vec2ConformerEncoder` ('encoder.*') <-> `conformer.ConformerEncoder` ('encoder/*').

  Reads m.num_layers, m.embed_dim, m.num_heads and m.conformer_position_embeddings.
  Convolutions: pointwise_conv1 [2D, D, 1] <-> pointwise_in [D, 2 (value, gate), D];
  depthwise_conv [D, 1, K] <-> depthwise [K, 1, D]; pointwise_conv2 [D, D, 1] <->
  pointwise_out [D, D]. Batch norm's running_mean / running_var are the 'batch_stats'
  collection's mean / var.
  """
  dim, heads = m.embed_dim, m.num_heads
  tensors = _norm("encoder.layer_norm", "encoder/layer_norm")
  projections = ("linear_q", "linear_k", "linear_v", "linear_out")
  for i in range(m.num_layers):
    hf_layer, layer = f"encoder.layers.{i}", f"encoder/layers_{i}"
    for ffn in ("ffn1", "ffn2"):
      tensors += _norm(f"{hf_layer}.{ffn}_layer_norm", f"{layer}/{ffn}/norm")
      tensors += _linear(f"{hf_layer}.{ffn}.intermediate_dense", f"{layer}/{ffn}/fc1")
      tensors += _linear(f"{hf_layer}.{ffn}.output_dense", f"{layer}/{ffn}/fc2")
    tensors += _norm(f"{hf_layer}.self_attn_layer_norm", f"{layer}/attention_norm")
    attention, hf_attention = f"{layer}/attention", f"{hf_layer}.self_attn"
    tensors += _attention(hf_attention, attention, dim, heads, projections)
    if m.conformer_position_embeddings == "relative":
      tensors += _into_heads(f"{hf_attention}.linear_pos", f"{attention}/pos", dim, heads, False)
      tensors += [
        _same(f"{hf_attention}.pos_bias_u", f"{attention}/pos_bias_u"),
        _same(f"{hf_attention}.pos_bias_v", f"{attention}/pos_bias_v"),
      ]
    conv, hf_conv = f"{layer}/conv", f"{hf_layer}.conv_module"
    tensors += _norm(f"{hf_conv}.layer_norm", f"{conv}/layer_norm")
    tensors += [
      _Tensor(
        f"{hf_conv}.pointwise_conv1.weight",
        f"{conv}/pointwise_in",
        lambda w: w[:, :, 0].reshape(2, dim, dim).transpose(2, 0, 1),
        lambda k: k.transpose(1, 2, 0).reshape(2 * dim, dim)[:, :, None],
      ),
      _conv_weight(f"{hf_conv}.depthwise_conv.weight", f"{conv}/depthwise"),
      _Tensor(
        f"{hf_conv}.pointwise_conv2.weight",
        f"{conv}/pointwise_out",
        lambda w: w[:, :, 0].T,
        lambda k: k.T[:, :, None],
      ),
      *_norm(f"{hf_conv}.batch_norm", f"{conv}/batch_norm"),
      _same(f"{hf_conv}.batch_norm.running_mean", f"{conv}/batch_norm/mean", "batch_stats"),
      _same(f"{hf_conv}.batch_norm.running_var", f"{conv}/batch_norm/var", "batch_stats"),
    ]
    tensors += _norm(f"{hf_layer}.final_layer_norm", f"{layer}/final_norm")
  return tensors


def _conformer_hf_only(m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """What transformers' conformer holds beyond sslax's variables, with the values export
  writes: the rotary frequencies (`_conformer_constants`), and what it never uses: the
  positional conv as a zero convolution (weight_g 0), num_batches_tracked 0."""
  pos_conv = "encoder.pos_conv_embed.conv"
  tensors = {
    f"{pos_conv}.parametrizations.weight.original0": np.zeros(
      (1, 1, m.pos_conv_kernel), np.float32
    ),
    f"{pos_conv}.parametrizations.weight.original1": np.ones(
      (m.embed_dim, m.embed_dim // m.pos_conv_groups, m.pos_conv_kernel), np.float32
    ),
    f"{pos_conv}.bias": np.zeros((m.embed_dim,), np.float32),
  }
  for i in range(m.num_layers):
    name = f"encoder.layers.{i}.conv_module.batch_norm.num_batches_tracked"
    tensors[name] = np.zeros((), np.int64)
  return {**tensors, **_conformer_constants(m)}


def _conformer_constants(m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Buffers transformers stores that sslax computes: the rotary inverse frequencies
  base^(-2i / head_dim) (float32, as transformers computes them); import checks them."""
  if m.conformer_position_embeddings != "rotary":
    return {}
  head_dim = m.embed_dim // m.num_heads
  exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  inv_freq = np.float32(1.0) / np.float32(_ROTARY_BASE) ** exponents
  return {"encoder.embed_positions.inv_freq": inv_freq.astype(np.float32)}


def _projection(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """feature_projection.projection, which sslax (as fairseq) has only when widths differ."""
  if m.conv_layers[-1][0] != m.embed_dim:
    return _linear("feature_projection.projection", "post_extract_proj")
  return []


def _wav2vec2_head_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  """Wav2Vec2(Conformer)ForPreTraining's tensors outside the base model."""
  del m  # The shapes follow from the tensors.
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


def _ctc_head_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  del m
  return _linear("lm_head", "lm_head")


def _no_tensors(m: ml_collections.ConfigDict) -> list[_Tensor]:
  del m
  return []


# ---- Config fields --------------------------------------------------------------------


def _transformer_from_hf(c: dict) -> dict:
  if "position_embeddings_type" in c:
    raise ValueError(
      f"position_embeddings_type={c['position_embeddings_type']!r} is a conformer option; "
      f"model_type {c.get('model_type', 'wav2vec2')!r} has a Transformer encoder"
    )
  _require(c, "hidden_act", c["hidden_act"] == "gelu", "gelu")
  return dict(
    encoder="transformer",
    layer_norm_first=bool(c["do_stable_layer_norm"]),
    pos_conv_kernel=c["num_conv_pos_embeddings"],
    pos_conv_groups=c["num_conv_pos_embedding_groups"],
  )


def _transformer_to_hf(m: ml_collections.ConfigDict) -> dict:
  return dict(
    hidden_act="gelu",
    do_stable_layer_norm=m.layer_norm_first,
    num_conv_pos_embeddings=m.pos_conv_kernel,
    num_conv_pos_embedding_groups=m.pos_conv_groups,
  )


def _conformer_from_hf(c: dict) -> dict:
  _require(
    c,
    "position_embeddings_type",
    c["position_embeddings_type"] in ("relative", "rotary"),
    "'relative' or 'rotary'",
  )
  _require(c, "hidden_act", c["hidden_act"] in _CONFORMER_ACTIVATIONS, "swish (= silu)")
  if c["position_embeddings_type"] == "rotary":
    _require(
      c, "rotary_embedding_base", c["rotary_embedding_base"] == _ROTARY_BASE, str(_ROTARY_BASE)
    )
  _require(
    c, "conv_depthwise_kernel_size", c["conv_depthwise_kernel_size"] % 2 == 1, "an odd width"
  )
  branch_dropouts = {k: c[k] for k in ("attention_dropout", "conformer_conv_dropout")}
  if any(rate != c["hidden_dropout"] for rate in branch_dropouts.values()):
    logging.warning(
      "sslax's conformer applies dropout=hidden_dropout=%s after its attention and "
      "convolution branches; this checkpoint's transformers config has %s there",
      c["hidden_dropout"],
      branch_dropouts,
    )
  return dict(
    encoder="conformer",
    conformer_position_embeddings=c["position_embeddings_type"],
    conformer_conv_kernel=c["conv_depthwise_kernel_size"],
    conformer_conv_norm="batch_norm",
    # Transformer fields the conformer ignores: transformers' conformer has no
    # do_stable_layer_norm; its unused positional conv keeps its shape for the round trip.
    layer_norm_first=False,
    pos_conv_kernel=c["num_conv_pos_embeddings"],
    pos_conv_groups=c["num_conv_pos_embedding_groups"],
  )


def _conformer_to_hf(m: ml_collections.ConfigDict) -> dict:
  if m.conformer_conv_norm != "batch_norm":
    raise ValueError(
      f"config.model.conformer_conv_norm={m.conformer_conv_norm!r} has no transformers "
      f"{CONFORMER_PRETRAINING} counterpart (only 'batch_norm')"
    )
  return dict(
    hidden_act="swish",
    position_embeddings_type=m.conformer_position_embeddings,
    rotary_embedding_base=_ROTARY_BASE,
    conv_depthwise_kernel_size=m.conformer_conv_kernel,
    conformer_conv_dropout=m.dropout,
    num_conv_pos_embeddings=m.pos_conv_kernel,
    num_conv_pos_embedding_groups=m.pos_conv_groups,
  )


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


def _wav2vec2_head_to_hf(m: ml_collections.ConfigDict) -> dict:
  return dict(
    feat_quantizer_dropout=m.dropout_features,
    num_codevectors_per_group=m.latent_vars,
    num_codevector_groups=m.latent_groups,
    codevector_dim=m.latent_dim if m.latent_dim > 0 else m.final_dim,
    proj_codevector_dim=m.final_dim,
  )


def _hubert_head_from_hf(c: dict) -> dict:
  # fairseq's HuBERT always normalises the conv features and weight-normalises the
  # positional conv; HF's alternatives (DistilHuBERT-style) are not sslax's model.
  _require(c, "feat_proj_layer_norm", c["feat_proj_layer_norm"], "True")
  _require(c, "conv_pos_batch_norm", not c["conv_pos_batch_norm"], "False")
  return dict(_HUBERT_HEAD)


def _hubert_head_to_hf(m: ml_collections.ConfigDict) -> dict:
  del m  # HubertModel has no pretraining head.
  return dict(feat_proj_layer_norm=True, conv_pos_batch_norm=False)


def _ctc_head_from_hf(c: dict) -> dict:
  _require(c, "pad_token_id", c["pad_token_id"] == text.BLANK_ID, f"{text.BLANK_ID}, the blank")
  return dict(
    final_dropout=float(c["final_dropout"]),
    vocab_size=c["vocab_size"],
    # sslax fine-tuning keeps the feature encoder frozen (sslax/train/ctc_step.py).
    feature_grad_mult=0.0,
  )


def _ctc_head_to_hf(m: ml_collections.ConfigDict) -> dict:
  return dict(
    vocab_size=m.vocab_size,
    final_dropout=m.final_dropout,
    pad_token_id=text.BLANK_ID,
    bos_token_id=text.SPECIALS.index("<s>"),
    eos_token_id=text.SPECIALS.index("</s>"),
    # sslax's CTC objective (fairseq's): summed over utterances, zero for infeasible ones.
    ctc_loss_reduction="sum",
    ctc_zero_infinity=True,
  )


# ---- Families -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Encoder:
  """One sslax encoder (`config.model.encoder`) and its transformers counterpart.

  Attributes:
    name: the sslax encoder.
    hf_defaults: transformers' defaults of the encoder's own config fields read here.
    from_hf: sslax encoder fields from a defaulted HF config; raises on what sslax lacks.
    to_hf: the HF config fields of sslax model fields.
    tensors: the encoder's tensors (unprefixed).
    hf_only: tensors HF holds beyond sslax's variables, with the values export writes;
      ignored on import unless also in `constants`.
    constants: the hf_only tensors HF computes with (derived buffers); import checks that
      a checkpoint's values are these.
  """

  name: str
  hf_defaults: dict
  from_hf: Callable[[dict], dict]
  to_hf: Callable[[ml_collections.ConfigDict], dict]
  tensors: Callable[[ml_collections.ConfigDict], list[_Tensor]]
  hf_only: Callable[[ml_collections.ConfigDict], dict[str, np.ndarray]]
  constants: Callable[[ml_collections.ConfigDict], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class _Head:
  """What one sslax model type puts on top of the encoder, and its HF counterpart.

  Attributes:
    hf_defaults: transformers' defaults of the head's config fields read here.
    from_hf: sslax head fields from a defaulted HF config; raises on what sslax lacks.
    to_hf: the HF config fields of sslax model fields, beyond the shared ones.
    tensors: the full architecture's tensors outside the base model (unprefixed).
    sslax_only: top-level sslax parameters HF has no place for.
  """

  hf_defaults: dict
  from_hf: Callable[[dict], dict]
  to_hf: Callable[[ml_collections.ConfigDict], dict]
  tensors: Callable[[ml_collections.ConfigDict], list[_Tensor]]
  sslax_only: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Family:
  """One transformers architecture family and the sslax model it is.

  Attributes:
    hf_model_type: config.json's model_type.
    full_architecture: the class export writes: every tensor HF has, the base model's
      under `base_prefix`.
    base_architecture: the bare encoder class (tensors unprefixed), whose missing head
      tensors import initialises afresh; None if import reads the full class only.
    base_prefix: where the base model's tensors live in the full architecture.
    model_type: the sslax model type (`checkpoint.MODELS`).
    encoder: the encoder.
    head: the head.
  """

  hf_model_type: str
  full_architecture: str
  base_architecture: str | None
  base_prefix: str
  model_type: str
  encoder: _Encoder
  head: _Head


_TRANSFORMER = _Encoder(
  "transformer",
  {},
  _transformer_from_hf,
  _transformer_to_hf,
  _transformer_tensors,
  hf_only=lambda m: {},
  constants=lambda m: {},
)
_CONFORMER = _Encoder(
  "conformer",
  dict(
    position_embeddings_type="relative",
    rotary_embedding_base=_ROTARY_BASE,
    conv_depthwise_kernel_size=31,
    conformer_conv_dropout=0.1,
  ),
  _conformer_from_hf,
  _conformer_to_hf,
  conformer_encoder_tensors,
  hf_only=_conformer_hf_only,
  constants=_conformer_constants,
)
_WAV2VEC2_HEAD = _Head(
  dict(
    feat_quantizer_dropout=0.0,
    num_codevectors_per_group=320,
    num_codevector_groups=2,
    codevector_dim=256,
    proj_codevector_dim=256,
  ),
  _wav2vec2_head_from_hf,
  _wav2vec2_head_to_hf,
  _wav2vec2_head_tensors,
)
_FAMILIES = (
  _Family(
    "wav2vec2", PRETRAINING, BASE_MODEL, "wav2vec2.", "wav2vec2", _TRANSFORMER, _WAV2VEC2_HEAD
  ),
  _Family(
    "wav2vec2-conformer",
    CONFORMER_PRETRAINING,
    CONFORMER_MODEL,
    "wav2vec2_conformer.",
    "wav2vec2",
    _CONFORMER,
    _WAV2VEC2_HEAD,
  ),
  _Family(
    "hubert",
    HUBERT,
    HUBERT,
    "",
    "hubert",
    _TRANSFORMER,
    _Head(
      dict(feat_proj_layer_norm=True, conv_pos_batch_norm=False),
      _hubert_head_from_hf,
      _hubert_head_to_hf,
      _no_tensors,
      sslax_only=("final_proj", "label_embs_concat"),
    ),
  ),
  _Family(
    "wav2vec2",
    CTC,
    None,
    "wav2vec2.",
    "ctc",
    _TRANSFORMER,
    _Head(
      dict(vocab_size=32, final_dropout=0.1, pad_token_id=0),
      _ctc_head_from_hf,
      _ctc_head_to_hf,
      _ctc_head_tensors,
    ),
  ),
)


def _family_of_hf(hf_config: dict) -> _Family:
  """The family of a config.json: its model_type and `architectures` (the first family of
  the model_type, the pretraining one, when it names none).

  Raises:
    ValueError: naming an unsupported model_type or architecture.
  """
  hf_type = hf_config.get("model_type", "wav2vec2")
  candidates = [f for f in _FAMILIES if f.hf_model_type == hf_type]
  if not candidates:
    supported = sorted({f.hf_model_type for f in _FAMILIES})
    raise ValueError(f"model_type {hf_type!r} is not supported ({', '.join(supported)})")
  architectures = hf_config.get("architectures") or [candidates[0].full_architecture]
  found = []
  for architecture in architectures:
    matches = [f for f in candidates if architecture in (f.full_architecture, f.base_architecture)]
    if not matches:
      readable = sorted(
        {a for f in candidates for a in (f.full_architecture, f.base_architecture) if a}
      )
      raise ValueError(
        f"architecture {architecture} is not supported for model_type {hf_type!r} "
        f"({', '.join(readable)})"
      )
    found += [f for f in matches[:1] if f not in found]
  if len(found) > 1:
    raise ValueError(f"architectures {architectures} name different models")
  return found[0]


def _family_of_model(m: ml_collections.ConfigDict) -> _Family:
  """The family export writes for sslax model fields.

  Raises:
    ValueError: the model has a frontend or encoder transformers has no class for.
  """
  model_type = checkpoint.model_type(m)
  families = [f for f in _FAMILIES if f.model_type == model_type]
  shown = families[0].full_architecture
  if m.frontend != "waveform":
    raise ValueError(
      f"config.model.frontend={m.frontend!r} has no transformers {shown} counterpart "
      "(only 'waveform')"
    )
  for family in families:
    if family.encoder.name == m.encoder:
      return family
  encoders = ", ".join(repr(f.encoder.name) for f in families)
  raise ValueError(
    f"config.model.encoder={m.encoder!r} has no transformers {shown} counterpart (only {encoders})"
  )


def model_config_from_hf(hf_config: dict) -> ml_collections.ConfigDict:
  """The sslax `config.model` fields for a transformers config.json.

  Args:
    hf_config: the parsed config.json; absent fields take transformers' defaults.

  Returns:
    ConfigDict with the fields of the sslax model the family names (configs/common.py
    `wav2vec2_model()`, `hubert_model()` or `ctc_model()` plus vocab_size): the waveform
    frontend and the encoder. HF has no feature_grad_mult (it trains the extractor at
    full gradient unless frozen): 1.0, and 0.0 for CTC models (sslax fine-tuning's).

  Raises:
    ValueError: naming the first option sslax cannot represent exactly.
  """
  family = _family_of_hf(hf_config)
  c = dict(_HF_DEFAULTS, **family.encoder.hf_defaults, **family.head.hf_defaults)
  c.update(hf_config)
  _require(c, "feat_extract_norm", c["feat_extract_norm"] in ("group", "layer"), "group or layer")
  _require(c, "feat_extract_activation", c["feat_extract_activation"] == "gelu", "gelu")
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
  fields = dict(
    checkpoint.field_defaults(family.model_type),
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
    dropout=float(c["hidden_dropout"]),
    attention_dropout=float(c["attention_dropout"]),
    activation_dropout=float(c["activation_dropout"]),
    dropout_input=float(c["feat_proj_dropout"]),
    layerdrop=float(c["layerdrop"]),
    feature_grad_mult=1.0,
  )
  fields.update(family.encoder.from_hf(c))
  fields.update(family.head.from_hf(c))
  return ml_collections.ConfigDict(fields)


def hf_config_from_model(model_config: ml_collections.ConfigDict) -> dict:
  """The transformers config.json (of the class export writes) for sslax model fields.

  Raises:
    ValueError: the model has a frontend, encoder or option transformers has no class for.
  """
  m = model_config
  family = _family_of_model(m)
  return dict(
    architectures=[family.full_architecture],
    model_type=family.hf_model_type,
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
    layer_norm_eps=_LAYER_NORM_EPS,
    hidden_dropout=m.dropout,
    attention_dropout=m.attention_dropout,
    activation_dropout=m.activation_dropout,
    feat_proj_dropout=m.dropout_input,
    layerdrop=m.layerdrop,
    # masked_spec_embed exists only when a mask probability is positive.
    mask_time_prob=_HF_DEFAULTS["mask_time_prob"],
    **family.encoder.to_hf(m),
    **family.head.to_hf(m),
  )


# ---- Tensors --------------------------------------------------------------------------


def _prefixed(tensors: list[_Tensor], prefix: str) -> list[_Tensor]:
  return [dataclasses.replace(t, hf_name=prefix + t.hf_name) for t in tensors]


def _base_tensors(family: _Family, m: ml_collections.ConfigDict) -> list[_Tensor]:
  """The base model's tensors (feature extractor, projection, encoder), unprefixed."""
  return _frontend_tensors(m) + _projection(m) + family.encoder.tensors(m)


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


def variables_from_table(tensors: dict[str, np.ndarray], table: list[_Tensor]) -> dict:
  """The sslax variables ({'params': tree, 'batch_stats': tree, ...}) the entries of
  `table` make of HF `tensors` (name -> array); no checks (`variables_from_hf` checks)."""
  flat = {(t.collection, *t.sslax_path.split("/")): t.to_sslax(tensors[t.hf_name]) for t in table}
  return flax.traverse_util.unflatten_dict(
    {path: np.array(value, order="C") for path, value in flat.items()}
  )


def variables_from_hf(
  tensors: dict[str, np.ndarray], model_config: ml_collections.ConfigDict, *, seed: int = 0
) -> tuple[dict, dict, list[str]]:
  """sslax variables from the state dict of a class of `model_config`'s family.

  Args:
    tensors: HF tensor name -> float32 array (as `read_hf_checkpoint` returns).
    model_config: the sslax model fields (`model_config_from_hf` of the same checkpoint).
    seed: seeds the parameters the checkpoint does not hold.

  Returns:
    (params, model_state, fresh): the numpy params tree of
    `checkpoint.build_model(model_config)`, its other collections ({'batch_stats': ...}
    for a conformer, else {}), and the sorted '/'-joined paths of parameters initialised
    afresh (the quantizer, project_q and final_proj of a bare model; HuBERT's final_proj
    and label_embs_concat; mask_emb when masked_spec_embed is absent).

  Raises:
    ValueError: naming missing, unexpected or misshapen tensors, or a non-identity
      projection where sslax has none.
  """
  m = model_config
  family = _family_of_model(m)
  full = (
    family.base_architecture is None
    or not family.base_prefix
    or any(name.startswith(family.base_prefix) for name in tensors)
  )
  prefix = family.base_prefix if full else ""
  head = family.head.tensors(m)
  table = _prefixed(_base_tensors(family, m), prefix) + head
  optional = {prefix + "masked_spec_embed"}
  if not full:
    optional |= {t.hf_name for t in head}

  known = {t.hf_name for t in table} | {prefix + name for name in family.encoder.hf_only(m)}
  if not _projection(m):
    known |= {f"{prefix}feature_projection.projection.{p}" for p in ("weight", "bias")}
  unexpected = sorted(set(tensors) - known)
  missing = sorted({t.hf_name for t in table} - set(tensors) - optional)
  if missing or unexpected:
    raise ValueError(f"HF tensors missing: {missing}; unexpected: {unexpected}")
  if not _projection(m):
    _check_identity_projection(tensors, prefix, m.embed_dim)
  for name, value in family.encoder.constants(m).items():
    found = tensors.get(prefix + name)
    if found is not None and not np.allclose(found, value, rtol=1e-6, atol=0):
      raise ValueError(f"HF tensor {prefix + name} is not what sslax computes from the config")

  param_shapes, state_shapes = checkpoint.variable_shapes(m)
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
  variables = variables_from_table(tensors, present)
  flat = flax.traverse_util.flatten_dict(variables.pop("params"), sep="/")
  fresh += _sslax_only(family, shapes)
  if fresh:
    initial = flax.traverse_util.flatten_dict(checkpoint.init_params(m, seed), sep="/")
    flat.update({path: initial[path] for path in fresh})
  mapped = set(flat) | set(flax.traverse_util.flatten_dict(variables, sep="/"))
  if mapped != set(shapes):
    raise ValueError(f"sslax variables not mapped: {sorted(set(shapes) - mapped)}")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), variables, sorted(fresh)


def _sslax_only(family: _Family, paths) -> list[str]:
  """The '/'-joined `paths` of parameters HF has no place for."""
  return sorted(path for path in paths if path.split("/")[0] in family.head.sslax_only)


def _check_identity_projection(tensors: dict, prefix: str, dim: int) -> None:
  """sslax has no projection when conv and encoder widths agree: HF's must be identity."""
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
  params, model_config: ml_collections.ConfigDict, model_state: dict | None = None
) -> dict[str, np.ndarray]:
  """The state dict (numpy) of the class export writes, from sslax params and model state.

  Where sslax has no post_extract_proj (conv width == embed_dim), the HF projection is
  written as the identity, which is exact. Parameters HF has no place for are left out;
  tensors HF holds but never uses get the values `_Encoder.hf_only` gives.

  Raises:
    ValueError: the model state lacks variables the model has (batch-norm statistics).
  """
  m = model_config
  family = _family_of_model(m)
  prefix = family.base_prefix
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  flat_state = flax.traverse_util.flatten_dict(model_state or {}, sep="/")
  missing = sorted(set(checkpoint.state_shapes(m)) - set(flat_state))
  if missing:
    raise ValueError(f"model_state lacks {missing}: a conformer exports with its statistics")
  flat.update(flat_state)
  table = _prefixed(_base_tensors(family, m), prefix) + family.head.tensors(m)
  tensors = {t.hf_name: t.to_hf(np.asarray(flat[t.key], np.float32)) for t in table}
  tensors.update({prefix + name: value for name, value in family.encoder.hf_only(m).items()})
  if not _projection(m):
    dim = m.embed_dim
    tensors[f"{prefix}feature_projection.projection.weight"] = np.eye(dim, dtype=np.float32)
    tensors[f"{prefix}feature_projection.projection.bias"] = np.zeros(dim, np.float32)
  # np.array, not ascontiguousarray, which makes 0-d arrays (num_batches_tracked) 1-d.
  return {name: np.array(value, order="C") for name, value in tensors.items()}


# ---- Tokenizer and feature extractor (CTC) -------------------------------------------


def _read_vocab(path: str) -> text.Vocabulary:
  """The vocabulary of a transformers CTC directory, checked against sslax's decoding.

  Raises:
    FileNotFoundError: no vocab.json.
    ValueError: a nested (multilingual) vocabulary, another layout, or a tokenizer whose
      blank, word delimiter or casing differ from sslax's.
  """
  vocab_file = os.path.join(path, "vocab.json")
  if not os.path.exists(vocab_file):
    raise FileNotFoundError(f"{vocab_file} does not exist: a CTC model needs its vocabulary")
  with open(vocab_file, encoding="utf-8") as f:
    index = json.load(f)
  if not all(isinstance(i, int) for i in index.values()):
    raise ValueError(f"{vocab_file}: nested (per-language) vocabularies are not supported")
  vocab = text.Vocabulary.load(vocab_file)
  tokenizer_file = os.path.join(path, "tokenizer_config.json")
  if os.path.exists(tokenizer_file):
    with open(tokenizer_file) as f:
      tokenizer = json.load(f)
    wanted = dict(
      pad_token=text.BLANK, word_delimiter_token=text.WORD_DELIMITER, do_lower_case=False
    )
    for key, value in wanted.items():
      if key in tokenizer:
        _require(tokenizer, key, tokenizer[key] == value, repr(value))
  return vocab


def _write_tokenizer(path: str, vocab: text.Vocabulary, normalize: bool, layer_norm: bool):
  """Writes TOKENIZER_FILES: `Wav2Vec2CTCTokenizer` and `Wav2Vec2FeatureExtractor` configs.

  The tokenizer decodes as sslax does where it can (module doc): `|` as a space, no
  clean-up of spaces around punctuation, no lower-casing.
  """
  vocab.save(os.path.join(path, "vocab.json"))
  specials = dict(
    zip(("pad_token", "bos_token", "eos_token", "unk_token"), text.SPECIALS, strict=True)
  )
  files = {
    "special_tokens_map.json": specials,
    "tokenizer_config.json": dict(
      tokenizer_class="Wav2Vec2CTCTokenizer",
      processor_class="Wav2Vec2Processor",
      **specials,
      word_delimiter_token=text.WORD_DELIMITER,
      replace_word_delimiter_char=" ",
      do_lower_case=False,
      clean_up_tokenization_spaces=False,
    ),
    "preprocessor_config.json": _feature_extractor_config(normalize, layer_norm),
  }
  for name, content in files.items():
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f, indent=2)
      f.write("\n")


def _feature_extractor_config(normalize: bool, layer_norm: bool) -> dict:
  # transformers' convention: attention masks for layer-norm extractors only (a group-norm
  # model sees zero padding, as in its training).
  return dict(
    feature_extractor_type="Wav2Vec2FeatureExtractor",
    processor_class="Wav2Vec2Processor",
    feature_size=1,
    sampling_rate=_SAMPLE_RATE_HZ,
    padding_value=0.0,
    padding_side="right",
    do_normalize=bool(normalize),
    return_attention_mask=layer_norm,
  )


# ---- Import and export ----------------------------------------------------------------


def read_hf(path: str, *, seed: int = 0) -> tuple[checkpoint.Checkpoint, list[str]]:
  """Reads a transformers checkpoint directory: (the sslax checkpoint, fresh parameter paths).

  A `Wav2Vec2ForCTC` directory's vocab.json becomes the checkpoint's vocabulary.
  """
  hf_config, tensors = read_hf_checkpoint(path)
  model_config = model_config_from_hf(hf_config)
  params, model_state, fresh = variables_from_hf(tensors, model_config, seed=seed)
  vocab = _read_vocab(path) if checkpoint.model_type(model_config) == "ctc" else None
  if vocab is not None and len(vocab) != model_config.vocab_size:
    raise ValueError(
      f"{path}: vocab.json has {len(vocab)} tokens, config.json vocab_size "
      f"{model_config.vocab_size}"
    )
  return checkpoint.Checkpoint(model_config, params, model_state, vocab), fresh


def import_hf(path: str, *, seed: int = 0) -> tuple[ml_collections.ConfigDict, dict, list[str]]:
  """(model_config, params, fresh parameter paths) of `read_hf(path)`: the parameters only,
  as `config.init_from` loads them (a conformer's batch statistics are left out)."""
  loaded, fresh = read_hf(path, seed=seed)
  return loaded.model_config, loaded.params, fresh


def export_hf(
  path: str,
  model_config: ml_collections.ConfigDict,
  params,
  *,
  model_state: dict | None = None,
  vocab: text.Vocabulary | None = None,
  normalize: bool | None = None,
) -> list[str]:
  """Writes config.json and model.safetensors that transformers loads, and for a CTC model
  its tokenizer and feature extractor (TOKENIZER_FILES).

  Args:
    path: the directory (created if needed).
    model_config: sslax model fields.
    params: the params tree.
    model_state: the other variable collections (a batch-norm conformer's statistics).
    vocab: the CTC model's vocabulary (required for CTC, else None).
    normalize: whether the model was trained on per-utterance normalised waveforms; writes
      preprocessor_config.json when given (required for CTC).

  Returns:
    The sorted '/'-joined paths of parameters left out (HuBERT's pretraining head), each
    also logged.

  Raises:
    ValueError: no transformers counterpart, missing model state, a CTC model without its
      vocabulary or `normalize`.
  """
  family = _family_of_model(model_config)
  ctc = family.model_type == "ctc"
  if ctc and (vocab is None or normalize is None):
    raise ValueError(
      "a CTC model exports with its vocabulary and whether its audio was normalised "
      f"(vocab {'given' if vocab else 'missing'}, normalize={normalize})"
    )
  if vocab is not None:
    if not ctc:
      raise ValueError(f"a {family.model_type} model has no vocabulary to export")
    if len(vocab) != model_config.vocab_size:
      raise ValueError(f"vocabulary of {len(vocab)} tokens, lm_head of {model_config.vocab_size}")
  hf_config = hf_config_from_model(model_config)
  tensors = hf_tensors_from_params(params, model_config, model_state)
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
  layer_norm = model_config.extractor_mode == "layer_norm"
  if vocab is not None:
    _write_tokenizer(path, vocab, normalize, layer_norm)
  elif normalize is not None:
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
      json.dump(_feature_extractor_config(normalize, layer_norm), f, indent=2)
      f.write("\n")
  return dropped


def _read_source(path: str) -> tuple[checkpoint.Checkpoint, bool | None]:
  """An sslax checkpoint directory or a training workdir: (checkpoint, the run's
  config.data.normalize, None when not recorded)."""
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    return checkpoint.read_sslax_checkpoint(path), None
  with open(os.path.join(path, "config.json")) as f:
    normalize = bool(json.load(f)["data"]["normalize"])
  return checkpoint.read_workdir(path), normalize


def _parse_bool(value: str) -> bool:
  if value.lower() not in ("true", "false"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
  return value.lower() == "true"


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m sslax.interop.hf", description=__doc__.split("\n")[0]
  )
  parser.add_argument("direction", choices=("import", "export"))
  parser.add_argument("--from", dest="source", required=True, help="checkpoint directory to read")
  parser.add_argument("--to", dest="target", required=True, help="checkpoint directory to write")
  parser.add_argument("--seed", type=int, default=0, help="seeds parameters HF does not hold")
  parser.add_argument(
    "--normalize",
    type=_parse_bool,
    default=None,
    help="export: whether the model was trained on normalised audio (a workdir records it)",
  )
  args = parser.parse_args(argv)
  if args.direction == "import":
    loaded, fresh = read_hf(args.source, seed=args.seed)
    checkpoint.save_sslax_checkpoint(
      args.target, loaded.model_config, loaded.params, loaded.model_state, loaded.vocab
    )
    print(f"wrote {args.target}; initialised afresh: {', '.join(fresh) or 'nothing'}")
    preprocessor = os.path.join(args.source, "preprocessor_config.json")
    if os.path.exists(preprocessor):
      with open(preprocessor) as f:
        # Wav2Vec2FeatureExtractor's default is True.
        normalize = bool(json.load(f).get("do_normalize", True))
      print(
        f"its audio is {'' if normalize else 'not '}normalised per utterance: train or "
        f"evaluate it with --config.data.normalize={str(normalize).lower()}"
      )
    return
  loaded, recorded = _read_source(args.source)
  normalize = recorded if args.normalize is None else args.normalize
  if recorded is not None and normalize != recorded:
    raise ValueError(f"--normalize={normalize}, but {args.source} trained with {recorded}")
  dropped = export_hf(
    args.target,
    loaded.model_config,
    loaded.params,
    model_state=loaded.model_state,
    vocab=loaded.vocab,
    normalize=normalize,
  )
  print(f"wrote {args.target}; left out: {', '.join(dropped) or 'nothing'}")


if __name__ == "__main__":
  main(sys.argv[1:])
