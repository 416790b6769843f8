"""Greedy CTC decoding and WER / CER of a fine-tuned model: the `evaluate` job.

  python -m sslax.main --config=configs/demo_ctc.py --workdir=DIR --config.job=evaluate

scores the fine-tuning run in DIR as it was trained: its `config.json` gives the data,
the model and the defaults of evaluation (`config.eval`); on the command line only what
evaluation is free to change (`EVALUATION_FREE`: the split, batch size and checkpoint of
`config.eval`, the mesh, where and how the data is read) may differ from the run, and any
other override that contradicts it is an error naming both values (`evaluation_config`).
It restores the run's best checkpoint by validation WER (`config.eval.checkpoint='best'`,
as fairseq's checkpoint_best.pt; a run that never validates has only its latest) or its
latest (`'latest'`), and its `vocab.json`, transcribes every utterance of
`config.eval.split` and writes `DIR/eval_<split>.json`: WER and CER (jiwer, over the whole
split: total edits / total reference words or characters, spaces counted as characters),
their edit counts, the text normalisation, and each utterance's id, reference and
hypothesis. Utterances whose audio could not be read (`config.data.bad_audio='skip'`)
stay in the scores as empty hypotheses (all deletions): `unread_audio` counts them by kind
of fault and their entries carry `unread`. The job ends by logging the split, the
checkpoint, the utterances scored and unread, WER, CER and the file written.

From a script: `evaluate(config, workdir)` does all that with `config` as given;
`evaluate_params(config, variables, vocab, split, mesh)` scores any model variables,
`sslax.train.ctc_decode.score(references, hypotheses)` any texts.
"""

import json
import os
import re
from typing import Any

from absl import logging
import jax
import ml_collections
import optax

from sslax.core import checkpoints, sharding, text, workdirs
from sslax.core import state as state_lib
from sslax.train import ctc_decode, ctc_step

CHECKPOINTS = ("best", "latest")  # config.eval.checkpoint
# Fields (and groups of fields) the command line may change when evaluating a run: what is
# scored and how (eval), which job runs on which devices (job, mesh), and where and how the
# data is read: data_dir is a location, not the data, so a run moved to another machine
# can be scored. Anything else (the dataset, its subset, the model, the audio
# normalisation...) must be the run's.
EVALUATION_FREE = ("job", "eval", "mesh", "data.data_dir", "data.read_threads", "data.bad_audio")
_ABSENT = "(absent)"


def _is_free(key: str) -> bool:
  return any(key == free or key.startswith(free + ".") for free in EVALUATION_FREE)


def _as_json(value: Any) -> Any:
  """A config value as config.json holds it (tuples as lists)."""
  return json.loads(json.dumps(value))


