"""The `Wav2Vec2Processor` files of sslax.interop.hf: CTC tokenizer and feature extractor.

A `Wav2Vec2ForCTC` directory's tokenizer (`vocab.json`, `tokenizer_config.json`,
`special_tokens_map.json`) must have sslax's vocabulary layout and decoding
(sslax/core/text.py: `<pad>` the blank, `|` the word delimiter, no lower-casing). Its
feature extractor (`preprocessor_config.json`) says whether the model takes waveforms
normalised per utterance (`do_normalize`, sslax's `config.data.normalize`).
"""

import json
import os

from sslax.core import text
from sslax.interop import hf_config_fields

# The tokenizer and feature extractor files of a CTC export.
FILES = (
  "vocab.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "preprocessor_config.json",
)
_SAMPLE_RATE_HZ = 16_000


def read_vocab(path: str) -> text.Vocabulary:
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
        hf_config_fields.require(tokenizer, key, tokenizer[key] == value, repr(value))
  return vocab


def read_normalize(path: str) -> bool | None:
  """The feature extractor's `do_normalize` in directory `path` (transformers' default,
  True, when unset), or None without preprocessor_config.json."""
  preprocessor = os.path.join(path, "preprocessor_config.json")
  if not os.path.exists(preprocessor):
    return None
  with open(preprocessor) as f:
    return bool(json.load(f).get("do_normalize", True))


def write_processor(
  path: str, vocab: text.Vocabulary | None, *, normalize: bool, layer_norm: bool
) -> None:
  """Writes `Wav2Vec2FeatureExtractor`'s preprocessor_config.json and, given a vocabulary,
  `Wav2Vec2CTCTokenizer`'s files (all of FILES).

  The feature extractor samples at 16 kHz and normalises as `normalize` says; transformers'
  convention gives attention masks to layer-norm extractors only (`layer_norm`: a
  group-norm model sees zero padding, as in its training). The tokenizer decodes as sslax
  does where it can (sslax.interop.hf's doc): `|` as a space, no clean-up of spaces
  around punctuation, no lower-casing.
  """
  files = {
    "preprocessor_config.json": dict(
      feature_extractor_type="Wav2Vec2FeatureExtractor",
      processor_class="Wav2Vec2Processor",
      feature_size=1,
      sampling_rate=_SAMPLE_RATE_HZ,
      padding_value=0.0,
      padding_side="right",
      do_normalize=bool(normalize),
      return_attention_mask=layer_norm,
    )
  }
  if vocab is not None:
    vocab.save(os.path.join(path, "vocab.json"))
    specials = dict(
      zip(("pad_token", "bos_token", "eos_token", "unk_token"), text.SPECIALS, strict=True)
    )
    files["special_tokens_map.json"] = specials
    files["tokenizer_config.json"] = dict(
      tokenizer_class="Wav2Vec2CTCTokenizer",
      processor_class="Wav2Vec2Processor",
      **specials,
      word_delimiter_token=text.WORD_DELIMITER,
      replace_word_delimiter_char=" ",
      do_lower_case=False,
      clean_up_tokenization_spaces=False,
    )
  for name, content in files.items():
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f, indent=2)
      f.write("\n")
