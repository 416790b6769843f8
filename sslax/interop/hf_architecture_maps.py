"""Each transformers architecture's tensor map (entries of hf_tensor_map.py), by part.

All families share one tensor map (`full_tensors`): the feature extractor and projection,
the encoder (Transformer or `conformer_encoder_tensors`), both under the family's prefix
('wav2vec2.', 'wav2vec2_conformer.' or none in the bare models, hf_families.py), then the
family's head (`head_tensors`: quantizer, project_q and project_hid; none; lm_head).
Encoders are keyed by `Family.encoder`, heads by `Family.model_type`.

Beyond the map: what transformers holds and sslax does not (`hf_only`: the conformer's
unused positional conv and batch norm's num_batches_tracked, with the values export
writes; `constants`: the rotary frequencies, which import checks), and the sslax
parameters transformers has no place for (`sslax_only`: HuBERT's pretraining head).
"""

from collections.abc import Callable, Iterable
import dataclasses

import ml_collections
import numpy as np

from sslax.interop import hf_families
from sslax.interop import hf_tensor_map as tensor_map

# The positional conv, weight-normalised: weight_g [1, 1, K] and weight_v [D, D / G, K]
# under PyTorch's parametrization names.
_POS_CONV = "encoder.pos_conv_embed.conv"
_POS_CONV_WEIGHT_G = f"{_POS_CONV}.parametrizations.weight.original0"
_POS_CONV_WEIGHT_V = f"{_POS_CONV}.parametrizations.weight.original1"


def has_projection(m: ml_collections.ConfigDict) -> bool:
  """Whether sslax has post_extract_proj (as fairseq: only when conv and encoder widths
  differ); transformers always has feature_projection.projection."""
  return m.conv_layers[-1][0] != m.embed_dim


def _frontend_tensors(m: ml_collections.ConfigDict) -> list[tensor_map.Tensor]:
  """The feature extractor, its LayerNorm, masked_spec_embed and the projection if any."""
  tensors = []
  for i in range(len(m.conv_layers)):
    hf_layer = f"feature_extractor.conv_layers.{i}"
    tensors.append(tensor_map.conv_weight(f"{hf_layer}.conv.weight", f"frontend/conv_{i}/kernel"))
    if m.conv_bias:
      tensors.append(tensor_map.same(f"{hf_layer}.conv.bias", f"frontend/conv_{i}/bias"))
    if m.extractor_mode == "layer_norm" or i == 0:
      tensors += tensor_map.norm(f"{hf_layer}.layer_norm", f"frontend/norm_{i}")
  tensors += tensor_map.norm("feature_projection.layer_norm", "feature_norm")
  tensors.append(tensor_map.same("masked_spec_embed", "mask_emb"))
  if has_projection(m):
    tensors += tensor_map.linear("feature_projection.projection", "post_extract_proj")
  return tensors


def _transformer_tensors(m: ml_collections.ConfigDict) -> list[tensor_map.Tensor]:
  """The wav2vec 2.0 Transformer encoder: positional conv, LayerNorm, layers."""
  tensors = [
    tensor_map.Tensor(
      _POS_CONV_WEIGHT_G,
      "encoder/pos_conv/weight_g",
      lambda g: g.reshape(-1),
      lambda g: g.reshape(1, 1, -1),
    ),
    tensor_map.conv_weight(_POS_CONV_WEIGHT_V, "encoder/pos_conv/weight_v"),
    tensor_map.same(f"{_POS_CONV}.bias", "encoder/pos_conv/bias"),
  ]
  tensors += tensor_map.norm("encoder.layer_norm", "encoder/layer_norm")
  projections = ("q_proj", "k_proj", "v_proj", "out_proj")
  for i in range(m.num_layers):
    hf_layer, layer = f"encoder.layers.{i}", f"encoder/layers_{i}"
    tensors += tensor_map.attention(
      f"{hf_layer}.attention", f"{layer}/attention", m.embed_dim, m.num_heads, projections
    )
    tensors += tensor_map.norm(f"{hf_layer}.layer_norm", f"{layer}/attention_norm")
    tensors += tensor_map.norm(f"{hf_layer}.final_layer_norm", f"{layer}/mlp_norm")
    tensors += tensor_map.linear(f"{hf_layer}.feed_forward.intermediate_dense", f"{layer}/fc1")
    tensors += tensor_map.linear(f"{hf_layer}.feed_forward.output_dense", f"{layer}/fc2")
  return tensors


