"""Fine-tuning's validation by WER and its best checkpoint, and the evaluate job scoring a
run as it was trained (its config.json), choosing the best or latest checkpoint and saying
what it found."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tiny_steps

from configs import demo_ctc
from sslax import evaluate, loop
from sslax.core import checkpoints, workdirs
from sslax.train import best, ctc_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELLED_MINUTES = 2.0  # not the tiny config's, so that evaluation must take the run's
EVAL_SPLIT = "dev[:8]"  # likewise (tiny's is 'test'): one batch of the validation split


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def best_steps(workdir):
  return sorted(int(name) for name in os.listdir(os.path.join(workdir, checkpoints.BEST)))


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_data_dir):
  """A tiny fine-tuning run validating on dev[:8] every 3 updates, trained to 3 updates and
  resumed to 6; returns (workdir, the best checkpoints after 3). With a learning rate of 0
  the parameters never move, every validation ties, and the first stays the best."""
  config = tiny_steps.fewer_layers(demo_ctc.get_config("tiny"))  # compiles faster
  config.unlock()
  config.data.update(data_dir=demo_data_dir, batch_size=8, labelled_minutes=LABELLED_MINUTES)
  config.eval.update(split=EVAL_SPLIT, batch_size=8)
  config.valid.update(split=EVAL_SPLIT, every=3)
  config.optim.learning_rate = 0.0
  config.update(total_steps=3, checkpoint_every=3)
  workdir = str(tmp_path_factory.mktemp("finetune"))
  loop.train(config, workdir, ctc_step.finetuning_setup)
  first = best_steps(workdir)
  config.total_steps = 6
  loop.train(config, workdir, ctc_step.finetuning_setup)
  return workdir, first


def test_finetuning_validates_by_wer_and_a_resumed_run_keeps_its_best(run):
  workdir, first = run
  valid = {m["step"]: m["valid"] for m in read_metrics(workdir) if "valid" in m}
  assert list(valid) == [3, 6]
  for v in valid.values():
    assert v["split"] == EVAL_SPLIT and v["unread_audio"] == 0
    assert np.isfinite(v["wer"]) and v["wer"] > 0 and v["cer"] > 0
  assert (valid[6]["wer"], valid[6]["cer"]) == (valid[3]["wer"], valid[3]["cer"])  # no learning
  # Ties keep the earlier: step 3, before and after the resume (which validated at 6 and
  # would have kept that had it not known the best so far).
  assert first == best_steps(workdir) == [3]
  scores = {"step": 3, "split": EVAL_SPLIT, "wer": valid[3]["wer"], "cer": valid[3]["cer"]}
  with checkpoints.Checkpointer(workdir, keep=1, folder=checkpoints.BEST) as reader:
    assert reader.data(3) == scores
  assert checkpoints.latest_complete_step(workdir) == 6
  events = [name for name in os.listdir(workdir) if name.startswith("events.out")]
  assert events


def test_the_best_is_the_lowest_wer_then_cer_and_survives_a_reopening(tmp_path):
  state = {"w": np.zeros(3, np.float32)}
  offers = [(2, 0.9, 0.5), (4, 0.8, 0.6), (6, 0.8, 0.4), (8, 0.8, 0.4), (10, 0.85, 0.1)]
  with best.BestCheckpoint(str(tmp_path), "dev") as keeper:
    kept = [keeper.offer(step, state, {"wer": w, "cer": c}) for step, w, c in offers]
  assert kept == [True, True, True, False, False]
  assert best_steps(str(tmp_path)) == [6]
  with best.BestCheckpoint(str(tmp_path), "dev") as keeper:
    assert keeper.scores == {"step": 6, "split": "dev", "wer": 0.8, "cer": 0.4}
    assert not keeper.offer(12, state, {"wer": 0.8, "cer": 0.45})
    assert keeper.offer(14, state, {"wer": 0.7, "cer": 0.9})
  assert best_steps(str(tmp_path)) == [14]


def test_best_metric_cer_ranks_by_cer_then_wer(tmp_path):
  state = {"w": np.zeros(3, np.float32)}
  # Update 2 spells words approximately (WER above 1 from insertions); update 4 emits blanks.
  offers = [(2, 1.007, 0.77), (4, 1.0, 0.97), (6, 1.2, 0.77), (8, 0.99, 0.77)]
  for metric, kept_step in (("wer", 8), ("cer", 8)):
    path = tmp_path / metric
    with best.BestCheckpoint(str(path), "dev", metric) as keeper:
      kept = [keeper.offer(step, state, {"wer": w, "cer": c}) for step, w, c in offers]
    assert best_steps(str(path)) == [kept_step]
    assert kept == ([True, True, False, True] if metric == "wer" else [True, False, False, True])
  with pytest.raises(ValueError, match=r"config.valid.best_metric='bleu'"):
    best.BestCheckpoint(str(tmp_path / "bad"), "dev", "bleu")


def run_main(workdir, data_dir, *overrides):
  """`python -m sslax.main --config=configs/demo_ctc.py:tiny --config.job=evaluate ...`."""
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.main",
      "--config=configs/demo_ctc.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      "--config.job=evaluate",
      *overrides,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_evaluate_scores_the_runs_data_with_its_best_checkpoint_and_says_so(run, demo_data_dir):
  workdir, _ = run
  result = run_main(workdir, demo_data_dir)
  assert result.returncode == 0, result.stderr[-5000:]
  path = os.path.join(workdir, "eval_dev__8_.json")
  with open(path) as f:
    results = json.load(f)
  # The run's eval split, not the tiny config's 'test'; its best checkpoint, not the latest.
  assert results["dataset"] == f"sslax_demo_corpus:{EVAL_SPLIT}"
  assert (results["checkpoint"], results["checkpoint_step"]) == (checkpoints.BEST, 3)
  valid = next(m["valid"] for m in read_metrics(workdir) if m["step"] == 3 and "valid" in m)
  # Validation and evaluation decode alike: the same scores.
  assert results["wer"] == pytest.approx(valid["wer"], abs=1e-12)
  assert results["cer"] == pytest.approx(valid["cer"], abs=1e-12)
  said = result.stderr
  assert f"sslax_demo_corpus:{EVAL_SPLIT}: {len(results['utterances'])} utterances scored" in said
  assert "(0 with unread audio, scored as empty)" in said
  assert f"by {checkpoints.BEST}/3 of {os.path.abspath(workdir)}" in said
  assert f"WER {results['wer']:.4f} ({results['words']['reference']} words)" in said
  assert f"CER {results['cer']:.4f}" in said
  assert f"written to {path}" in said


def test_evaluate_latest_on_another_split(run, demo_data_dir):
  workdir, _ = run
  result = run_main(
    workdir, demo_data_dir, "--config.eval.checkpoint=latest", "--config.eval.split=test[:8]"
  )
  assert result.returncode == 0, result.stderr[-5000:]
  with open(os.path.join(workdir, "eval_test__8_.json")) as f:
    results = json.load(f)
  assert (results["checkpoint"], results["checkpoint_step"]) == (checkpoints.LATEST, 6)
  assert results["dataset"] == "sslax_demo_corpus:test[:8]" and len(results["utterances"]) == 8


def test_an_override_that_contradicts_the_run_is_an_error_naming_both_values(run, demo_data_dir):
  workdir, _ = run
  result = run_main(
    workdir,
    demo_data_dir,
    "--config.data.labelled_minutes=10",
    "--config.model.num_layers=2",
    "--config.data.split=train",  # the run's value: allowed
  )
  assert result.returncode != 0
  said = result.stderr
  assert f"config.data.labelled_minutes: {LABELLED_MINUTES} in the run, 10.0 given" in said
  assert "config.model.num_layers: 1 in the run, 2 given" in said
  assert "data.split" not in said.split("contradict it:")[-1]


def test_evaluation_config_takes_the_run_and_free_overrides_only(tmp_path):
  config = demo_ctc.get_config("tiny")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/config.json does not exist"):
    evaluate.evaluation_config(str(tmp_path), config, {})
  run = config.copy_and_resolve_references()
  run.unlock()
  run.data.name = "another_corpus"
  del run.eval.checkpoint  # as in a run written before the field existed
  workdirs.write_config(run, str(tmp_path))
  overrides = {"job": "evaluate", "eval.split": "dev", "mesh.data": 1, "data.data_dir": "/x"}
  merged = evaluate.evaluation_config(str(tmp_path), config, overrides)
  assert merged.data.name == "another_corpus"
  assert (merged.job, merged.eval.split, merged.mesh.data, merged.data.data_dir) == (
    "evaluate",
    "dev",
    1,
    "/x",
  )
  assert merged.eval.checkpoint == config.eval.checkpoint  # absent from the run: the default
  assert merged.model.conv_layers == config.model.conv_layers  # tuples again
  assert isinstance(merged.model.conv_layers, tuple)
  with pytest.raises(ValueError, match="config.data.name: 'another_corpus' in the run, 'x' given"):
    evaluate.evaluation_config(str(tmp_path), config, {"data.name": "x"})
