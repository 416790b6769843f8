"""Which transformers class is which sslax model: the family table of sslax.interop.hf.

A family is one transformers architecture (config.json's `model_type` and `architectures`)
and the sslax model it becomes (`model_types.MODELS` type and `config.model.encoder`):

  Wav2Vec2ForPreTraining, Wav2Vec2Model    wav2vec2, Transformer   (prefix 'wav2vec2.')
  Wav2Vec2ConformerForPreTraining,         wav2vec2, conformer     ('wav2vec2_conformer.')
    Wav2Vec2ConformerModel
  HubertModel                              hubert, Transformer     (none)
  Wav2Vec2ForCTC                           ctc, Transformer        ('wav2vec2.')
  Wav2Vec2ConformerForCTC                  ctc, conformer          ('wav2vec2_conformer.')

The config fields of each encoder and head are in hf_config_fields.py, their tensors in
hf_architecture_maps.py, both keyed by the family's `encoder` and `model_type`.
"""

import dataclasses

import ml_collections

from sslax.registry import model_types

PRETRAINING = "Wav2Vec2ForPreTraining"
BASE_MODEL = "Wav2Vec2Model"
CONFORMER_PRETRAINING = "Wav2Vec2ConformerForPreTraining"
CONFORMER_MODEL = "Wav2Vec2ConformerModel"
HUBERT = "HubertModel"
CTC = "Wav2Vec2ForCTC"
CONFORMER_CTC = "Wav2Vec2ConformerForCTC"
# sslax's conformer computes rotary frequencies of base 10000 (sslax/models/conformer.py);
# transformers' conformer config.json names it, and stores the frequencies.
ROTARY_BASE = 10000


@dataclasses.dataclass(frozen=True)
class Family:
  """One transformers architecture family and the sslax model it is.

  Attributes:
    hf_model_type: config.json's model_type.
    full_architecture: the class export writes: every tensor HF has, the base model's
      under `base_prefix`.
    base_architecture: the bare encoder class (tensors unprefixed), whose missing head
      tensors import initialises afresh; None if import reads the full class only.
    base_prefix: where the base model's tensors live in the full architecture.
    model_type: the sslax model type (`model_types.MODELS`), which names the head.
    encoder: the sslax encoder (`config.model.encoder`).
  """

  hf_model_type: str
  full_architecture: str
  base_architecture: str | None
  base_prefix: str
  model_type: str
  encoder: str


FAMILIES = (
  Family("wav2vec2", PRETRAINING, BASE_MODEL, "wav2vec2.", "wav2vec2", "transformer"),
  Family(
    "wav2vec2-conformer",
    CONFORMER_PRETRAINING,
    CONFORMER_MODEL,
    "wav2vec2_conformer.",
    "wav2vec2",
    "conformer",
  ),
  Family("hubert", HUBERT, HUBERT, "", "hubert", "transformer"),
  Family("wav2vec2", CTC, None, "wav2vec2.", "ctc", "transformer"),
  Family("wav2vec2-conformer", CONFORMER_CTC, None, "wav2vec2_conformer.", "ctc", "conformer"),
)


def family_of_hf(hf_config: dict) -> Family:
  """The family of a config.json: its model_type and `architectures` (the first family of
  the model_type, the pretraining one, when it names none).

  Raises:
    ValueError: naming an unsupported model_type or architecture.
  """
  hf_type = hf_config.get("model_type", "wav2vec2")
  candidates = [f for f in FAMILIES if f.hf_model_type == hf_type]
  if not candidates:
    supported = sorted({f.hf_model_type for f in FAMILIES})
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


def family_of_model(m: ml_collections.ConfigDict) -> Family:
  """The family export writes for sslax model fields.

  Raises:
    ValueError: the model has a frontend or encoder transformers has no class for.
  """
  model_type = model_types.model_type(m)
  families = [f for f in FAMILIES if f.model_type == model_type]
  shown = families[0].full_architecture
  if m.frontend != "waveform":
    raise ValueError(
      f"config.model.frontend={m.frontend!r} has no transformers {shown} counterpart "
      "(only 'waveform')"
    )
  for family in families:
    if family.encoder == m.encoder:
      return family
  encoders = ", ".join(repr(f.encoder) for f in families)
  raise ValueError(
    f"config.model.encoder={m.encoder!r} has no transformers {shown} counterpart (only {encoders})"
  )