def conformer_encoder_tensors(m: ml_collections.ConfigDict) -> list[tensor_map.Tensor]:
  """`Wav2Vec2ConformerEncoder` ('encoder.*') <-> `conformer.ConformerEncoder` ('encoder/*').

  Reads m.num_layers, m.embed_dim, m.num_heads and m.conformer_position_embeddings.
  Convolutions: pointwise_conv1 [2D, D, 1] <-> pointwise_in [D, 2 (value, gate), D];
  depthwise_conv [D, 1, K] <-> depthwise [K, 1, D]; pointwise_conv2 [D, D, 1] <->
  pointwise_out [D, D]. Batch norm's running_mean / running_var are the 'batch_stats'
  collection's mean / var.
  """
  dim, heads = m.embed_dim, m.num_heads
  tensors = tensor_map.norm("encoder.layer_norm", "encoder/layer_norm")
  projections = ("linear_q", "linear_k", "linear_v", "linear_out")
  for i in range(m.num_layers):
    hf_layer, layer = f"encoder.layers.{i}", f"encoder/layers_{i}"
    for ffn in ("ffn1", "ffn2"):
      tensors += tensor_map.norm(f"{hf_layer}.{ffn}_layer_norm", f"{layer}/{ffn}/norm")
      tensors += tensor_map.linear(f"{hf_layer}.{ffn}.intermediate_dense", f"{layer}/{ffn}/fc1")
      tensors += tensor_map.linear(f"{hf_layer}.{ffn}.output_dense", f"{layer}/{ffn}/fc2")
    tensors += tensor_map.norm(f"{hf_layer}.self_attn_layer_norm", f"{layer}/attention_norm")
    attention, hf_attention = f"{layer}/attention", f"{hf_layer}.self_attn"
    tensors += tensor_map.attention(hf_attention, attention, dim, heads, projections)
    if m.conformer_position_embeddings == "relative":
      tensors += tensor_map.into_heads(
        f"{hf_attention}.linear_pos", f"{attention}/pos", dim, heads, False
      )
      tensors += [
        tensor_map.same(f"{hf_attention}.pos_bias_u", f"{attention}/pos_bias_u"),
        tensor_map.same(f"{hf_attention}.pos_bias_v", f"{attention}/pos_bias_v"),
      ]
    conv, hf_conv = f"{layer}/conv", f"{hf_layer}.conv_module"
    tensors += tensor_map.norm(f"{hf_conv}.layer_norm", f"{conv}/layer_norm")
    tensors += [
      tensor_map.Tensor(
        f"{hf_conv}.pointwise_conv1.weight",
        f"{conv}/pointwise_in",
        lambda w: w[:, :, 0].reshape(2, dim, dim).transpose(2, 0, 1),
        lambda k: k.transpose(1, 2, 0).reshape(2 * dim, dim)[:, :, None],
      ),
      tensor_map.conv_weight(f"{hf_conv}.depthwise_conv.weight", f"{conv}/depthwise"),
      tensor_map.Tensor(
        f"{hf_conv}.pointwise_conv2.weight",
        f"{conv}/pointwise_out",
        lambda w: w[:, :, 0].T,
        lambda k: k.T[:, :, None],
      ),
      *tensor_map.norm(f"{hf_conv}.batch_norm", f"{conv}/batch_norm"),
      tensor_map.same(
        f"{hf_conv}.batch_norm.running_mean", f"{conv}/batch_norm/mean", "batch_stats"
      ),
      tensor_map.same(f"{hf_conv}.batch_norm.running_var", f"{conv}/batch_norm/var", "batch_stats"),
    ]
    tensors += tensor_map.norm(f"{hf_layer}.final_layer_norm", f"{layer}/final_norm")
  return tensors


