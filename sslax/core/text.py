"""Transcripts as CTC targets: text normalisation and the character vocabulary.

Normalisation (`normalize`, applied to training labels and to evaluation references
alike): Unicode NFKC, upper-case; letters (any script) and apostrophes are kept, every
other character (digits, punctuation, hyphens) becomes a space; runs of whitespace
collapse to one space; leading and trailing spaces are removed. LibriSpeech and the demo
corpus transcripts (A-Z, apostrophe, space) pass through unchanged.

The vocabulary has the layout of fairseq's letter dictionary as Hugging Face's
`Wav2Vec2CTCTokenizer` stores it (`vocab.json`, token -> index): `<pad>` 0 (the CTC
blank, as in transformers' `Wav2Vec2ForCTC`), `<s>` 1, `</s>` 2, `<unk>` 3, the word
delimiter `|` 4, then the characters of the transcripts by decreasing count (ties in
code-point order). A space in the text is `|` in the labels; characters outside the
vocabulary encode as `<unk>`.
"""

import collections
from collections.abc import Iterable, Sequence
import dataclasses
import functools
import json
import os
import re
import unicodedata

import numpy as np

BLANK = "<pad>"
SPECIALS = (BLANK, "<s>", "</s>", "<unk>")
UNK = "<unk>"
WORD_DELIMITER = "|"
BLANK_ID = 0

NORMALIZATION = (
  "NFKC, upper-case, letters and apostrophes kept, every other character a space, "
  "whitespace collapsed, stripped"
)


def normalize(text: str) -> str:
  """The transcript as labels and references use it (rules in the module docstring)."""
  text = unicodedata.normalize("NFKC", text).upper()
  text = "".join(ch if ch.isalpha() or ch == "'" else " " for ch in text)
  return re.sub(r"\s+", " ", text).strip()


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Tokens by index; index 0 is the CTC blank."""

  tokens: tuple[str, ...]

  def __post_init__(self):
    if self.tokens[: len(SPECIALS) + 1] != (*SPECIALS, WORD_DELIMITER):
      raise ValueError(f"a vocabulary starts with {(*SPECIALS, WORD_DELIMITER)}: {self.tokens}")
    if len(set(self.tokens)) != len(self.tokens):
      raise ValueError(f"vocabulary tokens repeat: {self.tokens}")

  @functools.cached_property
  def index(self) -> dict[str, int]:
    """Token -> index."""
    return {token: i for i, token in enumerate(self.tokens)}

  def __len__(self) -> int:
    return len(self.tokens)

  @classmethod
  def build(cls, transcripts: Iterable[str]) -> "Vocabulary":
    """The characters of the normalised `transcripts`, most frequent first."""
    counts = collections.Counter()
    for text in transcripts:
      counts.update(normalize(text).replace(" ", ""))
    chars = sorted(counts, key=lambda ch: (-counts[ch], ch))
    return cls((*SPECIALS, WORD_DELIMITER, *chars))

  def encode(self, text: str) -> np.ndarray:
    """i32[L]: the normalised text, a space as `|`, unknown characters as `<unk>`."""
    unk = self.index[UNK]
    chars = normalize(text).replace(" ", WORD_DELIMITER)
    return np.asarray([self.index.get(ch, unk) for ch in chars], np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of label ids (already CTC-collapsed): `|` is a space, special tokens vanish."""
    chars = [self.tokens[i] for i in ids if self.tokens[i] not in SPECIALS]
    return re.sub(r"\s+", " ", "".join(chars).replace(WORD_DELIMITER, " ")).strip()

  def save(self, path: str) -> None:
    """Writes `{token: index}` JSON (transformers' vocab.json) atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.index, f, ensure_ascii=False, indent=1)
      f.write("\n")
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    """Reads a file written by `save` (or a transformers vocab.json of the same layout)."""
    with open(path, encoding="utf-8") as f:
      index = json.load(f)
    if sorted(index.values()) != list(range(len(index))):
      raise ValueError(f"{path}: token indices are not 0..{len(index) - 1}")
    try:
      return cls(tuple(sorted(index, key=index.get)))
    except ValueError as error:
      raise ValueError(f"{path}: {error}") from error


def collapse(ids_F: np.ndarray) -> np.ndarray:
  """Greedy CTC's output rule: merge repeated frame labels, then drop blanks.

  Args:
    ids_F: int[F] best label per (unpadded) frame.

  Returns:
    int[<= F] label ids.
  """
  ids_F = np.asarray(ids_F)
  if ids_F.size == 0:
    return ids_F
  changed_F = np.concatenate([[True], ids_F[1:] != ids_F[:-1]])
  kept = ids_F[changed_F]
  return kept[kept != BLANK_ID]
