"""Greedy CTC decoding of a whole split and its WER / CER: what the evaluate job
(sslax/evaluate.py) and fine-tuning's validation (`config.valid`) share, so the dev WER a
run logs is the one the evaluate job reports for that checkpoint.

WER and CER are jiwer's over the whole split: total edits / total reference words or
characters, spaces counted as characters. Utterances whose audio could not be read
(`config.data.bad_audio='skip'`) stay in the scores as empty hypotheses (all deletions).
"""

import collections
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import jiwer
import ml_collections
import numpy as np

from sslax.core import sharding, text
from sslax.data import labelled, splits
from sslax.models import ctc

DECODING = "greedy CTC: best token per frame, repeats merged, blanks removed"


def score(references: list[str], hypotheses: list[str]) -> dict[str, Any]:
  """Corpus WER and CER (jiwer) with their edit counts; texts are used as given."""
  words = jiwer.process_words(references, hypotheses)
  chars = jiwer.process_characters(references, hypotheses)

  def counts(output) -> dict[str, int]:
    return {
      "reference": output.hits + output.substitutions + output.deletions,
      "substitutions": output.substitutions,
      "deletions": output.deletions,
      "insertions": output.insertions,
    }

  return {"wer": words.wer, "cer": chars.cer, "words": counts(words), "characters": counts(chars)}


def edit_sums(results: dict[str, Any]) -> dict[str, float]:
  """The metric sums of a `SplitDecoder.results` that `sslax.train.metrics.summarize` turns
  into `wer`, `cer` and `unread_audio` (a validation line)."""

  def edits(counts: dict[str, int]) -> float:
    return float(counts["substitutions"] + counts["deletions"] + counts["insertions"])

  return {
    "word_edits": edits(results["words"]),
    "reference_words": float(results["words"]["reference"]),
    "character_edits": edits(results["characters"]),
    "reference_characters": float(results["characters"]["reference"]),
    "unread_audio": float(sum(results["unread_audio"].values())),
  }


def make_decode_fn(model: ctc.Wav2Vec2ForCTC, variables_shardings: Any, mesh: jax.sharding.Mesh):
  """Jitted `(variables, batch) -> (best i32[B, F], valid frames i32[B])`, batch-sharded.

  `variables` are `{'params': ..., **model_state}` (`sslax.core.state.variables`): a
  batch-norm conformer decodes with its running statistics.
  """

  def decode(variables, batch):
    logits_BxFxV, frame_paddings_BxF = model.apply(
      variables, batch["audio"], batch["audio_paddings"], train=False
    )
    best_BxF = jnp.argmax(logits_BxFxV, axis=-1).astype(jnp.int32)
    return best_BxF, jnp.sum(1.0 - frame_paddings_BxF, axis=1).astype(jnp.int32)

  batch_sharding = sharding.batch_sharding(mesh)
  return jax.jit(
    decode,
    in_shardings=(variables_shardings, batch_sharding),
    out_shardings=(batch_sharding, batch_sharding),
  )


def unread_utterances(eval_set: labelled.EvalSet) -> dict[int, str]:
  """{example index: kind of fault} of the audio no process could read (on every process)."""
  kinds = splits.BAD_AUDIO_KINDS
  codes = np.full(len(eval_set.ids), -1, np.int32)
  for index, kind in eval_set.unread.items():
    codes[index] = kinds.index(kind)
  if jax.process_count() > 1:
    codes = np.max(multihost_utils.process_allgather(codes), axis=0)
  return {int(i): kinds[codes[i]] for i in np.flatnonzero(codes >= 0)}


class SplitDecoder:
  """Transcribes and scores every utterance of `data.name:split` (a `labelled.EvalSet`),
  `batch_size` at a time, with one compiled program however often it is called.

  Raises ValueError naming `config.eval.batch_size` when it does not split evenly over the
  mesh's batch shards.
  """

  def __init__(
    self,
    data: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    model: ctc.Wav2Vec2ForCTC,
    variables_shardings: Any,
    vocab: text.Vocabulary,
    mesh: jax.sharding.Mesh,
  ):
    if batch_size % sharding.data_parallel_size(mesh):
      raise ValueError(
        f"config.eval.batch_size={batch_size} must be a multiple of the "
        f"{sharding.data_parallel_size(mesh)} batch shards of mesh {dict(mesh.shape)}"
      )
    self.dataset = f"{data.name}:{split}"
    self.eval_set = labelled.EvalSet(
      data,
      split,
      batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    self._decode = make_decode_fn(model, variables_shardings, mesh)
    self._vocab = vocab
    self._mesh = mesh

  def transcribe(self, variables: Any) -> list[str]:
    """Greedy hypotheses of every utterance, in the split's order (on every process);
    `variables` (`make_decode_fn`'s) are on the device, sharded as `variables_shardings`."""
    hypotheses = [""] * len(self.eval_set.ids)
    with sharding.activate(self._mesh), self.eval_set.batches() as batches:
      for host_batch, examples_B in batches:
        global_batch = sharding.global_batch(host_batch, self._mesh)
        best_BxF, frames_B = self._decode(variables, global_batch)
        best_BxF = np.asarray(multihost_utils.process_allgather(best_BxF, tiled=True))
        frames_B = np.asarray(multihost_utils.process_allgather(frames_B, tiled=True))
        for row, index in enumerate(examples_B):
          if index >= 0:
            hypotheses[index] = self._vocab.decode(text.collapse(best_BxF[row, : frames_B[row]]))
    return hypotheses

  def results(self, variables: Any) -> dict[str, Any]:
    """The metrics of `score` plus `dataset`, `unread_audio` (counts by kind of fault), the
    normalisation, the decoding and per-utterance `{'id', 'reference', 'hypothesis'}`
    (and `unread` for an utterance whose audio could not be read)."""
    hypotheses = self.transcribe(variables)
    references = list(self.eval_set.references)
    unread = unread_utterances(self.eval_set)
    utterances = [
      {"id": i, "reference": r, "hypothesis": h}
      for i, r, h in zip(self.eval_set.ids, references, hypotheses, strict=True)
    ]
    for index, kind in unread.items():
      utterances[index]["unread"] = kind
    if unread:
      logging.warning(
        "%s: %d utterances with unreadable audio scored as empty hypotheses (all deletions)",
        self.dataset,
        len(unread),
      )
    return {
      "dataset": self.dataset,
      **score(references, hypotheses),
      "unread_audio": dict(collections.Counter(unread.values())),
      "normalization": text.NORMALIZATION,
      "decoding": DECODING,
      "utterances": utterances,
    }