def _conformer_hf_only(m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """What transformers' conformer holds beyond sslax's variables, with the values export
  writes: the rotary frequencies (`_conformer_constants`), and what it never uses: the
  positional conv as a zero convolution (weight_g 0), num_batches_tracked 0."""
  tensors = {
    _POS_CONV_WEIGHT_G: np.zeros((1, 1, m.pos_conv_kernel), np.float32),
    _POS_CONV_WEIGHT_V: np.ones(
      (m.embed_dim, m.embed_dim // m.pos_conv_groups, m.pos_conv_kernel), np.float32
    ),
    f"{_POS_CONV}.bias": np.zeros((m.embed_dim,), np.float32),
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
  inv_freq = np.float32(1.0) / np.float32(hf_families.ROTARY_BASE) ** exponents
  return {"encoder.embed_positions.inv_freq": inv_freq.astype(np.float32)}


def _wav2vec2_head_tensors(m: ml_collections.ConfigDict) -> list[tensor_map.Tensor]:
  """Wav2Vec2(Conformer)ForPreTraining's tensors outside the base model."""
  del m  # The shapes follow from the tensors.
  return [
    tensor_map.Tensor(
      "quantizer.codevectors",
      "quantizer/codevectors",
      lambda x: x.reshape(x.shape[1:]),
      lambda x: x[None],
    ),
    *tensor_map.linear("quantizer.weight_proj", "quantizer/logits"),
    *tensor_map.linear("project_q", "project_q"),
    *tensor_map.linear("project_hid", "final_proj"),
  ]


@dataclasses.dataclass(frozen=True)
class _EncoderMap:
  """One encoder's tensors.

  Attributes:
    tensors: the encoder's tensor map (unprefixed).
    hf_only: tensors HF holds beyond sslax's variables, with the values export writes;
      ignored on import unless also in `constants`.
    constants: the hf_only tensors HF computes with (derived buffers); import checks that
      a checkpoint's values are these.
  """

  tensors: Callable[[ml_collections.ConfigDict], list[tensor_map.Tensor]]
  hf_only: Callable[[ml_collections.ConfigDict], dict[str, np.ndarray]] = lambda m: {}
  constants: Callable[[ml_collections.ConfigDict], dict[str, np.ndarray]] = lambda m: {}


@dataclasses.dataclass(frozen=True)
class _HeadMap:
  """What one sslax model type puts on top of the encoder, as tensors.

  Attributes:
    tensors: the full architecture's tensors outside the base model (unprefixed).
    sslax_only: top-level sslax parameters HF has no place for.
  """

  tensors: Callable[[ml_collections.ConfigDict], list[tensor_map.Tensor]] = lambda m: []
  sslax_only: tuple[str, ...] = ()


_ENCODERS = {
  "transformer": _EncoderMap(_transformer_tensors),
  "conformer": _EncoderMap(
    conformer_encoder_tensors, hf_only=_conformer_hf_only, constants=_conformer_constants
  ),
}
_HEADS = {
  "wav2vec2": _HeadMap(_wav2vec2_head_tensors),
  "hubert": _HeadMap(sslax_only=("final_proj", "label_embs_concat")),
  "ctc": _HeadMap(lambda m: tensor_map.linear("lm_head", "lm_head")),
}


def full_tensors(
  family: hf_families.Family, m: ml_collections.ConfigDict, prefix: str
) -> list[tensor_map.Tensor]:
  """The full class's tensors: the base model's (feature extractor, projection, encoder)
  under `prefix`, then the head's (`head_tensors`)."""
  base = _frontend_tensors(m) + _ENCODERS[family.encoder].tensors(m)
  return tensor_map.prefixed(base, prefix) + head_tensors(family, m)


def head_tensors(
  family: hf_families.Family, m: ml_collections.ConfigDict
) -> list[tensor_map.Tensor]:
  """The full architecture's tensors outside the base model (unprefixed, as HF names them)."""
  return _HEADS[family.model_type].tensors(m)


def hf_only(family: hf_families.Family, m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The base model's tensors beyond sslax's variables (unprefixed), as export writes them."""
  return _ENCODERS[family.encoder].hf_only(m)


def constants(family: hf_families.Family, m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The hf_only tensors whose values import checks (unprefixed)."""
  return _ENCODERS[family.encoder].constants(m)


def sslax_only(family: hf_families.Family, paths: Iterable[str]) -> list[str]:
  """The '/'-joined `paths` of parameters HF has no place for."""
  return sorted(
    path for path in paths if path.split("/")[0] in _HEADS[family.model_type].sslax_only
  )
