"""Hugging Face `transformers` checkpoints to and from sslax: wav2vec 2.0, conformer, HuBERT, CTC.

Supported (a directory with `config.json` and `model.safetensors` or `pytorch_model.bin`),
by transformers class, with the sslax model (`config.model`) each becomes:

  Wav2Vec2ForPreTraining, Wav2Vec2Model    wav2vec2 (sslax/models/wav2vec2.py), Transformer
  Wav2Vec2ConformerForPreTraining,         wav2vec2 with `encoder='conformer'`
    Wav2Vec2ConformerModel                   (sslax/models/conformer.py)
  HubertModel                              hubert (sslax/models/hubert.py)
  Wav2Vec2ForCTC                           ctc (sslax/models/ctc.py), with its vocabulary
  Wav2Vec2ConformerForCTC                  ctc with `encoder='conformer'`, likewise

Feature extractors: group norm or layer norm, with or without conv bias. Transformer
encoders: post-LN (`do_stable_layer_norm=False`) and pre-LN (`True`), gelu. Conformer
encoders: `position_embeddings_type` 'relative' or 'rotary' (base 10000), any odd
`conv_depthwise_kernel_size`, batch norm (its running statistics become the model state,
`batch_stats`), `hidden_act` 'swish' (= 'silu'; sslax's conformer has no other). HuBERT:
HF's defaults `feat_proj_layer_norm=True` and `conv_pos_batch_norm=False`, which are
fairseq's HubertModel. CTC: `pad_token_id` 0 is the blank, as sslax's (sslax/core/text.py),
and the directory's `vocab.json` must have sslax's layout (`<pad>`, `<s>`, `</s>`, `<unk>`,
`|`, then the characters: the layout of fairseq-converted checkpoints such as
facebook/wav2vec2-base-960h), with `|` the word delimiter.

Modules: hf_families.py (which transformers class is which sslax model),
hf_config_fields.py (config.json <-> `config.model` fields), hf_tensor_map.py and
hf_architecture_maps.py (the tensor map: each HF tensor as one sslax variable, by
architecture), hf_state_dict.py (a whole state dict <-> sslax variables, checked),
hf_processor.py (a CTC model's tokenizer and feature extractor files); this module reads
and writes whole directories and is the command line.

What HF does not hold is initialised afresh on import and named: a bare `...Model` has no
quantizer, `project_q` or `project_hid`; no HF HuBERT class holds HuBERT's pretraining
head (`final_proj`, `label_embs_concat`), whose fields import takes from fairseq's Base
iteration 2 (final_dim 256, 500 clusters, untied); `mask_emb` when the checkpoint has no
`masked_spec_embed`. What sslax does not hold and HF never uses in a forward pass is
ignored on import and written with fixed values on export: the conformer's
`encoder.pos_conv_embed` (transformers builds it but never calls it; written as a zero
convolution: weight_g 0, weight_v 1, bias 0) and batch norm's `num_batches_tracked`
(unused with a momentum; written as 0). Export writes the full class of the family
(`...ForPreTraining`, `HubertModel`, `...ForCTC`); the HuBERT head has no place there
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
SSLAX_DIR is an sslax checkpoint directory (sslax/registry/checkpoint.py gives its layout)
or a training workdir (`sslax.main --workdir`), whose latest checkpoint is exported: a
fine-tuning workdir (it holds vocab.json) exports as `Wav2Vec2ForCTC` (a conformer's as
`Wav2Vec2ConformerForCTC`) with its tokenizer.
`--normalize` says whether the model was trained on normalised waveforms (the
feature extractor's `do_normalize`); a workdir's config.json says it already, a CTC
checkpoint directory needs it.
"""

import argparse
import json
import os
import sys

from absl import logging
import flax.traverse_util
import ml_collections
import safetensors.numpy

from sslax.core import text
from sslax.interop import (
  hf_architecture_maps,
  hf_config_fields,
  hf_families,
  hf_processor,
  hf_state_dict,
)
from sslax.registry import checkpoint, model_types

# ---- Import and export ----------------------------------------------------------------


def read_hf(path: str, *, seed: int = 0) -> tuple[checkpoint.Checkpoint, list[str]]:
  """Reads a transformers checkpoint directory: (the sslax checkpoint, fresh parameter paths).

  A CTC directory's vocab.json becomes the checkpoint's vocabulary.
  """
  hf_config, tensors = hf_state_dict.read_hf_checkpoint(path)
  model_config = hf_config_fields.model_config_from_hf(hf_config)
  params, model_state, fresh = hf_state_dict.variables_from_hf(tensors, model_config, seed=seed)
  vocab = hf_processor.read_vocab(path) if model_types.model_type(model_config) == "ctc" else None
  if vocab is not None and len(vocab) != model_config.vocab_size:
    raise ValueError(
      f"{path}: vocab.json has {len(vocab)} tokens, config.json vocab_size "
      f"{model_config.vocab_size}"
    )
  return checkpoint.Checkpoint(model_config, params, model_state, vocab), fresh


def import_hf(path: str, *, seed: int = 0) -> tuple[ml_collections.ConfigDict, dict, list[str]]:
  """(model_config, params, fresh parameter paths) of `read_hf(path)`: the parameters only
  (a conformer's batch statistics, `read_hf`'s model_state, are left out)."""
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
  its tokenizer and feature extractor (`hf_processor.FILES`).

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
  family = hf_families.family_of_model(model_config)
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
  hf_config = hf_config_fields.hf_config_from_model(model_config)
  tensors = hf_state_dict.hf_tensors_from_params(params, model_config, model_state)
  dropped = hf_architecture_maps.sslax_only(
    family, flax.traverse_util.flatten_dict(params, sep="/")
  )
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
  if normalize is not None:  # Always so for CTC (checked above).
    layer_norm = model_config.extractor_mode == "layer_norm"
    hf_processor.write_processor(path, vocab, normalize=normalize, layer_norm=layer_norm)
  return dropped


# ---- Command line ---------------------------------------------------------------------


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
    normalize = hf_processor.read_normalize(args.source)
    if normalize is not None:
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