def _tuples(value: Any) -> Any:
  """config.json's lists as the tuples configs use; nested dicts likewise."""
  if isinstance(value, dict):
    return {key: _tuples(v) for key, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _with_missing(run: dict, defaults: dict) -> dict:
  """`run` with the fields it lacks (added to sslax since it was written) from `defaults`."""
  merged = dict(run)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_missing(merged[key], value)
  return merged


def _lookup(tree: dict, key: str) -> Any:
  for part in key.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return _ABSENT
    tree = tree[part]
  return tree


def evaluation_config(
  workdir: str, config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
  """The config the evaluate job scores `workdir`'s run with: the run's `config.json`, the
  command line's `overrides` of `EVALUATION_FREE` fields, and `config`'s values for fields
  the run's file lacks (added since it was written).

  Args:
    workdir: the fine-tuning run's workdir.
    config: the command line's config (`--config` with its overrides).
    overrides: the fields set explicitly on the command line, flat ('data.name': value), as
      `ml_collections.config_flags.get_override_values` gives them.

  Raises:
    FileNotFoundError: `workdir/config.json` does not exist (naming it).
    ValueError: an override of another field differs from the run's value; names every
      such field with the run's value and the given one.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} does not exist: --workdir={workdir} holds no training run to evaluate "
      "(the fine-tuning job writes it)"
    )
  with open(path) as f:
    run = json.load(f)
  contradictions = [
    f"config.{key}: {_lookup(run, key)!r} in the run, {_as_json(value)!r} given"
    for key, value in sorted(overrides.items())
    if not _is_free(key) and _as_json(value) != _lookup(run, key)
  ]
  if contradictions:
    raise ValueError(
      f"evaluation scores the run in {workdir} as {path} describes it; these overrides "
      "contradict it:\n  " + "\n  ".join(contradictions) + "\nOnly "
      f"{', '.join(EVALUATION_FREE)} may differ: drop the others, or train a new run"
    )
  merged = ml_collections.ConfigDict(_tuples(_with_missing(run, config.to_dict())))
  merged.update_from_flattened_dict({k: v for k, v in overrides.items() if _is_free(k)})
  merged.lock()
  return merged


def evaluate_params(
  config: ml_collections.ConfigDict,
  variables: dict[str, Any],
  vocab: text.Vocabulary,
  split: str,
  mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
  """Scores the CTC model's `variables` (`{'params': ..., **model_state}`, host or device
  trees; a batch-norm conformer's running statistics included) on
  `config.data.name:split`: `sslax.train.ctc_decode.SplitDecoder.results`.

  Raises ValueError naming the variable collections the model has and `variables` lacks.
  """
  model = ctc_step.build_model(config, len(vocab))
  _, _, shardings = state_lib.abstract_state_and_shardings(
    ctc_step.init_variables_fn(model), optax.identity(), mesh, all_collections=True
  )
  variables_shardings = state_lib.variables(shardings)
  lacking = sorted(set(variables_shardings) - set(variables))
  if lacking:
    raise ValueError(f"the CTC model of config.model needs its variables {lacking}")
  decoder = ctc_decode.SplitDecoder(
    config.data, split, config.eval.batch_size, model, variables_shardings, vocab, mesh
  )
  return decoder.results(jax.device_put(variables, variables_shardings))


def checkpoint_to_score(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, int]:
  """(folder, step) of the checkpoint `config.eval.checkpoint` names in `workdir`: its best
  by validation ('best'; the latest when the run never validates) or its latest.

  Raises:
    ValueError: config.eval.checkpoint is neither.
    FileNotFoundError: there is no such checkpoint (naming the folder).
  """
  choice = config.eval.checkpoint
  if choice not in CHECKPOINTS:
    raise ValueError(f"config.eval.checkpoint={choice!r} must be one of {CHECKPOINTS}")
  folder = checkpoints.BEST if choice == "best" else checkpoints.LATEST
  if choice == "best" and not (config.valid.split and config.valid.every):
    logging.info(
      "the run never validates (config.valid.split=%r, config.valid.every=%d), so it has "
      "no best checkpoint: scoring its latest",
      config.valid.split,
      config.valid.every,
    )
    folder = checkpoints.LATEST
  with checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints, folder=folder) as reader:
    step = reader.latest_step()
  if step is None:
    advice = "; --config.eval.checkpoint=latest scores the latest" if choice == "best" else ""
    raise FileNotFoundError(f"{os.path.join(workdir, folder)} holds no checkpoint{advice}")
  return folder, step


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The evaluate job: scores workdir's `config.eval.checkpoint` on `config.eval.split`
  with `config` as given (the command line's goes through `evaluation_config` first).

  Writes `workdir/eval_<split>.json` (odd characters of the split as '_') atomically
  (primary process), logs a summary and returns the file's content.
  Raises FileNotFoundError naming the file when the run has no vocabulary or checkpoint.
  """
  vocab_path = os.path.join(workdir, ctc_step.VOCAB_FILE)
  if not os.path.exists(vocab_path):
    raise FileNotFoundError(f"{vocab_path} does not exist: {workdir} is not a fine-tuning run")
  vocab = text.Vocabulary.load(vocab_path)
  folder, step = checkpoint_to_score(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  variables = {
    "params": checkpoints.load_params(workdir, step, folder),
    **checkpoints.load_state_field(workdir, "model_state", step, folder),
  }
  results = {
    "workdir": os.path.abspath(workdir),
    "checkpoint": folder,
    "checkpoint_step": step,
    **evaluate_params(config, variables, vocab, config.eval.split, mesh),
  }
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", config.eval.split)
  path = os.path.join(workdir, f"eval_{name}.json")
  if jax.process_index() == 0:
    workdirs.write_atomically(path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
  logging.info("%s", summary(results, path))
  return results


def summary(results: dict[str, Any], path: str) -> str:
  """What the evaluate job ends by saying: split, checkpoint, utterances, WER, CER, file."""
  words, chars = results["words"], results["characters"]
  unread = sum(results["unread_audio"].values())
  return (
    f"{results['dataset']}: {len(results['utterances'])} utterances scored "
    f"({unread} with unread audio, scored as empty) by {results['checkpoint']}/"
    f"{results['checkpoint_step']} of {results['workdir']}\n"
    f"  WER {results['wer']:.4f} ({words['reference']} words)  "
    f"CER {results['cer']:.4f} ({chars['reference']} characters)\n"
    f"  written to {path}"
  )
