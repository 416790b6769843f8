"""Greedy CTC decoding and WER / CER of a fine-tuned model: the `evaluate` job.

  python -m sslax.main --config=configs/demo_ctc.py --workdir=DIR --config.job=evaluate

restores the latest checkpoint of the fine-tuning run in DIR (and its `vocab.json`),
transcribes every utterance of `config.eval.split` and writes `DIR/eval_<split>.json`:
WER and CER (jiwer, over the whole split: total edits / total reference words or
characters, spaces counted as characters), their edit counts, the text normalisation, and
each utterance's id, reference and hypothesis. Utterances whose audio could not be read
(`config.data.bad_audio='skip'`) stay in the scores as empty hypotheses (all deletions):
`unread_audio` counts them by kind of fault and their entries carry `unread`.

From a script: `evaluate(config, workdir)` does all that; `evaluate_params(config, params,
vocab, split, mesh)` scores any parameters, `score(references, hypotheses)` any texts.
"""

import collections
import json
import os
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import jiwer
import ml_collections
import numpy as np
import optax

from sslax.data import labelled, splits, text
from sslax.models import ctc
from sslax.train import checkpoints, ctc_step, sharding
from sslax.train import state as state_lib

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


def make_decode_fn(model: ctc.Wav2Vec2ForCTC, params_shardings: Any, mesh: jax.sharding.Mesh):
  """Jitted `(params, batch) -> (best i32[B, F], valid frames i32[B])`, batch-sharded."""

  def decode(params, batch):
    logits_BxFxV, frame_paddings_BxF = model.apply(
      {"params": params}, batch["audio"], batch["audio_paddings"], train=False
    )
    best_BxF = jnp.argmax(logits_BxFxV, axis=-1).astype(jnp.int32)
    return best_BxF, jnp.sum(1.0 - frame_paddings_BxF, axis=1).astype(jnp.int32)

  batch_sharding = sharding.batch_sharding(mesh)
  return jax.jit(
    decode,
    in_shardings=(params_shardings, batch_sharding),
    out_shardings=(batch_sharding, batch_sharding),
  )


def transcribe(
  model: ctc.Wav2Vec2ForCTC,
  params: Any,
  params_shardings: Any,
  eval_set: labelled.EvalSet,
  vocab: text.Vocabulary,
  mesh: jax.sharding.Mesh,
) -> list[str]:
  """Greedy hypotheses of every utterance of `eval_set`, in its order (on every process)."""
  decode = make_decode_fn(model, params_shardings, mesh)
  hypotheses = [""] * len(eval_set.ids)
  with sharding.activate(mesh), eval_set.batches() as batches:
    for host_batch, examples_B in batches:
      best_BxF, frames_B = decode(params, sharding.global_batch(host_batch, mesh))
      best_BxF = np.asarray(multihost_utils.process_allgather(best_BxF, tiled=True))
      frames_B = np.asarray(multihost_utils.process_allgather(frames_B, tiled=True))
      for row, index in enumerate(examples_B):
        if index >= 0:
          hypotheses[index] = vocab.decode(text.collapse(best_BxF[row, : frames_B[row]]))
  return hypotheses


def unread_utterances(eval_set: labelled.EvalSet) -> dict[int, str]:
  """{example index: kind of fault} of the audio no process could read (on every process)."""
  kinds = splits.BAD_AUDIO_KINDS
  codes = np.full(len(eval_set.ids), -1, np.int32)
  for index, kind in eval_set.unread.items():
    codes[index] = kinds.index(kind)
  if jax.process_count() > 1:
    codes = np.max(multihost_utils.process_allgather(codes), axis=0)
  return {int(i): kinds[codes[i]] for i in np.flatnonzero(codes >= 0)}


def evaluate_params(
  config: ml_collections.ConfigDict,
  params: Any,
  vocab: text.Vocabulary,
  split: str,
  mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
  """Scores `params` (a host or device tree of the CTC model) on `config.data.name:split`.

  Returns the metrics of `score` plus the normalisation, the decoding and per-utterance
  `{'id', 'reference', 'hypothesis'}`.
  """
  if config.eval.batch_size % sharding.data_parallel_size(mesh):
    raise ValueError(
      f"config.eval.batch_size={config.eval.batch_size} must be a multiple of the "
      f"{sharding.data_parallel_size(mesh)} batch shards of mesh {dict(mesh.shape)}"
    )
  model = ctc_step.build_model(config, len(vocab))
  _, _, shardings = state_lib.abstract_state_and_shardings(
    ctc_step.init_params_fn(model), optax.identity(), mesh
  )
  params = jax.device_put(params, shardings.params)
  eval_set = labelled.EvalSet(
    config.data,
    split,
    config.eval.batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  hypotheses = transcribe(model, params, shardings.params, eval_set, vocab, mesh)
  references = list(eval_set.references)
  unread = unread_utterances(eval_set)
  utterances = [
    {"id": i, "reference": r, "hypothesis": h}
    for i, r, h in zip(eval_set.ids, references, hypotheses, strict=True)
  ]
  for index, kind in unread.items():
    utterances[index]["unread"] = kind
  if unread:
    logging.warning(
      "%s:%s: %d utterances with unreadable audio scored as empty hypotheses (all deletions)",
      config.data.name,
      split,
      len(unread),
    )
  return {
    "dataset": f"{config.data.name}:{split}",
    **score(references, hypotheses),
    "unread_audio": dict(collections.Counter(unread.values())),
    "normalization": text.NORMALIZATION,
    "decoding": DECODING,
    "utterances": utterances,
  }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The evaluate job: scores workdir's latest checkpoint on `config.eval.split`.

  Writes `workdir/eval_<split>.json` (odd characters of the split as '_') atomically
  (primary process) and returns its content.
  Raises FileNotFoundError naming the file when the run has no vocabulary or checkpoint.
  """
  vocab_path = os.path.join(workdir, ctc_step.VOCAB_FILE)
  if not os.path.exists(vocab_path):
    raise FileNotFoundError(f"{vocab_path} does not exist: {workdir} is not a fine-tuning run")
  vocab = text.Vocabulary.load(vocab_path)
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  step = checkpointer.latest_step()
  checkpointer.close()
  if step is None:
    raise FileNotFoundError(f"{os.path.join(workdir, 'checkpoints')} holds no checkpoint")
  mesh = sharding.make_mesh(config.mesh)
  results = {
    "workdir": os.path.abspath(workdir),
    "checkpoint_step": step,
    **evaluate_params(
      config, checkpoints.load_params(workdir, step), vocab, config.eval.split, mesh
    ),
  }
  if jax.process_index() == 0:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", config.eval.split)
    path = os.path.join(workdir, f"eval_{name}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1, ensure_ascii=False)
      f.write("\n")
    os.replace(path + ".tmp", path)
  return results
