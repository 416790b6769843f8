"""transformers config.json fields <-> sslax `config.model` fields, for sslax.interop.hf.

`model_config_from_hf` reads a config.json (absent fields at transformers' defaults) into
the fields of the sslax model its family names (hf_families.py); `hf_config_from_model`
writes the config.json of the class export writes. The fields shared by all families are
translated here once; each encoder (Transformer, conformer) and head (wav2vec 2.0
quantizer, HuBERT, CTC) translates its own. An option sslax cannot represent exactly is a
ValueError naming it (`require`).
"""

from collections.abc import Callable
import dataclasses

from absl import logging
import ml_collections

from sslax.core import text
from sslax.interop import hf_families
from sslax.registry import model_types

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
# The HuBERT head import writes, which HF does not hold: fairseq hubert_base_librispeech.yaml
# with iteration 2's 500 k-means clusters of one label set.
_HUBERT_HEAD = dict(final_dim=256, num_classes=(500,), untie_final_proj=True)
# sslax's conformer: swish activations (transformers calls it 'swish' or 'silu').
_CONFORMER_ACTIVATIONS = ("swish", "silu")


def require(c: dict, key: str, ok: bool, wanted: str) -> None:
  """Raises ValueError naming `c[key]` and what sslax needs (`wanted`) unless `ok`."""
  if not ok:
    raise ValueError(f"{key}={c[key]!r} is not supported (sslax needs {wanted})")


# ---- Encoders -------------------------------------------------------------------------


def _transformer_from_hf(c: dict) -> dict:
  if "position_embeddings_type" in c:
    raise ValueError(
      f"position_embeddings_type={c['position_embeddings_type']!r} is a conformer option; "
      f"model_type {c.get('model_type', 'wav2vec2')!r} has a Transformer encoder"
    )
  require(c, "hidden_act", c["hidden_act"] == "gelu", "gelu")
  return dict(encoder="transformer", layer_norm_first=bool(c["do_stable_layer_norm"]))


def _transformer_to_hf(m: ml_collections.ConfigDict) -> dict:
  return dict(hidden_act="gelu", do_stable_layer_norm=m.layer_norm_first)


def _conformer_from_hf(c: dict) -> dict:
  require(
    c,
    "position_embeddings_type",
    c["position_embeddings_type"] in ("relative", "rotary"),
    "'relative' or 'rotary'",
  )
  require(c, "hidden_act", c["hidden_act"] in _CONFORMER_ACTIVATIONS, "swish (= silu)")
  if c["position_embeddings_type"] == "rotary":
    rotary_base = hf_families.ROTARY_BASE
    require(c, "rotary_embedding_base", c["rotary_embedding_base"] == rotary_base, str(rotary_base))
  require(c, "conv_depthwise_kernel_size", c["conv_depthwise_kernel_size"] % 2 == 1, "an odd width")
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
    # A Transformer field the conformer ignores: transformers' conformer has no
    # do_stable_layer_norm.
    layer_norm_first=False,
  )


def _conformer_to_hf(m: ml_collections.ConfigDict) -> dict:
  if m.conformer_conv_norm != "batch_norm":
    raise ValueError(
      f"config.model.conformer_conv_norm={m.conformer_conv_norm!r} has no transformers "
      f"{hf_families.CONFORMER_PRETRAINING} counterpart (only 'batch_norm')"
    )
  return dict(
    hidden_act="swish",
    position_embeddings_type=m.conformer_position_embeddings,
    rotary_embedding_base=hf_families.ROTARY_BASE,
    conv_depthwise_kernel_size=m.conformer_conv_kernel,
    conformer_conv_dropout=m.dropout,
  )


# ---- Heads ----------------------------------------------------------------------------


def _wav2vec2_head_from_hf(c: dict) -> dict:
  require(
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
  require(c, "feat_proj_layer_norm", c["feat_proj_layer_norm"], "True")
  require(c, "conv_pos_batch_norm", not c["conv_pos_batch_norm"], "False")
  return dict(_HUBERT_HEAD)


def _hubert_head_to_hf(m: ml_collections.ConfigDict) -> dict:
  del m  # HubertModel has no pretraining head.
  return dict(feat_proj_layer_norm=True, conv_pos_batch_norm=False)


def _ctc_head_from_hf(c: dict) -> dict:
  require(c, "pad_token_id", c["pad_token_id"] == text.BLANK_ID, f"{text.BLANK_ID}, the blank")
  return dict(
    final_dropout=float(c["final_dropout"]),
    vocab_size=c["vocab_size"],
    # fairseq's fine-tuning setting: the feature encoder frozen (sslax/train/ctc_step.py).
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


@dataclasses.dataclass(frozen=True)
class _Fields:
  """One encoder's or head's own config fields, beyond the shared ones.

  Attributes:
    hf_defaults: transformers' defaults of the fields read here.
    from_hf: sslax fields from a defaulted HF config; raises on what sslax lacks.
    to_hf: the HF config fields of sslax model fields.
  """

  hf_defaults: dict
  from_hf: Callable[[dict], dict]
  to_hf: Callable[[ml_collections.ConfigDict], dict]


# By `Family.encoder`.
_ENCODERS = {
  "transformer": _Fields({}, _transformer_from_hf, _transformer_to_hf),
  "conformer": _Fields(
    dict(
      position_embeddings_type="relative",
      rotary_embedding_base=hf_families.ROTARY_BASE,
      conv_depthwise_kernel_size=31,
      conformer_conv_dropout=0.1,
    ),
    _conformer_from_hf,
    _conformer_to_hf,
  ),
}
# By `Family.model_type`.
_HEADS = {
  "wav2vec2": _Fields(
    dict(
      feat_quantizer_dropout=0.0,
      num_codevectors_per_group=320,
      num_codevector_groups=2,
      codevector_dim=256,
      proj_codevector_dim=256,
    ),
    _wav2vec2_head_from_hf,
    _wav2vec2_head_to_hf,
  ),
  "hubert": _Fields(
    dict(feat_proj_layer_norm=True, conv_pos_batch_norm=False),
    _hubert_head_from_hf,
    _hubert_head_to_hf,
  ),
  "ctc": _Fields(
    dict(vocab_size=32, final_dropout=0.1, pad_token_id=0), _ctc_head_from_hf, _ctc_head_to_hf
  ),
}


# ---- Whole configs --------------------------------------------------------------------


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
  family = hf_families.family_of_hf(hf_config)
  encoder, head = _ENCODERS[family.encoder], _HEADS[family.model_type]
  c = dict(_HF_DEFAULTS, **encoder.hf_defaults, **head.hf_defaults)
  c.update(hf_config)
  require(c, "feat_extract_norm", c["feat_extract_norm"] in ("group", "layer"), "group or layer")
  require(c, "feat_extract_activation", c["feat_extract_activation"] == "gelu", "gelu")
  require(c, "layer_norm_eps", c["layer_norm_eps"] == _LAYER_NORM_EPS, str(_LAYER_NORM_EPS))
  require(c, "add_adapter", not c["add_adapter"], "False")
  require(c, "adapter_attn_dim", c["adapter_attn_dim"] is None, "None")
  num_layers = len(c["conv_dim"])
  for key in ("conv_kernel", "conv_stride"):
    require(c, key, len(c[key]) == num_layers, f"{num_layers} entries, as conv_dim")
  require(
    c,
    "num_attention_heads",
    c["hidden_size"] % c["num_attention_heads"] == 0,
    "to divide hidden_size",
  )
  require(
    c,
    "num_conv_pos_embedding_groups",
    c["hidden_size"] % c["num_conv_pos_embedding_groups"] == 0,
    "to divide hidden_size",
  )
  fields = dict(
    model_types.field_defaults(family.model_type),
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
    # The Transformer's positional conv; the conformer's is unused (in transformers too)
    # and keeps its shape for the round trip.
    pos_conv_kernel=c["num_conv_pos_embeddings"],
    pos_conv_groups=c["num_conv_pos_embedding_groups"],
    feature_grad_mult=1.0,
  )
  fields.update(encoder.from_hf(c))
  fields.update(head.from_hf(c))
  return ml_collections.ConfigDict(fields)


def hf_config_from_model(model_config: ml_collections.ConfigDict) -> dict:
  """The transformers config.json (of the class export writes) for sslax model fields.

  Raises:
    ValueError: the model has a frontend, encoder or option transformers has no class for.
  """
  m = model_config
  family = hf_families.family_of_model(m)
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
    **_ENCODERS[family.encoder].to_hf(m),
    num_conv_pos_embeddings=m.pos_conv_kernel,
    num_conv_pos_embedding_groups=m.pos_conv_groups,
    **_HEADS[family.model_type].to_hf(m),
  )
